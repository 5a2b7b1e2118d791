"""The JSON tensor codec: numpy arrays to the manager's JSON tensors and back.

The manager only takes tensors as JSON text inside a WebSocket text frame capped at 64 KiB
(contract §1, §4.3), and sends outputs back as plain nested JSON lists with no datatype and no
shape (contract §8). This module owns both directions, and the rules the server imposes on them:

* **Inputs** are written in the SDK form ``{"name", "shape", "datatype", "data"}``. The manager
  runs ``np.asarray(data, dtype)`` and compares the result's shape with ``shape``, so ``data``
  must be nested to exactly the shape: a flat row-major list for a 2-D input is rejected.
* **Number formatting decides how much fits in a frame.** orjson writes a float32 in its
  shortest round-tripping form (``0.1`` rather than ``0.10000000149011612``): about 6,100 random
  FP32 values fit in 64 KiB, against about 3,200 with float64 reprs (design item 10). The server
  parses each number as a Python float and casts it to the declared dtype; the shortest float32
  repr survives that double rounding and comes back as the identical float32.
* **JSON has no NaN or Infinity.** The manager's orjson rejects the ``NaN``/``Infinity`` tokens
  as invalid JSON, so NaN is sent as ``null`` (``np.asarray([None], np.float32)`` is ``nan`` on
  the server) and ±Inf, which would arrive as ``null`` and silently turn into NaN, is refused.
* **Outputs** carry no dtype: FP16 outputs arrive as FP32 floats, BYTES outputs are flattened
  to a list of strings (or one bare string), a 0-d output is a bare number. The caller passes
  the dtype (and, for BYTES, the shape) from the model metadata; without one, integers decode
  as int64 and floats as float64.

Errors are `InvalidInput` (a `ValueError`) with ``expected``/``given`` attributes; every message
names the remedy, usually the shm carrier, which moves raw bytes and has none of JSON's limits.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, TypeAlias

import msgspec
import numpy as np
import numpy.typing as npt
import orjson

from .errors import InvalidInput
from .wire import Numbers

__all__ = (
    "SUPPORTED_DATATYPES",
    "TRITON_TO_NUMPY",
    "decode_output",
    "encode_input",
    "numpy_dtype",
    "triton_datatype",
)

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

_NUMPY_TO_TRITON: Final[dict[np.dtype[Any], str]] = {
    dtype: name for name, dtype in TRITON_TO_NUMPY.items() if name != "BYTES"
}
_SUPPORTED_TEXT: Final = ", ".join(SUPPORTED_DATATYPES)
# numpy kinds that hold text: object, bytes (S), str (U) and numpy 2's StringDType (T).
_TEXT_KINDS: Final = "OSUT"
_OPT: Final = orjson.OPT_SERIALIZE_NUMPY
_SHM_HINT: Final = "send this tensor through the shm carrier, which moves raw bytes"

#: What `encode_input` takes besides an ndarray: nested sequences and scalars.
ArrayLike: TypeAlias = "npt.NDArray[Any] | Sequence[Any] | bool | int | float | str | bytes"
#: What `decode_output` takes: the JSON text of one output value.
RawJSON: TypeAlias = "bytes | bytearray | memoryview | str | msgspec.Raw"


# -- datatypes -------------------------------------------------------------------------------------


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a Triton datatype name.

    Accepts the API spelling (``"FP32"``) and the ``config.pbtxt`` spelling (``"TYPE_FP32"``,
    ``"TYPE_STRING"`` for BYTES), because model metadata and model configs use different ones and
    the manager itself accepts both (contract §4.3).

    :raises InvalidInput: for a name the manager cannot carry. BF16 is one: it has no numpy
        dtype, and the manager fails every BF16 tensor it is sent (contract §8).
    """
    name = datatype.strip().upper()
    if name.startswith("TYPE_"):
        name = "BYTES" if name == "TYPE_STRING" else name[5:]
    dtype = TRITON_TO_NUMPY.get(name)
    if dtype is not None:
        return dtype
    if name == "BF16":
        message = (
            "datatype BF16 cannot be sent through the manager: numpy has no bfloat16 and the "
            "manager fails every BF16 tensor; convert the model input to FP16 or FP32"
        )
    else:
        message = f"unknown datatype {datatype!r}; supported: {_SUPPORTED_TEXT} (or TYPE_*)"
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
                f"{dtype_or_array!r} is not a numpy dtype; supported datatypes: {_SUPPORTED_TEXT}",
                expected=SUPPORTED_DATATYPES,
                given=dtype_or_array,
            ) from None
    if dtype.kind in _TEXT_KINDS:
        return "BYTES"
    name = _NUMPY_TO_TRITON.get(dtype.newbyteorder("="))
    if name is None:
        raise InvalidInput(
            f"numpy dtype {dtype} has no Triton datatype; supported: {_SUPPORTED_TEXT} "
            "(BYTES from object, bytes or str arrays); convert the array first",
            expected=SUPPORTED_DATATYPES,
            given=str(dtype),
        )
    return name


# The dtype spellings callers use most, resolved with one dict lookup (resolving a numpy dtype
# or scalar type by the general route costs ~2 us, as much as decoding a small output): Triton
# names, the supported dtypes themselves and their scalar types (`np.float32`).
# None (no dtype: inferred from the values) is one of them. `decode_output` looks here first.
_KNOWN_TARGETS: Final[dict[object, np.dtype[Any] | None]] = {
    key: dtype for name, dtype in TRITON_TO_NUMPY.items() for key in (name, dtype, dtype.type)
}
_KNOWN_TARGETS[None] = None


def _resolve_dtype(dtype: np.dtype[Any] | str | type[Any]) -> np.dtype[Any]:
    """A caller's dtype spelled in a way `_KNOWN_TARGETS` does not hold (TYPE_*, "fp32", numpy
    names, other dtype-likes) as a supported numpy dtype; the general route, ~2 us."""
    if isinstance(dtype, str):  # not a Triton name as written: TYPE_*, "fp32", numpy names
        try:
            return numpy_dtype(dtype)
        except InvalidInput:
            try:
                parsed = np.dtype(dtype)  # numpy spellings: "float32", "<i8"
            except TypeError:
                raise InvalidInput(
                    f"unknown datatype {dtype!r}; supported: {_SUPPORTED_TEXT} (or TYPE_*)",
                    expected=SUPPORTED_DATATYPES,
                    given=dtype,
                ) from None
            return TRITON_TO_NUMPY[triton_datatype(parsed)]
    return TRITON_TO_NUMPY[triton_datatype(dtype)]


# -- encoding inputs -------------------------------------------------------------------------------


def encode_input(name: str, array: ArrayLike, datatype: str | None = None) -> bytes:
    """One input tensor as the JSON object of the SDK form, ready to splice into a request.

    ``{"name": .., "shape": [..], "datatype": .., "data": <lists nested to exactly the shape>}``

    Numbers are written by orjson straight from the array buffer (``OPT_SERIALIZE_NUMPY``):
    float32 and float16 in their shortest round-tripping form, 64-bit integers exactly.

    * **0-d arrays and scalars** are sent as shape ``[1]`` with data ``[x]``: the manager turns a
      bare scalar into a 1-element vector before comparing it with the shape, so ``[1]`` is the
      only shape a scalar can match.
    * **Empty arrays** are sent as nested empty lists (shape ``[2, 0]`` as ``[[], []]``). Only a
      zero in the *last* dimension can be written: ``[]`` for shape ``[0, 3]`` parses back as
      shape ``[0]`` on the server, so such shapes are refused here.
    * **NaN** is sent as ``null``, which the manager reads back as NaN; **±Inf** is refused.
    * **BYTES**: object arrays of ``bytes``/``str``, and numpy ``S``/``U`` arrays, are sent as
      UTF-8 strings. Bytes that are not valid UTF-8 are refused: a JSON string cannot carry them.

    :param name: the model input's name.
    :param array: an ndarray, or nested lists/tuples/scalars (converted with `numpy.asarray`).
    :param datatype: the model's datatype for this input (API or ``TYPE_*`` spelling). A
        numeric array is cast to it only if no value changes; lists and scalars of Python
        floats may also be rounded to a narrower float type, since a float literal has no
        precision of its own (the server would round the same JSON number the same way).
        Without it, the datatype follows the array's dtype.
    :raises InvalidInput: for a value JSON cannot carry, a lossy cast or an unsupported dtype;
        ``expected``/``given`` hold the two sides.
    """
    if datatype is None and type(array) is np.ndarray and type(name) is str:
        fast = _encode_small(name, array)
        if fast is not None:
            return fast
    if not isinstance(name, str):
        raise InvalidInput(
            f"input names are strings, got {name!r}", expected="str", given=type(name).__name__
        )
    target = None if datatype is None else numpy_dtype(datatype)
    arr = _input_array(name, array, target)
    dt = triton_datatype(arr)
    shape = [int(n) for n in arr.shape] if arr.ndim else [1]
    _check_empty_shape(name, shape)
    data: Any
    if dt == "BYTES":
        data = _text_data(name, arr, shape)
    else:
        arr = arr.reshape(shape)
        if not (arr.flags.c_contiguous and arr.flags.aligned and arr.dtype.isnative):
            # orjson reads the buffer directly and takes only native, aligned, C-ordered memory.
            arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
        if arr.dtype.kind == "f":
            _check_finite(name, arr)
        data = arr
    try:
        return orjson.dumps(
            {"name": name, "shape": shape, "datatype": dt, "data": data}, option=_OPT
        )
    except orjson.JSONEncodeError as exc:  # a str with lone surrogates is not UTF-8
        raise InvalidInput(
            f"input {name!r} cannot be written as JSON ({exc}); {_SHM_HINT}",
            expected="UTF-8 text",
            given=str(exc),
        ) from None


# Perf: the dtypes whose arrays go straight to orjson, by numpy dtype (native byte order).
_FAST_DATATYPES: Final[dict[np.dtype[Any], str]] = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}


_L: Final = ord("l")


def _encode_small(name: str, arr: npt.NDArray[Any]) -> bytes | None:
    """The common case in one step: a non-empty, C-ordered numeric array, no datatype given.

    Returns None whenever anything needs the general path (which also gives the errors).
    Most requests carry small tensors, where the general path's checks cost more than orjson.
    """
    datatype = _FAST_DATATYPES.get(arr.dtype)
    if datatype is None or arr.ndim == 0 or arr.size == 0 or not arr.flags.c_contiguous:
        return None
    encoded = orjson.dumps(
        {"name": name, "shape": list(arr.shape), "datatype": datatype, "data": arr}, option=_OPT
    )
    # orjson writes NaN and ±Inf alike as null; the general path tells them apart (NaN is sent,
    # Inf refused). Perf: a substring search costs far less than `np.isinf(arr).any()`, and a
    # name containing "null" merely takes the general path. A search for one byte value (an
    # int) runs at memchr speed, ~25 ns, where one for `b"null"` takes ~170 ns on a small
    # input; "l" is in no key and in no number, so only a name with an "l" pays for both.
    if arr.dtype.kind == "f" and _L in encoded and b"null" in encoded:
        return None
    return encoded


def _input_array(name: str, array: ArrayLike, target: np.dtype[Any] | None) -> npt.NDArray[Any]:
    """The caller's value as an ndarray of the datatype that will be declared."""
    from_python = not isinstance(array, np.ndarray | np.generic)
    try:
        arr = np.asarray(array)
        if from_python and arr.dtype.kind in "SU":
            # Keep the caller's exact elements: numpy's S dtype drops trailing NUL bytes.
            arr = np.asarray(array, dtype=object)
    except (ValueError, TypeError) as exc:  # ragged nesting, mixed types
        raise InvalidInput(
            f"input {name!r} is not a regular array ({exc}); nest it to one shape",
            expected="a regular nested sequence",
            given=type(array).__name__,
        ) from None
    if target is None or arr.dtype == target:
        return arr
    if from_python and arr.dtype.kind == "O" and target.kind == "f":
        # Python None in a float list is NaN (as the server reads null), and not a BYTES value.
        with contextlib.suppress(ValueError, TypeError):
            arr = np.asarray(array, dtype=np.float64)
    given = triton_datatype(arr)  # refuses complex, datetime, ... with the supported list
    wanted = triton_datatype(target)
    if target.kind == "O" or given == "BYTES":
        if target.kind == "O" and given == "BYTES":
            return arr
        raise InvalidInput(
            f"input {name!r} holds {given} data but its datatype is {wanted}; "
            "BYTES takes strings or bytes, numeric datatypes take numbers",
            expected=wanted,
            given=given,
        )
    if from_python and arr.dtype.kind == "f" and target.kind == "f":
        with np.errstate(over="ignore"):
            cast = arr.astype(target)
        if np.any(np.isinf(cast) & np.isfinite(arr)):
            raise InvalidInput(
                f"input {name!r} has values outside the range of {wanted}",
                expected=wanted,
                given=given,
            )
        return cast
    exact = _lossless_cast(arr, target)
    if exact is None:
        raise InvalidInput(
            f"input {name!r}: casting {given} to {wanted} would change values; "
            f"convert it yourself (e.g. arr.astype(np.{target.name})) if rounding is intended",
            expected=wanted,
            given=given,
        )
    return exact


def _lossless_cast(arr: npt.NDArray[Any], target: np.dtype[Any]) -> npt.NDArray[Any] | None:
    """``arr.astype(target)`` if every value survives the cast unchanged, else None.

    A round trip alone is not enough: int64 -1 survives int64 -> uint64 -> int64, and on some
    platforms float -> int casts saturate. So integer targets are range-checked with Python ints
    (exact at any size) and float results are range-checked before being cast back.
    """
    src = arr.dtype
    # numpy calls int64 -> float64 "safe", yet 2**53 + 1 does not survive it.
    inexact = (
        src.kind in "iu"
        and target.kind == "f"
        and src.itemsize * 8 - (src.kind == "i") > np.finfo(target).nmant + 1
    )
    if arr.size == 0 or (np.can_cast(src, target, "safe") and not inexact):
        return arr.astype(target)
    with np.errstate(all="ignore"):
        if target.kind in "biu":
            lo, hi = (0, 1) if target.kind == "b" else _int_range(target)
            if src.kind == "f" and (
                not np.isfinite(arr).all() or not np.array_equal(np.trunc(arr), arr)
            ):
                return None
            if int(arr.min()) < lo or int(arr.max()) > hi:
                return None
            return arr.astype(target)
        cast = arr.astype(target)  # target is a float
        if src.kind in "iu":
            if not np.isfinite(cast).all():
                return None
            lo, hi = _int_range(src)
            if int(cast.min()) < lo or int(cast.max()) > hi:
                return None
            return cast if np.array_equal(cast.astype(src), arr) else None
        back = cast.astype(src)
        return cast if np.array_equal(back, arr, equal_nan=True) else None


def _int_range(dtype: np.dtype[Any]) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _check_empty_shape(name: str, shape: list[int]) -> None:
    """Refuse empty shapes that nested lists cannot express (a zero before the last dim)."""
    if 0 in shape and shape.index(0) != len(shape) - 1:
        raise InvalidInput(
            f"input {name!r} has shape {shape}: JSON nesting stops at the first zero-length "
            "dimension, so the manager would read a different shape; only a zero in the last "
            f"dimension can be sent as JSON ({_SHM_HINT})",
            expected="shape whose only zero is the last dimension",
            given=shape,
        )


def _check_finite(name: str, arr: npt.NDArray[Any]) -> None:
    """Refuse ±Inf: JSON cannot carry it, and the manager would receive null, that is NaN."""
    inf = np.isinf(arr)
    if inf.any():
        where = tuple(int(i) for i in np.argwhere(inf)[0])
        raise InvalidInput(
            f"input {name!r} contains {int(inf.sum())} infinite value(s) (first at index "
            f"{where}); JSON cannot carry ±Inf and the manager would read NaN: {_SHM_HINT}, "
            "or replace the infinities with a large finite value",
            expected="finite values or NaN",
            given=float(arr[where]),
        )


def _text_data(name: str, arr: npt.NDArray[Any], shape: list[int]) -> Any:
    """BYTES elements as nested lists of ``str``: JSON strings are Unicode, not bytes."""
    strings: list[str] = []
    append = strings.append
    for index, item in enumerate(arr.ravel().tolist()):
        if type(item) is str:
            append(item)
        elif isinstance(item, bytes | bytearray | memoryview):
            try:
                append(bytes(item).decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"input {name!r}: element {index} is not valid UTF-8 ({exc.reason} at byte "
                    f"{exc.start}); JSON strings carry text only: base64-encode it (if the model "
                    f"expects that) or {_SHM_HINT}",
                    expected="UTF-8 bytes or str",
                    given=bytes(item)[:32],
                ) from None
        elif isinstance(item, str):  # np.str_ and other subclasses
            append(str(item))
        else:
            raise InvalidInput(
                f"input {name!r}: BYTES element {index} is {type(item).__name__}, "
                "expected str or bytes",
                expected="str or bytes",
                given=type(item).__name__,
            )
    if len(shape) == 1:
        return strings
    nested = np.empty(len(strings), dtype=object)
    nested[:] = strings
    return nested.reshape(shape).tolist()


# -- decoding outputs ------------------------------------------------------------------------------

# Outputs larger than this are parsed in pieces: one huge orjson.loads allocates millions of
# float objects at once and runs ~1.5x slower per element than pieces that stay in cache.
_PIECE_BYTES: Final = 1 << 17
_WHITESPACE: Final = frozenset(b" \t\r\n")
_SPACE: Final = re.compile(rb"[ \t\r\n]*")
_FLOAT64: Final = np.dtype(np.float64)
_INT64: Final = np.dtype(np.int64)


def _numpy_max_rank() -> int:
    """The most dimensions an ndarray may have here: 64 on numpy 2, 32 before (NPY_MAXDIMS).

    Probed rather than read from numpy's version, which would not say what a build allows.
    """
    for rank in (64, 32):
        try:
            np.empty((1,) * rank, np.uint8)
        except ValueError:
            continue
        return rank
    return 32


#: No output value can be nested deeper than this: it would not be an ndarray.
_MAX_RANK: Final = _numpy_max_rank()
# The opening brackets `_opening_depth` reads: one more than any limit, to see it exceeded.
_HEAD: Final = _MAX_RANK + 1
# The opening brackets of a value when whitespace separates them, at most `_HEAD` of them.
_OPENERS: Final = re.compile(rb"(?:[ \t\r\n]*\[){0,%d}" % _HEAD)
# After a value's first bracket, the bytes that call for `_opening_depth`: another bracket,
# whitespace (which may hide one) or nothing.
_NESTING: Final = frozenset((b"[", b" ", b"\t", b"\r", b"\n", b""))


class _Fallback(Exception):
    """The fast path declines; the general path decides (and explains any error)."""


def decode_output(
    raw: RawJSON | Numbers,
    dtype: np.dtype[Any] | str | type[Any] | None = None,
    shape: Sequence[int] | None = None,
) -> npt.NDArray[Any]:
    """One output value of an inference reply (``payload.data[<name>]``) as an ndarray.

    :param raw: the JSON text of the value, e.g. the `msgspec.Raw` slice of the reply frame,
        or its numbers as the frame decoder parsed them (`anytcm.wire.Numbers`): both decode alike.
    :param dtype: the output's dtype from the model metadata: a Triton name (``"FP32"``,
        ``"TYPE_INT64"``), a numpy dtype or numpy name. The reply carries none: without it,
        integers decode as int64, floats as float64, booleans as bool and strings as BYTES.
        The manager sends FP16 outputs as FP32 numbers; pass ``"FP16"`` to get float16 back.
    :param shape: the output's shape, if known. The array is reshaped to it when the element
        counts agree (BYTES outputs arrive flattened; a 0-d or one-element output arrives as a
        bare value); ``-1`` entries match any size.
    :returns: a numeric array, or for BYTES an object array of `bytes` (as tritonclient gives).

    ``null`` decodes as NaN for float dtypes (the manager writes NaN and ±Inf as null) and is an
    error for the others. Integers are exact at any 64-bit value. Float32 values written in their
    shortest form, or as the float64 repr of a float32, decode to the identical float32.

    Small FP32 and FP64 outputs (one or two dimensions) are parsed by a typed msgspec decoder
    and packed into the array by `struct`, which between them check every element. Large
    numeric outputs take a fast path: the text is cut into pieces at element boundaries and
    each piece parsed by orjson and packed with `numpy.fromiter`, with a full regularity
    check; anything unusual falls back to the general path. ``raw`` is assumed to be valid
    JSON, as it is when sliced from a frame msgspec already parsed.

    :raises InvalidInput: for a value that is not a regular array of the requested dtype
        (ragged lists, null for an integer dtype, strings for a numeric dtype, values out of
        range) or that does not fit ``shape``. A value nested deeper than any ndarray can be,
        or than ``shape`` has dimensions plus one (a batch dimension model configs leave
        out), is refused from its opening brackets, before it is parsed; every path does
        work linear in the size of the value.
    """
    try:
        target = _KNOWN_TARGETS[dtype]
    except (KeyError, TypeError):  # TypeError: unhashable, which the general route explains
        assert dtype is not None  # None is in the table
        target = _resolve_dtype(dtype)
    if type(raw) is list and shape is None and (target is _F32 or target is _F64):
        packed = _pack_floats(raw, target, len(raw))  # what the small path does after parsing
        if packed is not None:
            return packed
    if isinstance(raw, (list, int, float)):
        raw = _parsed_text(raw, shape)
    if shape is None and (target is _F32 or target is _F64):
        # msgspec's typed decoders take at most two levels and refuse a third as they meet it.
        small = _decode_small(raw, target)
        if small is not None:
            return small
    text = _as_bytes(raw).strip()
    if not text:
        raise InvalidInput("an output value is empty, not JSON", expected="JSON", given=raw)
    limit = _depth_limit(shape)
    # A regular array's first element is nested as deep as all the others, so the brackets
    # that open the text are its rank: deeper is refused here, before anything is parsed. An
    # element nested deeper further on makes the array ragged, which every path refuses.
    # Perf: a flat list, the common reply, is told at a glance.
    depth = 1 if text[0] == 0x5B and text[1:2] not in _NESTING else _opening_depth(text)
    if depth > limit:
        raise _too_deep(depth, limit, shape)
    arr: npt.NDArray[Any] | None = None
    if depth and (target is None or target.kind in "iuf"):
        try:
            arr = _decode_fast(text, target, depth)
        except _Fallback:
            arr = None
    if arr is None:
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise _not_json(text, exc, limit, shape) from None
        arr = _decode_general(value, target)
    if shape is not None:
        arr = _apply_shape(arr, shape)
    return arr


def _depth_limit(shape: Sequence[int] | None) -> int:
    """The deepest nesting an output value may have: one list per dimension of ``shape``, plus
    one for the batch dimension that a model config's dims leave out; without a shape, the
    most dimensions an ndarray can have. Deeper values are refused."""
    return _MAX_RANK if shape is None else min(len(shape) + 1, _MAX_RANK)


def _parsed_text(value: Any, shape: Sequence[int] | None) -> bytes:
    """A value the frame decoder parsed, written back as JSON to be decoded as text.

    Written exactly (ints in full, floats in their shortest repr), so that both forms decode
    alike by construction. Rare: a small reply's outputs are most often float lists. The
    frame decoder hands over flat lists; a caller's nested lists are walked along their first
    elements first, so that a deep one is refused before msgspec recurses into it.
    """
    if type(value) is list and value and type(value[0]) is list:
        limit = _depth_limit(shape)
        depth = 0
        head = value
        while type(head) is list and head and depth <= limit:
            depth += 1
            head = head[0]
        if depth > limit:
            raise _too_deep(depth, limit, shape)
    try:
        return msgspec.json.encode(value)
    except RecursionError:  # nested deep further on: bounded by the interpreter's limit
        limit = _depth_limit(shape)
        raise _too_deep(limit + 1, limit, shape) from None
    except TypeError as exc:
        raise InvalidInput(
            f"an output value holds something JSON cannot carry ({exc}); pass the reply's "
            "numbers or its JSON text",
            expected="numbers or JSON text",
            given=type(value).__name__,
        ) from None


def _opening_depth(text: bytes) -> int:
    """How many lists ``text`` opens before its first value, counted up to `_HEAD`.

    Reads at most `_HEAD` bytes, unless whitespace separates the brackets; then a bounded
    regular expression skips it at C speed.
    """
    head = text[:_HEAD]
    run = len(head) - len(head.lstrip(b"["))
    if run < len(head) and head[run] in _WHITESPACE:
        match = _OPENERS.match(text)  # it matches "" at worst
        run = text.count(b"[", 0, match.end()) if match else 0
    return run


def _too_deep(
    depth: int, limit: int, shape: Sequence[int] | None, at: int | None = None
) -> InvalidInput:
    where = "" if at is None else f" (at byte {at})"
    if shape is None or limit >= _MAX_RANK:
        remedy = (
            f"a numpy array has at most {_MAX_RANK} dimensions, so this is no tensor: the "
            "reply is malformed; check what the model and the manager send for this output"
        )
    else:
        remedy = (
            f"the expected shape {list(shape)} has {len(shape)} dimension(s), and one more is "
            "taken for a batch dimension; check the shape against the model metadata, or pass "
            "none"
        )
    return InvalidInput(
        f"an output value is nested more than {limit} lists deep{where}: {remedy}",
        expected=limit,
        given=depth,
    )


def _not_json(
    text: bytes, exc: orjson.JSONDecodeError, limit: int, shape: Sequence[int] | None
) -> InvalidInput:
    """The error for text orjson refused. orjson stops at 1024 nested lists, far deeper than
    any limit: such nesting is named as what it is, not as mere invalid JSON."""
    pos = exc.pos
    # Brackets only count as nesting outside strings: without a quote before, there is none.
    if text.find(b'"', 0, pos) < 0:
        open_lists = text.count(b"[", 0, pos) - text.count(b"]", 0, pos)
        if open_lists > limit:
            return _too_deep(open_lists, limit, shape, at=pos)
    return InvalidInput(
        f"an output value is not valid JSON: {exc}", expected="JSON", given=text[:64]
    )


# Up to here (~600 float32 reprs) the small path is the faster one (timeit: 9.0 vs 9.6 us at
# 300 elements, 31.8 vs 28.8 us at 1000).
_SMALL_TEXT: Final = 12288
_F32: Final = np.dtype(np.float32)
_F64: Final = np.dtype(np.float64)
# The small path's decoders: a flat list of numbers, and a list of rows of numbers.
_FLOAT_LIST: Final = msgspec.json.Decoder(list[float])
_FLOAT_ROWS: Final = msgspec.json.Decoder(list[list[float]])
# struct packers by element count, one table per target dtype (at most ~6k entries each: a
# small value of 12 KiB holds at most 6144 numbers).
_F32_PACKERS: Final[dict[int, struct.Struct]] = {}
_F64_PACKERS: Final[dict[int, struct.Struct]] = {}


def _decode_small(text: RawJSON, target: np.dtype[Any]) -> npt.NDArray[Any] | None:
    """A small float output, a flat list or a list of rows, or None: the other paths decide.

    Perf: for a small value the fixed costs dominate, so each step is the cheapest one that
    still checks everything. msgspec parses the numbers and refuses anything else (strings,
    booleans, null, numbers beyond float64) with no scan of the text beforehand; it reads
    `msgspec.Raw` as it reads bytes, so the value is not copied first. A `struct.Struct` then
    writes the floats straight into an empty array: it rounds exactly as numpy's cast does and,
    unlike numpy, raises `OverflowError` for a float that rounds to infinity as a float32.
    The path takes ~13% fewer instructions than with `numpy.asarray` on the list, which first
    walks it to discover a shape and dtype (callgrind, FP32[16]). The flat decoder goes first
    (the common reply); text it refuses as a value, not as JSON, may be a list of rows. Any
    refusal (nulls for NaN, ragged rows, deeper nesting, values beyond the range, text that is
    not JSON) returns None.
    """
    if len(text) > _SMALL_TEXT:
        return None
    try:
        values = _FLOAT_LIST.decode(text)
        shape: int | tuple[int, int] = len(values)
    except msgspec.ValidationError:
        rows = _float_rows(text)
        if rows is None:
            return None
        values, shape = rows
    except msgspec.DecodeError:
        return None
    return _pack_floats(values, target, shape)


def _pack_floats(
    values: list[Any], target: np.dtype[Any], shape: int | tuple[int, int]
) -> npt.NDArray[Any] | None:
    """Python numbers (floats, ints) into a new FP32 or FP64 array of ``shape``, or None for a
    value that rounds to infinity as a float32 (the general path then explains)."""
    out = np.empty(shape, target)
    count = len(values)
    # Perf: the table chosen by identity, not looked up by dtype (hashing a dtype: ~35 ns).
    packers = _F32_PACKERS if target is _F32 else _F64_PACKERS
    packer = packers.get(count) or _packer(packers, target, count)
    try:
        packer.pack_into(out, 0, *values)  # type: ignore[arg-type]  # ndarray is a buffer
    except (OverflowError, struct.error):  # struct.error: a list (or else) among the numbers
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


def _packer(packers: dict[int, struct.Struct], target: np.dtype[Any], count: int) -> struct.Struct:
    """A new packer of ``count`` floats of ``target``, kept in ``packers`` (its table)."""
    packer = packers[count] = struct.Struct(f"={count}{target.char}")
    return packer


def _as_bytes(raw: RawJSON) -> bytes:
    if type(raw) is bytes or isinstance(raw, bytes):
        return raw
    if isinstance(raw, str):
        return raw.encode("utf-8")
    return bytes(memoryview(raw))


def _decode_fast(text: bytes, target: np.dtype[Any] | None, depth: int) -> npt.NDArray[Any]:
    """Numeric nested arrays, with no per-element Python work beyond orjson's own.

    Numbers go straight from orjson's list into the target dtype through `numpy.fromiter`
    (cheaper than `numpy.asarray`, which first walks the list to discover a shape and dtype).
    A few memchr-speed scans keep the path honest: strings (``fromiter`` would parse ``"1.5"``)
    and, for integer dtypes, fractions or exponents (``fromiter`` would truncate them) go to the
    general path. Nulls, dicts, ragged or mixed nesting and out-of-range values make numpy or
    `_pack` raise, and the general path then decides and explains. ``depth`` is the number of
    lists the text opens with (`_opening_depth`): the array's rank if it is regular.
    """
    if b'"' in text:
        raise _Fallback
    if target is None:
        if b"t" in text or b"f" in text:  # booleans: let the general path infer bool
            raise _Fallback
        float_text = b"." in text or b"e" in text or b"E" in text
        parse = _FLOAT64 if float_text else _INT64
    elif target.kind == "f":
        parse = target
    else:
        if b"." in text or b"e" in text or b"E" in text:
            raise _Fallback
        parse = target
    # A float beyond the target's range must raise rather than become inf (with a mere
    # RuntimeWarning from numpy). The guard costs ~0.7 us, ~2% of a 1k-element decode; smaller
    # values take the small path, which checks the range as it packs. float64 needs none:
    # orjson refuses a number beyond it.
    guard = parse.kind == "f" and parse.itemsize < 8
    try:
        if guard:
            with np.errstate(over="raise"):
                return _parse_numbers(text, parse, depth)
        return _parse_numbers(text, parse, depth)
    except (
        orjson.JSONDecodeError,
        TypeError,
        ValueError,
        OverflowError,
        FloatingPointError,
        RuntimeWarning,  # raised, not warned, when warnings are errors
    ):
        raise _Fallback from None


def _parse_numbers(text: bytes, parse: np.dtype[Any], depth: int) -> npt.NDArray[Any]:
    if len(text) <= _PIECE_BYTES:
        return _pack(orjson.loads(text), depth, parse)
    return _decode_pieces(text, parse, depth)


def _decode_pieces(text: bytes, parse: np.dtype[Any], depth: int) -> npt.NDArray[Any]:
    """A large array parsed piece by piece (see `_PIECE_BYTES`), then concatenated."""
    lead, start, end = _peel(text, depth)
    depth -= len(lead)
    parts = [_pack(orjson.loads(piece), depth, parse) for piece in _pieces(text, start, end, depth)]
    if len(parts) == 1:
        arr = parts[0]
    else:
        if len({part.shape[1:] for part in parts}) != 1:
            raise _Fallback
        arr = np.concatenate(parts)
    return arr.reshape((*lead, *arr.shape)) if lead else arr


def _peel(text: bytes, depth: int) -> tuple[list[int], int, int]:
    """Strip outer lists that hold a single element (``[[...]]``), so that a batch dimension
    of 1 does not leave a single top-level element to parse in one piece.

    One search of the text per level stripped: ``depth`` is at most `_MAX_RANK`, since
    `decode_output` refuses deeper text before it gets here.
    """
    lead: list[int] = []
    start, end = 0, len(text)
    while depth >= 2 and end - start > _PIECE_BYTES:
        closer = b"]" * (depth - 1)
        hit = text.find(closer, start, end)
        if hit < 0:
            break
        after = _skip_space(text, hit + depth - 1, end)
        if after != end - 1:  # something follows the first element: more than one
            break
        inner = _skip_space(text, start + 1, end)
        lead.append(1)
        start, end = inner, hit + depth - 1
        depth -= 1
    return lead, start, end


def _skip_space(text: bytes, pos: int, end: int) -> int:
    match = _SPACE.match(text, pos, end)  # it matches "" at worst
    return match.end() if match else pos


def _pieces(text: bytes, start: int, end: int, depth: int) -> list[bytes]:
    """Cut the array ``text[start:end]`` into JSON arrays of whole top-level elements.

    The pieces re-joined with commas are the original array, so if each piece is valid JSON the
    whole is, with the same elements in the same order; `_pack` checks the nesting is regular.
    A top-level element of a depth-d array ends with a run of d-1 ``]``; a depth-1 array is cut
    at commas.
    """
    if end - start <= _PIECE_BYTES:
        return [text[start:end] if start or end != len(text) else text]
    if text[end - 1] != 0x5D:  # ']'
        raise _Fallback
    pieces: list[bytes] = []
    pos, stop = start + 1, end - 1
    closer = b"]" * (depth - 1) if depth >= 2 else b","
    while stop - pos > _PIECE_BYTES:
        hit = text.find(closer, pos + _PIECE_BYTES, stop)
        if hit < 0:
            break
        cut = hit if depth == 1 else hit + depth - 1
        comma = _skip_space(text, cut, stop)
        if comma == stop:
            break
        if text[comma] != 0x2C:  # ','
            raise _Fallback
        pieces.append(b"[" + text[pos:cut] + b"]")
        pos = comma + 1
    pieces.append(b"[" + text[pos:stop] + b"]")
    return pieces


def _pack(value: Any, depth: int, parse: np.dtype[Any]) -> npt.NDArray[Any]:
    """A nested list of numbers, ``depth`` levels deep, as an array; any irregularity raises."""
    if type(value) is not list or not value or depth < 1:
        raise _Fallback  # empty arrays and bare values take the general path
    shape = [len(value)]
    rows: Iterable[Any] = value
    for level in range(1, depth):
        lengths = set(map(len, rows))  # TypeError for a number where a list should be
        if len(lengths) != 1:
            raise _Fallback
        width = lengths.pop()
        if width == 0:
            raise _Fallback
        shape.append(width)
        flat = itertools.chain.from_iterable(rows)
        rows = flat if level == depth - 1 else list(flat)
    # fromiter raises TypeError for a list or None where a number should be.
    if depth == 1:
        return np.fromiter(rows, dtype=parse, count=shape[0])
    return np.fromiter(rows, dtype=parse, count=math.prod(shape)).reshape(shape)


def _narrow(arr: npt.NDArray[Any], target: np.dtype[Any] | None) -> npt.NDArray[Any]:
    """Cast a parsed int64/uint64/float64 array to the requested dtype, refusing overflow."""
    if target is None or arr.dtype == target:
        return arr
    if target.kind == "f":
        try:
            with np.errstate(over="raise"):
                return arr.astype(target)
        except FloatingPointError:
            raise InvalidInput(
                f"output values exceed the range of {triton_datatype(target)}; check the dtype",
                expected=triton_datatype(target),
                given=str(arr.dtype),
            ) from None
    cast = _lossless_cast(arr, target)
    if cast is None:
        raise InvalidInput(
            f"output values do not fit {triton_datatype(target)}; check the dtype",
            expected=triton_datatype(target),
            given=str(arr.dtype),
        )
    return cast


def _leaves(value: Any) -> tuple[list[int], list[Any]]:
    """Shape and row-major leaves of a nested list; ragged nesting is an error."""
    shape: list[int] = []
    level: list[Any] = [value]
    while level and all(type(item) is list for item in level):
        lengths = {len(item) for item in level}
        if len(lengths) != 1:
            raise InvalidInput(
                "an output value is a ragged nested list, not an array",
                expected="a regular nested list",
                given=sorted(lengths),
            )
        shape.append(lengths.pop())
        level = list(itertools.chain.from_iterable(level))
    if any(type(item) is list for item in level):
        raise InvalidInput(
            f"an output value mixes lists and scalars at nesting level {len(shape)}: some element "
            "is nested deeper than the first, so it is not an array; the reply is malformed, "
            "check what the model and the manager send for this output",
            expected="a regular nested list",
            given="mixed nesting",
        )
    return shape, level


def _decode_general(value: Any, target: np.dtype[Any] | None) -> npt.NDArray[Any]:
    """Any JSON output value: bare values, strings, nulls, booleans, empty and odd arrays."""
    shape, leaves = _leaves(value)
    kinds = {type(leaf) for leaf in leaves}
    if str in kinds:
        if kinds != {str} or (target is not None and target.kind != "O"):
            wanted = "BYTES" if target is None else triton_datatype(target)
            raise InvalidInput(
                f"an output value holds strings but the dtype is {wanted}; pass the output's "
                "datatype from the model metadata",
                expected=wanted,
                given="BYTES",
            )
        # A bare string is the flattened list of a one-element tensor: give it back as 1-D.
        return _object_array([leaf.encode("utf-8") for leaf in leaves], shape or [1])
    if not kinds <= {int, float, bool, type(None)}:
        raise InvalidInput(
            f"an output value holds {sorted(k.__name__ for k in kinds)}, not numbers or strings",
            expected="numbers or strings",
            given=sorted(k.__name__ for k in kinds),
        )
    if target is not None and target.kind == "O":
        if not leaves:
            return _object_array([], shape)
        raise InvalidInput(
            "an output value holds numbers but the dtype is BYTES",
            expected="BYTES",
            given="numbers",
        )
    if target is None:
        if not kinds or float in kinds or type(None) in kinds:
            target = np.dtype(np.float64)
        elif kinds == {bool}:
            target = np.dtype(np.bool_)
        else:
            big = max(leaves) > np.iinfo(np.int64).max
            target = np.dtype(np.uint64 if big else np.int64)
    if target.kind == "f":
        # float(None) fails, but numpy maps None to NaN for float dtypes (as the server does).
        try:
            floats = np.array(leaves, dtype=np.float64)
        except OverflowError:
            raise InvalidInput(
                "an output value holds an integer beyond the float64 range",
                expected=triton_datatype(target),
                given="huge integer",
            ) from None
        return _narrow(floats.reshape(shape), target)
    if type(None) in kinds:
        raise InvalidInput(
            f"an output of dtype {triton_datatype(target)} holds null; the manager writes NaN "
            "and ±Inf as null, so this output is a float tensor: pass its real dtype",
            expected=triton_datatype(target),
            given="null",
        )
    exact: list[int] = []
    for leaf in leaves:
        if type(leaf) is float:
            if not leaf.is_integer():
                raise InvalidInput(
                    f"an output of dtype {triton_datatype(target)} holds the fraction {leaf!r}",
                    expected=triton_datatype(target),
                    given=leaf,
                )
            leaf = int(leaf)
        exact.append(int(leaf))
    lo, hi = (0, 1) if target.kind == "b" else _int_range(target)
    if exact and (min(exact) < lo or max(exact) > hi):
        raise InvalidInput(
            f"output values do not fit {triton_datatype(target)} (range {lo}..{hi})",
            expected=triton_datatype(target),
            given=(min(exact), max(exact)),
        )
    return np.array(exact, dtype=target).reshape(shape)


def _object_array(items: list[bytes], shape: list[int]) -> npt.NDArray[Any]:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr.reshape(shape)


def _apply_shape(arr: npt.NDArray[Any], shape: Iterable[int]) -> npt.NDArray[Any]:
    """Reshape to the metadata shape when the element counts agree; -1 matches any size."""
    wanted = tuple(int(n) for n in shape)
    if arr.shape == wanted:
        return arr
    if any(n < 0 for n in wanted):
        if len(wanted) == arr.ndim and all(
            w < 0 or w == n for w, n in zip(wanted, arr.shape, strict=True)
        ):
            return arr
        if sum(n < 0 for n in wanted) == 1:
            known = math.prod(n for n in wanted if n >= 0)
            if known and arr.size % known == 0:
                return arr.reshape(wanted)
    elif arr.size == math.prod(wanted):
        return arr.reshape(wanted)
    raise InvalidInput(
        f"an output of shape {list(arr.shape)} ({arr.size} elements) does not fit the expected "
        f"shape {list(wanted)}; check the shape from the model metadata",
        expected=list(wanted),
        given=list(arr.shape),
    )
