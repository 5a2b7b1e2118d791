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

import itertools
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final, TypeAlias

import msgspec
import numpy as np
import numpy.typing as npt
import orjson

from .. import _fast
from .._fast import arrays as _fast_arrays
from .._fast import floats as _fast_floats
from ..errors import InvalidInput
from ..wire import Numbers
from .datatypes import KNOWN_TARGETS as _KNOWN_TARGETS
from .datatypes import (
    SUPPORTED_DATATYPES,
    TRITON_TO_NUMPY,
    datatype_name,
    numpy_dtype,
    triton_datatype,
)
from .datatypes import resolve_dtype as _resolve_dtype
from .inputs import ArrayLike, encode_input, input_array
from .inputs import float_cast as _float_cast
from .inputs import int_range as _int_range

__all__ = (
    "SUPPORTED_DATATYPES",
    "TRITON_TO_NUMPY",
    "ArrayLike",
    "RawJSON",
    "datatype_name",
    "decode_output",
    "encode_input",
    "input_array",
    "numpy_dtype",
    "triton_datatype",
)

#: What `decode_output` takes: the JSON text of one output value.
RawJSON: TypeAlias = "bytes | bytearray | memoryview | str | msgspec.Raw"


# -- decoding outputs ------------------------------------------------------------------------------

_WHITESPACE: Final = frozenset(b" \t\r\n")


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

    Common outputs (small float lists, numeric arrays) take fast paths (`anytcm._fast`), which
    give the same arrays and leave anything unusual, and every error, to the general path.

    :raises InvalidInput: for a value that is not a regular array of the requested dtype
        (ragged lists, null for an integer dtype, strings for a numeric dtype, values out of
        range) or that does not fit ``shape``. A value nested deeper than any ndarray can be,
        or than ``shape`` has dimensions plus one (a batch dimension model configs leave
        out), is refused from its opening brackets, before it is parsed; every path does
        work linear in the size of the value.
    """
    fast = _fast.ENABLED
    try:
        target = _KNOWN_TARGETS[dtype] if fast else _resolve_dtype(dtype)
    except (KeyError, TypeError):  # TypeError: unhashable, which the general route explains
        target = _resolve_dtype(dtype)
    if fast and shape is None:
        small = _fast_floats.decode_floats(raw, target)
        if small is not None:
            return small
    if isinstance(raw, (list, int, float)):
        raw = _parsed_text(raw, shape)
    text = _as_bytes(raw).strip()
    if not text:
        raise InvalidInput("an output value is empty, not JSON", expected="JSON", given=raw)
    limit = _depth_limit(shape)
    # A regular array's first element is nested as deep as all the others, so the brackets
    # that open the text are its rank: deeper is refused here, before anything is parsed. An
    # element nested deeper further on makes the array ragged, which every path refuses.
    depth = _opening_depth(text)
    if depth > limit:
        raise _too_deep(depth, limit, shape)
    arr: npt.NDArray[Any] | None = None
    if fast and depth and (target is None or target.kind in "iuf"):
        arr = _fast_arrays.decode_numbers(text, target, depth)
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


def _as_bytes(raw: RawJSON) -> bytes:
    if type(raw) is bytes or isinstance(raw, bytes):
        return raw
    if isinstance(raw, str):
        return raw.encode("utf-8")
    return bytes(memoryview(raw))


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
        cast = floats if target == floats.dtype else _float_cast(floats, target)
        if cast is None:
            raise InvalidInput(
                f"output values exceed the range of {triton_datatype(target)}; check the dtype",
                expected=triton_datatype(target),
                given=str(floats.dtype),
            )
        return cast.reshape(shape)
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
