"""Inputs: numpy arrays (or nested lists) written as the manager's JSON tensors."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import orjson

from .. import _fast
from .._fast import encode as _fast_encode
from ..errors import InvalidInput
from .datatypes import JSON_OPTIONS, NUMPY_TO_TRITON, SHM_HINT, numpy_dtype, triton_datatype

#: What `encode_input` takes besides an ndarray: nested sequences and scalars.
ArrayLike: TypeAlias = "npt.NDArray[Any] | Sequence[Any] | bool | int | float | str | bytes"


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
    if _fast.ENABLED and datatype is None and type(array) is np.ndarray and type(name) is str:
        encoded = _fast_encode.encode_plain(name, array, NUMPY_TO_TRITON)
        if encoded is not None:
            return encoded
    if not isinstance(name, str):
        raise InvalidInput(
            f"input names are strings, got {name!r}", expected="str", given=type(name).__name__
        )
    target = None if datatype is None else numpy_dtype(datatype)
    arr = input_array(name, array, target)
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
            {"name": name, "shape": shape, "datatype": dt, "data": data}, option=JSON_OPTIONS
        )
    except orjson.JSONEncodeError as exc:  # a str with lone surrogates is not UTF-8
        raise InvalidInput(
            f"input {name!r} cannot be written as JSON ({exc}); {SHM_HINT}",
            expected="UTF-8 text",
            given=str(exc),
        ) from None


def input_array(name: str, array: ArrayLike, target: np.dtype[Any] | None) -> npt.NDArray[Any]:
    """The caller's value for input ``name`` as an ndarray of dtype ``target`` (None: as the
    value is), converted as `encode_input` converts it: a numeric array is cast only if no value
    changes; Python floats may be rounded to a narrower float type.

    :raises InvalidInput: for a ragged value, a lossy cast or a dtype with no Triton datatype.
    """
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
        cast = float_cast(arr, target)
        if cast is None:
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
            lo, hi = (0, 1) if target.kind == "b" else int_range(target)
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
            lo, hi = int_range(src)
            if int(cast.min()) < lo or int(cast.max()) > hi:
                return None
            return cast if np.array_equal(cast.astype(src), arr) else None
        back = cast.astype(src)
        return cast if np.array_equal(back, arr, equal_nan=True) else None


def float_cast(arr: npt.NDArray[Any], target: np.dtype[Any]) -> npt.NDArray[Any] | None:
    """``arr`` cast to the float dtype ``target``, or None if a finite value overflows to
    infinity (numpy would only warn)."""
    try:
        with np.errstate(over="raise"):
            return arr.astype(target)
    except FloatingPointError:
        return None


def int_range(dtype: np.dtype[Any]) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _check_empty_shape(name: str, shape: list[int]) -> None:
    """Refuse empty shapes that nested lists cannot express (a zero before the last dim)."""
    if 0 in shape and shape.index(0) != len(shape) - 1:
        raise InvalidInput(
            f"input {name!r} has shape {shape}: JSON nesting stops at the first zero-length "
            "dimension, so the manager would read a different shape; only a zero in the last "
            f"dimension can be sent as JSON ({SHM_HINT})",
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
            f"{where}); JSON cannot carry ±Inf and the manager would read NaN: {SHM_HINT}, "
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
                    f"expects that) or {SHM_HINT}",
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
