"""The zstd carrier on its own: the items it stages, its options and its errors."""

from __future__ import annotations

import base64
import json
import struct
import threading
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
import pytest
import zstandard
from anytcm_zstd import DEFAULT_LEVEL, OFFLOAD_BYTES, ZstdCarrier

from anytcm.carrier import Carrier, CarrierContext, InputTensor
from anytcm.errors import InvalidInput

GRANTED = CarrierContext(("json", "zstd"), same_host=True, max_frame_bytes=65536)


async def stage_items(carrier: ZstdCarrier, *tensors: InputTensor) -> list[dict[str, Any]]:
    staged = await carrier.stage(list(tensors))
    try:
        items = []
        for item in staged.items:
            assert isinstance(item, msgspec.Raw)
            items.append(json.loads(bytes(item)))
        return items
    finally:
        staged.release()


def unpack(item: dict[str, Any]) -> bytes:
    assert set(item) == {"name", "shape", "datatype", "zstd"}
    frame = base64.b64decode(item["zstd"], validate=True)
    assert zstandard.frame_content_size(frame) >= 0  # the frame declares its size
    return zstandard.ZstdDecompressor().decompress(frame)


def test_is_a_carrier() -> None:
    carrier = ZstdCarrier()
    assert isinstance(carrier, Carrier)
    assert (carrier.name, carrier.capability, carrier.level) == ("zstd", "zstd", DEFAULT_LEVEL)


@pytest.mark.parametrize(
    ("granted", "usable"),
    [
        (("json", "zstd"), True),
        (("zstd",), True),
        (("json",), False),
        (("json", "shm"), False),
        ((), False),
        (None, False),
    ],
)
def test_usable_only_when_granted(granted: tuple[str, ...] | None, usable: bool) -> None:
    reason = ZstdCarrier().unavailable_reason(CarrierContext(granted, True, 65536))
    if usable:
        assert reason is None
    else:
        assert isinstance(reason, str)
        assert "zstd" in reason
        assert reason.strip() == reason
        assert len(reason.split()) > 5  # a sentence saying why, not a code


@pytest.mark.parametrize("level", [-(1 << 17) - 1, 23, 1.5, True, "3"])
def test_level_is_checked(level: Any) -> None:
    with pytest.raises(ValueError, match="zstd level"):
        ZstdCarrier(level=level)


@pytest.mark.anyio
async def test_item_format_numeric() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    (item,) = await stage_items(ZstdCarrier(), InputTensor("INPUT0", array))
    assert (item["name"], item["shape"], item["datatype"]) == ("INPUT0", [2, 3], "FP32")
    assert unpack(item) == array.astype("<f4").tobytes()


@pytest.mark.anyio
async def test_non_native_and_non_contiguous_arrays() -> None:
    big_endian = np.array([1, 2, 3], dtype=">i8")
    strided = np.arange(20, dtype=np.int16).reshape(4, 5)[:, ::2]  # not C-contiguous
    fortran = np.asfortranarray(np.arange(6, dtype=np.uint32).reshape(2, 3))
    a, b, c = await stage_items(
        ZstdCarrier(),
        InputTensor("a", big_endian),
        InputTensor("b", strided),
        InputTensor("c", fortran),
    )
    assert (a["datatype"], b["datatype"], c["datatype"]) == ("INT64", "INT16", "UINT32")
    assert unpack(a) == struct.pack("<3q", 1, 2, 3)
    assert unpack(b) == np.ascontiguousarray(strided).astype("<i2").tobytes()
    assert b["shape"] == [4, 3]
    assert unpack(c) == np.arange(6, dtype="<u4").tobytes()  # C order, whatever the layout


@pytest.mark.anyio
async def test_scalar_travels_as_shape_one() -> None:
    (item,) = await stage_items(ZstdCarrier(), InputTensor("x", np.float64(2.5)))
    assert item["shape"] == [1]
    assert unpack(item) == struct.pack("<d", 2.5)


@pytest.mark.anyio
async def test_bytes_serialisation() -> None:
    array = np.array([["a", "héllo"], [b"\xff\x00raw", ""]], dtype=object)
    (item,) = await stage_items(ZstdCarrier(), InputTensor("T", array))
    assert (item["shape"], item["datatype"]) == ([2, 2], "BYTES")
    expected = b"".join(
        struct.pack("<I", len(e)) + e for e in (b"a", "héllo".encode(), b"\xff\x00raw", b"")
    )
    assert unpack(item) == expected


@pytest.mark.anyio
async def test_str_arrays_are_bytes() -> None:
    (item,) = await stage_items(ZstdCarrier(), InputTensor("T", np.array(["ab", "c"])))
    assert item["datatype"] == "BYTES"
    assert unpack(item) == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"


@pytest.mark.anyio
async def test_raw_bytes_carry_what_json_cannot() -> None:
    """±Inf and an empty shape with a zero before the last dimension are fine as raw bytes."""
    inf = np.array([np.inf, -np.inf, np.nan], dtype=np.float32)
    empty = np.zeros((0, 3), dtype=np.int8)
    a, b = await stage_items(ZstdCarrier(), InputTensor("a", inf), InputTensor("b", empty))
    assert unpack(a) == inf.tobytes()
    assert (b["shape"], unpack(b)) == ([0, 3], b"")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("array", "datatype", "sent"),
    [
        (np.array([1, 2], dtype=np.int64), "FP32", np.array([1, 2], "<f4")),
        (np.array([1.0, 2.0]), "INT32", np.array([1, 2], "<i4")),
        (np.array([0.5]), "TYPE_FP16", np.array([0.5], "<f2")),
        (np.array([True, False]), "UINT8", np.array([1, 0], "u1")),
    ],
)
async def test_lossless_casts_to_the_datatype(
    array: np.ndarray[Any, Any], datatype: str, sent: np.ndarray[Any, Any]
) -> None:
    (item,) = await stage_items(ZstdCarrier(), InputTensor("x", array, datatype))
    assert item["datatype"] == datatype.removeprefix("TYPE_")
    assert unpack(item) == sent.tobytes()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        (InputTensor("x", np.array([0.1]), "FP32"), "would change values"),
        (InputTensor("x", np.array([-1]), "UINT64"), "would change values"),
        (InputTensor("x", np.array([300]), "INT8"), "would change values"),
        (InputTensor("x", np.array([2**53 + 1]), "FP64"), "would change values"),
        (InputTensor("x", np.array([np.nan]), "INT32"), "would change values"),
        (InputTensor("x", np.array([1.0]), "BF16"), "BF16"),
        (InputTensor("x", np.array([1.0]), "NOPE"), "unknown datatype"),
        (InputTensor("x", np.array(["a"]), "FP32"), "holds BYTES data"),
        (InputTensor("x", np.array([1, 2]), "BYTES"), "datatype is BYTES"),
        (InputTensor("x", np.array([1j])), "no Triton datatype"),
        (InputTensor("x", np.array(["a", 3], dtype=object)), "expected str or bytes"),
        (InputTensor("x", np.array(["\ud800"], dtype=object)), "UTF-8"),
        (InputTensor("", np.zeros(1)), "non-empty strings"),
    ],
)
async def test_invalid_inputs(tensor: InputTensor, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        await ZstdCarrier().stage([tensor])


@pytest.mark.anyio
async def test_level_changes_the_output() -> None:
    rng = np.random.default_rng(0)
    array = np.cumsum(rng.integers(-2, 3, size=50_000)).astype(np.int32)  # a random walk
    (fast,) = await stage_items(ZstdCarrier(level=1), InputTensor("x", array))
    (small,) = await stage_items(ZstdCarrier(level=19), InputTensor("x", array))
    assert unpack(fast) == unpack(small) == array.tobytes()
    assert len(small["zstd"]) < 0.9 * len(fast["zstd"])


class _ThreadSpy(ZstdCarrier):
    threads: list[int]

    def _encode_all(self, inputs: Sequence[InputTensor]) -> list[msgspec.Raw]:
        self.threads.append(threading.get_ident())
        return super()._encode_all(inputs)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("nbytes", "offloaded"), [(OFFLOAD_BYTES, False), (OFFLOAD_BYTES + 4, True)]
)
async def test_large_requests_compress_on_a_worker_thread(nbytes: int, offloaded: bool) -> None:
    spy = _ThreadSpy()
    spy.threads = []
    await stage_items(spy, InputTensor("x", np.zeros(nbytes // 4, dtype=np.float32)))
    assert (spy.threads[0] != threading.get_ident()) is offloaded


@pytest.mark.anyio
async def test_compressible_tensor_is_small() -> None:
    """4 MiB of zeros stage to a few hundred bytes: far below the 64 KiB frame cap."""
    (item,) = await stage_items(ZstdCarrier(), InputTensor("x", np.zeros(1 << 20, np.float32)))
    assert len(json.dumps(item)) < 2048
