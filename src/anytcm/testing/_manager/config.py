"""Reference manager settings and the command line that sets them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field

from .faults import FaultSwitchError, FaultSwitches, parse_assignment

JOB_TYPES = ("info", "management", "inference")


class ConfigError(ValueError):
    """A bad `serve-dev` option: reported as one line, exit code 2 (see `_main`)."""


@dataclass
class ServerConfig:
    """Every knob of the reference manager; defaults are the shipped TCM config (contract §11)."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_message_bytes: int = 65536
    max_request_payload_mb: float = 0.0
    queue_limits: dict[str, int] = field(
        default_factory=lambda: {"info": 10, "management": 5, "inference": 10}
    )
    workers: dict[str, int] = field(
        default_factory=lambda: {"info": 2, "management": 1, "inference": 5}
    )
    executor_backlog: dict[str, int] = field(
        default_factory=lambda: {"info": 100, "management": 50, "inference": 200}
    )
    rate_limit_per_client: int = 0
    auth_failures_per_minute: int = 0
    tenant_rate_limit: int = 0
    shm: bool = True
    extra_capabilities: list[str] = field(default_factory=list)
    ping_interval: float = 20.0
    # Not in the real server (which waits for the auth frame until the keepalive gives up): an
    # unauthenticated socket is closed after this many seconds; 0 turns it off.
    auth_timeout: float = 10.0
    # The real server accepts permessage-deflate; this one offers it only when asked, because
    # inflating is where an inbound frame costs more memory than its size on the wire.
    permessage_deflate: bool = False
    drain_seconds: float = 2.0
    faults: list[tuple[str, str]] = field(default_factory=list)
    exit_with_parent: int | None = None
    log_level: str = "WARNING"
    certfile: str | None = None
    keyfile: str | None = None
    journal: str | None = None  # append a JSON line per management action run


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The `serve-dev` options (also `python -m anytcm.testing`)."""
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, default=8000, help="port to listen on; 0 picks a free one")
    add("--token", default=None, help="token mode: clients must authenticate with this token")
    add("--max-message-bytes", type=int, default=65536, help="inbound frame cap (close 1009)")
    add(
        "--max-request-payload-mb",
        type=float,
        default=0.0,
        help="the '413' payload budget in MiB; 0 turns it off",
    )
    for name, helptext in (
        ("--queue-limit", "per-uuid queue limit, e.g. inference=10"),
        ("--workers", "workers per job type, e.g. inference=5"),
        ("--executor-backlog", "running+queued limit per job type, e.g. inference=200"),
    ):
        add(name, action="append", default=[], metavar="TYPE=N", help=helptext)
    add("--rate-limit-per-client", type=int, default=0, help="messages/s per uuid (0 = off)")
    add("--auth-failures-per-minute", type=int, default=0, help="auth failures per uuid (0 = off)")
    add("--tenant-rate-limit", type=int, default=0, help="messages/s per tenant (0 = off)")
    add("--no-shm", action="store_true", help="do not offer the 'shm' capability")
    add("--capability", action="append", default=[], help="offer an extra capability")
    add("--ping-interval", type=float, default=20.0, help="keepalive ping interval, 0 = off")
    add(
        "--auth-timeout",
        type=float,
        default=10.0,
        help="close a socket that has not sent its auth frame after this many seconds "
        "(error frame, close 1008); 0 = wait forever, as the real server does",
    )
    add(
        "--permessage-deflate",
        action="store_true",
        help="accept the permessage-deflate extension (off by default; the real server accepts it)",
    )
    add("--drain-seconds", type=float, default=2.0, help="SIGTERM drain deadline")
    add("--fault", action="append", default=[], metavar="KEY=VALUE", help="a fault switch")
    add("--exit-with-parent", type=int, default=None, help=argparse.SUPPRESS)
    add("--log-level", default="WARNING", help="logging level (default WARNING)")
    add("--certfile", default=None, help="serve TLS (wss://, https://) with this certificate chain")
    add("--keyfile", default=None, help="private key for --certfile")
    add(
        "--journal",
        default=None,
        metavar="PATH",
        help="append a JSON line per management action run to PATH (it survives restarts)",
    )


def _per_type(values: Sequence[str], defaults: dict[str, int], option: str) -> dict[str, int]:
    result = dict(defaults)
    for text in values:
        key, value = parse_assignment(text)
        if key not in JOB_TYPES:
            raise ConfigError(f"{option}: job type must be one of {JOB_TYPES}, got {key!r}")
        try:
            result[key] = int(value)
        except ValueError:
            raise ConfigError(f"{option}: {key}: not an integer: {value!r}") from None
    return result


def config_from_arguments(args: argparse.Namespace) -> ServerConfig:
    """Build a ServerConfig from parsed `serve-dev` arguments."""
    base = ServerConfig()
    try:
        faults = [parse_assignment(text) for text in args.fault]
        FaultSwitches().apply(faults)  # an unknown switch or bad value: refused before binding
    except FaultSwitchError as exc:
        raise ConfigError(f"--fault: {exc}") from None
    return ServerConfig(
        host=args.host,
        port=args.port,
        token=args.token,
        max_message_bytes=args.max_message_bytes,
        max_request_payload_mb=args.max_request_payload_mb,
        queue_limits=_per_type(args.queue_limit, base.queue_limits, "--queue-limit"),
        workers=_per_type(args.workers, base.workers, "--workers"),
        executor_backlog=_per_type(
            args.executor_backlog, base.executor_backlog, "--executor-backlog"
        ),
        rate_limit_per_client=args.rate_limit_per_client,
        auth_failures_per_minute=args.auth_failures_per_minute,
        tenant_rate_limit=args.tenant_rate_limit,
        shm=not args.no_shm,
        extra_capabilities=list(args.capability),
        ping_interval=args.ping_interval,
        auth_timeout=args.auth_timeout,
        permessage_deflate=args.permessage_deflate,
        drain_seconds=args.drain_seconds,
        faults=faults,
        exit_with_parent=args.exit_with_parent,
        log_level=args.log_level,
        certfile=args.certfile,
        keyfile=args.keyfile,
        journal=args.journal,
    )
