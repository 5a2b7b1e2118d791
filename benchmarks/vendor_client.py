"""The vendor SDK, `tcm-client` 2.0.0 from PyPI, used the way its docs show.

Runs in its own venv (`benchmarks/.venv-vendor`, made by `run_client_bench.py`). Per connection:

    async with TcmWebSocketClient(url, AuthContext(uuid=...)) as client:
        await client.auth()
        resp = await client.inference_http(vm_id=..., vm_ip=..., container_id=...,
                                           model_name=..., inputs=[InferenceInput(...)])

`inference_http` is the SDK's inference call (the docs' `infer_http` does not exist); it builds
pydantic models, `json.dumps` them and `json.loads` the reply on one socket (one request in
flight per client, which is also what the protocol allows). The SDK has no output decoding, so
the output is decoded the way its `run_inference` helper builds inputs, with numpy:
`np.asarray(resp["payload"]["data"]["OUTPUT0"], dtype=np.float32)` (float64 for the input
sweep's `checksum` output). Concurrency: N clients, each with its own uuid (the SDK has no
pool).

The SDK opens its socket with `websockets.asyncio.client.connect(uri)` and no options, so it gets
the library defaults: permessage-deflate on, and `max_size` 1 MiB, which a ~3 MB output exceeds
(the connection closes with 1009). `--vendor-max-size none` patches `max_size=None` into that
call to measure the large case anyway; `default` runs the SDK as shipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from typing import Any

import numpy as np
import tcm_client
from _bench_common import (
    CONTAINER_ID,
    OUTPUT,
    VM_IP,
    RequestFn,
    Workload,
    drive,
    emit,
    emit_error,
    parse_args,
    workload,
)
from tcm_client import AuthContext, TcmWebSocketClient
from tcm_client.sdk import InferenceInput


def make_request(client: TcmWebSocketClient, work: Workload) -> RequestFn:
    model, name, datatype, x = work.model, work.input_name, work.input_datatype, work.x
    dtype = np.dtype(work.output_numpy)

    async def request() -> Any:
        inputs = [
            InferenceInput(name=name, shape=list(x.shape), datatype=datatype, data=x.tolist())
        ]
        resp = await client.inference_http(
            vm_id="vm-bench",  # required by the SDK, ignored by the manager
            vm_ip=VM_IP,
            container_id=CONTAINER_ID,
            model_name=model,
            inputs=inputs,
        )
        payload = resp["payload"]
        if payload.get("status") != "COMPLETED":
            raise RuntimeError(f"inference failed: {resp!r}")
        return np.asarray(payload["data"][OUTPUT], dtype=dtype)

    return request


async def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else None)
    label = "tcm-client" if args.vendor_max_size == "default" else "tcm-client(max_size=None)"
    if args.vendor_max_size == "none":
        from websockets.asyncio.client import connect

        tcm_client.sdk.connect = functools.partial(connect, max_size=None)
    work = workload(args.scenario, args.size)
    clients: list[TcmWebSocketClient] = []
    try:
        for _ in range(args.connections):
            ctx = AuthContext(uuid=f"vendor-{uuid.uuid4().hex}")
            client = TcmWebSocketClient(args.url, ctx)
            await client.__aenter__()
            clients.append(client)
            await client.auth()
        fns = [make_request(c, work) for c in clients]
        runs = await drive(args, fns, work)
        emit(args, label, runs, sdk_version=tcm_client.__version__)
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the orchestrator shows it in the table
        emit_error(args, label, exc, sdk_version=tcm_client.__version__)
    finally:
        for client in clients:
            with contextlib.suppress(Exception):  # closing is best effort
                await client.__aexit__(None, None, None)


if __name__ == "__main__":
    asyncio.run(main())
