"""The options of `anytcm.connect`, declared in this one place.

`connect`, `SyncClient` and the CLI all take these options, so each one is declared here once:
`ConnectOptions` says what a caller may pass (names, types, what each means) and is what
`**options` is typed with, so a type checker rejects an unknown or mistyped option;
`ConnectSettings` holds the defaults and checks the values, and is what the client reads.
The two must list the same options with the same types: mypy checks the types where one is
built from the other (`ConnectSettings.from_options`), and a test checks that neither has an
option the other lacks and that each option's documented default is its real one.
"""

from __future__ import annotations

import dataclasses
import difflib
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, TypedDict

from ._core.managers import LeastBusy, RoundRobin, SelectionPolicy
from .backoff import Backoff
from .retry import RetryPolicy
from .transports import DEFAULT_MAX_MESSAGE_SIZE, TransportFactory

MAX_FRAME_BYTES = 65536
"""The manager's inbound frame cap (contract §1): larger frames close the connection (1009)."""


class ConnectOptions(TypedDict, total=False):
    """The keyword options of `anytcm.connect` and `anytcm.SyncClient`, all optional.

    ```python
    options: anytcm.ConnectOptions = {"token": token, "pool_size": 8}
    async with anytcm.connect(url, **options) as tcm: ...
    ```
    """

    token: str | None
    """The manager's auth token, sent in the auth frame of every connection and never shown in
    a repr or a log. Default `None`: no token."""

    pool_size: int
    """How many connections to keep open. The manager runs one inference at a time per
    connection, so this is how many inferences run at once. At least 1. Default `4`."""

    max_waiting: int
    """How many calls may wait for a free connection at once; one more raises `Backpressure`
    at once instead of queueing without bound. At least 0. Default `1024`."""

    timeout: float
    """The deadline of each call, in seconds, unless the call gives its own `timeout=`.
    Waiting for a connection, retries and their backoff all happen within it.
    Default `30.0`."""

    connect_timeout: float
    """How long `connect` waits for the first connection to be ready before it raises
    `ConnectError` (chained to the last failure). Default `30.0`."""

    uuid: str | None
    """The base from which each connection's uuid is derived (the manager knows a connection
    by its uuid). Default `None`: a random one."""

    capabilities: Sequence[str] | Literal["auto"] | None
    """What to request in auth: `"auto"` asks for those of every installed carrier (`json`,
    `shm` and plugins'), a list asks for exactly those, `None` sends the legacy auth without
    negotiation. Default `"auto"`."""

    roles: Sequence[str] | None
    """The roles claimed in auth (`client.roles`), which a development-mode manager uses to
    allow request types; other managers take roles from the token. Default `None`: none
    sent."""

    ssl_context: ssl.SSLContext | None
    """The TLS settings of a `wss://` URL, for the WebSocket and the readiness check alike.
    Default `None`: the system's trusted certificates (`ssl.create_default_context()`)."""

    headers: Mapping[str, str] | None
    """Extra HTTP headers of the WebSocket handshake and of the readiness check.
    Default `None`: none."""

    max_message_size: int
    """The largest message accepted from the manager, in bytes; a larger one closes the
    connection. Default `268435456` (256 MiB)."""

    max_frame_bytes: int
    """The manager's cap on a frame it receives, in bytes. A request that would exceed it is
    sent through another carrier, or refused with `PayloadTooLarge` before anything is sent.
    Default `65536`, the manager's own cap."""

    ping_interval: float | None
    """Seconds between two keepalive pings of a connection; `None` sends none.
    Default `20.0`."""

    ping_timeout: float
    """How long a ping waits for its pong before the connection counts as lost.
    Default `20.0`."""

    compression: bool
    """Negotiate permessage-deflate. Off because near the 64 KiB frame cap it costs more time
    than it saves, and the cap applies to the decompressed text anyway. Default `False`."""

    ready_check: bool
    """Ask the manager's `GET /ready` before every connect and reconnect; `False` skips it, for
    a manager whose HTTP endpoints cannot be reached. Default `True`."""

    stale_grace: float
    """How long, in seconds, a connection whose inference was given up (timed out, cancelled)
    is set aside waiting for the late reply, before it is replaced by a new one.
    Default `5.0`."""

    retry: RetryPolicy | None
    """The retry policy of every call that gives none. Default `None`: `RetryPolicy()`."""

    backoff: Callable[[], Backoff] | None
    """Makes the reconnect backoff of each connection. Default `None`: `Backoff`, full
    jitter from 0.1 s doubling to 10 s."""

    same_host: bool | None
    """Whether the manager shares this machine's `/dev/shm`, which the `shm` carrier needs.
    Default `None`: whether the URL's host is a loopback address."""

    transport: str | TransportFactory | None
    """A transport plugin's name, or a transport factory. Default `None`: the environment
    variable `ANYTCM_TRANSPORT`, else `"websockets"`."""

    selection: Literal["round_robin", "least_busy"] | SelectionPolicy
    """With several managers, which one serves the next request among those with a free
    connection: `"round_robin"` (each in turn), `"least_busy"` (the fewest requests in
    progress), or a `SelectionPolicy` of your own. Default `"round_robin"`."""

    tracing: bool | None
    """An OpenTelemetry span per request: `True` requires `opentelemetry-api`, `False` never
    traces. Counters are kept either way (`client.metrics`). Default `None`: traces when
    `opentelemetry-api` is installed."""


@dataclasses.dataclass(frozen=True)
class ConnectSettings:
    """The options of a connection, every one set: the defaults, overridden by what the caller
    passed. `ConnectOptions` documents each option."""

    token: str | None = dataclasses.field(default=None, repr=False)  # a secret: never shown
    pool_size: int = 4
    max_waiting: int = 1024
    timeout: float = 30.0
    connect_timeout: float = 30.0
    uuid: str | None = None
    capabilities: Sequence[str] | Literal["auto"] | None = "auto"
    roles: Sequence[str] | None = None
    ssl_context: ssl.SSLContext | None = None
    headers: Mapping[str, str] | None = None
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_frame_bytes: int = MAX_FRAME_BYTES
    ping_interval: float | None = 20.0
    ping_timeout: float = 20.0
    compression: bool = False
    ready_check: bool = True
    stale_grace: float = 5.0
    retry: RetryPolicy | None = None
    backoff: Callable[[], Backoff] | None = None
    same_host: bool | None = None
    transport: str | TransportFactory | None = None
    selection: Literal["round_robin", "least_busy"] | SelectionPolicy = "round_robin"
    tracing: bool | None = None

    def __post_init__(self) -> None:
        if self.pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        if isinstance(self.selection, str) and self.selection not in _SELECTIONS:
            raise ValueError(
                f"selection must be 'round_robin', 'least_busy' or a SelectionPolicy, "
                f"not {self.selection!r}"
            )
        if self.max_waiting < 0:
            raise ValueError("max_waiting must be >= 0")

    @classmethod
    def from_options(cls, options: ConnectOptions, *, caller: str) -> ConnectSettings:
        """The settings for `options`; `caller` (e.g. "connect()") names who got them.

        A type checker rejects an unknown option, but a plain dict or a caller without one
        gets here too: name the option, as Python does for a misspelt keyword.
        """
        unknown = sorted(options.keys() - _OPTION_NAMES)
        if unknown:
            name = unknown[0]
            close = difflib.get_close_matches(name, _OPTION_NAMES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"{caller} got an unexpected keyword argument {name!r}{hint}")
        return cls(**options)


_OPTION_NAMES = frozenset(field.name for field in dataclasses.fields(ConnectSettings))

__all__ = ["MAX_FRAME_BYTES", "ConnectOptions", "ConnectSettings"]


_SELECTIONS: dict[str, Callable[[], SelectionPolicy]] = {
    "round_robin": RoundRobin,
    "least_busy": LeastBusy,
}


def selection_policy(
    choice: Literal["round_robin", "least_busy"] | SelectionPolicy,
) -> Callable[[], SelectionPolicy]:
    """What makes the pool's selection policy from the `selection` option."""
    if isinstance(choice, str):
        return _SELECTIONS[choice]
    return lambda: choice
