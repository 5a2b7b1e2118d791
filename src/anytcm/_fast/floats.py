"""Small FP32 and FP64 outputs, the most common reply: parsed by a typed msgspec decoder and
packed by `struct`.

For a small value the fixed costs of the general path dominate (parse into Python objects, walk
them for a shape and the kinds of the leaves, convert), so each step here is the cheapest one
that still checks everything:

* msgspec's typed decoders parse the numbers and refuse anything else (strings, booleans, null,
  numbers beyond float64, deeper nesting) as they meet it, with no scan of the text first, and
  read `msgspec.Raw` as they read bytes, without a copy. The flat decoder goes first (the common
  reply); text it refuses as a value, not as JSON, may be a list of rows.
* A `struct.Struct` writes the floats straight into a new array: it rounds exactly as numpy's
  cast does and, unlike numpy, raises `OverflowError` for a float that rounds to infinity as a
  float32.

The numbers `anytcm.wire.ServerFrameDecoder` already parsed with a small frame (a flat list)
skip the first step. Only the entry point `decode_floats` is used from outside; anything it
refuses (nulls for NaN, ragged rows, deeper nesting, values beyond the range, text that is not
JSON) returns None, and the general path decides and explains.
"""

from __future__ import annotations

import itertools
import struct
from typing import TYPE_CHECKING, Any, Final

import msgspec
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from ..tensors import RawJSON
    from ..wire import Numbers

__all__ = ("decode_floats",)

# Values up to this size take this path; beyond it `anytcm._fast.arrays` is the faster one.
_SMALL_TEXT: Final = 12288
# The most numbers such a value holds ("0,"): a bound on the packers kept, too.
_MAX_COUNT: Final = _SMALL_TEXT // 2
_F32: Final = np.dtype(np.float32)
_F64: Final = np.dtype(np.float64)
_FLOAT_LIST: Final = msgspec.json.Decoder(list[float])
_FLOAT_ROWS: Final = msgspec.json.Decoder(list[list[float]])
# struct packers by element count, one table per target dtype.
_F32_PACKERS: Final[dict[int, struct.Struct]] = {}
_F64_PACKERS: Final[dict[int, struct.Struct]] = {}


def decode_floats(raw: RawJSON | Numbers, target: np.dtype[Any] | None) -> npt.NDArray[Any] | None:
    """A small flat list or list of rows of floats as a new FP32 or FP64 array, or None.

    ``raw`` is a value's JSON text or the numbers the frame decoder parsed; ``target`` the
    resolved dtype (any other than FP32 and FP64 returns None at once).
    """
    if target is _F32:
        packers = _F32_PACKERS
    elif target is _F64:
        packers = _F64_PACKERS
    else:
        return None
    values: list[Any]
    shape: int | tuple[int, int]
    if isinstance(raw, list):
        if len(raw) > _MAX_COUNT:
            return None
        values = raw
        shape = count = len(raw)
    elif isinstance(raw, int | float) or len(raw) > _SMALL_TEXT:
        return None
    else:
        try:
            values = _FLOAT_LIST.decode(raw)
            shape = count = len(values)
        except msgspec.ValidationError:
            rows = _float_rows(raw)
            if rows is None:
                return None
            values, shape = rows
            count = len(values)
        except msgspec.DecodeError:
            return None
    out = np.empty(shape, target)
    packer = packers.get(count)
    if packer is None:
        packer = packers[count] = struct.Struct(f"={count}{target.char}")
    try:
        packer.pack_into(out, 0, *values)  # type: ignore[arg-type]  # ndarray is a buffer
    except (OverflowError, struct.error):  # a float32 out of range; a non-number (a list...)
        return None
    return out


def _float_rows(text: RawJSON) -> tuple[list[float], tuple[int, int]] | None:
    """A list of rows of floats, flattened, and its shape; None if it is not one (or ragged)."""
    try:
        rows = _FLOAT_ROWS.decode(text)
    except msgspec.MsgspecError:
        return None
    width = len(rows[0]) if rows else 0
    if any(len(row) != width for row in rows):
        return None
    return list(itertools.chain.from_iterable(rows)), (len(rows), width)
