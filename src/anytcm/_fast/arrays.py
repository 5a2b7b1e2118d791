"""Numeric output values parsed by orjson and packed by `numpy.fromiter`, in pieces when large.

`anytcm.tensors.decode_output`'s general path parses a value into Python objects, walks every
leaf in Python to learn the shape and the kinds of the values, and converts them: work per
element that dominates once a value holds more than a few numbers. Here orjson parses the
numbers and `numpy.fromiter` writes them straight into the target dtype, with no per-element
Python work and no walk to discover a shape (the caller has read the rank from the opening
brackets).

A large value is cut into pieces at element boundaries and each piece parsed on its own: one
huge `orjson.loads` creates millions of float objects at once, which no longer fit in the CPU
cache by the time numpy reads them, while a piece's floats are read while they still do.

Only the entry point `decode_numbers` is used from outside. Whatever this path is unsure of
(strings, booleans, nulls, fractions for an integer dtype, ragged or mixed nesting, values out
of range, empty arrays, text that is not JSON) returns None: the general path then decides and
explains. Every scan here is linear in the size of the value.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

__all__ = ("decode_numbers",)

# Values larger than this are parsed in pieces of about this size.
_PIECE_BYTES: Final = 1 << 17
_SPACE: Final = re.compile(rb"[ \t\r\n]*")
_FLOAT64: Final = np.dtype(np.float64)
_INT64: Final = np.dtype(np.int64)


class _Fallback(Exception):
    """This path declines; the general path decides (and explains any error)."""


def decode_numbers(
    text: bytes, target: np.dtype[Any] | None, depth: int
) -> npt.NDArray[Any] | None:
    """A regular nested array of numbers of ``target`` (numeric; None: int64 or float64 as the
    text says), or None for anything else.

    ``text`` is the value's JSON text, stripped; ``depth`` the number of lists it opens with,
    which is the array's rank if it is regular. A few memchr-speed scans first send the text
    that `numpy.fromiter` would read wrongly to the general path: strings (it would parse
    ``"1.5"``), booleans when the dtype is to be inferred, and, for integer dtypes, fractions
    and exponents (it would truncate them).
    """
    if b'"' in text:
        return None
    if target is None:
        if b"t" in text or b"f" in text:  # booleans: the general path infers bool
            return None
        float_text = b"." in text or b"e" in text or b"E" in text
        parse = _FLOAT64 if float_text else _INT64
    elif target.kind == "f":
        parse = target
    else:
        if b"." in text or b"e" in text or b"E" in text:
            return None
        parse = target
    # numpy turns a float beyond a narrower float's range into inf with a mere RuntimeWarning:
    # raised instead, it declines. float64 needs no guard: orjson refuses a number beyond it.
    guard = parse.kind == "f" and parse.itemsize < 8
    try:
        if guard:
            with np.errstate(over="raise"):
                return _parse(text, parse, depth)
        return _parse(text, parse, depth)
    except (
        _Fallback,
        orjson.JSONDecodeError,
        TypeError,
        ValueError,
        OverflowError,
        FloatingPointError,
        RuntimeWarning,  # raised, not warned, when warnings are errors
    ):
        return None


def _parse(text: bytes, parse: np.dtype[Any], depth: int) -> npt.NDArray[Any]:
    if len(text) <= _PIECE_BYTES:
        return _pack(orjson.loads(text), depth, parse)
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

    One search of the text per level stripped: ``depth`` is bounded by numpy's most
    dimensions, since `decode_output` refuses deeper text before it gets here.
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
