"""Client integration: `infer`, results, `pipeline`, `info`, `stats`, `granted_capabilities`.

Every test runs on asyncio and trio against a real reference manager subprocess.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import anytcm
from _client_helpers import REF, distinct, f32, infer_double, open_connections_up, text
from anytcm.testing import ReferenceManager

pytestmark = pytest.mark.anyio


# -- infer and its result ------------------------------------------------------------------


async def test_double_result_api(manager: ReferenceManager) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        result = await client.infer("double", {"INPUT0": x}, target=REF)
    assert result.model_name == "double"
    assert result.output_names == ["OUTPUT0"]
    assert list(result) == ["OUTPUT0"]
    # A readable repr that decodes nothing: no msgspec.Raw objects, the JSON's size instead.
    assert repr(result) == (
        "InferResult(model_name='double', outputs={'OUTPUT0': <30 bytes of JSON, not decoded yet>})"
    )  # [[0.0,2.0,4.0],[6.0,8.0,10.0]]
    assert "Raw" not in repr(result)
    out = result.as_numpy("OUTPUT0")
    assert repr(result) == "InferResult(model_name='double', outputs={'OUTPUT0': float32[2, 3]})"
    # A mapping of names to arrays.
    assert result["OUTPUT0"] is out
    assert "OUTPUT0" in result
    assert "nope" not in result
    assert len(result) == 1
    assert dict(result) == {"OUTPUT0": out}
    with pytest.raises(KeyError, match="the outputs are"):
        result["nope"]
    assert out.shape == (2, 3)
    # No dtype known (no output_dtypes, no model spec): floats take the inputs' float dtype.
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, 2 * x)
    outputs = result.outputs
    assert set(outputs) == {"OUTPUT0"}
    np.testing.assert_array_equal(outputs["OUTPUT0"], 2 * x)
    assert result.as_numpy("OUTPUT0") is out  # decoded once


@pytest.mark.parametrize("size", [16, 5000])  # within, then past, the inline fast path's budget
async def test_explicit_json_carrier_gives_the_same_result_as_auto(
    manager: ReferenceManager, size: int
) -> None:
    x = np.random.default_rng(size).random(size, dtype=np.float32)
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        results = [
            await client.infer(
                "double",
                {"INPUT0": x},
                target=REF,
                carrier=carrier,
                output_dtypes={"OUTPUT0": "FP32"},
            )
            for carrier in ("json", "auto", ["json"])
        ]
    for result in results:
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)


async def test_unknown_output_is_key_error_naming_the_outputs(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        result = await client.infer("double", {"INPUT0": f32(1.0)}, target=REF)
    with pytest.raises(KeyError) as caught:
        result.as_numpy("OUTPUT1")
    assert "OUTPUT1" in str(caught.value)
    assert "OUTPUT0" in str(caught.value)


async def test_output_dtypes(manager: ReferenceManager) -> None:
    x = f32(0.5, -1.25, 3.0)
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        result = await client.infer(
            "double", {"INPUT0": x}, target=REF, output_dtypes={"OUTPUT0": np.float32}
        )
        by_name = await client.infer(
            "double", {"INPUT0": x}, target=REF, output_dtypes={"OUTPUT0": "FP16"}
        )
    out = result.as_numpy("OUTPUT0")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, 2 * x)
    half = by_name.as_numpy("OUTPUT0")
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, (2 * x).astype(np.float16))


NUMERIC_CASES: dict[str, Any] = {
    "I8": np.array([-128, 0, 127], dtype=np.int8),
    "I16": np.array([[-32768, 1], [2, 32767]], dtype=np.int16),
    "I32": np.array([-(2**31), 2**31 - 1], dtype=np.int32),
    "I64": np.array([-(2**63), 2**63 - 1, 3], dtype=np.int64),
    "U8": np.array([0, 255], dtype=np.uint8),
    "U16": np.array([65535], dtype=np.uint16),
    "U32": np.array([2**32 - 1, 7], dtype=np.uint32),
    "U64": np.array([2**64 - 1, 2**63, 0], dtype=np.uint64),
    "F16": np.array([1.5, -0.0009765625, 65504.0], dtype=np.float16),
    "F32": np.array([[0.1, 1e-30], [3.4e38, -2.5]], dtype=np.float32),
    "F64": np.array([0.1, 1e-300, np.pi], dtype=np.float64),
    "BOOL": np.array([[True, False, True]], dtype=np.bool_),
}


async def test_identity_round_trips_every_numeric_dtype(manager: ReferenceManager) -> None:
    """One request with twelve inputs: each comes back exact, with the dtype asked for."""
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        result = await client.infer(
            "identity",
            NUMERIC_CASES,
            target=REF,
            output_dtypes={f"OUT_{name}": array.dtype for name, array in NUMERIC_CASES.items()},
        )
    assert result.model_name == "identity"
    assert sorted(result.output_names) == sorted(f"OUT_{n}" for n in NUMERIC_CASES)
    for name, sent in NUMERIC_CASES.items():
        got = result.as_numpy(f"OUT_{name}")
        assert got.dtype == sent.dtype, name
        assert got.shape == sent.shape, name
        np.testing.assert_array_equal(got, sent, err_msg=name)


async def test_default_output_dtypes_without_hints(manager: ReferenceManager) -> None:
    """Without dtypes: integers -> int64 (uint64 beyond int64 stays exact), floats -> the one
    float dtype the inputs share (here float16: FP16 arrives as FP32 numbers), booleans -> bool."""
    inputs = {
        "I": np.array([1, -2], dtype=np.int16),
        "BIG": np.array([2**64 - 1], dtype=np.uint64),
        "H": np.array([1.5, 0.25], dtype=np.float16),
        "B": np.array([True, False]),
    }
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        result = await client.infer("identity", inputs, target=REF)
    i = result.as_numpy("OUT_I")
    assert i.dtype == np.int64
    np.testing.assert_array_equal(i, [1, -2])
    big = result.as_numpy("OUT_BIG")
    assert int(big[0]) == 2**64 - 1
    h = result.as_numpy("OUT_H")
    assert h.dtype == np.float16
    np.testing.assert_array_equal(h, [1.5, 0.25])
    b = result.as_numpy("OUT_B")
    assert b.dtype == np.bool_
    np.testing.assert_array_equal(b, [True, False])


async def test_outputs_follow_the_inputs_float_dtype_only_when_it_is_one(
    manager: ReferenceManager,
) -> None:
    """The documented rule: output_dtypes, else the model spec, else the inputs' shared float
    dtype for float outputs; inputs of several float dtypes leave floats as float64."""
    mixed = {"A": np.array([0.5], dtype=np.float32), "B": np.array([0.25], dtype=np.float64)}
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        result = await client.infer("identity", mixed, target=REF)
        assert result.as_numpy("OUT_A").dtype == np.float64
        one = await client.infer("identity", {"A": np.array([1.5], np.float32)}, target=REF)
        assert one.as_numpy("OUT_A").dtype == np.float32
        asked = await client.infer(
            "identity",
            {"A": np.array([1.5], np.float32)},
            target=REF,
            output_dtypes={"OUT_A": np.float64},
        )
        assert asked.as_numpy("OUT_A").dtype == np.float64  # what the caller asked wins
        ints = await client.infer("identity", {"I": np.array([3], np.int32)}, target=REF)
        assert ints.as_numpy("OUT_I").dtype == np.int64  # integers are not floats


async def test_bytes_through_identity(manager: ReferenceManager) -> None:
    """BYTES go as UTF-8 strings and come back as an object array of bytes; a 2-D BYTES tensor
    comes back flattened (the manager loses the shape, contract §8)."""
    one_d = text("a", "hello", "ünïcode")
    two_d = np.array([["a", "b"], ["c", "d"]], dtype=object)
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        result = await client.infer("identity", {"S": one_d, "M": two_d}, target=REF)
        single = await client.infer(
            "identity", {"ONE": np.array([b"only"], dtype=object)}, target=REF
        )
    s = result.as_numpy("OUT_S")
    assert s.dtype == object
    assert s.tolist() == [b"a", b"hello", "ünïcode".encode()]
    assert result.as_numpy("OUT_M").tolist() == [b"a", b"b", b"c", b"d"]
    assert single.as_numpy("OUT_ONE").reshape(-1).tolist() == [b"only"]


async def test_tensor_list_form(manager: ReferenceManager) -> None:
    """`inputs` as a list of `Tensor`, with Python data and explicit datatypes."""
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        result = await client.infer(
            "identity",
            [
                anytcm.Tensor("F", [1.5, 2.5], "FP32"),
                anytcm.Tensor("I", np.array([1, 2, 3], dtype=np.int64), "INT32"),
                anytcm.Tensor("H", [[0.5], [0.25]], "FP16"),
                anytcm.Tensor("S", ["x", "yz"], "BYTES"),
            ],
            target=REF,
            output_dtypes={"OUT_F": np.float32, "OUT_I": np.int32, "OUT_H": np.float16},
        )
        doubled = await client.infer(
            "double", [anytcm.Tensor("INPUT0", [[1.0, 2.0]], "FP32")], target=REF
        )
    np.testing.assert_array_equal(result.as_numpy("OUT_F"), np.array([1.5, 2.5], np.float32))
    assert result.as_numpy("OUT_I").dtype == np.int32
    np.testing.assert_array_equal(result.as_numpy("OUT_I"), [1, 2, 3])
    h = result.as_numpy("OUT_H")
    assert h.dtype == np.float16
    assert h.shape == (2, 1)
    assert result.as_numpy("OUT_S").tolist() == [b"x", b"yz"]
    np.testing.assert_array_equal(doubled.as_numpy("OUTPUT0"), [[2.0, 4.0]])


async def test_tensor_datatype_refuses_lossy_cast_before_sending(
    manager: ReferenceManager,
) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        with pytest.raises(anytcm.InvalidInput) as caught:
            await client.infer(
                "identity", [anytcm.Tensor("X", np.array([1.5]), "INT32")], target=REF
            )
        assert isinstance(caught.value, ValueError)
        await infer_double(client, f32(1.0))  # the client is fine


async def test_zero_d_input_is_sent_as_one_element(manager: ReferenceManager) -> None:
    """A 0-d array or numpy scalar goes as shape [1] (a bare scalar cannot match a 0-d shape on
    the manager, which would answer TRITON_SHAPE_MISMATCH): the output has shape (1,)."""
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        from_array = await client.infer(
            "double", {"INPUT0": np.array(3.0, dtype=np.float32)}, target=REF
        )
        from_scalar = await client.infer("double", {"INPUT0": np.float32(-2.5)}, target=REF)
        echoed = await client.infer(
            "identity",
            {"Z": np.array(7, dtype=np.int32)},
            target=REF,
            output_dtypes={"OUT_Z": np.int32},
        )
    np.testing.assert_array_equal(from_array.as_numpy("OUTPUT0"), [6.0])
    assert from_array.as_numpy("OUTPUT0").shape == (1,)
    np.testing.assert_array_equal(from_scalar.as_numpy("OUTPUT0"), [-5.0])
    np.testing.assert_array_equal(echoed.as_numpy("OUT_Z"), np.array([7], dtype=np.int32))


async def test_checksum_and_generate_models(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        total = await client.infer(
            "checksum", {"INPUT0": np.arange(100, dtype=np.int32)}, target=REF
        )
        generated = await client.infer(
            "generate",
            {"SIZE": np.array([1000], dtype=np.int64)},
            target=REF,
            output_dtypes={"OUTPUT0": np.float32},
        )
    np.testing.assert_array_equal(total.as_numpy("OUTPUT0"), [4950.0])
    values = generated.as_numpy("OUTPUT0")
    assert values.shape == (1000,)
    assert values.dtype == np.float32
    np.testing.assert_array_equal(
        values, np.random.default_rng(1000).random(1000, dtype=np.float32)
    )


async def test_sequential_infers_each_get_their_own_reply(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        for i in range(20):
            await infer_double(client, distinct(i))


# -- pipeline ------------------------------------------------------------------------------


async def test_pipeline(manager: ReferenceManager) -> None:
    x = f32(1.0, 2.0)
    ints = np.arange(3, dtype=np.int64)
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        results = await client.pipeline(
            [("double", {"INPUT0": x}), ("identity", {"X": ints}, "echo")],
            target=REF,
            output_dtypes={"double": {"OUTPUT0": np.float32}},
        )
        await infer_double(client, f32(5.0))  # the connection is free again afterwards
    assert set(results) == {"double", "echo"}
    assert results["double"].model_name == "double"
    assert results["echo"].model_name == "identity"
    doubled = results["double"].as_numpy("OUTPUT0")
    assert doubled.dtype == np.float32
    np.testing.assert_array_equal(doubled, 2 * x)
    np.testing.assert_array_equal(results["echo"].as_numpy("OUT_X"), ints)


async def test_pipeline_failing_step_raises_inference_failed(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        with pytest.raises(anytcm.InferenceFailed) as caught:
            await client.pipeline(
                [("double", {"INPUT0": f32(1.0)}), ("fail", {"X": f32(1.0)})], target=REF
            )
        assert caught.value.code == "TRITON_INFERENCE_FAILED"
        await infer_double(client, f32(3.0))


# -- info ------------------------------------------------------------------------------------


async def test_queue_stats(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=2) as client:
        await infer_double(client, f32(1.0))
        stats = await client.info.queue_stats()
        assert isinstance(stats, anytcm.QueueStats)
        # The reference manager's default workers: info 2, management 1, inference 5.
        assert stats.executor_info_available + stats.executor_info_pending == 2
        assert stats.executor_management_available + stats.executor_management_pending == 1
        assert stats.executor_inference_available + stats.executor_inference_pending == 5
        assert stats.inference_users >= 1
        assert stats.total_users >= stats.inference_users


async def test_info_request_generic_action(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        # The manager answers an action it does not know with success and a message: raised,
        # typed, rather than returned as if it were the action's data.
        with pytest.raises(
            anytcm.ContractError, match="does not implement the info action"
        ) as caught:
            await client.info.request("foo")
        assert caught.value.server_message == "Info type 'foo' not implemented yet"
        raw = await client.info.request("queue_stats")
        assert isinstance(raw, dict)
        assert "executor_inference_available" in raw


# -- stats and capabilities ----------------------------------------------------------------


async def test_stats_and_granted_capabilities(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=3) as client:
        await open_connections_up(client, 3)
        stats = client.stats
        assert stats["connects"] == 3
        assert stats["reconnects"] == 0
        assert stats["connect_failures"] == 0
        assert stats["quarantined"] == 0
        assert stats["retries"] == 0
        granted = client.granted_capabilities
        assert granted is not None
        assert granted[0] == "json"
        assert set(granted) <= {"json", "shm"}
    async with anytcm.connect(manager.ws_url, pool_size=1, capabilities=["json"]) as client:
        assert client.granted_capabilities == ("json",)
    # Unknown capabilities are dropped by the manager; the rest is granted in request order.
    async with anytcm.connect(
        manager.ws_url, pool_size=1, capabilities=["protobuf", "json"]
    ) as client:
        assert client.granted_capabilities == ("json",)
    async with anytcm.connect(manager.ws_url, pool_size=1, capabilities=None) as client:
        assert client.granted_capabilities is None  # legacy auth.ok: nothing negotiated
        await infer_double(client, f32(2.0))
