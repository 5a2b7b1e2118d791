"""The JSON tensor codec (`anytcm.tensors`): datatypes, `encode_input`, `decode_output`.

Inputs are checked the way the manager reads them: the JSON is parsed with the stdlib (Python
floats, like the manager's orjson) and turned into an array with `np.asarray(data, dtype)`.
Outputs are produced the way the manager writes them: `orjson.dumps(arr.tolist())`, and also
orjson's numpy serialisation (shortest float32 form).
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from anytcm import tensors, wire
from anytcm._fast import arrays as fast_arrays
from anytcm._fast import floats as fast_floats
from anytcm.errors import InvalidInput
from anytcm.tensors import (
    SUPPORTED_DATATYPES,
    TRITON_TO_NUMPY,
    decode_output,
    encode_input,
    numpy_dtype,
    triton_datatype,
)

NUMERIC = {name: dtype for name, dtype in TRITON_TO_NUMPY.items() if name != "BYTES"}
OPT = orjson.OPT_SERIALIZE_NUMPY


def server_reads(encoded: bytes) -> tuple[dict[str, Any], npt.NDArray[Any]]:
    """What the manager makes of one encoded input (infer.py `_to_numpy` + the shape check)."""
    item = json.loads(encoded)
    assert set(item) == {"name", "shape", "datatype", "data"}
    dtype = TRITON_TO_NUMPY[item["datatype"]]
    data = item["data"]
    if item["datatype"] == "BYTES":
        arr = np.asarray(data, dtype=object)
    else:
        arr = np.asarray(data if isinstance(data, list) else [data], dtype=dtype)
    assert list(arr.shape) == item["shape"], "data is not nested to exactly the shape"
    return item, arr


def representable(shape: tuple[int, ...]) -> bool:
    return 0 not in shape or shape.index(0) == len(shape) - 1


def same(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> bool:
    """Equal dtype, shape and values, bit for bit except that any NaN equals any NaN.

    JSON carries NaN as null, so a NaN's sign and payload cannot survive; -0.0 can, and must.
    """
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind != "f":
        return bool(np.array_equal(a, b))
    nan = np.isnan(a)
    if not np.array_equal(nan, np.isnan(b)):
        return False
    bits = f"u{a.itemsize}"
    return bool(np.array_equal(a[~nan].view(bits), b[~nan].view(bits)))


def numeric_arrays(
    min_dims: int = 0, *, finite: bool = True, representable_only: bool = True
) -> st.SearchStrategy[npt.NDArray[Any]]:
    shapes = hnp.array_shapes(min_dims=min_dims, max_dims=3, min_side=0, max_side=5)
    if representable_only:
        shapes = shapes.filter(representable)
    dtypes = st.sampled_from(list(NUMERIC.values()))
    return dtypes.flatmap(
        lambda dt: hnp.arrays(
            dt,
            shapes,
            elements=hnp.from_dtype(dt, allow_infinity=False)
            if dt.kind == "f" and finite
            else None,
        )
    )


# -- datatypes -------------------------------------------------------------------------------------


def test_mapping_covers_the_manager_datatypes() -> None:
    assert set(TRITON_TO_NUMPY) == {
        "BOOL",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "FP16",
        "FP32",
        "FP64",
        "BYTES",
    }
    assert TRITON_TO_NUMPY["FP16"] == np.float16
    assert TRITON_TO_NUMPY["UINT64"] == np.uint64
    assert TRITON_TO_NUMPY["BYTES"] == np.dtype(object)
    assert tuple(TRITON_TO_NUMPY) == SUPPORTED_DATATYPES


@pytest.mark.parametrize("name", list(TRITON_TO_NUMPY))
def test_numpy_dtype_accepts_api_and_config_spellings(name: str) -> None:
    assert numpy_dtype(name) == TRITON_TO_NUMPY[name]
    if name != "BYTES":
        assert numpy_dtype(f"TYPE_{name}") == TRITON_TO_NUMPY[name]


def test_type_string_is_bytes() -> None:
    assert numpy_dtype("TYPE_STRING") == np.dtype(object)


def test_bf16_is_refused_with_the_reason() -> None:
    for spelling in ("BF16", "TYPE_BF16"):
        with pytest.raises(InvalidInput, match="BF16") as info:
            numpy_dtype(spelling)
        assert "manager" in str(info.value)


def test_unknown_datatype_names_the_supported_ones() -> None:
    with pytest.raises(InvalidInput) as info:
        numpy_dtype("FP8")
    assert "FP32" in str(info.value)
    assert "BYTES" in str(info.value)
    assert info.value.given == "FP8"
    assert info.value.expected == SUPPORTED_DATATYPES


@pytest.mark.parametrize(("name", "dtype"), list(NUMERIC.items()))
def test_triton_datatype_of_numeric(name: str, dtype: np.dtype[Any]) -> None:
    assert triton_datatype(dtype) == name
    assert triton_datatype(np.zeros(2, dtype)) == name
    assert triton_datatype(dtype.newbyteorder(">")) == name


@pytest.mark.parametrize("value", [np.array([b"a"]), np.array(["a"]), np.array([b"a"], object)])
def test_text_arrays_are_bytes(value: npt.NDArray[Any]) -> None:
    assert triton_datatype(value) == "BYTES"


@pytest.mark.parametrize(
    "dtype", [np.complex64, np.complex128, "datetime64[s]", "timedelta64[ms]", np.longdouble]
)
def test_unsupported_dtypes_name_the_supported_set(dtype: Any) -> None:
    if np.dtype(dtype) == np.float64:
        pytest.skip("longdouble is float64 on this platform")
    with pytest.raises(InvalidInput) as info:
        triton_datatype(dtype)
    message = str(info.value)
    assert "FP32" in message
    assert "BYTES" in message
    with pytest.raises(InvalidInput):
        encode_input("x", np.zeros(2, dtype))


# -- encode_input ----------------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(numeric_arrays())
def test_encode_round_trips_through_the_server_reading(arr: npt.NDArray[Any]) -> None:
    encoded = encode_input("INPUT0", arr)
    item, back = server_reads(encoded)
    assert item["name"] == "INPUT0"
    assert item["datatype"] == triton_datatype(arr)
    expected = arr.reshape(1) if arr.ndim == 0 else arr
    assert item["shape"] == list(expected.shape)
    # Floats come back bit-identical (float32/16 through a Python float, as on the server).
    assert same(back, expected)
    if arr.dtype.kind != "f":
        assert item["data"] == expected.tolist()


@pytest.mark.parametrize("name", list(NUMERIC))
def test_every_numeric_datatype_encodes(name: str) -> None:
    dtype = NUMERIC[name]
    values = [0, 1] if name == "BOOL" else [0, 1, 2, 100]
    arr = np.array(values, dtype=dtype).reshape(2, -1)
    item, back = server_reads(encode_input("x", arr))
    assert item["datatype"] == name
    assert item["data"] == arr.tolist()
    assert same(back, arr)


def test_float32_is_written_in_shortest_form() -> None:
    encoded = encode_input("x", np.array([0.1, 1 / 3], np.float32))
    assert b"[0.1,0.33333334]" in encoded
    # The shortest form is why ~6,100 random FP32 values fit a 64 KiB frame, not ~3,200.
    arr = np.random.default_rng(0).standard_normal(6000).astype(np.float32)
    assert len(encode_input("x", arr)) < 65_536 < len(orjson.dumps(arr.tolist()))


def test_fp16_encodes_as_numbers() -> None:
    arr = np.array([1.5, -0.1, 65504], np.float16)
    item, back = server_reads(encode_input("x", arr))
    assert item["datatype"] == "FP16"
    assert all(isinstance(v, float) for v in item["data"])
    assert same(back, arr)


def test_big_integers_are_exact() -> None:
    u = np.array([np.iinfo(np.uint64).max, 2**53 + 1], np.uint64)
    i = np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max, 2**53 + 1], np.int64)
    assert json.loads(encode_input("u", u))["data"] == [2**64 - 1, 2**53 + 1]
    assert json.loads(encode_input("i", i))["data"] == [-(2**63), 2**63 - 1, 2**53 + 1]


def test_zero_d_is_sent_as_a_one_element_vector() -> None:
    item, back = server_reads(encode_input("x", np.array(2.5, np.float32)))
    assert same(back, np.array([2.5], np.float32))
    assert item["shape"] == [1]
    assert item["data"] == [2.5]
    item, _ = server_reads(encode_input("x", np.int64(7)))
    assert (item["shape"], item["data"], item["datatype"]) == ([1], [7], "INT64")
    item, _ = server_reads(encode_input("x", True))
    assert (item["shape"], item["data"], item["datatype"]) == ([1], [True], "BOOL")


@pytest.mark.parametrize(
    ("shape", "data"), [((0,), []), ((2, 0), [[], []]), ((1, 2, 0), [[[], []]])]
)
def test_empty_arrays_nest_to_the_shape(shape: tuple[int, ...], data: Any) -> None:
    for dtype in (np.float32, np.int8, object):
        item, _ = server_reads(encode_input("x", np.zeros(shape, dtype)))
        assert item["shape"] == list(shape)
        assert item["data"] == data


@pytest.mark.parametrize("shape", [(0, 3), (2, 0, 1), (0, 0)])
def test_empty_shapes_json_cannot_express_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidInput, match="shm carrier") as info:
        encode_input("x", np.zeros(shape, np.float32))
    assert info.value.given == list(shape)


def test_non_contiguous_and_big_endian_arrays() -> None:
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    for arr in (base.T, base[:, ::2], base.astype(">f4"), base.astype(">i8")[::-1]):
        item, back = server_reads(encode_input("x", arr))
        assert item["data"] == arr.tolist()
        assert np.array_equal(back, arr)


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_infinity_is_refused_with_the_remedy(bad: float, dtype: Any) -> None:
    arr = np.array([[1.0, 2.0], [3.0, bad]], dtype)
    with pytest.raises(InvalidInput, match="shm carrier") as info:
        encode_input("x", arr)
    assert "(1, 1)" in str(info.value)
    assert info.value.given == bad


@pytest.mark.parametrize("name", ["x", "label", "null"])
def test_infinity_is_refused_whatever_the_input_name(name: str) -> None:
    """The small path's null check first looks for an "l", which a name may hold too."""
    with pytest.raises(InvalidInput, match="shm carrier"):
        encode_input(name, np.array([1.0, np.inf], np.float32))
    item = json.loads(encode_input(name, np.array([1.0, np.nan], np.float32)))
    assert item["name"] == name
    assert item["data"] == [1.0, None]
    assert json.loads(encode_input(name, np.array([1.5], np.float32)))["data"] == [1.5]


def test_nan_is_sent_as_null_which_the_server_reads_as_nan() -> None:
    # The claim the encoder relies on: numpy turns None into NaN for float dtypes.
    for dtype in (np.float16, np.float32, np.float64):
        assert np.isnan(np.asarray([None], dtype=dtype)).all()
    arr = np.array([1.0, np.nan], np.float32)
    encoded = encode_input("x", arr)
    assert b"[1.0,null]" in encoded
    _, back = server_reads(encoded)
    assert same(back, arr)


def test_nan_tokens_never_appear() -> None:
    encoded = encode_input("x", np.array([np.nan, -np.nan], np.float64))
    assert b"NaN" not in encoded
    assert json.loads(encoded)["data"] == [None, None]


# BYTES


def test_bytes_and_str_encode_as_utf8_strings() -> None:
    arr = np.array([b"abc", "h\u00e9llo", "\u65e5\u672c", b"\xc3\xa9", b"a\x00"], dtype=object)
    item, back = server_reads(encode_input("text", arr))
    assert item["datatype"] == "BYTES"
    assert item["data"] == ["abc", "h\u00e9llo", "\u65e5\u672c", "\u00e9", "a\x00"]
    assert back.shape == (5,)


def test_numpy_s_and_u_arrays_and_lists() -> None:
    assert json.loads(encode_input("x", np.array([[b"a", b"b"], [b"c", b"d"]])))["data"] == [
        ["a", "b"],
        ["c", "d"],
    ]
    item = json.loads(encode_input("x", np.array(["\u00fc", "x"])))
    assert (item["data"], item["shape"], item["datatype"]) == (["\u00fc", "x"], [2], "BYTES")
    item = json.loads(encode_input("x", ["a", b"b\x00"], "TYPE_STRING"))
    assert (item["data"], item["datatype"]) == (["a", "b\x00"], "BYTES")
    item = json.loads(encode_input("x", "one"))
    assert (item["data"], item["shape"]) == (["one"], [1])


@settings(max_examples=100)
@given(
    hnp.arrays(
        object, hnp.array_shapes(min_dims=1, max_dims=3, max_side=3), elements=st.text(max_size=6)
    )
)
def test_bytes_round_trip(arr: npt.NDArray[Any]) -> None:
    encodable = all(not any(0xD800 <= ord(c) <= 0xDFFF for c in s) for s in arr.flat)
    if not encodable:
        with pytest.raises(InvalidInput):
            encode_input("x", arr)
        return
    item, back = server_reads(encode_input("x", arr))
    assert item["shape"] == list(arr.shape)
    assert back.tolist() == arr.tolist()
    # and back out as the manager would send it: flattened
    raw = orjson.dumps(list(arr.flat) if arr.size != 1 else arr.flat[0])
    out = decode_output(raw, "BYTES", arr.shape)
    assert out.shape == arr.shape
    assert out.tolist() == np.vectorize(lambda s: s.encode(), otypes=[object])(arr).tolist()


def test_invalid_utf8_is_refused_with_a_remedy() -> None:
    with pytest.raises(InvalidInput, match="UTF-8") as info:
        encode_input("x", np.array([b"ok", b"\xff\xfe"], dtype=object))
    message = str(info.value)
    assert "element 1" in message
    assert "base64" in message
    assert "shm carrier" in message
    with pytest.raises(InvalidInput, match="UTF-8"):
        encode_input("x", np.array([b"\x80"]))


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(InvalidInput):
        encode_input("x", ["\ud800"])


def test_non_text_in_a_bytes_array_is_refused() -> None:
    with pytest.raises(InvalidInput, match="element 1"):
        encode_input("x", np.array(["a", 3], dtype=object))


# datatype casts


@pytest.mark.parametrize(
    ("value", "datatype", "expected"),
    [
        (np.array([1, 2], np.int32), "INT64", np.array([1, 2], np.int64)),
        (np.array([1, 2], np.int64), "UINT8", np.array([1, 2], np.uint8)),
        (np.array([0.5, -2.0]), "FP32", np.array([0.5, -2.0], np.float32)),
        (np.array([2.0, 3.0], np.float32), "INT16", np.array([2, 3], np.int16)),
        (np.array([0, 1]), "BOOL", np.array([False, True])),
        (np.array([2**53], np.int64), "FP64", np.array([2.0**53])),
        (np.array([np.nan]), "FP16", np.array([np.nan], np.float16)),
        ([1, 2], "TYPE_FP32", np.array([1, 2], np.float32)),
        ([0.1, 0.2], "FP32", np.array([0.1, 0.2], np.float32)),  # a float literal may round
        ([0.1, None], "FP32", np.array([0.1, np.nan], np.float32)),
        (7, "UINT64", np.array([7], np.uint64)),
    ],
)
def test_lossless_casts_are_made(value: Any, datatype: str, expected: npt.NDArray[Any]) -> None:
    item, back = server_reads(encode_input("x", value, datatype))
    assert item["datatype"] == triton_datatype(numpy_dtype(datatype))
    assert same(back, expected)


@pytest.mark.parametrize(
    ("value", "datatype"),
    [
        (np.array([0.1]), "FP32"),  # float64 0.1 is not a float32
        (np.array([-1], np.int64), "UINT64"),  # survives a round trip, but wraps
        (np.array([2**64 - 1], np.uint64), "INT64"),
        (np.array([2**53 + 1], np.int64), "FP64"),
        (np.array([2**63 - 1], np.int64), "FP64"),
        (np.array([1.5]), "INT32"),
        (np.array([np.nan]), "INT32"),
        (np.array([300]), "UINT8"),
        (np.array([2]), "BOOL"),
        (np.array([70000.0]), "FP16"),
        (np.array([16777217], np.int64), "FP32"),
        ([1e300], "FP32"),
        (np.array([1, 2]), "BYTES"),
        (np.array(["a"]), "FP32"),
        ([[1, 2], [3]], None),
    ],
)
def test_lossy_or_impossible_casts_are_refused(value: Any, datatype: str | None) -> None:
    with pytest.raises(InvalidInput) as info:
        encode_input("x", value, datatype)
    if datatype is not None:
        assert info.value.expected is not None


def test_name_must_be_a_string() -> None:
    with pytest.raises(InvalidInput):
        encode_input(3, [1])  # type: ignore[arg-type]


# -- decode_output ---------------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(numeric_arrays(min_dims=1, representable_only=False))
def test_decode_inverts_orjson_numpy(arr: npt.NDArray[Any]) -> None:
    raw = orjson.dumps(arr, option=OPT)
    assert same(decode_output(raw, arr.dtype, arr.shape), arr)
    assert same(decode_output(raw, triton_datatype(arr), arr.shape), arr)
    if representable(arr.shape):
        assert same(decode_output(raw, arr.dtype), arr)


@settings(max_examples=200)
@given(numeric_arrays(min_dims=1).filter(lambda a: a.dtype.kind == "f"))
def test_decode_reads_the_servers_float_format(arr: npt.NDArray[Any]) -> None:
    # The manager writes arr.tolist(), FP16 widened to FP32: float64 reprs of the values.
    wide = arr.astype(np.float32) if arr.dtype == np.float16 else arr
    raw = orjson.dumps(wide.tolist())
    assert same(decode_output(raw, arr.dtype, arr.shape), arr)


@pytest.mark.parametrize("name", list(NUMERIC))
def test_every_numeric_datatype_decodes(name: str) -> None:
    dtype = NUMERIC[name]
    info: Any = np.finfo(dtype) if dtype.kind == "f" else None
    if dtype.kind == "b":
        arr = np.array([[True, False], [False, True]])
    elif dtype.kind == "f":
        arr = np.array([[info.max, info.min], [info.tiny, -0.0], [np.nan, info.eps]], dtype)
    else:
        ii = np.iinfo(dtype)
        arr = np.array([[ii.min, ii.max], [0, 1]], dtype)
    raw = orjson.dumps(arr, option=OPT)
    out = decode_output(raw, name)
    assert same(out, arr)


def test_float32_shortest_repr_decodes_to_the_identical_float32() -> None:
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    arr = bits.view(np.float32)
    arr = arr[np.isfinite(arr)]
    out = decode_output(orjson.dumps(arr, option=OPT), "FP32")
    assert np.array_equal(out.view(np.uint32), arr.view(np.uint32))


def test_big_integers_decode_exactly() -> None:
    assert decode_output(b"[18446744073709551615, 9007199254740993]", "UINT64").tolist() == [
        2**64 - 1,
        2**53 + 1,
    ]
    out = decode_output(b"[-9223372036854775808, 9223372036854775807, 9007199254740993]")
    assert out.dtype == np.int64
    assert out.tolist() == [-(2**63), 2**63 - 1, 2**53 + 1]
    out = decode_output(b"[18446744073709551615, 1]")
    assert out.dtype == np.uint64
    assert out.tolist() == [2**64 - 1, 1]


@pytest.mark.parametrize(
    "shape", [(300_000,), (300, 1000), (1, 200_000), (1, 3, 150, 150), (40_000, 1)]
)
def test_large_outputs_decode_exactly(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(2)
    arr = rng.standard_normal(shape).astype(np.float32)
    arr.flat[::997] = np.nan
    for raw in (orjson.dumps(arr, option=OPT), orjson.dumps(arr.tolist())):
        assert same(decode_output(raw, "FP32"), arr)
    ints = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, shape, dtype=np.int64)
    assert same(decode_output(orjson.dumps(ints, option=OPT), "INT64"), ints)
    assert same(decode_output(orjson.dumps(ints, option=OPT)), ints)
    big = rng.integers(2**63, 2**64 - 1, shape, dtype=np.uint64)
    assert same(decode_output(orjson.dumps(big, option=OPT), "UINT64"), big)
    assert same(decode_output(orjson.dumps(big, option=OPT)), big)


def test_large_output_with_whitespace() -> None:
    arr = np.arange(60_000, dtype=np.float64).reshape(200, 300) / 7
    raw = json.dumps(arr.tolist(), indent=1).encode()
    assert same(decode_output(raw, "FP64"), arr)
    raw = json.dumps(arr.tolist()).encode()  # ", " separators
    assert same(decode_output(raw), arr)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" + b"[1.5,2.5]," * 50_000 + b"[1.5]]",
        b"[" + b"[1.5,2.5]," * 50_000 + b"[1.5,[2.5]]]",
        b"[" + b"[[1.5,2.5]]," * 50_000 + b"[1.5,2.5]]",
        b"[" + b"1.5," * 100_000 + b"[1.5]]",
        b"[" + b"1.5," * 100_000 + b'"a"]',
        b"[" + b"1.5," * 100_000 + b"]",
    ],
)
def test_large_malformed_outputs_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidInput):
        decode_output(raw, "FP32")


def test_null_is_nan_for_floats_and_an_error_for_integers() -> None:
    out = decode_output(b"[[1.5, null], [null, 2]]", "FP16")
    assert out.dtype == np.float16
    assert np.isnan(out[0, 1])
    assert np.isnan(out[1, 0])
    assert out[1, 1] == 2
    assert np.isnan(decode_output(b"null", "FP32"))
    assert decode_output(b"[null, 1.0]").dtype == np.float64
    for datatype in ("INT32", "UINT8", "BOOL"):
        with pytest.raises(InvalidInput, match="null") as info:
            decode_output(b"[1, null]", datatype)
        assert info.value.given == "null"


def test_bare_values() -> None:
    out = decode_output(b"3.5", "FP32")
    assert out.shape == ()
    assert out.dtype == np.float32
    assert out == 3.5
    assert decode_output(b"7").dtype == np.int64
    assert decode_output(b"true").dtype == np.bool_
    assert decode_output(b"3.5", "FP32", [1, 1]).shape == (1, 1)
    out = decode_output(b'"caf\xc3\xa9"')
    assert out.dtype == object
    assert out.tolist() == ["caf\u00e9".encode()]
    assert decode_output(b'"x"', "BYTES", [1, 1]).tolist() == [[b"x"]]


def test_inference_without_a_dtype() -> None:
    assert decode_output(b"[[1, 2], [3, 4]]").dtype == np.int64
    assert decode_output(b"[1, 2.5]").dtype == np.float64
    assert decode_output(b"[1e3]").dtype == np.float64
    out = decode_output(b"[[true, false]]")
    assert out.dtype == np.bool_
    assert out.tolist() == [[True, False]]
    assert decode_output(b'["a", "b"]').tolist() == [b"a", b"b"]


def test_bytes_outputs_are_reshaped_when_the_shape_is_given() -> None:
    out = decode_output(b'["a", "b", "c", "d"]', "BYTES", [2, 2])
    assert out.tolist() == [[b"a", b"b"], [b"c", b"d"]]
    assert decode_output(b'["a", "b", "c", "d"]', "BYTES", [-1, 2]).shape == (2, 2)
    with pytest.raises(InvalidInput) as info:
        decode_output(b'["a", "b", "c"]', "BYTES", [2, 2])
    assert info.value.expected == [2, 2]
    assert info.value.given == [3]
    assert decode_output(b"[]", "BYTES").shape == (0,)


def test_shape_must_agree() -> None:
    assert decode_output(b"[[1,2],[3,4]]", "INT8", [-1, 2]).shape == (2, 2)
    assert decode_output(b"[[1,2],[3,4]]", "INT8", [4]).shape == (4,)
    with pytest.raises(InvalidInput):
        decode_output(b"[[1,2],[3,4]]", "INT8", [3])


def test_empty_outputs() -> None:
    assert same(decode_output(b"[]", "FP32"), np.zeros(0, np.float32))
    assert same(decode_output(b"[[], []]", "INT16"), np.zeros((2, 0), np.int16))
    assert decode_output(b"[]").dtype == np.float64
    assert decode_output(b"[]", "FP32", [0, 3]).shape == (0, 3)


@pytest.mark.parametrize(
    ("raw", "datatype"),
    [
        (b"[1.5]", "INT32"),
        (b"[300]", "INT8"),
        (b"[-1]", "UINT64"),
        (b"[18446744073709551616]", "UINT64"),
        (b"[2]", "BOOL"),
        (b"[1e39]", "FP32"),
        (b"[70000]", "FP16"),
        (b'["a"]', "FP32"),
        (b'["1.5"]', "FP32"),
        (b"[1, 2]", "BYTES"),
        (b"[[1, 2], [3]]", None),
        (b"[[1, 2], 3]", "FP32"),
        (b'{"a": 1}', None),
        (b"[NaN]", "FP32"),
        (b"[Infinity]", "FP64"),
        (b"[1,", "FP32"),
        (b"", None),
    ],
)
def test_bad_outputs_are_refused(raw: bytes, datatype: str | None) -> None:
    with pytest.raises(InvalidInput):
        decode_output(raw, datatype)


def test_raw_forms_and_dtype_spellings() -> None:
    raw = b"[1.25, 2.5]"
    expected = np.array([1.25, 2.5], np.float32)
    for form in (raw, bytearray(raw), memoryview(raw), raw.decode(), msgspec.Raw(raw)):
        assert same(decode_output(form, "FP32"), expected)
    for dtype in ("FP32", "TYPE_FP32", "float32", np.float32, np.dtype(np.float32)):
        assert same(decode_output(raw, dtype), expected)
    with pytest.raises(InvalidInput, match="BF16"):
        decode_output(raw, "BF16")
    with pytest.raises(InvalidInput):
        decode_output(raw, np.complex64)


def test_reply_slice_from_msgspec() -> None:
    class Payload(msgspec.Struct):
        data: dict[str, msgspec.Raw]

    arr = np.arange(6, dtype=np.float32).reshape(2, 3) / 3
    frame = orjson.dumps({"data": {"OUT": arr.tolist(), "TXT": ["x", "y"]}})
    payload = msgspec.json.decode(frame, type=Payload)
    assert same(decode_output(payload.data["OUT"], "FP32"), arr)
    assert decode_output(payload.data["TXT"], "BYTES").tolist() == [b"x", b"y"]


def test_fp16_outputs_widened_by_the_server_come_back_exactly() -> None:
    arr = np.array([0.1, 65504, -6.1e-5, 1e-7], np.float16)
    raw = orjson.dumps(arr.astype(np.float32).tolist())
    assert same(decode_output(raw, "FP16"), arr)
    assert math.isclose(float(decode_output(raw)[0]), float(arr[0]))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    numeric_arrays(min_dims=1).filter(lambda a: a.size > 0),
    st.sampled_from(["compact", "spaced", "indented"]),
    st.integers(min_value=1, max_value=40),
)
def test_piecewise_parsing_matches_on_every_layout(
    arr: npt.NDArray[Any], layout: str, piece_bytes: int
) -> None:
    """Force the large-output path (parsing in pieces) onto small arrays of every shape."""
    values = orjson.loads(orjson.dumps(arr, option=OPT))  # NaN -> None, as JSON needs
    if layout == "compact":
        raw = orjson.dumps(arr, option=OPT)
    else:
        raw = json.dumps(values, indent=1 if layout == "indented" else None).encode()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fast_arrays, "_PIECE_BYTES", piece_bytes)
        assert same(decode_output(raw, arr.dtype, arr.shape), arr)
        if arr.dtype.kind in "iu" and int(arr.max()) <= np.iinfo(np.int64).max:
            assert same(decode_output(raw, None, arr.shape), arr.astype(np.int64))
        # The fast path itself, whatever ANYTCM_NO_FAST_PATHS says: exact, or it declines.
        target = TRITON_TO_NUMPY[triton_datatype(arr.dtype)]
        fast = fast_arrays.decode_numbers(raw.strip(), target, arr.ndim)
        assert fast is None or same(fast, arr)


@pytest.mark.parametrize(
    "raw",
    [
        b"[[1,2],[3,4],[5]]",
        b"[[1,2],[3,4],[5,[6]]]",
        b"[[[1,2]],[[3,4]],[3,4]]",
        b"[[1,2],[3,4],]",
        b"[[1,2],[3,4]]]",
        b"[1,2,3,,4]",
        b"[[1,2] [3,4]]",
        b"[[1,2],[3,4],[]]",
    ],
)
def test_piecewise_parsing_refuses_malformed_text(raw: bytes) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fast_arrays, "_PIECE_BYTES", 2)
        with pytest.raises(InvalidInput):
            decode_output(raw, "FP32")
        assert fast_arrays.decode_numbers(raw, np.dtype(np.float32), raw.count(b"[", 0, 3)) is None


@pytest.mark.parametrize(("raw", "datatype"), [(b"[1.5, 1e39]", "FP32"), (b"[1, 70000]", "FP16")])
def test_overflow_is_an_error_even_when_warnings_are_ignored(raw: bytes, datatype: str) -> None:
    """numpy would only warn and give inf: the codec must refuse, warnings filter or not."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InvalidInput, match="range"):
            decode_output(raw, datatype)


def general_decode(text: bytes, dtype: str) -> npt.NDArray[Any] | InvalidInput:
    """What the general path alone makes of `text`: an array, or the error it raises."""
    try:
        return tensors._decode_general(orjson.loads(text), TRITON_TO_NUMPY[dtype])
    except InvalidInput as exc:
        return exc


# Elements the small path must refuse or get exactly right: nulls, booleans, strings, values
# at and beyond float32's finite range, nested values.
_SMALL_LOOKALIKES = (
    b"null", b"true", b"false", b'"1.5"', b"1e39", b"-3.5e38", b"3.4028235e38",
    b"340282356779733661637539395458142568448", b"[]", b"[1.5]", b"{}",
)  # fmt: skip
_SMALL_ELEMENTS = st.one_of(
    st.floats(width=32, allow_nan=False).map(lambda v: orjson.dumps(v)),  # float64 repr
    st.floats(width=32, allow_nan=False).map(lambda v: orjson.dumps(np.float32(v), option=OPT)),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda v: orjson.dumps(v)),
    st.integers(-(2**70), 2**70).map(lambda v: str(v).encode()),
    st.sampled_from(_SMALL_LOOKALIKES),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(_SMALL_ELEMENTS, max_size=6), min_size=1, max_size=4),
    st.booleans(),
    st.sampled_from([b",", b", ", b" ,\n "]),
    st.sampled_from(["FP32", "FP64"]),
)
def test_small_float_path_agrees_with_the_general_path(
    rows: list[list[bytes]], nested: bool, comma: bytes, dtype: str
) -> None:
    """The small path (a typed msgspec decoder, then struct) decides nothing the general path
    would decide differently: each text decodes to the same array, or both refuse it."""
    if nested:
        text = b"[" + comma.join(b"[" + comma.join(row) + b"]" for row in rows) + b"]"
    else:
        text = b"[" + comma.join(rows[0]) + b"]"
    expected = general_decode(text, dtype)
    if isinstance(expected, InvalidInput):
        with pytest.raises(InvalidInput):
            decode_output(text, dtype)
    else:
        assert same(decode_output(text, dtype), expected)
    small = fast_floats.decode_floats(text, TRITON_TO_NUMPY[dtype])  # whatever the switch says
    if small is not None:
        assert not isinstance(expected, InvalidInput), text
        assert same(small, expected)


def test_small_float_path_takes_the_common_forms() -> None:
    """The forms a reply carries go through the small path itself, not a fallback."""
    forms = (b"[0.5, -2, 1e-3]", b"[[1.5, 2.5]]", b"[[1.5],[2.5]]", b"[]", b"[[]]", b" [1.0] ")
    for text in forms:
        for target in (np.dtype(np.float32), np.dtype(np.float64)):
            small = fast_floats.decode_floats(text, target)
            assert small is not None, text
            assert same(small, np.asarray(orjson.loads(text), dtype=target))
            assert small.flags.writeable, text
            assert small.flags.c_contiguous, text
    refused = (
        b"[null]", b"[true]", b'["1"]', b"[1e39]", b"[[1],[2,3]]", b"[[1,2],[3,4,5],[6]]",
        b"[[[1]]]", b"1", b"[1e400]",
    )  # fmt: skip
    for text in refused:
        assert fast_floats.decode_floats(text, np.dtype(np.float32)) is None, text


def test_small_float32_outputs_at_the_range_edge_round_or_are_refused() -> None:
    """Just above float32's largest value, a float that rounds down to it is that value, and
    one that rounds up (the halfway point, ties to even) is out of range, not infinity."""
    assert decode_output(b"[3.4028235e38]", "FP32")[0] == np.finfo(np.float32).max
    with pytest.raises(InvalidInput, match="range"):
        decode_output(b"[340282356779733661637539395458142568448]", "FP32")


@pytest.mark.parametrize(
    "dtype",
    ["FP32", "TYPE_FP32", "fp32", "float32", "<f4", ">f4", np.float32, np.dtype(np.float32)],
)
def test_every_float32_spelling_decodes_alike(dtype: Any) -> None:
    arr = decode_output(b"[0.5, 1.5]", dtype)
    assert arr.dtype == np.float32
    assert arr.dtype.isnative
    assert arr.tolist() == [0.5, 1.5]


@pytest.mark.parametrize("dtype", [[np.float32], "complex64", np.complex64, "BF16"])
def test_an_unusable_output_dtype_is_refused_with_the_supported_list(dtype: Any) -> None:
    with pytest.raises(InvalidInput) as info:
        decode_output(b"[0.5]", dtype)
    assert "FP32" in str(info.value)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # as for users: numpy's warning is no error
@pytest.mark.parametrize("padding", [0, 4000, 20_000])
def test_a_39_digit_float32_overflow_is_refused_when_warnings_are_not_errors(
    padding: int,
) -> None:
    """numpy turns the literal into inf with only a RuntimeWarning; the decoder must refuse it
    on every path (small, fast and general: short, middling and long values alike)."""
    raw = b"[" + b"1.5, " * padding + b"340282356779733661637539395458142568448]"
    with pytest.raises(InvalidInput, match="range"):
        decode_output(raw, "FP32")


@pytest.mark.parametrize("literal", [b"1" + b"0" * 38, b"-" + b"9" * 39 + b".5", b"4" * 40])
def test_small_float32_output_with_39_digit_literals(literal: bytes) -> None:
    """A literal of 39 digits is at least 1e38 and float32 ends at 3.4e38: numpy would turn
    the larger ones into inf silently, so the small path's range check hands such text on and
    the general path decodes the ones in range and refuses the rest."""
    raw = b"[1.5, " + literal + b"]"
    if abs(float(literal)) > float(np.finfo(np.float32).max):
        with pytest.raises(InvalidInput, match="range"):
            decode_output(raw, "FP32")
    else:
        assert decode_output(raw, "FP32")[1] == np.float32(float(literal))
    assert decode_output(raw, "FP64")[1] == float(literal)


# -- numbers the frame decoder parsed ---------------------------------------------------------

_PARSED_TARGETS = [
    None, "FP32", "FP64", "FP16", "INT64", "INT32", "UINT8", "UINT64", "BOOL", "BYTES"
]  # fmt: skip
_PARSED_NUMBERS = (
    st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, 1, -1, 255, 256, 2**63, -(2**63), 3.4028235e38, 3.4028236e38, -0.0])
)


def decoded_or_error(raw: Any, dtype: str | None, shape: list[int] | None) -> Any:
    try:
        return decode_output(raw, dtype, shape)
    except InvalidInput as exc:
        return exc


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=st.lists(_PARSED_NUMBERS, max_size=8) | _PARSED_NUMBERS,
    dtype=st.sampled_from(_PARSED_TARGETS),
    reshape=st.booleans(),
)
def test_parsed_numbers_decode_as_their_text_does(
    value: wire.Numbers, dtype: str | None, reshape: bool
) -> None:
    """`decode_output` on the numbers `wire.ServerFrameDecoder` parsed gives what it gives on
    the same value's JSON text: the same array, or `InvalidInput` both ways."""
    size = len(value) if isinstance(value, list) else 1
    shape = [1, size] if reshape else None
    text = decoded_or_error(msgspec.Raw(json.dumps(value).encode()), dtype, shape)
    parsed = decoded_or_error(value, dtype, shape)
    if isinstance(text, InvalidInput):
        assert isinstance(parsed, InvalidInput), (value, dtype)
    else:
        assert not isinstance(parsed, InvalidInput), (value, dtype, parsed)
        assert same(parsed, text), (value, dtype)


def test_parsed_float_lists_are_packed_and_checked() -> None:
    """The common reply, a flat float list into FP32, comes back writable and exact, and a
    float32 out of range is refused as on the text path (never silently infinity)."""
    out = decode_output([0.2, -1, 2**24 + 1], "FP32")
    assert out.dtype == np.float32
    assert out.flags.writeable
    assert out.flags.c_contiguous
    assert out.tolist() == [np.float32(0.2), -1.0, float(np.float32(2**24 + 1))]
    with pytest.raises(InvalidInput, match="range"):
        decode_output([1.0, 3.4028236e38], "FP32")
    assert decode_output([2**63 + 1], "UINT64")[0] == 2**63 + 1  # ints stay exact


# -- hostile nesting ---------------------------------------------------------------------------
# A reply may nest its values arbitrarily deep. Nothing deeper than `_MAX_RANK` lists (numpy's
# limit) can be an array, and nothing deeper than a declared shape's rank plus a batch level
# can fit it: `decode_output` refuses such values before parsing them, and the work it does on
# any value grows no faster than the value's size.

MAX_RANK = tensors._MAX_RANK


def nested(depth: int, leaf: bytes = b"1", space: bytes = b"") -> bytes:
    return (b"[" + space) * depth + leaf + (space + b"]") * depth


def nested_list(depth: int, leaf: Any = 1.0) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


# Values nested deep from their first byte, or further on: each builds from a depth.
_DEEP_TEXTS: dict[str, Callable[[int], bytes]] = {
    "leading": lambda n: nested(n),
    "spaced": lambda n: nested(n, space=b" \n"),
    "strings": lambda n: nested(n, b'"a"'),
    "wide": lambda n: nested(n, b",".join([b"1.5"] * 1000)),
    "siblings": lambda n: b"[" + b",".join([nested(n)] * 3) + b"]",
    "late": lambda n: b"[1," + nested(n) + b"]",
    "middle": lambda n: b"[[1,2],[3," + nested(n) + b"]]",
}
_DEEP_LISTS: dict[str, Callable[[int], Any]] = {
    "leading": lambda n: nested_list(n),
    "late": lambda n: [1.0, nested_list(n)],
    "middle": lambda n: [[1, 2], [3, nested_list(n)]],
}


def text_forms(text: bytes) -> list[Any]:
    return [text, text.decode(), msgspec.Raw(text), memoryview(text)]


@pytest.mark.parametrize("shape", [None, [2, 2]])
@pytest.mark.parametrize("dtype", [None, "FP32", "FP64", "INT64", "BYTES"])
@pytest.mark.parametrize("depth", [2_000, 100_000])  # 4 KiB: the small path; 200 KiB: pieces
@pytest.mark.parametrize("kind", list(_DEEP_TEXTS))
def test_deep_text_is_refused_with_the_typed_error(
    kind: str, depth: int, dtype: str | None, shape: list[int] | None
) -> None:
    limit = MAX_RANK if shape is None else len(shape) + 1
    for raw in text_forms(_DEEP_TEXTS[kind](depth)):
        with pytest.raises(InvalidInput, match=f"nested more than {limit} lists deep") as info:
            decode_output(raw, dtype, shape)
        assert info.value.expected == limit
        assert info.value.given > limit
        if shape is not None:
            assert "[2, 2]" in str(info.value)


@pytest.mark.parametrize("shape", [None, [2, 2]])
@pytest.mark.parametrize("dtype", [None, "FP32", "FP64", "INT64", "BYTES"])
@pytest.mark.parametrize("depth", [2_000, 100_000])
@pytest.mark.parametrize("kind", list(_DEEP_LISTS))
def test_deep_parsed_numbers_are_refused_with_the_typed_error(
    kind: str, depth: int, dtype: str | None, shape: list[int] | None
) -> None:
    """Lists nested deeper than the interpreter's recursion limit included: no RecursionError
    (nor struct.error) escapes."""
    limit = MAX_RANK if shape is None else len(shape) + 1
    with pytest.raises(InvalidInput, match=f"nested more than {limit} lists deep") as info:
        decode_output(_DEEP_LISTS[kind](depth), dtype, shape)
    assert info.value.expected == limit


@pytest.mark.parametrize("dtype", [None, "FP32", "INT64", "BYTES"])
def test_nesting_one_level_beyond_numpy_is_refused_and_up_to_it_decodes(
    dtype: str | None,
) -> None:
    """Before, a regular value one list deeper than numpy allows made numpy raise a bare
    ValueError."""
    leaf = b'"a"' if dtype == "BYTES" else b"1"
    at_limit = b"[" + nested(MAX_RANK - 1, leaf) + b"," + nested(MAX_RANK - 1, leaf) + b"]"
    out = decode_output(at_limit, dtype)
    assert out.shape == (2,) + (1,) * (MAX_RANK - 1)
    with pytest.MonkeyPatch.context() as patch:  # the same through the pieces path
        patch.setattr(fast_arrays, "_PIECE_BYTES", 8)
        assert decode_output(at_limit, dtype).shape == out.shape
    beyond = b"[" + at_limit + b"]"
    for raw in (beyond, orjson.loads(beyond)):
        with pytest.raises(InvalidInput, match=f"nested more than {MAX_RANK} lists deep"):
            decode_output(raw, dtype)


def test_a_declared_shape_takes_its_rank_plus_a_batch_level() -> None:
    """Model config dims leave out the batch dimension: one extra level is accepted."""
    assert decode_output(b"[[1.5, 2.5]]", "FP32", [2]).shape == (2,)
    batch_of_one: Any = [[1.5, 2.5]]  # nested lists: not what the frame decoder hands over
    assert decode_output(batch_of_one, "FP32", [2]).shape == (2,)
    assert decode_output(b"[[[1]]]", "INT8", [1, 1]).shape == (1, 1)
    assert decode_output(b"[7]", "INT8", []).shape == ()
    too_deep: list[Any] = [b"[[[1.5, 2.5]]]", [[[1.5, 2.5]]], b"[ [ [1.5, 2.5] ] ]"]
    for raw in too_deep:
        with pytest.raises(InvalidInput, match="nested more than 2 lists deep") as info:
            decode_output(raw, "FP32", [2])
        assert "shape [2]" in str(info.value)
    with pytest.raises(InvalidInput, match="nested deeper than the first"):
        decode_output(b"[[1.5, [[2.5]]]]", "FP32", [2])  # deeper further on: not an array
    with pytest.raises(InvalidInput, match="nested more than 1 lists deep"):
        decode_output(b"[[7]]", "INT8", [])


@pytest.mark.parametrize("dtype", [None, "FP32", "INT64"])
@pytest.mark.parametrize("piece_bytes", [None, 64])
def test_ragged_deep_nesting_is_refused(dtype: str | None, piece_bytes: int | None) -> None:
    ladder = b"[" + b",".join(nested(k) for k in range(1, 200)) + b"]"  # [[1],[[1]],...]
    deep_first = b"[" + nested(500) + b",[2]]"
    deep_in_rows = b"[" + b",".join([b"[1,2]"] * 50 + [b"[3," + nested(600) + b"]"]) + b"]"
    with pytest.MonkeyPatch.context() as patch:
        if piece_bytes is not None:
            patch.setattr(fast_arrays, "_PIECE_BYTES", piece_bytes)
        for raw in (ladder, deep_in_rows):
            with pytest.raises(InvalidInput, match="nested deeper than the first"):
                decode_output(raw, dtype)
        with pytest.raises(InvalidInput, match=f"nested more than {MAX_RANK} lists deep"):
            decode_output(deep_first, dtype)


# The codec's own code: the general path and the fast paths it may take.
_CODEC_FILES = frozenset({tensors.__file__, fast_arrays.__file__, fast_floats.__file__})


class Work:
    """What `decode_output` does, counted deterministically rather than timed: the calls
    (Python functions of `anytcm.tensors` and its fast paths entered, and C functions they
    call, as seen by a profile hook) and the bytes handed to orjson to parse."""

    def __init__(self) -> None:
        self.calls = 0
        self.parsed = 0

    def profile(self, frame: Any, event: str, arg: Any) -> None:
        if frame.f_code.co_filename in _CODEC_FILES and event in ("call", "c_call"):
            self.calls += 1


def measure(raw: Any, dtype: str | None, shape: list[int] | None = None) -> Work:
    work = Work()
    loads = orjson.loads

    def counting_loads(text: Any) -> Any:
        work.parsed += len(text)
        return loads(text)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(orjson, "loads", counting_loads)
        previous = sys.getprofile()
        sys.setprofile(work.profile)
        try:
            decode_output(raw, dtype, shape)
        except InvalidInput:
            pass
        finally:
            sys.setprofile(previous)
    return work


@pytest.mark.parametrize("shape", [None, [3, 4]])
@pytest.mark.parametrize("dtype", [None, "FP32", "INT64", "BYTES"])
@pytest.mark.parametrize("kind", ["leading", "spaced", "strings", "wide", "siblings"])
def test_deep_values_are_refused_before_parsing_whatever_their_size(
    kind: str, dtype: str | None, shape: list[int] | None
) -> None:
    """The refusal reads a bounded head of the value: nothing is parsed and the same work is
    done at 50k, 100k and 200k levels. Before, the pieces path stripped one level per search
    of the whole text: work quadratic in the size."""
    works = [
        measure(_DEEP_TEXTS[kind](depth), dtype, shape) for depth in (50_000, 100_000, 200_000)
    ]
    assert [work.parsed for work in works] == [0, 0, 0]
    assert works[0].calls == works[1].calls == works[2].calls


@pytest.mark.parametrize("piece_bytes", [None, 4096])
@pytest.mark.parametrize("dtype", [None, "FP32", "INT64"])
@pytest.mark.parametrize("kind", ["late", "middle"])
def test_deep_nesting_further_on_costs_work_linear_in_its_size(
    kind: str, dtype: str | None, piece_bytes: int | None
) -> None:
    """Nesting that starts after the first element is met by the parser, which stops at its own
    depth limit: the text is parsed at most twice (the fast path, then the general one) and the
    Python-level work does not grow with the depth."""
    with pytest.MonkeyPatch.context() as patch:
        if piece_bytes is not None:
            patch.setattr(fast_arrays, "_PIECE_BYTES", piece_bytes)
        # All three above the real piece size, so all take the same path.
        texts = [_DEEP_TEXTS[kind](depth) for depth in (80_000, 160_000, 320_000)]
        works = [measure(text, dtype) for text in texts]
    for text, work in zip(texts, works, strict=True):
        assert work.parsed <= 2 * len(text)
    assert works[0].calls == works[1].calls == works[2].calls


@pytest.mark.parametrize("dtype", [None, "FP32", "INT64"])
def test_work_on_a_regular_high_rank_array_grows_linearly(dtype: str | None) -> None:
    """A legitimate array wrapped in many single-element lists, large enough to be parsed in
    pieces: the work grows with the size, not with size times depth."""
    wrapped = [
        nested(MAX_RANK - 2, b"[" + b",".join([b"[1,2]"] * rows) + b"]")
        for rows in (20_000, 40_000, 80_000)
    ]
    works = [measure(text, dtype) for text in wrapped]
    for text, work in zip(wrapped, works, strict=True):
        assert work.parsed <= len(text) + 64 * 1024  # each byte parsed once, plus piece brackets
    assert works[2].calls - works[1].calls <= 2 * (works[1].calls - works[0].calls) + 50
    assert decode_output(wrapped[0], dtype).shape == (1,) * (MAX_RANK - 2) + (20_000, 2)
