"""The one switch for every fast path: `ANYTCM_NO_FAST_PATHS=1` turns them all off.

A fast path shortcuts a general path for the common case and must give the same results. Each
lives beside the general path it shortcuts and is taken only while `ENABLED` is true; with the
switch set, every call takes the general path, which is how the test suite keeps the general
paths correct (CI runs the wire, tensor and client tests once more with it).
"""

from __future__ import annotations

import os
from typing import Final

ENABLED: Final[bool] = os.environ.get("ANYTCM_NO_FAST_PATHS", "").strip() in ("", "0")
