"""The fast paths (`anytcm._fast`) against the general paths they shortcut, on the same inputs.

Each comparison runs both paths in this one process, whatever ANYTCM_NO_FAST_PATHS says: the
general path by turning the switch off for the call (`anytcm.tensors` reads it at each call), or
by building the frame decoder without its fast paths. A fast path must give exactly what the
general path gives, or decline; an error is always the general path's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from anytcm import _fast, tensors, wire
from anytcm._fast import dtypes as fast_dtypes
from anytcm._fast import encode as fast_encode
from anytcm.errors import InvalidInput
from anytcm.tensors import TRITON_TO_NUMPY, decode_output, encode_input

NUMERIC = [dtype for name, dtype in TRITON_TO_NUMPY.items() if name != "BYTES"]


def outcome(fn: Any, *args: Any) -> Any:
    """What a call gives: its value, or the type and message of the InvalidInput it raises."""
    try:
        return fn(*args)
    except InvalidInput as exc:
        return (type(exc), str(exc))


def both_ways(monkeypatch: pytest.MonkeyPatch, fn: Any, *args: Any) -> tuple[Any, Any]:
    """``fn(*args)`` with the fast paths on, then off."""
    results = []
    for enabled in (True, False):
        monkeypatch.setattr(_fast, "ENABLED", enabled)
        results.append(outcome(fn, *args))
    return results[0], results[1]


def same_outcome(fast: Any, general: Any) -> bool:
    if isinstance(general, tuple) or isinstance(fast, tuple):
        return bool(fast == general)
    if isinstance(general, bytes):
        return bool(fast == general)
    assert isinstance(fast, np.ndarray)
    assert isinstance(general, np.ndarray)
    if fast.dtype != general.dtype or fast.shape != general.shape:
        return False
    if fast.dtype.kind == "f":
        return bool(np.array_equal(fast, general, equal_nan=True)) and bool(
            np.array_equal(np.signbit(fast), np.signbit(general))
        )
    return bool(np.array_equal(fast, general))


# -- the switch --------------------------------------------------------------------------------


def test_the_environment_switch_sends_every_call_down_the_general_path() -> None:
    """With ANYTCM_NO_FAST_PATHS=1 no fast-path entry point is ever called."""
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from anytcm import _fast, tensors, wire
        from anytcm._fast import arrays, encode, floats

        assert _fast.ENABLED is False

        def refuse(*args, **kwargs):
            raise AssertionError("a fast path was called")

        arrays.decode_numbers = floats.decode_floats = encode.encode_plain = refuse
        tensors.encode_input("x", np.arange(4, dtype=np.float32))
        assert tensors.decode_output(b"[1.5, 2.5]", "FP32").tolist() == [1.5, 2.5]
        assert tensors.decode_output(b"[[1, 2], [3, 4]]", "INT64").shape == (2, 2)
        assert tensors.decode_output([1.5, 2.5], np.float32).dtype == np.float32
        frame = wire.ServerFrameDecoder().decode(
            b'{"type":"inference","payload":{"status":"COMPLETED","data":{"A":[1.5]}}}'
        )
        assert type(frame.payload.data["A"]).__name__ == "Raw"
        assert "anytcm._fast.frames" not in sys.modules
        """
    )
    env_run = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "ANYTCM_NO_FAST_PATHS": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert env_run.returncode == 0, env_run.stderr


@pytest.mark.parametrize(("value", "enabled"), [("", True), ("0", True), ("1", False)])
def test_the_switch_reads_the_environment(value: str, enabled: bool) -> None:
    script = "from anytcm import _fast; print(_fast.ENABLED)"
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "ANYTCM_NO_FAST_PATHS": value},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == str(enabled)


# -- dtypes ------------------------------------------------------------------------------------


def test_every_known_spelling_resolves_as_the_general_route_does() -> None:
    table = fast_dtypes.spellings(TRITON_TO_NUMPY)
    assert set(TRITON_TO_NUMPY) | {None, np.float32, np.dtype(np.float32)} <= set(table)
    for spelling, dtype in table.items():
        resolved = tensors.datatypes.resolve_dtype(spelling)  # type: ignore[arg-type]
        assert resolved is dtype, spelling


# -- encoding inputs ---------------------------------------------------------------------------

_arrays = st.sampled_from(NUMERIC).flatmap(
    lambda dt: hnp.arrays(
        dt,
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
        elements=hnp.from_dtype(dt) if dt.kind == "f" else None,  # NaN and ±Inf included
    )
)
_layouts = st.sampled_from(["as is", "transposed", "strided", "big-endian"])


def laid_out(arr: npt.NDArray[Any], layout: str) -> npt.NDArray[Any]:
    if layout == "transposed":
        transposed: npt.NDArray[Any] = arr.T
        return transposed
    if layout == "strided" and arr.ndim:
        strided: npt.NDArray[Any] = arr[..., ::2]
        return strided
    if layout == "big-endian":
        swapped: npt.NDArray[Any] = arr.astype(arr.dtype.newbyteorder(">"))
        return swapped
    return arr


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(arr=_arrays, layout=_layouts, name=st.sampled_from(["INPUT0", "null", "x\u00e9"]))
def test_encode_plain_writes_what_the_general_path_writes(
    arr: npt.NDArray[Any], layout: str, name: str
) -> None:
    value = laid_out(arr, layout)
    fast = fast_encode.encode_plain(name, value, tensors.datatypes.NUMPY_TO_TRITON)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_fast, "ENABLED", False)
        general = outcome(encode_input, name, value)
    if fast is not None:
        assert fast == general
    with pytest.MonkeyPatch.context() as patch:
        fast_way, general_way = both_ways(patch, encode_input, name, value)
    assert same_outcome(fast_way, general_way)


# -- decoding outputs --------------------------------------------------------------------------

_LEAVES = (
    st.floats(width=32, allow_nan=False).map(lambda v: orjson.dumps(v))
    | st.floats(allow_nan=False, allow_infinity=False).map(lambda v: orjson.dumps(v))
    | st.integers(-(2**65), 2**65).map(lambda v: str(v).encode())
    | st.sampled_from([b"null", b"true", b"false", b'"a"', b"1e39", b"-0.0", b"1.5e-45", b"[]"])
)
_DTYPES = st.sampled_from(
    [None, "FP32", "FP64", "FP16", "INT64", "INT8", "UINT64", "BOOL", "BYTES"]
)


@st.composite
def output_texts(draw: st.DrawFn) -> bytes:
    """Flat lists, lists of rows (ragged now and then) and deeper nesting, in either spacing."""
    comma = draw(st.sampled_from([b",", b", "]))
    rows = draw(st.lists(st.lists(_LEAVES, max_size=5), min_size=1, max_size=4))
    depth = draw(st.integers(1, 3))
    if depth == 1:
        return b"[" + comma.join(rows[0]) + b"]"
    text = b"[" + comma.join(b"[" + comma.join(row) + b"]" for row in rows) + b"]"
    return b"[" + text + b"]" if depth == 3 else text


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(text=output_texts(), dtype=_DTYPES, with_shape=st.booleans())
def test_decode_output_gives_the_same_with_and_without_the_fast_paths(
    text: bytes, dtype: str | None, with_shape: bool
) -> None:
    shape = [-1] if with_shape else None  # a shape takes the paths that reshape
    with pytest.MonkeyPatch.context() as patch:
        fast, general = both_ways(patch, decode_output, text, dtype, shape)
    assert same_outcome(fast, general), (text, dtype)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=st.lists(
        st.integers(-(2**65), 2**65) | st.floats(allow_nan=False, allow_infinity=False),
        max_size=8,
    ),
    dtype=_DTYPES,
)
def test_parsed_numbers_decode_the_same_with_and_without_the_fast_paths(
    value: list[int | float], dtype: str | None
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        fast, general = both_ways(patch, decode_output, value, dtype, None)
    assert same_outcome(fast, general), (value, dtype)


@pytest.mark.parametrize("shape", [(300_000,), (700, 500), (1, 200_000)])
@pytest.mark.parametrize("dtype", ["FP32", "INT64"])
def test_large_outputs_decode_the_same_with_and_without_the_fast_paths(
    shape: tuple[int, ...], dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large enough to be cut out of the frame and parsed in pieces."""
    rng = np.random.default_rng(7)
    arr = (
        rng.standard_normal(shape).astype(np.float32)
        if dtype == "FP32"
        else rng.integers(-(2**62), 2**62, shape)
    )
    frame = orjson.dumps(
        {"type": "inference", "payload": {"status": "COMPLETED", "data": {"OUT": arr}}},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    decoded = []
    for fast_paths in (True, False):
        reply = wire.ServerFrameDecoder(fast_paths=fast_paths).decode(frame)
        assert isinstance(reply, wire.InferenceReply)
        assert isinstance(reply.payload.data, dict)
        raw = reply.payload.data["OUT"]
        assert isinstance(raw, msgspec.Raw)
        monkeypatch.setattr(_fast, "ENABLED", fast_paths)
        decoded.append(decode_output(raw, dtype))
    assert same_outcome(decoded[0], decoded[1])
    assert np.array_equal(decoded[0], arr)


def test_a_small_reply_decodes_to_the_same_arrays_either_way() -> None:
    """The numbers the frame decoder parsed, and the text of the same reply, decode alike."""
    data = {"A": [0.1, -2, 3e-45, 1e300], "B": 7, "C": [1, 2**63]}
    frame = json.dumps({"type": "inference", "payload": {"status": "COMPLETED", "data": data}})
    replies = [
        wire.ServerFrameDecoder(fast_paths=fast_paths).decode(frame.encode())
        for fast_paths in (True, False)
    ]
    assert all(isinstance(r, wire.InferenceReply) for r in replies)
    numbers, text = (r.payload.data for r in replies)  # type: ignore[union-attr]
    assert isinstance(numbers, dict)
    assert isinstance(text, dict)
    assert type(numbers["A"]) is list
    assert type(text["A"]) is msgspec.Raw
    for name, dtype in (("A", "FP32"), ("A", "FP64"), ("B", None), ("C", "UINT64"), ("C", None)):
        assert same_outcome(
            outcome(decode_output, numbers[name], dtype), outcome(decode_output, text[name], dtype)
        ), (name, dtype)
