"""Large inference replies decoded with their arrays cut out (`wire.decode_cut`).

The oracle is msgspec's own decode of the whole frame: the cut path must give the same frame,
value for value, or decline. Thresholds are lowered so that small generated frames take it. The
fast path that cuts first (`anytcm._fast.frames`) is turned on here whatever
ANYTCM_NO_FAST_PATHS says; the general path cuts only what msgspec cannot decode whole.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anytcm import wire
from anytcm._fast import frames
from anytcm.errors import InvalidInput
from anytcm.tensors import decode_output

_plain = msgspec.json.Decoder(
    wire.AuthOk
    | wire.ErrorFrame
    | wire.InfoResponse
    | wire.ManagementReply
    | wire._TextReply
    | wire.Alert
)


@pytest.fixture
def small_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frames, "_CUT_FRAME_BYTES", 16)
    monkeypatch.setattr(wire, "_CUT_VALUE_BYTES", 4)


def reply(data: Any, **payload: Any) -> dict[str, Any]:
    return {
        "type": "inference",
        "uuid": "u-1",
        "payload": {"status": "COMPLETED", "data": data, **payload},
    }


def same_frame(frame: bytes) -> wire.ServerFrame:
    """Decode both ways and insist on the same result (raw values compared as bytes)."""
    ours = wire.ServerFrameDecoder(fast_paths=True).decode(frame)
    plain = _plain.decode(frame)
    assert type(ours) is type(plain)
    assert isinstance(ours, wire.InferenceReply)
    assert isinstance(plain, wire.InferenceReply)
    assert ours.uuid == plain.uuid
    assert ours.payload.status == plain.payload.status
    assert ours.payload.model_name == plain.payload.model_name
    if isinstance(plain.payload.data, dict):
        assert isinstance(ours.payload.data, dict)
        assert list(ours.payload.data) == list(plain.payload.data)
        for name, value in plain.payload.data.items():
            assert bytes(ours.payload.data[name]) == bytes(value), name
    else:
        assert ours.payload.data == plain.payload.data
    return ours


def cut_outputs(frame: bytes, arrays: int) -> dict[str, bytes]:
    """Assert `arrays` arrays are cut and the frame decodes as whole; its outputs' raw texts."""
    cut = wire._cut_arrays(frame)
    assert cut is not None
    assert len(cut[1]) == arrays
    decoded = same_frame(frame)
    assert isinstance(decoded, wire.InferenceReply)
    assert isinstance(decoded.payload.data, dict)
    return {name: bytes(raw) for name, raw in decoded.payload.data.items()}


def test_a_large_1d_output_is_cut_and_decodes_like_the_whole_frame() -> None:
    arr = np.random.default_rng(0).random(40_000, dtype=np.float32)
    frame = orjson.dumps(
        reply({"OUTPUT0": arr, "OUTPUT1": [1, 2]}, model_name="m"),
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    assert len(frame) >= frames._CUT_FRAME_BYTES
    outputs = cut_outputs(frame, 1)  # the small OUTPUT1 stays in place
    assert np.array_equal(decode_output(outputs["OUTPUT0"], "FP32"), arr)


@pytest.mark.parametrize(
    ("a_shape", "b_shape"),
    [
        ((1, 20_000), (1, 1, 9000)),  # a batch of one: the end is found hopping over "]"
        ((200, 300), (3, 10, 1000)),  # some rows: hops too
        ((3000, 4), (2000, 2, 3)),  # more rows than hops: the search for "]]" / "]]]"
    ],
)
def test_large_nd_outputs_and_several_outputs_are_cut(
    a_shape: tuple[int, ...], b_shape: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random(a_shape, dtype=np.float32), rng.integers(0, 9, b_shape)
    frame = orjson.dumps(reply({"A": a, "B": b, "C": "text"}), option=orjson.OPT_SERIALIZE_NUMPY)
    outputs = cut_outputs(frame, 2)
    assert np.array_equal(decode_output(outputs["A"], "FP32"), a)
    assert np.array_equal(decode_output(outputs["B"], "INT64"), b)


@pytest.mark.usefixtures("small_thresholds")
@pytest.mark.parametrize(
    "frame",
    [
        # ":[ inside a string, with and without an escaped quote before it
        json.dumps(reply({"O": 'x":[1,2,3,4,5,6]y'})),
        json.dumps(reply({"O": 'x\\":[1,2,3,4,5,6]'})),
        json.dumps(reply({"O": [1]}, model_name='m":[1,2,3,4,5,6]')),
        # ragged nesting: the first "]]" is not the end
        json.dumps(reply({"O": [[1], [[2, 3, 4]], [5]]}), separators=(",", ":")),
        json.dumps(reply({"O": [[1, 2, 3], 4, 5]}), separators=(",", ":")),
        # ... and the first "]]" lies in the next member
        json.dumps(reply({"O": [[1, 2, 3], 4], "P": [[5, 6]]}), separators=(",", ":")),
        json.dumps(reply({"O": [[1, 2], 3]}, extra=[[4, 5]]), separators=(",", ":")),
        # whitespace between brackets
        json.dumps(reply({"O": [[1, 2, 3], [4, 5, 6]]}), indent=1),
        # an array of objects and of strings
        json.dumps(reply({"O": [{"a": 1}, {"b": 2}]}), separators=(",", ":")),
        json.dumps(reply({"O": ["a", "b", "c"]}), separators=(",", ":")),
        # a pipeline nests outputs one level down: declined, decoded whole
        json.dumps(reply({"step": {"O": [1, 2, 3, 4, 5]}}), separators=(",", ":")),
        # a FAILED object's details
        json.dumps(
            reply({"code": "X", "details": [1, 2, 3, 4, 5]}, status="FAILED"),
            separators=(",", ":"),
        ),
        # our placeholder's text as an output value, beside a cut array
        json.dumps(reply({"P": "\u0000anytcm:0", "O": [1, 2, 3, 4, 5]}), separators=(",", ":")),
        json.dumps(reply({"O": [1, 2, 3, 4, 5], "P": "\u0000anytcm:0"}), separators=(",", ":")),
        # the placeholder's text inside a pipeline step, beside a cut array
        json.dumps(
            reply({"s": {"P": "\u0000anytcm:0"}, "O": [1, 2, 3, 4, 5]}), separators=(",", ":")
        ),
        # ... and beside a pipeline step holding the cut array
        json.dumps(
            reply({"s": {"O": [1, 2, 3, 4, 5]}, "P": "\u0000anytcm:0"}), separators=(",", ":")
        ),
        # arrays that are not outputs
        json.dumps(reply(None, extra=[1, 2, 3, 4, 5], model_name="m")),
        json.dumps(reply({"O": [1, 2, 3, 4, 5]}, extra=[9, 8, 7, 6, 5])),
    ],
)
def test_look_alikes_decode_exactly_as_the_whole_frame(frame: str) -> None:
    same_frame(frame.encode())


@pytest.mark.usefixtures("small_thresholds")
def test_other_frame_types_with_arrays_decode_as_usual() -> None:
    frame = json.dumps(
        {
            "type": "info_response",
            "payload": {"job_id": 7, "status": "success", "data": {"q": [1, 2, 3, 4, 5]}},
        }
    ).encode()
    ours = wire.ServerFrameDecoder(fast_paths=True).decode(frame)
    assert ours == _plain.decode(frame)
    unknown = json.dumps({"type": "future", "x": [1, 2, 3, 4, 5]}).encode()
    decoded = wire.ServerFrameDecoder(fast_paths=True).decode(unknown)
    assert isinstance(decoded, wire.UnknownFrame)
    assert decoded.raw["x"] == [1, 2, 3, 4, 5]


@pytest.mark.usefixtures("small_thresholds")
def test_a_malformed_frame_is_still_refused_as_a_frame() -> None:
    bad = b'{"type":"inference","payload":{"data":{"O":[1,2,3,4,5]}}}'  # no status
    with pytest.raises(wire.FrameDecodeError, match="status"):
        wire.ServerFrameDecoder(fast_paths=True).decode(bad)
    with pytest.raises(wire.FrameDecodeError, match="not valid JSON"):
        wire.ServerFrameDecoder(fast_paths=True).decode(
            b'{"type":"inference","payload":{"data":{"O":[1,2,3,4,5]}'
        )


@pytest.mark.usefixtures("small_thresholds")
def test_a_cut_array_that_is_not_json_fails_when_decoded_with_a_typed_error() -> None:
    """Its text is parsed later, by the tensor codec: strict JSON, so garbage still fails."""
    frame = b'{"type":"inference","payload":{"status":"COMPLETED","data":{"O":[1,2,,3,4x]}}}'
    decoded = wire.ServerFrameDecoder(fast_paths=True).decode(frame)
    assert isinstance(decoded, wire.InferenceReply)
    assert isinstance(decoded.payload.data, dict)
    with pytest.raises(InvalidInput):
        decode_output(bytes(decoded.payload.data["O"]), "FP32")


def test_json_dumps_spacing_is_cut_too() -> None:
    """Without orjson the manager writes ``": "`` and ``", "`` (json.dumps defaults)."""
    values = np.random.default_rng(2).random((2, 3000)).tolist()
    frame = json.dumps(reply({"OUTPUT0": values[0], "OUTPUT1": values}, model_name="m")).encode()
    outputs = cut_outputs(frame, 2)
    assert decode_output(outputs["OUTPUT1"], "FP64").tolist() == values


def test_the_colons_looked_at_are_bounded() -> None:
    """A text output full of colons is skipped colon by colon, up to a bound."""
    text = "12:30:45 " * (wire._CUT_MAX_COLONS // 2)
    frame = json.dumps(reply({"S": text, "O": list(range(10_000))}), separators=(",", ":"))
    assert wire._cut_arrays(frame.encode()) is None
    same_frame(frame.encode())
    short = json.dumps(reply({"S": text[:90], "O": list(range(10_000))}), separators=(",", ":"))
    assert wire._cut_arrays(short.encode()) is not None


def test_the_number_of_candidates_examined_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Look-alikes in a string are cut too (the rest then fails to decode and the frame is
    decoded whole); the scan stops at the bound, before reaching the real array."""
    monkeypatch.setattr(wire, "_CUT_VALUE_BYTES", 4)
    text = 'a":[1,2,3,4,5]' * (wire._CUT_MAX_CANDIDATES + 1)
    frame = json.dumps(reply({"S": text, "O": list(range(10_000))}), separators=(",", ":"))
    cut = wire._cut_arrays(frame.encode())
    assert cut is not None
    rest, spans = cut
    assert len(spans) == wire._CUT_MAX_CANDIDATES
    assert rest.endswith(b"9999]}}}")  # the real array, never reached
    same_frame(frame.encode())


_leaf = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(alphabet='ab":[]{},\\ \u0000', max_size=8),
)
_value = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=20,
)


@pytest.mark.usefixtures("small_thresholds")
@settings(max_examples=300, deadline=None)
@given(
    data=st.dictionaries(st.text(alphabet='AB":[', max_size=4), _value, max_size=4) | _value,
    model_name=st.none() | st.text(alphabet='m":[]1,', max_size=10),
    indent=st.none() | st.integers(0, 2),
)
def test_any_reply_decodes_exactly_as_the_whole_frame(
    data: Any, model_name: str | None, indent: int | None
) -> None:
    frame = json.dumps(
        reply(data, model_name=model_name),
        indent=indent,
        separators=None if indent is not None else (",", ":"),
    )
    try:
        _plain.decode(frame.encode())
    except msgspec.ValidationError:
        with pytest.raises(wire.FrameDecodeError):
            wire.ServerFrameDecoder(fast_paths=True).decode(frame.encode())
        return
    same_frame(frame.encode())


@pytest.mark.parametrize("fast_paths", [True, False])
def test_an_output_nested_too_deep_for_msgspec_is_left_to_the_codec(fast_paths: bool) -> None:
    """A large one is cut out on either path, and the codec refuses it; a small one (or one
    that is no array) makes the frame undecodable on either path."""
    decoder = wire.ServerFrameDecoder(fast_paths=fast_paths)
    deep = b"[" * 20_000 + b"1" + b"]" * 20_000
    frame = json.dumps(reply({"OUT": "@", "B": [1.5]}, model_name="m")).encode()
    decoded = decoder.decode(frame.replace(b'"@"', deep))
    assert isinstance(decoded, wire.InferenceReply)
    assert decoded.payload.model_name == "m"
    assert isinstance(decoded.payload.data, dict)
    assert bytes(decoded.payload.data["OUT"]) == deep
    assert msgspec.json.decode(bytes(decoded.payload.data["B"])) == [1.5]
    with pytest.raises(InvalidInput, match="nested more than"):
        decode_output(decoded.payload.data["OUT"], "FP32")
    small = b"[" * 2_000 + b"1" + b"]" * 2_000
    for value in (small, b'{"x":' + deep + b"}"):
        with pytest.raises(RecursionError):
            decoder.decode(frame.replace(b'"@"', value))
