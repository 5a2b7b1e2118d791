"""The anytcm error tree.

One root, `TcmError`; each error also derives from the builtin a caller would naturally catch
(`ConnectionError`, `TimeoutError`, `ValueError`, `LookupError`, `PermissionError`), and carries
attributes rather than text to parse. Every message says what to do next.

```
TcmError
├── ConnectError (ConnectionError)          could not open an authenticated connection
│   ├── NotReady                            GET /ready answered 503 (.reason, .error_id)
│   ├── HandshakeRejected                   HTTP status instead of a WebSocket (.status_code)
│   └── AuthError                           the manager refused the auth frame (.server_message)
├── ConnectionLost (ConnectionError)        an open connection died (.close_code, .reason)
│   ├── ServerShutdown                      SYSTEM_SHUTDOWN or close 1012: wait for /ready
│   └── ProtocolError                       the manager sent a frame that breaks the contract
├── RequestError                            one request failed; the connection is fine
│   ├── InferenceFailed                     FAILED with a typed object (.code, .retriable, ...)
│   ├── ContractError (ValueError)          FAILED with a string: fix the request
│   ├── Forbidden (PermissionError)         the connection lacks a role
│   ├── Backpressure                        a NACK, or no free connection (.code, .dropped_type)
│   ├── PayloadTooLarge (ValueError)        the frame would exceed the manager's cap (.size, .limit)
│   ├── InvalidInput (ValueError)           inputs do not match the model's spec (.expected, .given)
│   ├── ManagementFailed                    a management action answered status false (.data)
│   └── RequestTimeout (TimeoutError)       no answer before the deadline (.timeout)
├── CarrierError
│   ├── UnknownCarrier (LookupError)        no carrier plugin by that name (.name)
│   └── CarrierUnavailable                  the carrier cannot be used here (.reason)
└── ClientClosed (RuntimeError)             the client was closed
```
"""

from __future__ import annotations

from typing import Any


class TcmError(Exception):
    """Root of every error anytcm raises on purpose."""


# -- connecting ------------------------------------------------------------------


class ConnectError(TcmError, ConnectionError):
    """Could not open an authenticated connection to the manager."""


class NotReady(ConnectError):
    """`GET /ready` answered 503: the manager is up but not ready to serve."""

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        error_id: str | None = None,
        process_up: bool = False,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.error_id = error_id
        self.process_up = process_up  # /health answered: the manager is starting, not gone


class HandshakeRejected(ConnectError):
    """The server answered the WebSocket handshake, or `GET /ready`, with an HTTP status that
    says this is no way in: e.g. 404 for a wrong URL path or a server that is not a TCM manager.

    `permanent` (a 4xx other than 408 and 429) means waiting cannot fix it: `connect` raises it
    at once instead of retrying until `connect_timeout`.
    """

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code

    @property
    def permanent(self) -> bool:
        return permanent_http_status(self.status_code)


def permanent_http_status(status: int) -> bool:
    """An HTTP answer that waiting cannot change: a 4xx other than 408 and 429."""
    return 400 <= status < 500 and status not in (408, 429)


class NoManagerAvailable(ConnectError):
    """Every manager of a client given several is down: `failures` maps each manager's URL to
    its last failure, and the message names them all.

    `connect` raises it when no manager could be reached within `connect_timeout`; a request
    raises it at its deadline when no manager it may go to came back meanwhile (for a target
    created through one manager, that manager).
    """

    def __init__(self, message: str, *, failures: dict[str, str]) -> None:
        super().__init__(message)
        self.failures = failures


class AuthError(ConnectError):
    """The manager refused the auth frame (bad token, duplicate uuid, too many failures)."""

    def __init__(self, message: str, *, server_message: str, close_code: int | None) -> None:
        super().__init__(message)
        self.server_message = server_message
        self.close_code = close_code


# -- an open connection dies ------------------------------------------------------------------


class ConnectionLost(TcmError, ConnectionError):
    """The connection died. For a request that was in flight the outcome is unknown."""

    def __init__(
        self,
        message: str,
        *,
        close_code: int | None = None,
        reason: str = "",
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.reason = reason
        self.outcome_unknown = outcome_unknown


class ServerShutdown(ConnectionLost):
    """The manager is shutting down (SYSTEM_SHUTDOWN, close 1012): reconnect after /ready."""


class ProtocolError(ConnectionLost):
    """The manager sent a frame this client cannot read: not JSON, wrong types, nested too deep.

    Nothing on such a connection can be trusted any more, so the client closes it (1002) and
    opens a new one; every request that was waiting on it fails at once with this error, which
    quotes the start of what arrived (`excerpt`). A reply that decodes but whose `data` lacks
    the action's shape (a management result without its keys) fails only its own call, with
    `close_code` None: the connection stays. Not retried automatically: a manager that
    answers one request with garbage is likely to answer its retry the same way.
    """

    def __init__(
        self,
        message: str,
        *,
        excerpt: str = "",
        close_code: int | None = 1002,
        reason: str = "",
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(
            message, close_code=close_code, reason=reason, outcome_unknown=outcome_unknown
        )
        self.excerpt = excerpt


# -- one request fails ------------------------------------------------------------------


class RequestError(TcmError):
    """One request failed; the connection it used is still healthy."""


class InferenceFailed(RequestError):
    """An inference answered FAILED with a typed error object (contract §6.2).

    `retriable` is the server's hint only: almost every failure arrives as
    TRITON_INFERENCE_FAILED with retriable=false. Base retry decisions on `code`.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        retriable: bool,
        retry_after: float | None,
        model_name: str | None,
        server_message: str,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retriable = retriable
        self.retry_after = retry_after
        self.model_name = model_name
        self.server_message = server_message


class ContractError(RequestError, ValueError):
    """The manager rejected the request's form (a FAILED string, or an envelope error)."""

    def __init__(self, message: str, *, server_message: str) -> None:
        super().__init__(message)
        self.server_message = server_message


class Forbidden(RequestError, PermissionError):
    """The connection's roles do not allow this request type."""

    def __init__(self, message: str, *, server_message: str) -> None:
        super().__init__(message)
        self.server_message = server_message


class Backpressure(RequestError):
    """The request was not accepted: a manager NACK, or no free connection in the pool."""

    def __init__(self, message: str, *, code: str, dropped_type: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.dropped_type = dropped_type


class PayloadTooLarge(RequestError, ValueError):
    """The request frame would exceed the manager's inbound cap; nothing was sent."""

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class InvalidInput(RequestError, ValueError):
    """Inputs do not match the model's input spec; nothing was sent."""

    def __init__(self, message: str, *, expected: Any = None, given: Any = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.given = given


class ManagementFailed(RequestError):
    """A management action answered `status: false`; `data` is the manager's explanation."""

    def __init__(self, message: str, *, action: str, data: Any) -> None:
        super().__init__(message)
        self.action = action
        self.data = data


class RequestTimeout(RequestError, TimeoutError):
    """No answer before the deadline (some failures produce no frame at all)."""

    def __init__(self, message: str, *, timeout: float) -> None:
        super().__init__(message)
        self.timeout = timeout


# -- carriers ------------------------------------------------------------------


class CarrierError(TcmError):
    """A tensor carrier problem."""


class UnknownCarrier(CarrierError, LookupError):
    """No carrier plugin of that name is installed."""

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message)
        self.name = name


class CarrierUnavailable(CarrierError):
    """The carrier exists but cannot be used for this request or with this server."""

    def __init__(self, message: str, *, carrier: str, reason: str) -> None:
        super().__init__(message)
        self.carrier = carrier
        self.reason = reason


# -- lifecycle ------------------------------------------------------------------


class ClientClosed(TcmError, RuntimeError):
    """The client is closed (or closing); open a new one with `anytcm.connect`."""


__all__ = (
    "AuthError",
    "Backpressure",
    "CarrierError",
    "CarrierUnavailable",
    "ClientClosed",
    "ConnectError",
    "ConnectionLost",
    "ContractError",
    "Forbidden",
    "HandshakeRejected",
    "InferenceFailed",
    "InvalidInput",
    "ManagementFailed",
    "NoManagerAvailable",
    "NotReady",
    "PayloadTooLarge",
    "ProtocolError",
    "RequestError",
    "RequestTimeout",
    "ServerShutdown",
    "TcmError",
    "UnknownCarrier",
)
