"""Plugin discovery through entry points: transports (`anytcm.transports`).

Plugins are found by reading installed distributions' metadata and imported only when named
(loading a plugin runs its code). `ANYTCM_DISABLE_PLUGIN_AUTOLOAD=1` turns discovery off.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from typing import Any

from .transport import TransportFactory

TRANSPORT_GROUP = "anytcm.transports"


def _autoload_disabled() -> bool:
    return os.environ.get("ANYTCM_DISABLE_PLUGIN_AUTOLOAD", "") not in ("", "0")


def load_transport(name: str) -> TransportFactory:
    """The transport factory registered under `name`; LookupError with a hint if none."""
    found = [] if _autoload_disabled() else list(entry_points(group=TRANSPORT_GROUP))
    for entry in found:
        if entry.name == name:
            obj: Any = entry.load()
            factory: TransportFactory = obj() if isinstance(obj, type) else obj
            return factory
    names = sorted({e.name for e in found} | {"websockets"})
    raise LookupError(
        f"no transport named {name!r}; installed: {names}. A transport plugin registers an "
        f"entry point in the {TRANSPORT_GROUP!r} group (e.g. pip install anytcm-trio-websocket)"
    )
