"""Triton datatypes and numpy dtypes: the table, and every spelling of a dtype resolved."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from .._fast import dtypes as _fast_dtypes
from ..errors import InvalidInput

#: Triton datatype -> numpy dtype, for every datatype the manager can carry (contract §8).
#: BYTES is an object array whose elements are `bytes`, as in tritonclient.
TRITON_TO_NUMPY: Final[Mapping[str, np.dtype[Any]]] = MappingProxyType(
    {
        "BOOL": np.dtype(np.bool_),
        "INT8": np.dtype(np.int8),
        "INT16": np.dtype(np.int16),
        "INT32": np.dtype(np.int32),
        "INT64": np.dtype(np.int64),
        "UINT8": np.dtype(np.uint8),
        "UINT16": np.dtype(np.uint16),
        "UINT32": np.dtype(np.uint32),
        "UINT64": np.dtype(np.uint64),
        "FP16": np.dtype(np.float16),
        "FP32": np.dtype(np.float32),
        "FP64": np.dtype(np.float64),
        "BYTES": np.dtype(np.object_),
    }
)

#: The datatype names `numpy_dtype` accepts (plus their ``TYPE_*`` spellings).
SUPPORTED_DATATYPES: Final[tuple[str, ...]] = tuple(TRITON_TO_NUMPY)

# The numeric datatypes by numpy dtype, native byte order.
NUMPY_TO_TRITON: Final[dict[np.dtype[Any], str]] = {
    dtype: name for name, dtype in TRITON_TO_NUMPY.items() if name != "BYTES"
}
SUPPORTED_TEXT: Final = ", ".join(SUPPORTED_DATATYPES)
# numpy kinds that hold text: object, bytes (S), str (U) and numpy 2's StringDType (T).
TEXT_KINDS: Final = "OSUT"
JSON_OPTIONS: Final = orjson.OPT_SERIALIZE_NUMPY
SHM_HINT: Final = "send this tensor through the shm carrier, which moves raw bytes"


# -- datatypes -------------------------------------------------------------------------------------


def datatype_name(datatype: str) -> str:
    """The API spelling of a ``config.pbtxt`` datatype name: ``TYPE_FP32`` -> ``FP32``,
    ``TYPE_STRING`` -> ``BYTES``; any other name as it is."""
    if datatype.startswith("TYPE_"):
        return "BYTES" if datatype == "TYPE_STRING" else datatype[5:]
    return datatype


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a Triton datatype name.

    Accepts the API spelling (``"FP32"``) and the ``config.pbtxt`` spelling (``"TYPE_FP32"``,
    ``"TYPE_STRING"`` for BYTES), because model metadata and model configs use different ones and
    the manager itself accepts both (contract §4.3).

    :raises InvalidInput: for a name the manager cannot carry. BF16 is one: it has no numpy
        dtype, and the manager fails every BF16 tensor it is sent (contract §8).
    """
    name = datatype_name(datatype.strip().upper())
    dtype = TRITON_TO_NUMPY.get(name)
    if dtype is not None:
        return dtype
    if name == "BF16":
        message = (
            "datatype BF16 cannot be sent through the manager: numpy has no bfloat16 and the "
            "manager fails every BF16 tensor; convert the model input to FP16 or FP32"
        )
    else:
        message = f"unknown datatype {datatype!r}; supported: {SUPPORTED_TEXT} (or TYPE_*)"
    raise InvalidInput(message, expected=SUPPORTED_DATATYPES, given=datatype)


def triton_datatype(dtype_or_array: npt.DTypeLike | npt.NDArray[Any]) -> str:
    """The Triton datatype of a numpy dtype or array.

    Object, ``bytes`` (``S``) and ``str`` (``U``) arrays are BYTES: Triton has a single string type.

    :raises InvalidInput: for a dtype with no Triton counterpart (complex, datetime, timedelta,
        void, ``float128``...); the message lists the supported datatypes.
    """
    if isinstance(dtype_or_array, np.ndarray):
        dtype = dtype_or_array.dtype
    else:
        try:
            dtype = np.dtype(dtype_or_array)
        except TypeError:
            raise InvalidInput(
                f"{dtype_or_array!r} is not a numpy dtype; supported datatypes: {SUPPORTED_TEXT}",
                expected=SUPPORTED_DATATYPES,
                given=dtype_or_array,
            ) from None
    if dtype.kind in TEXT_KINDS:
        return "BYTES"
    name = NUMPY_TO_TRITON.get(dtype.newbyteorder("="))
    if name is None:
        raise InvalidInput(
            f"numpy dtype {dtype} has no Triton datatype; supported: {SUPPORTED_TEXT} "
            "(BYTES from object, bytes or str arrays); convert the array first",
            expected=SUPPORTED_DATATYPES,
            given=str(dtype),
        )
    return name


# The common spellings of an output dtype, resolved by one lookup (fast path).
KNOWN_TARGETS: Final = _fast_dtypes.spellings(TRITON_TO_NUMPY)


def resolve_dtype(dtype: np.dtype[Any] | str | type[Any] | None) -> np.dtype[Any] | None:
    """A caller's output dtype, in any spelling, as a supported numpy dtype (None: none given)."""
    if dtype is None:
        return None
    if isinstance(dtype, str):  # Triton names in any spelling, then numpy's
        try:
            return numpy_dtype(dtype)
        except InvalidInput:
            try:
                parsed = np.dtype(dtype)  # numpy spellings: "float32", "<i8"
            except TypeError:
                raise InvalidInput(
                    f"unknown datatype {dtype!r}; supported: {SUPPORTED_TEXT} (or TYPE_*)",
                    expected=SUPPORTED_DATATYPES,
                    given=dtype,
                ) from None
            return TRITON_TO_NUMPY[triton_datatype(parsed)]
    return TRITON_TO_NUMPY[triton_datatype(dtype)]
