"""The ceiling: a minimal hand-written TCM client, the least work a Python client can do.

Plain `websockets` asyncio client (`compression=None`, `max_size=None`), orjson, N connections
each with its own uuid and one inference in flight. No deadlines, no reconnects, no error
classification, no unsolicited-frame routing beyond skipping non-inference frames: it is a
yardstick, not a client. Outputs are decoded the obvious way:
`np.asarray(orjson.loads(frame)["payload"]["data"]["OUTPUT0"], dtype=np.float32)` (float64 for
the input sweep's `checksum` output). Inputs go as JSON, `x.tolist()` (float64 reprs).

Run by `run_client_bench.py`; standalone:
`python benchmarks/ceiling_client.py --url ws://127.0.0.1:8000/ws --connections 8`.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import numpy as np
import orjson
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
from websockets.asyncio.client import ClientConnection, connect


async def open_connection(url: str) -> tuple[ClientConnection, str]:
    ws = await connect(url, compression=None, max_size=None)
    client_uuid = f"ceiling-{uuid.uuid4().hex}"
    await ws.send(orjson.dumps({"uuid": client_uuid, "type": "auth", "payload": {}}), text=True)
    reply = orjson.loads(await ws.recv(decode=False))
    if reply.get("type") != "auth.ok":
        raise RuntimeError(f"auth failed: {reply!r}")
    return ws, client_uuid


def make_request(ws: ClientConnection, client_uuid: str, work: Workload) -> RequestFn:
    model, name, datatype, x = work.model, work.input_name, work.input_datatype, work.x
    shape, dtype = list(x.shape), np.dtype(work.output_numpy)

    async def request() -> Any:
        frame = {
            "uuid": client_uuid,
            "type": "inference",
            "payload": {
                "vm_ip": VM_IP,
                "container_id": CONTAINER_ID,
                "model_name": model,
                "request": {
                    "inputs": [
                        {"name": name, "shape": shape, "datatype": datatype, "data": x.tolist()}
                    ]
                },
            },
        }
        await ws.send(orjson.dumps(frame), text=True)
        while True:
            reply = orjson.loads(await ws.recv(decode=False))
            if reply.get("type") == "inference":
                break  # anything else (alert, budget warning) is not ours: skip it
        payload = reply["payload"]
        if payload["status"] != "COMPLETED":
            raise RuntimeError(f"inference failed: {payload!r}")
        return np.asarray(payload["data"][OUTPUT], dtype=dtype)

    return request


async def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else None)
    work = workload(args.scenario, args.size)
    opened = [await open_connection(args.url) for _ in range(args.connections)]
    try:
        fns = [make_request(ws, u, work) for ws, u in opened]
        runs = await drive(args, fns, work)
        emit(args, "ceiling", runs)
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the orchestrator shows it in the table
        emit_error(args, "ceiling", exc)
    finally:
        for ws, _ in opened:
            await ws.close()


if __name__ == "__main__":
    asyncio.run(main())
