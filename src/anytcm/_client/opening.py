"""What `connect` does before the client runs: its URLs checked, its pool's parts built."""

from __future__ import annotations

import ipaddress
import os
import ssl
import uuid as uuid_module
from collections.abc import Sequence
from urllib.parse import urlsplit

from .._core.managers import distinct_urls
from .._core.settings import PoolSettings
from ..backoff import Backoff
from ..options import ConnectSettings, selection_policy
from ..plugins import carrier_names
from ..readiness import ReadinessGate
from ..transports import TransportFactory, TransportOptions


def manager_urls(url: str | Sequence[str]) -> tuple[str, ...]:
    """`connect`'s first argument as a tuple of distinct manager URLs."""
    urls = (url,) if isinstance(url, str) else tuple(url)
    if not all(isinstance(u, str) and u for u in urls):
        raise ValueError(f"connect() needs a manager URL, or a list of them; got {url!r}")
    return distinct_urls(urls)


def check_pool_size(urls: Sequence[str], pool_size: int) -> None:
    if pool_size < len(urls):
        raise ValueError(
            f"pool_size={pool_size} is less than the {len(urls)} managers: each manager needs a "
            f"connection of its own; pass pool_size={len(urls)} or more"
        )


def pool_parts(
    urls: tuple[str, ...], options: ConnectSettings
) -> tuple[PoolSettings, TransportOptions, dict[str, ReadinessGate]]:
    """What the pool of a client is made of: its settings, its transports' options, and one
    readiness gate per manager (none with `ready_check=False`). The gates must be closed."""
    pool_settings = PoolSettings(
        url=urls[0],
        urls=urls,
        selection=selection_policy(options.selection),
        size=options.pool_size,
        base_uuid=options.uuid or uuid_module.uuid4().hex,
        token=options.token,
        capabilities=(
            tuple(carrier_names())
            if options.capabilities == "auto"
            else tuple(options.capabilities)
            if options.capabilities is not None
            else None
        ),
        roles=tuple(options.roles) if options.roles is not None else None,
        max_waiting=options.max_waiting,
        connect_timeout=options.connect_timeout,
        auth_timeout=min(10.0, options.connect_timeout),
        ready_check=options.ready_check,
        stale_grace=options.stale_grace,
        backoff=options.backoff or Backoff,
    )
    ssl_context = options.ssl_context
    if ssl_context is None and any(urlsplit(u).scheme == "wss" for u in urls):
        # One context for every connection and for the readiness gate: the same CA store on
        # both paths, and its certificates loaded once rather than once per connection.
        ssl_context = ssl.create_default_context()
    transport_options = TransportOptions(
        ssl_context=ssl_context,
        headers=dict(options.headers or {}),
        max_message_size=options.max_message_size,
        open_timeout=min(10.0, options.connect_timeout),
        ping_interval=options.ping_interval,
        ping_timeout=options.ping_timeout,
        compression=options.compression,
    )
    gates: dict[str, ReadinessGate] = {}
    if options.ready_check:
        gates = {
            u: ReadinessGate(u, ssl_context=ssl_context, headers=options.headers) for u in urls
        }
    return pool_settings, transport_options, gates


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def transport_factory(name: str | TransportFactory | None) -> TransportFactory:
    if name is None:
        name = os.environ.get("ANYTCM_TRANSPORT") or "websockets"
    if not isinstance(name, str):
        return name
    from ..plugins import load_transport

    return load_transport(name)


def all_loopback(urls: Sequence[str]) -> bool:
    """Whether every manager shares this machine (and its /dev/shm): `same_host`'s default."""
    return all(_is_loopback(url) for url in urls)
