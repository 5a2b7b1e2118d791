"""The inbound frame cap, enforced while a frame's header is parsed (contract §1).

The real manager reads a whole frame (up to uvicorn's 16 MiB) before it compares its size with
the 64 KiB cap, so every connection can make it buffer 16 MiB. Here websockets' `max_size` is the
cap itself: its parser refuses a frame as soon as the header announces more (or a fragment takes
the message over it), before any of the payload is kept, and discards the rest. On its own
websockets would then close with 1009 and nothing else; the real manager sends its error frame
`Message too large (>N bytes)` first, and clients rely on that frame. The connection class made
here puts that frame on the wire just before the close frame.
"""

from __future__ import annotations

from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.protocol import State
from websockets.server import ServerProtocol

MESSAGE_TOO_BIG = 1009


def too_large_frame(limit: int) -> bytes:
    """The error frame the manager sends for a frame over `limit` bytes (ws.py:350-356)."""
    message = f"Message too large (>{limit} bytes)"
    return orjson.dumps({"type": "error", "payload": {"message": message}})


class _CappedProtocol(ServerProtocol):
    """websockets' server protocol, sending the manager's error frame when a frame is too big."""

    too_large: bytes = b""

    def fail(self, code: int, reason: str = "") -> None:
        # The parser calls fail(1009) on a too-big frame; nothing of the frame was buffered.
        if code == MESSAGE_TOO_BIG and self.state is State.OPEN and self.too_large:
            self.send_text(self.too_large)
        super().fail(code, reason)


def capped_connection(limit: int) -> type[ServerConnection]:
    """A `ServerConnection` class for `serve(create_connection=...)`, with `max_size=limit`."""
    frame = too_large_frame(limit)

    class CappedConnection(ServerConnection):
        def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
            # serve() builds the ServerProtocol itself and offers no factory for it: give this
            # one instance the subclass's behaviour (same layout, one overridden method).
            protocol.__class__ = _CappedProtocol
            assert isinstance(protocol, _CappedProtocol)
            protocol.too_large = frame
            super().__init__(protocol, *args, **kwargs)

    return CappedConnection
