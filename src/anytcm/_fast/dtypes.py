"""Output dtypes as callers spell them most, resolved by one dict lookup.

`anytcm.tensors` resolves any spelling of a dtype (Triton and ``TYPE_*`` names, numpy names,
dtypes, scalar types, dtype-likes) by parsing names and asking numpy, which costs as much as
decoding a small output. The spellings callers use most (the Triton names, the supported dtypes
themselves and their scalar types, such as `numpy.float32`) are finitely many: this table holds
each with what that general route resolves it to, built from the same datatype table. Only the
entry point `spellings` is used from outside.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ("spellings",)


def spellings(datatypes: Mapping[str, np.dtype[Any]]) -> dict[object, np.dtype[Any] | None]:
    """Each Triton name of ``datatypes``, its dtype and its scalar type -> that dtype; and None
    (no dtype given) -> None."""
    table: dict[object, np.dtype[Any] | None] = {
        key: dtype for name, dtype in datatypes.items() for key in (name, dtype, dtype.type)
    }
    table[None] = None
    return table
