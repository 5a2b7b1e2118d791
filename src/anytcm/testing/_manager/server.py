"""The reference manager's WebSocket and HTTP front end (contract §1-§3, §4.1, §6.1, §7).

One port serves `/ws`, `/health`, `/ready`, `/metrics` and the loopback-only `/_admin/*` fault
switches. Everything a client can observe follows the contract: the messages, codes and close
codes, the order of checks, which frames close the socket and which do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import signal
import ssl
import sys
import time
import uuid as uuid_module
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .config import JOB_TYPES, ServerConfig
from .faults import FaultSwitchError, FaultSwitches
from .framecap import capped_connection
from .inference import InferenceHandler
from .jobs import Job, JobScheduler
from .metrics import ServerMetrics
from .registry import MANAGEMENT_ACTIONS, ManagementFailure, Registry

logger = logging.getLogger("anytcm.testing.server")

VALID_TYPES = ["auth", "info", "management", "inference"]
FAST_PATH_ACTIONS = ("queue", "queue_stats")
# Sliding windows kept per uuid (auth failures, message rate) are trimmed this often, and a uuid
# whose windows are empty is forgotten: fresh uuids must not grow them without bound.
HOUSEKEEPING_SECONDS = 5.0
CLOSE_POLICY = 1008
CLOSE_RESTART = 1012
AUTH_FAILURE_WINDOW = 60.0  # failed auths are counted per uuid over 60 s (ws.py:309-331)
RATE_WINDOW = 1.0  # the per-uuid message rate is a sliding 1 s window (ws.py:253-271)
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class _Reject(Exception):
    """Send an error frame, then close with `code` (or keep the socket open when code is None)."""

    def __init__(self, message: str, code: int | None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.frame = {"type": "error", "payload": {**(extra or {}), "message": message}}
        self.code = code


@dataclass(eq=False)  # identity semantics: clients live in sets
class Client:
    """State of one WebSocket connection."""

    ws: ServerConnection
    uuid: str | None = None
    roles: list[str] = field(default_factory=list)
    capability: list[str] = field(default_factory=list)
    frames: int = 0
    stalled: bool = False

    @property
    def tenant(self) -> str:
        return "unknown"  # simple and static-token modes carry no tenant claim

    def auth_context(self) -> dict[str, Any]:
        return {"sub": None, "tenant_id": None, "roles": self.roles, "capability": self.capability}


class ReferenceServer:
    """A TCM server in one asyncio process."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.faults = FaultSwitches()
        self.faults.apply(config.faults)
        self.registry = Registry.initial()
        self.metrics = ServerMetrics()
        self._executor = ThreadPoolExecutor(
            max_workers=sum(config.workers.values()) + 2, thread_name_prefix="ref-worker"
        )
        self.inference = InferenceHandler(config, self.registry, self.faults, self._executor)
        self.by_uuid: dict[str, Client] = {}
        self.scheduler = JobScheduler(
            config, self._run_job, self.send_to_uuid, connected=self.by_uuid.__contains__
        )
        self.auth_order: list[Client] = []  # authenticated clients, first-connected first
        self.live: set[Client] = set()
        self._auth_failures: dict[str, deque[float]] = {}
        self._message_times: dict[str, deque[float]] = {}
        self._tenant_buckets: dict[str, tuple[float, float]] = {}
        self._stopping = False
        self._stop = asyncio.Event()
        self.port = 0

    # ------------------------------------------------------------------------------------------
    # process lifetime

    async def serve(self) -> None:
        """Listen, announce the port on stdout, and run until stopped."""
        ping = self.config.ping_interval or None
        tls = None
        if self.config.certfile:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(self.config.certfile, self.config.keyfile)
        async with serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            # The manager's cap is the parser's: a bigger frame is refused from its header.
            max_size=self.config.max_message_bytes,
            create_connection=capped_connection(self.config.max_message_bytes),
            ping_interval=ping,
            ping_timeout=ping,
            close_timeout=2,
            compression="deflate" if self.config.permessage_deflate else None,
            server_header="anytcm-reference-manager",
            ssl=tls,
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
            loop.add_signal_handler(signal.SIGINT, self._on_sigint)
            background = [
                asyncio.create_task(self.scheduler.run()),
                asyncio.create_task(self._housekeeping()),
            ]
            if self.config.exit_with_parent:
                background.append(asyncio.create_task(self._watch_parent()))
            scheme = "wss" if tls else "ws"
            print(
                f"anytcm reference manager listening on "
                f"{scheme}://{self.config.host}:{self.port}/ws (pid {os.getpid()})",
                flush=True,
            )
            try:
                await self._stop.wait()
            finally:
                for task in background:
                    task.cancel()
                self.scheduler.cancel_all()
                for client in list(self.live):
                    client.ws.transport.abort()  # no close frame: clients see 1006
                self._executor.shutdown(wait=False, cancel_futures=True)

    def _on_sigint(self) -> None:
        logger.warning("SIGINT: stopping")
        self._stop.set()

    def _on_sigterm(self) -> None:
        if not self._stopping:
            self._stopping = True
            asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """SIGTERM: NACK queued jobs, let running jobs finish and deliver, then exit (§7)."""
        logger.warning("SIGTERM: draining")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.scheduler.drain_and_nack(), self.config.drain_seconds)
        await asyncio.sleep(0.5)
        await self.scheduler.wait_idle()
        self._stop.set()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            _prune_windows(self._auth_failures, AUTH_FAILURE_WINDOW)
            _prune_windows(self._message_times, RATE_WINDOW)

    async def _watch_parent(self) -> None:
        # A test process that dies must not leave its server (and its port) behind.
        while os.getppid() == self.config.exit_with_parent:  # noqa: ASYNC110 - no event exists
            await asyncio.sleep(0.5)
        os._exit(0)

    # ------------------------------------------------------------------------------------------
    # sending

    async def send(self, client: Client, frame: dict[str, Any]) -> None:
        if client.stalled:
            return  # half-open: nothing leaves this socket
        with contextlib.suppress(ConnectionClosed):
            await client.ws.send(orjson.dumps(frame, option=_DUMPS_OPTIONS), text=True)

    async def send_to_uuid(self, uuid: str, frame: dict[str, Any]) -> None:
        """Route by uuid at send time: the connection holding it *now* gets it (§3.4)."""
        client = self.by_uuid.get(uuid)
        if client is None:
            self.metrics.responses_dropped.inc()
            return
        await self.send(client, frame)

    # ------------------------------------------------------------------------------------------
    # WebSocket connections

    async def _handle(self, ws: ServerConnection) -> None:
        client = Client(ws)
        self.live.add(client)
        self.metrics.connections.inc()
        if self.faults.stall:
            self._stall(client)
        try:
            await self._authenticate(client)
            while True:
                try:
                    await self._receive(client)
                except _Reject as reject:
                    if reject.code is not None:
                        raise
                    await self.send(client, reject.frame)  # an error that keeps the socket
        except _Reject as reject:
            await self.send(client, reject.frame)
            if reject.code is not None:
                await ws.close(reject.code)
        except ConnectionClosed:
            pass
        except _Dropped:
            ws.transport.abort()
        finally:
            self.live.discard(client)
            self.metrics.connections.dec()
            if client.uuid is not None and self.by_uuid.get(client.uuid) is client:
                del self.by_uuid[client.uuid]  # the uuid slot is free again
                self.scheduler.forget_if_idle(client.uuid)
            with contextlib.suppress(ValueError):
                self.auth_order.remove(client)

    async def _read(self, client: Client) -> str:
        """Read one text frame. The inbound cap (§1) is enforced by the parser (`_framecap`)."""
        message = await client.ws.recv()
        client.frames += 1
        if isinstance(message, bytes):
            raise _Dropped  # receive_text() fails on binary: the socket just drops
        return message

    async def _read_auth_frame(self, client: Client) -> str:
        """The first frame, within the auth deadline (`auth_timeout`, 0 = none).

        The real server has no such deadline: an idle unauthenticated socket holds its resources
        until the keepalive gives up. A stalled connection (fault switch) is frozen, deadline
        included: it neither reads nor closes until the stall ends.
        """
        timeout = self.config.auth_timeout
        if timeout <= 0:
            return await self._read(client)
        while True:
            try:
                return await asyncio.wait_for(self._read(client), timeout)
            except asyncio.TimeoutError:
                if not client.stalled:
                    raise _Reject(
                        f"Auth timeout: no auth frame within {timeout:g} seconds", CLOSE_POLICY
                    ) from None

    def _parse(self, text: str, close: int | None) -> dict[str, Any]:
        """JSON and envelope validation (ws.py:183-213); `close` is the code to close with."""
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise _Reject("Invalid JSON format", close) from None
        if not isinstance(message, dict):
            raise _Reject("Invalid JSON format", close)
        for name in ("uuid", "type", "payload"):
            if name not in message:
                raise _Reject(f"Missing required field: '{name}'", close)
        for name in ("uuid", "type"):
            if not isinstance(message[name], str):
                raise _Reject(f"Field '{name}' must be a string", close)
        if not isinstance(message["payload"], dict):
            raise _Reject("Field 'payload' must be a dictionary", close)
        if message["type"] not in VALID_TYPES:
            raise _Reject(f"Invalid type '{message['type']}'. Must be one of: {VALID_TYPES}", close)
        return message

    async def _authenticate(self, client: Client) -> None:
        message = self._parse(await self._read_auth_frame(client), CLOSE_POLICY)
        if message["type"] != "auth":
            raise _Reject("First message must be type 'auth'", CLOSE_POLICY)
        uuid = message["uuid"]
        payload = message["payload"]
        self.metrics.messages.labels("auth").inc()
        self._check_auth_failures(uuid)
        token_problem = self._token_problem(payload.get("token"))
        if token_problem is not None:
            self._record_auth_failure(uuid)
            raise _Reject(f"Invalid token: {token_problem}", CLOSE_POLICY)
        if uuid in self.by_uuid:
            raise _Reject(f"UUID '{uuid}' is already connected", CLOSE_POLICY)
        client.uuid = uuid
        client.roles = self._roles(payload)
        requested = payload.get("capability")
        self.by_uuid[uuid] = client
        self.auth_order.append(client)
        if isinstance(requested, list):
            supported = self.supported_capabilities()
            granted = [c for c in dict.fromkeys(requested) if c in supported] or ["json"]
            client.capability = granted
            await self.send(client, {"type": "auth.ok", "payload": {"capability": granted}})
        else:
            client.capability = ["json"]
            await self.send(client, {"type": "auth.ok"})  # the legacy bare reply

    def supported_capabilities(self) -> list[str]:
        supported = ["json"]
        if self.config.shm and os.access("/dev/shm", os.R_OK | os.W_OK):
            supported.append("shm")
        return supported + self.config.extra_capabilities

    def _token_problem(self, token: Any) -> str | None:
        if self.config.token is None:
            return None  # simple mode: any or no token
        if token is None or token == "":
            return "Missing token in auth payload"
        if not isinstance(token, str) or not secrets.compare_digest(token, self.config.token):
            return "Invalid token format"
        return None

    def _roles(self, payload: dict[str, Any]) -> list[str]:
        default = ["inference", "management"]
        if self.config.token is not None:
            return default  # token mode: roles come from the token, client.roles is ignored
        client_info = payload.get("client")
        roles = client_info.get("roles") if isinstance(client_info, dict) else None
        # Development mode (ws.py:458-469): `if not roles: roles = [...]`, so an empty list or
        # string gets the defaults too. The vendor SDK sends `roles: []` with every token.
        if isinstance(roles, str) and roles:
            return [roles]
        if isinstance(roles, list) and roles:
            return [str(r) for r in roles]
        return default

    def _check_auth_failures(self, uuid: str) -> None:
        limit = self.config.auth_failures_per_minute
        if limit <= 0:
            return
        window = _trim(self._auth_failures.setdefault(uuid, deque()), AUTH_FAILURE_WINDOW)
        if len(window) >= limit:
            self.metrics.auth_failures.inc()
            raise _Reject("Too many failed auth attempts for this client", CLOSE_POLICY)

    def _record_auth_failure(self, uuid: str) -> None:
        self.metrics.auth_failures.inc()
        if self.config.auth_failures_per_minute > 0:
            self._auth_failures.setdefault(uuid, deque()).append(time.monotonic())

    async def _receive(self, client: Client) -> None:
        """Read and handle one frame after authentication."""
        assert client.uuid is not None
        text = await self._read(client)
        self._check_client_rate(client.uuid)
        if self._stopping:
            await self._reject_after_shutdown(client, text)
        message = self._parse(text, None)
        kind = message["type"]
        self.metrics.messages.labels(kind).inc()
        if message["uuid"] != client.uuid:
            raise _Reject(
                f"UUID mismatch. Expected '{client.uuid}', got '{message['uuid']}'", CLOSE_POLICY
            )
        fast = kind == "info" and _info_action(message["payload"]) in FAST_PATH_ACTIONS
        if not fast:
            self._take_tenant_token(client)
        message["_correlation_id"] = secrets.token_hex(8)
        message["_auth"] = client.auth_context()
        if fast:
            await self.send(client, self._queue_stats_reply(message["payload"]))
        else:
            await self._dispatch(client, kind, message)
        drop_after = self.faults.drop_after_frames
        if drop_after and client.frames >= drop_after:
            raise _Dropped

    async def _reject_after_shutdown(self, client: Client, text: str) -> None:
        """A frame read after shutdown began: answered if it is queue_stats, then 1012 (§7)."""
        with contextlib.suppress(_Reject):
            message = self._parse(text, None)
            if message["type"] == "info" and (
                _info_action(message["payload"]) in FAST_PATH_ACTIONS
            ):
                await self.send(client, self._queue_stats_reply(message["payload"]))
        raise _Reject(
            "Server is shutting down; request rejected.",
            CLOSE_RESTART,
            {"code": "SYSTEM_SHUTDOWN"},
        )

    def _check_client_rate(self, uuid: str) -> None:
        limit = self.config.rate_limit_per_client
        if limit <= 0:
            return
        window = _trim(self._message_times.setdefault(uuid, deque()), RATE_WINDOW)
        window.append(time.monotonic())
        if len(window) > limit:
            self.metrics.rate_limit_violations.labels("client").inc()
            raise _Reject("Rate limit exceeded for this client (messages per second)", CLOSE_POLICY)

    def _take_tenant_token(self, client: Client) -> None:
        rate = self.config.tenant_rate_limit
        if rate <= 0:
            return
        now = time.monotonic()
        tokens, last = self._tenant_buckets.get(client.tenant, (float(rate), now))
        tokens = min(float(rate), tokens + (now - last) * rate)
        if tokens < 1.0:
            self._tenant_buckets[client.tenant] = (tokens, now)
            self.metrics.rate_limit_violations.labels("tenant").inc()
            raise _Reject(
                "Tenant message rate limit reached.",
                CLOSE_POLICY,
                {"code": "BACKPRESSURE_TENANT_LIMIT_REACHED"},
            )
        self._tenant_buckets[client.tenant] = (tokens - 1.0, now)

    async def _dispatch(self, client: Client, kind: str, message: dict[str, Any]) -> None:
        """Role checks and queueing (jt.py:343-440); a second `auth` is never answered."""
        if kind not in JOB_TYPES:
            logger.info("unhandled job type %r from %s: ignored", kind, client.uuid)
            return
        needed = {"management": "management", "inference": "inference"}.get(kind)
        if needed is not None and needed not in client.roles and "admin" not in client.roles:
            await self.send(
                client,
                {"type": "error", "payload": {"message": f"Forbidden: missing '{needed}' role"}},
            )
            return
        assert client.uuid is not None
        rejection = self.scheduler.submit(Job(client.uuid, kind, message))
        if rejection is not None:
            self.metrics.jobs_rejected.labels(kind, "queue_full").inc()
            await self.send(client, rejection)

    # ------------------------------------------------------------------------------------------
    # jobs

    async def _run_job(self, job: Job) -> None:
        if job.kind == "inference":
            await self._run_inference(job)
        elif job.kind == "management":
            await self._run_management(job)
        else:
            action = _info_action(job.message["payload"])
            await self.send_to_uuid(
                job.uuid,
                {
                    "type": "info_response",
                    "payload": {
                        "job_id": job.message["payload"].get("job_id"),
                        "request_type": action,
                        "status": "success",
                        "data": {"message": f"Info type '{action}' not implemented yet"},
                    },
                },
            )

    async def _run_inference(self, job: Job) -> None:
        started = time.perf_counter()
        self.metrics.inference_jobs.inc()

        async def emit(status: str, data: Any, model_name: Any) -> None:
            if status == "FAILED":
                code = data.get("code", "object") if isinstance(data, dict) else "string"
                self.metrics.inference_errors.labels(code).inc()
            frame = {
                "type": "inference",
                "uuid": job.uuid,
                "payload": {"status": status, "data": data, "model_name": model_name},
            }
            await self.send_to_uuid(job.uuid, frame)

        await self.inference.handle(job.message["payload"], emit)
        self.metrics.inference_duration.observe(time.perf_counter() - started)

    async def _run_management(self, job: Job) -> None:
        payload = job.message["payload"]
        action = str(payload.get("action"))
        # The label is client text: one time series per distinct string would grow forever.
        label = action if action in MANAGEMENT_ACTIONS else "unknown"
        self.metrics.management_actions.labels(label).inc()
        try:
            data, status = self.registry.run_action(action, payload), True
        except ManagementFailure as exc:
            data, status = str(exc), False
        except Exception as exc:  # noqa: BLE001 - any other failure is reported, as mgmt.py does
            data, status = f"Unexpected error: {exc}", False
        # The reply echoes the whole inbound envelope, payload replaced (mgmt.py:128-131).
        reply = {**job.message, "payload": {"status": status, "data": data}}
        await self.send_to_uuid(job.uuid, reply)

    def _queue_stats_reply(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "info_response",
            "payload": {
                "job_id": payload.get("job_id"),
                "request_type": "queue_stats",
                "status": "success",
                "data": self.scheduler.queue_stats(),
            },
        }

    # ------------------------------------------------------------------------------------------
    # faults

    def _stall(self, client: Client) -> None:
        client.stalled = True
        client.ws.transport.pause_reading()
        if client.ws.keepalive_task is not None:
            client.ws.keepalive_task.cancel()

    def _apply_faults(self, items: list[tuple[str, str]]) -> None:
        self.faults.apply(items)
        for client in list(self.live):
            if self.faults.stall and not client.stalled:
                self._stall(client)
            elif not self.faults.stall and client.stalled:
                client.stalled = False
                client.ws.transport.resume_reading()
        if self.faults.exit_code is not None:
            asyncio.get_running_loop().call_later(0.05, os._exit, self.faults.exit_code)

    def _first_live_client(self) -> Client | None:
        return next((c for c in self.auth_order if c in self.live), None)

    async def _push(self, frame: dict[str, Any]) -> bool:
        client = self._first_live_client()
        if client is None:
            return False
        await self.send(client, frame)
        return True

    # ------------------------------------------------------------------------------------------
    # HTTP

    async def _process_request(
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
            response = connection.respond(200, self.metrics.render().decode())
            _set_content_type(response, "text/plain; version=0.0.4; charset=utf-8")
            return response
        if url.path.startswith("/_admin/"):
            if not peer.is_loopback:
                return _json(connection, 403, {"detail": "Forbidden"})
            return await self._admin(connection, url.path, parse_qsl(url.query))
        return _json(connection, 404, {"detail": "Not Found"})

    def _ready(self, connection: ServerConnection) -> Response:
        if self.faults.not_ready():
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
        servers = self.registry.servers.values()
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
            return _json(connection, 200, self.faults.snapshot())
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


class _Dropped(Exception):
    """Drop the socket without a close frame."""


def _info_action(payload: dict[str, Any]) -> str:
    return str(payload.get("action") or payload.get("request_type") or "unknown")


def _trim(window: deque[float], seconds: float) -> deque[float]:
    cutoff = time.monotonic() - seconds
    while window and window[0] < cutoff:
        window.popleft()
    return window


def _prune_windows(windows: dict[str, deque[float]], seconds: float) -> None:
    """Trim every uuid's window and forget the uuids left with nothing in theirs."""
    for uuid in [u for u, window in windows.items() if not _trim(window, seconds)]:
        del windows[uuid]


def _json(connection: ServerConnection, status: int, body: Any) -> Response:
    response = connection.respond(status, orjson.dumps(body).decode())
    _set_content_type(response, "application/json")
    return response


def _set_content_type(response: Response, value: str) -> None:
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = value


def run(config: ServerConfig) -> None:
    """Run a reference manager in the foreground until SIGINT, SIGTERM (drain) or a fault exit."""
    logging.basicConfig(
        level=config.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The websockets server logs every plain HTTP response ("connection rejected"); too noisy.
    logging.getLogger("websockets.server").setLevel(logging.ERROR)
    asyncio.run(ReferenceServer(config).serve())
