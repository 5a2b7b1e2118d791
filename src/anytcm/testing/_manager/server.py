"""The reference manager's process and its WebSocket connections (contract §1-§3, §7).

One port serves `/ws`, `/health`, `/ready`, `/metrics` and the loopback-only `/_admin/*` fault
switches. Everything a client can observe follows the contract: the messages, codes and close
codes, the order of checks, which frames close the socket and which do not.

The jobs are split out by what they do: `connection` (a socket's state, the envelope checks),
`admission` (tokens, roles, rate limits), `jobs` (queues and workers), `handlers` (what a job
sends back), `http_routes` (the plain HTTP endpoints). This module wires them together and
owns the order in which a frame meets them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import ssl
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .admission import Admission
from .config import JOB_TYPES, ServerConfig
from .connection import (
    CLOSE_POLICY,
    CLOSE_RESTART,
    FAST_PATH_ACTIONS,
    Client,
    Dropped,
    Reject,
    info_action,
    parse_envelope,
)
from .faults import FaultSwitches
from .framecap import capped_connection
from .handlers import JobHandlers
from .http_routes import HttpRoutes
from .inference import InferenceHandler
from .jobs import Job, JobScheduler
from .metrics import ServerMetrics
from .registry import Registry

logger = logging.getLogger("anytcm.testing.server")

# Sliding windows kept per uuid (auth failures, message rate) are trimmed this often, and a uuid
# whose windows are empty is forgotten: fresh uuids must not grow them without bound.
HOUSEKEEPING_SECONDS = 5.0
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class ReferenceServer:
    """A TCM server in one asyncio process."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.faults = FaultSwitches()
        self.faults.apply(config.faults)
        self.registry = Registry.initial()
        self.metrics = ServerMetrics()
        self.admission = Admission(config, self.metrics)
        self._executor = ThreadPoolExecutor(
            max_workers=sum(config.workers.values()) + 2, thread_name_prefix="ref-worker"
        )
        self.by_uuid: dict[str, Client] = {}
        self.handlers = JobHandlers(
            inference=InferenceHandler(config, self.registry, self.faults, self._executor),
            registry=self.registry,
            metrics=self.metrics,
            send_to_uuid=self.send_to_uuid,
            queue_stats=lambda: self.scheduler.queue_stats(),
            journal=config.journal,
        )
        self.scheduler = JobScheduler(
            config, self.handlers.run, self.send_to_uuid, connected=self.by_uuid.__contains__
        )
        self.http = HttpRoutes(
            faults=self.faults,
            registry=self.registry,
            metrics=self.metrics,
            apply_faults=self._apply_faults,
            push=self._push,
        )
        self.auth_order: list[Client] = []  # authenticated clients, first-connected first
        self.live: set[Client] = set()
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
            process_request=self.http.process_request,
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
            self.admission.prune()

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
                except Reject as reject:
                    if reject.code is not None:
                        raise
                    await self.send(client, reject.frame)  # an error that keeps the socket
        except Reject as reject:
            await self.send(client, reject.frame)
            if reject.code is not None:
                await ws.close(reject.code)
        except ConnectionClosed:
            pass
        except Dropped:
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
        """Read one text frame. The inbound cap (§1) is enforced by the parser (`framecap`)."""
        message = await client.ws.recv()
        client.frames += 1
        if isinstance(message, bytes):
            raise Dropped  # receive_text() fails on binary: the socket just drops
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
                    raise Reject(
                        f"Auth timeout: no auth frame within {timeout:g} seconds", CLOSE_POLICY
                    ) from None

    async def _authenticate(self, client: Client) -> None:
        message = parse_envelope(await self._read_auth_frame(client), CLOSE_POLICY)
        if message["type"] != "auth":
            raise Reject("First message must be type 'auth'", CLOSE_POLICY)
        uuid = message["uuid"]
        payload = message["payload"]
        self.metrics.messages.labels("auth").inc()
        self.admission.check_auth_failures(uuid)
        token_problem = self.admission.token_problem(payload.get("token"))
        if token_problem is not None:
            self.admission.record_auth_failure(uuid)
            raise Reject(f"Invalid token: {token_problem}", CLOSE_POLICY)
        if uuid in self.by_uuid:
            raise Reject(f"UUID '{uuid}' is already connected", CLOSE_POLICY)
        client.uuid = uuid
        client.roles = self.admission.roles(payload)
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

    async def _receive(self, client: Client) -> None:
        """Read and handle one frame after authentication."""
        assert client.uuid is not None
        text = await self._read(client)
        self.admission.check_client_rate(client.uuid)
        if self._stopping:
            await self._reject_after_shutdown(client, text)
        message = parse_envelope(text, None)
        kind = message["type"]
        self.metrics.messages.labels(kind).inc()
        if message["uuid"] != client.uuid:
            raise Reject(
                f"UUID mismatch. Expected '{client.uuid}', got '{message['uuid']}'", CLOSE_POLICY
            )
        fast = kind == "info" and info_action(message["payload"]) in FAST_PATH_ACTIONS
        if not fast:
            self.admission.take_tenant_token(client)
        message["_correlation_id"] = secrets.token_hex(8)
        message["_auth"] = client.auth_context()
        if fast:
            await self.send(client, self.handlers.queue_stats_reply(message["payload"]))
        else:
            await self._dispatch(client, kind, message)
        drop_after = self.faults.drop_after_frames
        if drop_after and client.frames >= drop_after:
            raise Dropped

    async def _reject_after_shutdown(self, client: Client, text: str) -> None:
        """A frame read after shutdown began: answered if it is queue_stats, then 1012 (§7)."""
        with contextlib.suppress(Reject):
            message = parse_envelope(text, None)
            if message["type"] == "info" and (info_action(message["payload"]) in FAST_PATH_ACTIONS):
                await self.send(client, self.handlers.queue_stats_reply(message["payload"]))
        raise Reject(
            "Server is shutting down; request rejected.",
            CLOSE_RESTART,
            {"code": "SYSTEM_SHUTDOWN"},
        )

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

    async def _push(self, frame: dict[str, Any]) -> bool:
        """An unsolicited frame to the first live authenticated client (`/_admin/alert`)."""
        client = next((c for c in self.auth_order if c in self.live), None)
        if client is None:
            return False
        await self.send(client, frame)
        return True


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
