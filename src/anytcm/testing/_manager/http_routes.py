"""The plain HTTP side of the port: `/health`, `/ready`, `/metrics` and the `/_admin/*` switches.

Answered from the WebSocket server's handshake hook: any path but `/ws` gets an HTTP response
and never becomes a WebSocket. `/metrics` is for loopback and private peers, as on the real
server; the fault switches are for loopback only, since they can crash the process.
"""

from __future__ import annotations

import ipaddress
import time
import uuid as uuid_module
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from .faults import FaultSwitchError, FaultSwitches
from .metrics import ServerMetrics
from .registry import Registry

# The first live authenticated connection gets an unsolicited frame; False when there is none.
Push = Callable[[dict[str, Any]], Awaitable[bool]]


class HttpRoutes:
    """The HTTP endpoints of one server."""

    def __init__(
        self,
        *,
        faults: FaultSwitches,
        registry: Registry,
        metrics: ServerMetrics,
        apply_faults: Callable[[list[tuple[str, str]]], None],
        push: Push,
    ) -> None:
        self._faults = faults
        self._registry = registry
        self._metrics = metrics
        self._apply_faults = apply_faults
        self._push = push

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        url = urlsplit(request.path)
        if url.path == "/ws":
            return None  # go on with the WebSocket handshake
        peer = ipaddress.ip_address(connection.remote_address[0])
        if url.path == "/health":
            return _json(connection, 200, {"status": "ok"})
        if url.path == "/ready":
            return self._ready(connection)
        if url.path == "/metrics":
            if not (peer.is_loopback or peer.is_private):
                return _json(connection, 403, {"detail": "Forbidden"})
            response = connection.respond(200, self._metrics.render().decode())
            _set_content_type(response, "text/plain; version=0.0.4; charset=utf-8")
            return response
        if url.path.startswith("/_admin/"):
            if not peer.is_loopback:
                return _json(connection, 403, {"detail": "Forbidden"})
            return await self._admin(connection, url.path, parse_qsl(url.query))
        return _json(connection, 404, {"detail": "Not Found"})

    def _ready(self, connection: ServerConnection) -> Response:
        if self._faults.not_ready():
            return _json(
                connection,
                503,
                {
                    "status": "not_ready",
                    "reason": "readiness_probe_failed",
                    "detail": "internal_error",
                    "error_id": str(uuid_module.uuid4()),
                },
            )
        servers = self._registry.servers.values()
        triton = {
            "registered": len(servers),
            "healthy": len(servers),
            "healthy_http": sum(1 for s in servers if s.protocol == "http"),
            "healthy_grpc": sum(1 for s in servers if s.protocol == "grpc"),
        }
        return _json(connection, 200, {"status": "ready", "triton": triton})

    async def _admin(
        self, connection: ServerConnection, path: str, query: list[tuple[str, str]]
    ) -> Response:
        params = dict(query)
        if path == "/_admin/faults":
            try:
                self._apply_faults(query)
            except FaultSwitchError as exc:
                return _json(connection, 400, {"detail": str(exc)})
            return _json(connection, 200, self._faults.snapshot())
        if path == "/_admin/alert":
            delivered = await self._push(
                {
                    "type": "alert",
                    "error_type": params.get("error_type", "TritonServerStateChanged"),
                    "message": params.get(
                        "message",
                        "[TritonThread] Server (127.0.0.1, ref-0) state changed: "
                        "['status: ready -> unhealthy']",
                    ),
                    "timestamp": time.time(),
                }
            )
            return _json(connection, 200, {"delivered": delivered})
        if path == "/_admin/budget_warning":
            job_type = params.get("job_type", "inference")
            delivered = await self._push(
                {
                    "type": "error",
                    "payload": {
                        "code": "BACKPRESSURE_INSUFFICIENT_BUDGET",
                        "message": f"Tenant 'unknown' has insufficient budget for {job_type} "
                        "jobs; requests are delayed.",
                        "job_type": job_type,
                        "tenant_id": "unknown",
                    },
                }
            )
            return _json(connection, 200, {"delivered": delivered})
        return _json(connection, 404, {"detail": "Not Found"})


def _json(connection: ServerConnection, status: int, body: Any) -> Response:
    response = connection.respond(status, orjson.dumps(body).decode())
    _set_content_type(response, "application/json")
    return response


def _set_content_type(response: Response, value: str) -> None:
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = value
