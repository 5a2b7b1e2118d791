"""The ceiling: a minimal hand-written TCM client, the least work a Python client can do.

Plain `websockets` asyncio client (`compression=None`, `max_size=None`), orjson, N connections
each with its own uuid and one inference in flight. No deadlines, no reconnects, no error
classification, no unsolicited-frame routing beyond skipping non-inference frames: it is a
yardstick, not a client. Outputs are decoded the obvious way:
`np.asarray(orjson.loads(frame)["payload"]["data"]["OUTPUT0"], dtype=np.float32)`.

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
    LARGE_MODEL,
    LARGE_SIZE,
    OUTPUT,
    SMALL_MODEL,
    SMALL_SIZE,
    VM_IP,
    RequestFn,
    asyncio_drive,
    emit,
    emit_error,
    parse_args,
    small_input,
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


def make_request(ws: ClientConnection, client_uuid: str, scenario: str, x: Any) -> RequestFn:
    if scenario == "small":
        model, name, shape, datatype = SMALL_MODEL, "INPUT0", [SMALL_SIZE], "FP32"
    else:
        model, name, shape, datatype = LARGE_MODEL, "SIZE", [1], "INT64"

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
        return np.asarray(payload["data"][OUTPUT], dtype=np.float32)

    return request


async def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else None)
    x = small_input() if args.scenario == "small" else np.array([LARGE_SIZE], dtype=np.int64)
    opened = [await open_connection(args.url) for _ in range(args.connections)]
    try:
        fns = [make_request(ws, u, args.scenario, x) for ws, u in opened]
        runs = await asyncio_drive(args, fns, x)
        emit(args, "ceiling", runs)
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the orchestrator shows it in the table
        emit_error(args, "ceiling", exc)
    finally:
        for ws, _ in opened:
            await ws.close()


if __name__ == "__main__":
    asyncio.run(main())
