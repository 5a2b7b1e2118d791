"""The most common input in one step: a small numeric ndarray, no datatype given.

`anytcm.tensors.encode_input`'s general path converts and checks every kind of value (casts to a
declared datatype, empty shapes, memory layout, infinities) and explains every refusal. For the
small numeric arrays most requests carry, those checks cost more than writing the JSON, so this
path writes it at once and leaves the checks to what orjson has already written. Only the entry
point `encode_plain` is used from outside; whenever the general path is needed it returns None.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

__all__ = ("encode_plain",)

_OPT: Final = orjson.OPT_SERIALIZE_NUMPY
_L: Final = ord("l")


def encode_plain(
    name: str, arr: npt.NDArray[Any], datatypes: Mapping[np.dtype[Any], str]
) -> bytes | None:
    """``{"name", "shape", "datatype", "data"}`` for a non-empty, C-ordered array whose dtype is
    a key of ``datatypes`` (numpy dtype -> Triton datatype, native byte order), or None."""
    datatype = datatypes.get(arr.dtype)
    if datatype is None or arr.ndim == 0 or arr.size == 0 or not arr.flags.c_contiguous:
        return None
    encoded = orjson.dumps(
        {"name": name, "shape": list(arr.shape), "datatype": datatype, "data": arr}, option=_OPT
    )
    # orjson writes NaN and ±Inf alike as null; the general path tells them apart (NaN is sent,
    # Inf refused), so a null anywhere declines (one in the name merely declines too). The
    # search for one byte runs at memchr speed, the one for four bytes far slower, and an "l"
    # is in no key and no number: only a name with an "l" pays for both.
    if arr.dtype.kind == "f" and _L in encoded and b"null" in encoded:
        return None
    return encoded
