"""Secrets kept out of log records: the auth token and credential headers.

websockets logs, at DEBUG, every frame it sends and every header of the opening request, on the
logger its protocol object is given. The auth frame carries the token, and `headers=` may carry
credentials (an `Authorization` header for a proxy). The built-in transport therefore hands
websockets `FRAME_LOGGER`, whose filter rewrites those arguments before any handler sees them:
whoever turns DEBUG on for troubleshooting gets the traffic, never the secrets.
"""

from __future__ import annotations

import logging
from typing import Any

from websockets.frames import Frame, Opcode

from ..protocol import without_token

__all__ = ("FRAME_LOGGER", "RedactSecrets")

REDACTED = "<redacted>"
# Header names whose values are credentials, matched as substrings of the lower-cased name.
_SECRET_HEADER_WORDS = ("auth", "token", "cookie", "secret", "password", "key")
_DATA_OPCODES = (Opcode.TEXT, Opcode.CONT, Opcode.BINARY)


def _redacted_frame(frame: Frame) -> Frame | str:
    # websockets elides the middle of a long payload when it renders a frame, so the token may
    # show up without its key: a frame that carries a token is never rendered at all.
    if frame.opcode in _DATA_OPCODES and b'"token"' in frame.data:
        name, size = frame.opcode.name, len(frame.data)
        return f"{name} <a frame carrying a token: not logged> [{size} bytes]"
    return frame


class RedactSecrets(logging.Filter):
    """Rewrites a record's arguments: frames carrying a token, credential header values."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or not args:
            return True
        # websockets logs a request header as ("> %s: %s", name, value).
        if (
            len(args) == 2
            and isinstance(args[0], str)
            and isinstance(record.msg, str)
            and record.msg.endswith("%s: %s")
            and any(word in args[0].lower() for word in _SECRET_HEADER_WORDS)
        ):
            record.args = (args[0], REDACTED)
            return True
        record.args = tuple(_redacted_arg(arg) for arg in args)
        return True


def _redacted_arg(arg: Any) -> Any:
    if isinstance(arg, Frame):
        return _redacted_frame(arg)
    if isinstance(arg, str):
        return without_token(arg)
    return arg


FRAME_LOGGER = logging.getLogger("anytcm.transport.websockets")
"""The logger websockets' protocol objects get from the built-in transport (see module doc)."""
FRAME_LOGGER.addFilter(RedactSecrets())
