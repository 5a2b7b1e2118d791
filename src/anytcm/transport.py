"""`anytcm.transport`: the transport plugin interface, at the path plugins have imported it from.

The interface lives in `anytcm.transports` (beside the built-in transport); this module
re-exports it unchanged, so a plugin written against either path works.
"""

from __future__ import annotations

from .transports import (
    CLOSE_CODE_HINTS,
    DEFAULT_MAX_MESSAGE_SIZE,
    MessageSink,
    Transport,
    TransportFactory,
    TransportOptions,
    collapse_exception_group,
    connection_lost,
    tls_connect_error,
)

__all__ = [
    "CLOSE_CODE_HINTS",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MessageSink",
    "Transport",
    "TransportFactory",
    "TransportOptions",
    "collapse_exception_group",
    "connection_lost",
    "tls_connect_error",
]
