"""The one switch for every fast path: `ANYTCM_NO_FAST_PATHS=1` turns them all off.

A fast path shortcuts a general path for the common case and must give the same results. Each
lives beside the general path it shortcuts and is taken only while `ENABLED` is true; with the
switch set, every call takes the general path, which is how the test suite keeps the general
paths correct (CI runs the wire, tensor and client tests once more with it).

The fast paths of the pure layer, one module each, each used through one entry point:

* `frames` (`FrameShortcuts.decode`): inference replies decoded with a small frame's numbers
  parsed, or with a large frame's arrays cut out; for `anytcm.wire.ServerFrameDecoder`.
* `floats` (`decode_floats`): small FP32/FP64 outputs; for `anytcm.tensors.decode_output`.
* `arrays` (`decode_numbers`): numeric outputs, in pieces when large; for `decode_output`.
* `dtypes` (`spellings`): the common spellings of an output dtype; for `decode_output`.
* `encode` (`encode_plain`): small numeric inputs; for `anytcm.tensors.encode_input`.

Each is kept because it is worth at least 5% on a named case: docs/performance.md has the
figures and how to measure them (`benchmarks/bench_json_decode.py --fast-paths`). Like the
modules they serve, these do no I/O and import no anyio.
"""

from __future__ import annotations

import os
from typing import Final

ENABLED: Final[bool] = os.environ.get("ANYTCM_NO_FAST_PATHS", "").strip() in ("", "0")
