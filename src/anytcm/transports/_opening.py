"""Opening a WebSocket connection for the built-in transport: TCP (+TLS), then the handshake.

Errors are translated here: `ValueError` for a URL that is not ws:// or wss://, `ConnectError`
when the socket or TLS cannot be opened or the handshake times out, `HandshakeRejected` when the
server answers HTTP instead of upgrading.

Plain TCP takes a stream written for this one reader and one writer per connection when fast
paths are on (`anytcm._fast`): `_asyncio_stream` on asyncio, `_trio_stream` on trio (see their
docstrings for what each spares). The general path, and TLS always, is anyio's own stream.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio
import anyio.abc
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.protocol import State
from websockets.uri import WebSocketURI, parse_uri

from .. import _fast
from .._backend import current_backend
from ..errors import ConnectError, HandshakeRejected, permanent_http_status
from . import TransportOptions, _asyncio_stream, tls_connect_error
from ._log_redaction import FRAME_LOGGER

if TYPE_CHECKING:
    from websockets.extensions.base import ClientExtensionFactory

__all__ = ("HANDSHAKE_READ_SIZE", "open_websocket", "parse_url")

HANDSHAKE_READ_SIZE = 65536
_OPEN = State.OPEN


def parse_url(url: str) -> WebSocketURI:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("ws", "wss"):
        raise ValueError(f"not a WebSocket URL: {url!r}; use ws://host:port/ws or wss://...")
    try:
        return parse_uri(url)
    except InvalidURI as exc:
        raise ValueError(f"invalid WebSocket URL {url!r}: {exc}") from None


async def _connect_stream(
    host: str, port: int, ssl_context: ssl.SSLContext | None
) -> anyio.abc.ByteStream:
    if ssl_context is None and _fast.ENABLED:
        backend = current_backend()
        if backend == "asyncio":
            return await _asyncio_stream.connect_tcp(host, port)
        if backend == "trio":
            # trio is an optional dependency, hence the import here (cached after the first).
            from . import _trio_stream

            return await _trio_stream.connect_tcp(host, port)
    if ssl_context is None:
        return await anyio.connect_tcp(host, port)
    return await anyio.connect_tcp(
        host, port, ssl_context=ssl_context, tls_standard_compatible=False
    )


async def open_websocket(
    url: str, options: TransportOptions
) -> tuple[anyio.abc.ByteStream, ClientProtocol]:
    """Open TCP (+TLS) and run the opening handshake; returns the stream and the protocol in
    state OPEN, with whatever the server sent behind its response still in its events."""
    uri = parse_url(url)
    extensions: list[ClientExtensionFactory] | None = None
    if options.compression:
        extensions = [ClientPerMessageDeflateFactory(compress_settings={"memLevel": 5})]
    # FRAME_LOGGER: websockets logs every frame at DEBUG, the auth frame (and its token) too.
    protocol = ClientProtocol(
        uri, extensions=extensions, max_size=options.max_message_size, logger=FRAME_LOGGER
    )
    request = protocol.connect()
    for name, value in options.headers.items():
        request.headers[name] = value
    protocol.send_request(request)

    ssl_context: ssl.SSLContext | None = None
    if uri.secure:
        ssl_context = options.ssl_context or ssl.create_default_context()

    stream: anyio.abc.ByteStream | None = None
    try:
        with anyio.fail_after(options.open_timeout):
            stream = await _connect_stream(uri.host, uri.port, ssl_context)
            for chunk in protocol.data_to_send():
                await stream.send(chunk)
            while protocol.state is not _OPEN and protocol.handshake_exc is None:
                try:
                    data = await stream.receive(HANDSHAKE_READ_SIZE)
                except anyio.EndOfStream:
                    protocol.receive_eof()
                    if protocol.handshake_exc is None and protocol.state is not _OPEN:
                        raise ConnectError(
                            f"{url} closed the connection during the WebSocket handshake: "
                            "check that the URL points at the manager's WebSocket endpoint"
                        ) from None
                else:
                    protocol.receive_data(data)
        exc = protocol.handshake_exc
        if exc is not None:
            raise _handshake_error(url, exc) from exc
    except BaseException as exc:
        if stream is not None:
            await anyio.aclose_forcefully(stream)
        if isinstance(exc, ConnectError) or not isinstance(exc, Exception):
            raise  # ours, or cancellation / KeyboardInterrupt: never wrapped
        error = _open_error(url, options, exc)
        if error is None:
            raise
        raise error from exc
    assert stream is not None
    return stream, protocol


def _handshake_error(url: str, exc: Exception) -> ConnectError:
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        what = (
            "wrong URL path, or not a TCM manager"
            if permanent_http_status(status)
            else "the server or a proxy in between cannot serve it now"
        )
        return HandshakeRejected(
            f"{url} answered HTTP {status} instead of upgrading to a WebSocket: {what} (the "
            "manager serves its WebSocket at /ws; check the URL and any proxy in between)",
            status_code=status,
        )
    kind = "invalid WebSocket handshake" if isinstance(exc, InvalidHandshake) else "bad reply"
    return ConnectError(
        f"{url} did not complete the WebSocket handshake ({kind}: {exc}): check that the URL "
        "points at the manager's WebSocket endpoint"
    )


def _open_error(url: str, options: TransportOptions, exc: Exception) -> ConnectError | None:
    if isinstance(exc, TimeoutError):
        return ConnectError(
            f"timed out after {options.open_timeout:g} s opening {url}: check that the manager "
            "is running and reachable (host, port, firewall), or raise open_timeout"
        )
    tls = tls_connect_error(url, exc)
    if tls is not None:
        return tls
    if isinstance(exc, anyio.EndOfStream):
        # anyio's TLS stream (not standard-compatible) reports a peer that hangs up during the
        # TLS handshake this way: a proxy dropping connections, or no TLS on that port.
        return ConnectError(
            f"{url} closed the connection during the TLS handshake: check that the server "
            "speaks TLS on that port (wss:// vs ws://) and any proxy in between"
        )
    if isinstance(exc, (OSError, anyio.BrokenResourceError)):
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        return ConnectError(
            f"could not connect to {url} ({cause}): check that the manager is running and that "
            "the host and port are right"
        )
    return None
