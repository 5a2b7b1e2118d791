"""The TCM client protocol, sans-IO: frames in, events out (contract §3-§6).

`ClientProtocol` holds what one connection knows: whether auth is done, what was granted, and
which requests are waiting for an answer. It turns inbound frames into events and outbound
requests into frame bytes. It never touches a socket or a clock, so every rule is tested
synchronously.

How replies are matched, given that the protocol has no request id (design.md, facts 1 and 6):

* inference: **one in flight per connection**; the reply carries only the connection's uuid.
  A request given up on (timeout, cancellation) leaves the slot *abandoned* until its late
  answer arrives, so that answer can never be taken for the next request's.
* info: the server echoes `payload.job_id`. `queue_stats` is answered on the server's reader and
  can never be NACKed, so any number may be in flight; other actions go through the job queue,
  one at a time, so a `dropped_type: "info"` NACK is unambiguous.
* management: the server echoes the whole envelope, so an extra top-level `request_id` matches
  the reply. The server runs management serially anyway; one at a time per connection keeps
  NACKs and `Forbidden` errors unambiguous.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import msgspec

from . import wire
from .errors import (
    AuthError,
    Backpressure,
    ConnectionLost,
    ContractError,
    Forbidden,
    InferenceFailed,
    ProtocolError,
    RequestError,
    ServerShutdown,
    TcmError,
)

Kind: TypeAlias = Literal["inference", "info", "management"]
FAST_INFO_ACTIONS = frozenset({"queue", "queue_stats"})
_FORBIDDEN = re.compile(r"^Forbidden: missing '(?P<role>[a-z_]+)' role")
# Code-less error frames after auth that are followed by a close (contract §6.1).
_FATAL_MESSAGES = ("UUID mismatch", "Rate limit exceeded", "Message too large")
_AUTH_STAGE_FATAL = ("Invalid token", "Too many failed auth attempts", "Auth configuration error")


# ------------------------------------------------------------------------------------------------
# events


@dataclass(frozen=True, slots=True)
class AuthAccepted:
    """auth.ok. `capabilities` is None for the legacy reply (no negotiation happened)."""

    capabilities: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class AuthRejected:
    """The auth frame was refused. `uuid_conflict`: another live connection holds the uuid."""

    error: AuthError
    uuid_conflict: bool


@dataclass(frozen=True, slots=True)
class InferenceProgress:
    """A streaming frame of the in-flight inference: START, or ONGOING with one string."""

    status: Literal["START", "ONGOING"]
    text: str | None


@dataclass(frozen=True, slots=True)
class InferenceCompleted:
    """The in-flight inference finished. `outputs` is None for a streamed COMPLETED."""

    outputs: Mapping[str, wire.OutputValue] | None
    model_name: str | None


@dataclass(frozen=True, slots=True)
class InfoCompleted:
    job_id: int
    reply: wire.InfoResponsePayload


@dataclass(frozen=True, slots=True)
class ManagementCompleted:
    request_id: str
    result: wire.ManagementResult


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """A pending request failed. `key` is the job id / request id (None for inference)."""

    kind: Kind
    key: int | str | None
    error: TcmError


@dataclass(frozen=True, slots=True)
class ConnectionFailing:
    """The server said this connection is ending (a close frame follows)."""

    error: ConnectionLost


@dataclass(frozen=True, slots=True)
class Unsolicited:
    """A frame that answers nothing of ours: alerts, budget warnings, unknown frame types."""

    frame: wire.ServerFrame


@dataclass(frozen=True, slots=True)
class StaleReply:
    """The late answer to a request that was given up on; the slot is free again."""

    kind: Kind
    frame: wire.ServerFrame


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """A frame that should not occur but harms nothing pending (an envelope error for a frame
    we sent, which names no request): logged, the connection stays."""

    detail: str


@dataclass(frozen=True, slots=True)
class MalformedFrame:
    """A frame this client cannot read, or a reply to a pending request that breaks the
    contract: the connection must be closed, and everything pending on it fails with `error`
    (the protocol's state is "closed" from here on; `connection_lost(error)` fails them).
    """

    error: ProtocolError


Event: TypeAlias = (
    AuthAccepted
    | AuthRejected
    | InferenceProgress
    | InferenceCompleted
    | InfoCompleted
    | ManagementCompleted
    | RequestFailed
    | ConnectionFailing
    | Unsolicited
    | StaleReply
    | ProtocolViolation
    | MalformedFrame
)


class ProtocolStateError(RuntimeError):
    """The caller used the protocol object out of order (a bug in the caller, not the server)."""


# ------------------------------------------------------------------------------------------------


class ClientProtocol:
    """Protocol state of one connection."""

    def __init__(
        self,
        uuid: str,
        *,
        token: str | None = None,
        capabilities: tuple[str, ...] | None = None,
        roles: tuple[str, ...] | None = None,
    ) -> None:
        self.uuid = uuid
        self._token = token
        self._requested = capabilities
        self._roles = roles
        self.state: Literal["new", "authenticating", "open", "closed"] = "new"
        self.granted: tuple[str, ...] | None = None
        self._inference: Literal["idle", "busy", "abandoned"] = "idle"
        self._info_fast: set[int] = set()
        self._info_queued: int | None = None
        self._info_abandoned: set[int] = set()
        self._management: str | None = None
        self._management_abandoned: str | None = None
        self._ids = itertools.count(1)
        self._decoder = wire.ServerFrameDecoder()

    def __repr__(self) -> str:  # never shows the token
        return f"<ClientProtocol uuid={self.uuid!r} state={self.state}>"

    # -- outbound ------------------------------------------------------------------

    def auth(self) -> bytes:
        """The auth frame; must be the first frame on the connection."""
        if self.state != "new":
            raise ProtocolStateError("auth() is only valid once, on a new connection")
        self.state = "authenticating"
        client = wire.AuthClientInfo(roles=list(self._roles)) if self._roles else None
        payload = wire.AuthPayload(
            token=self._token,
            capability=list(self._requested) if self._requested is not None else None,
            client=client,
        )
        return wire.encode(wire.AuthFrame(uuid=self.uuid, payload=payload))

    @property
    def inference_ready(self) -> bool:
        """True when an inference may be sent (none in flight, none abandoned)."""
        return self.state == "open" and self._inference == "idle"

    @property
    def inference_abandoned(self) -> bool:
        return self._inference == "abandoned"

    def send_inference(self, payload: wire.InferencePayload | msgspec.Raw) -> bytes:
        self._require_open()
        if self._inference != "idle":
            raise ProtocolStateError(
                f"an inference is already {self._inference} on this connection"
            )
        self._inference = "busy"
        return wire.encode(wire.InferenceFrame(uuid=self.uuid, payload=payload))

    def abandon_inference(self) -> None:
        """Give up waiting (timeout, cancellation): its late answer will be recognised as stale."""
        if self._inference == "busy":
            self._inference = "abandoned"

    def info_ready(self, action: str) -> bool:
        if self.state != "open":
            return False
        return action in FAST_INFO_ACTIONS or self._info_queued is None

    def send_info(self, action: str) -> tuple[int, bytes]:
        self._require_open()
        job_id = next(self._ids)
        if action in FAST_INFO_ACTIONS:
            self._info_fast.add(job_id)
        elif self._info_queued is not None:
            raise ProtocolStateError("a queued info request is already in flight")
        else:
            self._info_queued = job_id
        frame = wire.InfoFrame(uuid=self.uuid, payload=wire.InfoPayload(action, job_id))
        return job_id, wire.encode(frame)

    def abandon_info(self, job_id: int) -> None:
        if job_id in self._info_fast or job_id == self._info_queued:
            self._info_abandoned.add(job_id)

    @property
    def management_ready(self) -> bool:
        return self.state == "open" and self._management is None

    def send_management(self, payload: dict[str, Any]) -> tuple[str, bytes]:
        self._require_open()
        if self._management is not None:
            raise ProtocolStateError("a management request is already in flight")
        request_id = f"{self.uuid}:{next(self._ids)}"
        self._management = request_id
        frame = wire.ManagementFrame(uuid=self.uuid, payload=payload, request_id=request_id)
        return request_id, wire.encode(frame)

    def abandon_management(self, request_id: str) -> None:
        if self._management == request_id:
            self._management_abandoned = request_id

    def _require_open(self) -> None:
        if self.state != "open":
            raise ProtocolStateError(f"the connection is {self.state}, not open")

    # -- inbound ------------------------------------------------------------------

    def receive(self, data: bytes) -> Event:
        """Turn one inbound text frame into one event."""
        try:
            frame = self._decoder.decode(data)
        except Exception as exc:  # noqa: BLE001 - whatever a hostile frame makes a decoder raise
            # FrameDecodeError for malformed JSON or types; RecursionError, MemoryError or a
            # decoder's own error for hostile shapes. None of it may escape to the reader task.
            detail = str(exc) if isinstance(exc, wire.FrameDecodeError) else repr(exc)
            return self._malformed(f"a frame this client cannot decode ({detail})", data)
        if self.state == "authenticating":
            return self._receive_auth_reply(frame)
        if isinstance(frame, wire.InferenceReply):
            return self._inference_frame(frame, data)
        if isinstance(frame, wire.InfoResponse):
            return self._info_frame(frame)
        if isinstance(frame, wire.ManagementReply):
            return self._management_frame(frame)
        if isinstance(frame, wire.ErrorFrame):
            return self._error_frame(frame)
        return Unsolicited(frame)  # alert, unknown types, a stray auth.ok

    def _receive_auth_reply(self, frame: wire.ServerFrame) -> Event:
        if isinstance(frame, wire.AuthOk):
            self.state = "open"
            granted = frame.payload.capability if frame.payload is not None else None
            self.granted = tuple(granted) if granted is not None else None
            return AuthAccepted(self.granted)
        if (
            isinstance(frame, wire.ErrorFrame)
            and frame.payload.code == "BACKPRESSURE_INSUFFICIENT_BUDGET"
        ):
            # A pushed budget warning (routed by uuid, so it can reach a reused uuid before its
            # auth.ok) is not an auth reply: every auth refusal is code-less (contract §6.1), and
            # taking it for one would make the pool give up for good on an AuthError.
            return Unsolicited(frame)
        if isinstance(frame, wire.ErrorFrame):
            self.state = "closed"
            message = frame.payload.message
            conflict = message.startswith("UUID '") and message.endswith("is already connected")
            hint = (
                "another live connection uses this uuid; connect with a different one"
                if conflict
                else "check the token and the manager's auth mode"
                if message.startswith(_AUTH_STAGE_FATAL)
                else "this client sent an auth frame the manager did not accept; please report it"
            )
            error = AuthError(
                f"the manager refused authentication: {message} ({hint})",
                server_message=message,
                close_code=None,
            )
            return AuthRejected(error, uuid_conflict=conflict)
        return Unsolicited(frame)  # e.g. an alert racing the auth reply

    def _inference_frame(self, frame: wire.InferenceReply, raw: bytes) -> Event:
        if frame.uuid is not None and frame.uuid != self.uuid:
            return Unsolicited(frame)  # meant for an earlier connection that had another uuid
        status = frame.payload.status
        final = status in ("COMPLETED", "FAILED")
        if self._inference == "abandoned":
            if final:
                self._inference = "idle"
            return StaleReply("inference", frame)
        if self._inference == "idle":
            return Unsolicited(frame)
        if status in ("START", "ONGOING"):
            data = frame.payload.data
            return InferenceProgress(status, data if isinstance(data, str) else None)  # type: ignore[arg-type]
        if status == "COMPLETED":
            self._inference = "idle"
            data = frame.payload.data
            return InferenceCompleted(
                data if isinstance(data, dict) else None, frame.payload.model_name
            )
        if status == "FAILED":
            self._inference = "idle"
            return RequestFailed("inference", None, failed_error(frame.payload))
        # The reply to the one inference in flight, with a status no rule covers: waiting on
        # would only run out the deadline, and no later frame can be trusted to be its answer.
        return self._malformed(f"an inference reply with the unknown status {status!r}", raw)

    def _malformed(self, what: str, data: bytes) -> MalformedFrame:
        """Close the protocol on a frame that breaks the contract; see `MalformedFrame`."""
        self.state = "closed"
        excerpt = excerpt_of(data)
        return MalformedFrame(
            ProtocolError(
                f"the manager sent {what}; it began: {excerpt}. The connection was closed and is "
                "being replaced; a manager that sends such frames is broken or is not a TCM "
                "manager",
                excerpt=excerpt,
                reason="protocol error",
            )
        )

    def _info_frame(self, frame: wire.InfoResponse) -> Event:
        job_id = frame.payload.job_id
        if not isinstance(job_id, int) or not (
            job_id in self._info_fast or job_id == self._info_queued
        ):
            return Unsolicited(frame)
        self._info_fast.discard(job_id)
        if job_id == self._info_queued:
            self._info_queued = None
        if job_id in self._info_abandoned:
            self._info_abandoned.discard(job_id)
            return StaleReply("info", frame)
        if frame.payload.status != "success":
            message = frame.payload.error or str(frame.payload.data)
            error = ContractError(
                f"the info request failed on the manager: {message}", server_message=message
            )
            return RequestFailed("info", job_id, error)
        return InfoCompleted(job_id, frame.payload)

    def _management_frame(self, frame: wire.ManagementReply) -> Event:
        request_id = frame.request_id
        if request_id is None or request_id != self._management:
            return Unsolicited(frame)
        self._management = None
        if self._management_abandoned == request_id:
            self._management_abandoned = None
            return StaleReply("management", frame)
        return ManagementCompleted(request_id, frame.payload)

    def _error_frame(self, frame: wire.ErrorFrame) -> Event:
        payload = frame.payload
        code, message = payload.code, payload.message
        if code == "BACKPRESSURE_INSUFFICIENT_BUDGET":
            return Unsolicited(frame)  # a delay warning, not a drop
        if code == "SYSTEM_SHUTDOWN" and payload.dropped_type is None:
            return ConnectionFailing(
                ServerShutdown(
                    "the manager is shutting down and closed this connection (SYSTEM_SHUTDOWN); "
                    "requests in flight on it have an unknown outcome; "
                    "reconnect once /ready is 200",
                    close_code=1012,
                    reason=message,
                )
            )
        if code == "BACKPRESSURE_TENANT_LIMIT_REACHED":
            return ConnectionFailing(
                ConnectionLost(
                    f"the manager closed the connection: tenant message rate limit reached "
                    f"({message}); slow down",
                    close_code=1008,
                    reason=message,
                )
            )
        if payload.dropped_type is not None:
            return self._nack(payload)
        if code is None:
            forbidden = _FORBIDDEN.match(message)
            if forbidden is not None:
                return self._forbidden(forbidden["role"], message)
            if message.startswith(_FATAL_MESSAGES):
                return ConnectionFailing(
                    ConnectionLost(
                        f"the manager is closing the connection: {message}",
                        close_code=1009 if message.startswith("Message too large") else 1008,
                        reason=message,
                    )
                )
            return ProtocolViolation(
                f"the manager reported an error for a frame we sent: {message}"
            )
        return Unsolicited(frame)  # an unknown code without dropped_type: informational

    def _nack(self, payload: wire.ErrorPayload) -> Event:
        """A dropped job: fail the pending request of that type (its outcome is known: not run)."""
        kind = payload.dropped_type
        code = payload.code or "UNKNOWN"
        error: TcmError
        if code == "SYSTEM_SHUTDOWN":
            error = ServerShutdown(
                f"the manager is shutting down and dropped this {kind} request before running "
                "it (SYSTEM_SHUTDOWN); it is safe to send again once /ready is 200",
                reason=payload.message,
            )
        else:
            error = Backpressure(
                f"the manager dropped this {kind} request before running it ({code}: "
                f"{payload.message}); retry later or send fewer concurrent requests",
                code=code,
                dropped_type=kind,
            )
        return self._never_run(kind, error, wire.ErrorFrame(payload))

    def _forbidden(self, role: str, message: str) -> Event:
        frame = wire.ErrorFrame(wire.ErrorPayload(message=message))
        if role not in ("inference", "management"):
            return Unsolicited(frame)
        error = Forbidden(
            f"the manager refused this {role} request: {message}; this connection's roles do "
            f"not include '{role}' (use a token that grants it)",
            server_message=message,
        )
        return self._never_run(role, error, frame)

    def _never_run(self, kind: str | None, error: TcmError, frame: wire.ErrorFrame) -> Event:
        """The pending request of ``kind`` will never run (a NACK, a Forbidden): it fails with
        ``error``, or, if given up on, ``frame`` settles it, else its slot would stay taken."""
        if kind == "inference" and self._inference != "idle":
            stale, self._inference = self._inference == "abandoned", "idle"
            if stale:
                return StaleReply("inference", frame)
            return RequestFailed("inference", None, error)
        if kind == "info" and self._info_queued is not None:
            job_id, self._info_queued = self._info_queued, None
            if job_id in self._info_abandoned:
                self._info_abandoned.discard(job_id)
                return StaleReply("info", frame)
            return RequestFailed("info", job_id, error)
        if kind == "management" and self._management is not None:
            request_id, self._management = self._management, None
            if self._management_abandoned == request_id:
                self._management_abandoned = None
                return StaleReply("management", frame)
            return RequestFailed("management", request_id, error)
        return Unsolicited(frame)

    # -- connection end ------------------------------------------------------------------

    def connection_lost(self, error: ConnectionLost) -> list[RequestFailed]:
        """The socket died: every pending request fails; their outcome is unknown."""
        self.state = "closed"
        failed: list[RequestFailed] = []
        if self._inference == "busy":
            failed.append(RequestFailed("inference", None, _outcome_unknown(error, "inference")))
        self._inference = "idle"
        pending_info = set(self._info_fast)
        if self._info_queued is not None:
            pending_info.add(self._info_queued)
        for job_id in sorted(pending_info - self._info_abandoned):
            failed.append(RequestFailed("info", job_id, _outcome_unknown(error, "info")))
        self._info_fast.clear()
        self._info_queued = None
        if self._management is not None and self._management != self._management_abandoned:
            unknown = _outcome_unknown(error, "management")
            failed.append(RequestFailed("management", self._management, unknown))
        self._management = None
        return failed


def _outcome_unknown(error: ConnectionLost, kind: Kind) -> ConnectionLost:
    advice = (
        "the action may or may not have run on the manager; check its state before retrying"
        if kind == "management"
        else "it is safe to send again"
    )
    message = f"{error} — the {kind} request was in flight, so its outcome is unknown; {advice}"
    if isinstance(error, ProtocolError):
        return ProtocolError(
            message,
            excerpt=error.excerpt,
            close_code=error.close_code,
            reason=error.reason,
            outcome_unknown=True,
        )
    cls = type(error) if isinstance(error, ConnectionLost) else ConnectionLost
    return cls(message, close_code=error.close_code, reason=error.reason, outcome_unknown=True)


_EXCERPT_BYTES = 120
# A JSON member named "token" (an auth frame), its string value possibly cut off by a quote.
_TOKEN_MEMBER = re.compile(r'("token"\s*:\s*)"(?:[^"\\]|\\.)*("|$)')


def without_token(text: str) -> str:
    """`text` with the value of any JSON "token" member replaced, for logs and messages."""
    return _TOKEN_MEMBER.sub(r'\1"<redacted>"', text) if '"token"' in text else text


def excerpt_of(data: bytes) -> str:
    """The start of a frame, quoted for an error message: short, printable, never raising,
    never a token (a peer that echoes our auth frame back must not put it in a log)."""
    head = without_token(bytes(data[:_EXCERPT_BYTES]).decode("utf-8", errors="replace"))
    more = f"... ({len(data)} bytes)" if len(data) > _EXCERPT_BYTES else ""
    return repr(head) + more


def failed_error(payload: wire.InferenceReplyPayload) -> RequestError:
    """The error for a FAILED inference frame: typed object or validation string (§4.3)."""
    data = payload.data
    if isinstance(data, str):
        return ContractError(
            f"the manager rejected the inference request: {data} (fix the request; not retried)",
            server_message=data,
        )
    if isinstance(data, dict):
        try:
            failed = wire.decode_failed_object(data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            pass
        else:
            reason = _reason(failed.message)
            return InferenceFailed(
                f"inference of {payload.model_name!r} failed: {failed.code}: {reason}",
                code=failed.code,
                retriable=failed.retriable,
                retry_after=failed.retry_after_seconds,
                model_name=payload.model_name,
                server_message=failed.message,
            )
    return InferenceFailed(
        f"inference of {payload.model_name!r} failed without details",
        code="UNKNOWN",
        retriable=False,
        retry_after=None,
        model_name=payload.model_name,
        server_message="",
    )


def _reason(message: str) -> str:
    """The `reason=` part of a `[TritonThread] CODE: model='m' retriable=B reason=R` message."""
    _, sep, reason = message.partition(" reason=")
    return reason if sep else message
