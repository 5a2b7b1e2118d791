"""Which event loop runs the current task: the one probe every backend-specific path uses.

anyio runs on asyncio or trio. The probe asks asyncio for a running loop first, and looks at
trio only when trio is already imported (nothing here imports it), and not through sniffio,
which a plain `pip install anytcm` does not bring.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Literal

Backend = Literal["asyncio", "trio", "other"]


def current_backend() -> Backend:
    """ "asyncio" or "trio" inside a running loop of either; "other" anywhere else."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return "asyncio"
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            return "other"
        return "trio"
    return "other"
