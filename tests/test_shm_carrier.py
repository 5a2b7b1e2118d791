"""The shm carrier: the conformance kit, plus what is particular to shared memory.

Segments (`/dev/shm/anytcm-<pid>-<hex>`, mode 0600, offset 0), what the reference manager reads
from them, cleanup on release, failure and cancellation, and the stale sweep.
"""

from __future__ import annotations

import gc
import os
import re
import stat
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt
import pytest

import anytcm
from anytcm.carrier import CarrierContext, InputTensor
from anytcm.carriers import _shm as _shm_carrier
from anytcm.carriers._shm import KEY_PREFIX, ShmCarrier, ShmStaged, sweep_stale_segments
from anytcm.errors import InvalidInput
from anytcm.testing import ReferenceManager
from anytcm.testing.carriers import CarrierConformance
from anytcm.wire import SHMReference

SHM = "/dev/shm"
REF = anytcm.Target("127.0.0.1", "ref-0")
KEY = re.compile(rf"/{KEY_PREFIX}{os.getpid()}-[0-9a-f]+\Z")

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM), reason="needs /dev/shm")


def _ours() -> set[str]:
    """`anytcm-*` segments that this process is answerable for: its own, or a dead pid's."""
    found = set()
    for name in os.listdir(SHM):
        match = re.match(rf"{KEY_PREFIX}(\d+)-", name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or not os.path.exists(f"/proc/{pid}"):
            found.add(name)
    return found


@pytest.fixture(autouse=True, scope="module")
def _nothing_left_behind() -> Iterator[None]:
    before = _ours()
    yield
    assert _ours() - before == set(), "segments were left in /dev/shm"


class TestShmConformance(CarrierConformance):
    @pytest.fixture
    def carrier(self) -> ShmCarrier:
        return ShmCarrier()

    def leftovers(self) -> set[str]:
        return {n for n in os.listdir(SHM) if n.startswith(f"{KEY_PREFIX}{os.getpid()}-")}


def _refs(staged: Any) -> list[SHMReference]:
    refs = list(staged.items)
    assert all(isinstance(r, SHMReference) for r in refs)
    return refs


def _exists(path: str) -> bool:
    return os.path.isfile(path)


def _content(ref: SHMReference) -> bytes:
    with open(SHM + ref.shm_key, "rb") as f:
        return f.read()


# -- availability ------------------------------------------------------------------------------


def test_unavailable_reasons() -> None:
    carrier = ShmCarrier()
    ok = CarrierContext(("json", "shm"), True, 65536)
    assert carrier.unavailable_reason(ok) is None
    for granted in (("json",), None):
        reason = carrier.unavailable_reason(CarrierContext(granted, True, 65536))
        assert reason is not None
        assert "did not grant the 'shm' capability" in reason
    reason = carrier.unavailable_reason(CarrierContext(("json", "shm"), False, 65536))
    assert reason is not None
    assert "not on this host" in reason
    assert "same_host" in reason
    assert "json" in reason


def test_registered_as_shm() -> None:
    assert isinstance(anytcm.plugins.load_carrier("shm"), ShmCarrier)


# -- segments --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_segment_key_mode_offset_and_content() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.array([-1, 2, 3], dtype=np.int64)
    staged = await ShmCarrier().stage([InputTensor("a", a), InputTensor("b", b)])
    try:
        refs = _refs(staged)
        assert [r.name for r in refs] == ["a", "b"]
        assert len({r.shm_key for r in refs}) == 2
        arrays: tuple[npt.NDArray[Any], ...] = (a, b)
        for ref, array in zip(refs, arrays, strict=True):
            assert KEY.match(ref.shm_key), ref.shm_key
            assert ref.offset == 0
            assert ref.byte_size == array.nbytes
            assert ref.shape == list(array.shape)
            info = os.stat(SHM + ref.shm_key)
            assert stat.S_IMODE(info.st_mode) == 0o600
            assert info.st_size == ref.byte_size
            assert _content(ref) == array.tobytes()
        assert [r.dtype for r in refs] == ["FP32", "INT64"]
    finally:
        staged.release()
    for ref in refs:
        assert not _exists(SHM + ref.shm_key)


@pytest.mark.anyio
async def test_fresh_key_per_request() -> None:
    carrier = ShmCarrier()
    x = np.ones(4, np.float32)
    first, second = (
        await carrier.stage([InputTensor("x", x)]),
        await carrier.stage([InputTensor("x", x)]),
    )
    try:
        assert _refs(first)[0].shm_key != _refs(second)[0].shm_key
    finally:
        first.release()
        second.release()


@pytest.mark.anyio
async def test_shape_rules_0d_and_empty() -> None:
    staged = await ShmCarrier().stage(
        [
            InputTensor("scalar", np.float64(2.5)),
            InputTensor("empty", np.zeros((0, 3), np.float32)),
            InputTensor("no_text", np.empty(0, dtype=object)),
        ]
    )
    try:
        scalar, empty, no_text = _refs(staged)
        assert (scalar.shape, scalar.byte_size, scalar.dtype) == ([1], 8, "FP64")
        assert _content(scalar) == np.float64(2.5).tobytes()
        # The manager refuses byte_size 0: an empty tensor gets one byte Triton never reads.
        assert (empty.shape, empty.byte_size, empty.dtype) == ([0, 3], 1, "FP32")
        assert (no_text.shape, no_text.byte_size, no_text.dtype) == ([0], 1, "BYTES")
    finally:
        staged.release()


@pytest.mark.anyio
async def test_bytes_layout() -> None:
    values = np.array(["", "héllo", b"\xff\x00raw"], dtype=object)
    staged = await ShmCarrier().stage([InputTensor("t", values.reshape(3, 1))])
    try:
        (ref,) = _refs(staged)
        expected = b"".join(
            struct.pack("<I", len(v)) + v for v in (b"", "héllo".encode(), b"\xff\x00raw")
        )
        assert (ref.dtype, ref.shape, ref.byte_size) == ("BYTES", [3, 1], len(expected))
        assert _content(ref) == expected
    finally:
        staged.release()


@pytest.mark.anyio
async def test_numpy_text_arrays_are_bytes() -> None:
    staged = await ShmCarrier().stage(
        [InputTensor("s", np.array([b"ab", b"c"])), InputTensor("u", np.array(["日本", "x"]))]
    )
    try:
        s, u = _refs(staged)
        assert _content(s) == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"
        assert _content(u) == struct.pack("<I", 6) + "日本".encode() + b"\x01\x00\x00\x00x"
    finally:
        staged.release()


@pytest.mark.anyio
@pytest.mark.parametrize("size", [1000, 300_000], ids=["inline", "thread"])
async def test_strided_and_byteswapped_arrays_are_written_c_ordered_native(size: int) -> None:
    base = np.arange(size * 2, dtype=np.int32).reshape(size, 2)
    strided = base[:, 1]
    swapped = base.astype(">i4").T
    staged = await ShmCarrier().stage([InputTensor("s", strided), InputTensor("w", swapped)])
    try:
        s, w = _refs(staged)
        assert _content(s) == np.ascontiguousarray(strided).tobytes()
        assert _content(w) == np.ascontiguousarray(base.T, dtype="=i4").tobytes()
        assert w.shape == [2, size]
    finally:
        staged.release()


@pytest.mark.anyio
async def test_declared_datatype() -> None:
    carrier = ShmCarrier()
    staged = await carrier.stage([InputTensor("x", np.array([1, 2], np.int32), "FP64")])
    try:
        (ref,) = _refs(staged)
        assert ref.dtype == "FP64"
        assert _content(ref) == np.array([1.0, 2.0]).tobytes()
    finally:
        staged.release()
    with pytest.raises(InvalidInput):
        await carrier.stage([InputTensor("x", np.array([300], np.int32), "INT8")])
    with pytest.raises(InvalidInput):
        await carrier.stage([InputTensor("x", np.array([1.0]), "BYTES")])
    with pytest.raises(InvalidInput):
        await carrier.stage([InputTensor("", np.array([1.0]))])


# -- through the reference manager -----------------------------------------------------------------


@pytest.mark.anyio
async def test_checksum_of_16_mib(manager: ReferenceManager) -> None:
    x = np.random.default_rng(7).random(4 * 1024 * 1024, dtype=np.float32)
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        result = await client.infer(
            "checksum", {"INPUT0": x}, target=REF, carrier="shm", output_dtypes={"OUTPUT0": "FP64"}
        )
    (total,) = result.as_numpy("OUTPUT0")
    assert total == pytest.approx(float(np.sum(x, dtype=np.float64)), rel=1e-12)


@pytest.mark.anyio
@pytest.mark.parametrize("carrier", ["shm", "auto"])
async def test_double_of_1_mib(manager: ReferenceManager, carrier: str) -> None:
    x = np.random.default_rng(3).random((512, 512), dtype=np.float32)
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        result = await client.infer(
            "double", {"INPUT0": x}, target=REF, carrier=carrier, output_dtypes={"OUTPUT0": "FP32"}
        )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x, strict=True)


@pytest.mark.anyio
async def test_release_after_failed_request(manager: ReferenceManager) -> None:
    before = _ours()
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        with pytest.raises(anytcm.InferenceFailed):
            await client.infer(
                "fail", {"x": np.ones(300_000, np.float32)}, target=REF, carrier="shm"
            )
    assert _ours() == before


@pytest.mark.anyio
async def test_staged_references_sent_by_hand(manager: ReferenceManager) -> None:
    x = np.arange(10, dtype=np.int16)
    staged = await ShmCarrier().stage([InputTensor("x", x)])
    try:
        async with anytcm.connect(manager.ws_url, pool_size=1) as client:
            result = await client.infer(
                "identity", _refs(staged), target=REF, output_dtypes={"OUT_x": "INT16"}
            )
    finally:
        staged.release()
    np.testing.assert_array_equal(result.as_numpy("OUT_x"), x, strict=True)


# -- cleanup -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cancelled_while_staging_leaves_nothing() -> None:
    big = [InputTensor(f"x{i}", np.ones(4 * 1024 * 1024, np.float32)) for i in range(4)]
    before = _ours()
    for _ in range(2):  # one cancel lands mid-copy, the next (usually) between segments
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(ShmCarrier().stage, big)
                while not _ours() - before:
                    await anyio.sleep(0.0005)
                scope.cancel()
        assert scope.cancelled_caught
        assert _ours() == before


@pytest.mark.anyio
@pytest.mark.parametrize("size", [16, 300_000], ids=["inline", "thread"])
async def test_failure_midway_unlinks_what_was_made(
    monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    real = os.ftruncate
    calls = []

    def ftruncate(fd: int, length: int) -> None:
        calls.append(length)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(fd, length)

    monkeypatch.setattr(os, "ftruncate", ftruncate)
    before = _ours()
    inputs = [InputTensor(f"x{i}", np.ones(size, np.float32)) for i in range(3)]
    with pytest.raises(OSError, match="No space"):
        await ShmCarrier().stage(inputs)
    assert len(calls) == 2
    assert _ours() == before


@pytest.mark.anyio
async def test_bad_bytes_element_after_segments_cleans_up() -> None:
    before = _ours()
    with pytest.raises(InvalidInput, match="element 1"):
        await ShmCarrier().stage(
            [
                InputTensor("a", np.ones(1000, np.float64)),
                InputTensor("b", np.array(["ok", 2], dtype=object)),
            ]
        )
    assert _ours() == before


@pytest.mark.anyio
async def test_release_is_idempotent_and_never_raises() -> None:
    staged = await ShmCarrier().stage([InputTensor("x", np.ones(3, np.uint8))])
    (ref,) = _refs(staged)
    os.unlink(SHM + ref.shm_key)  # someone else removed it first
    staged.release()
    staged.release()


@pytest.mark.anyio
async def test_forgotten_staging_is_freed_when_collected() -> None:
    staged = await ShmCarrier().stage([InputTensor("x", np.ones(3, np.uint8))])
    assert isinstance(staged, ShmStaged)
    path = SHM + _refs(staged)[0].shm_key
    assert _exists(path)
    del staged
    gc.collect()
    assert not _exists(path)


# -- the stale sweep ---------------------------------------------------------------------------


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _touch(name: str) -> str:
    path = os.path.join(SHM, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.close(fd)
    return path


def test_sweep_removes_only_dead_pids_segments() -> None:
    import fcntl

    dead = _dead_pid()
    assert not os.path.exists(f"/proc/{dead}")
    stale = _touch(f"{KEY_PREFIX}{dead}-0123abcd")
    kept = [
        _touch(f"{KEY_PREFIX}{os.getpid()}-0123abcd"),  # alive: this process
        _touch(f"{KEY_PREFIX}{dead}-not-hex"),  # not our form
        _touch(f"{KEY_PREFIX}{dead}-0123abcd.bak"),
        _touch(f"other-{dead}-0123abcd"),  # not our prefix
        _touch(f"x{KEY_PREFIX}{dead}-0123abcd"),
    ]
    # A dead-looking pid whose segment is locked: a live process in another PID namespace.
    locked = _touch(f"{KEY_PREFIX}{dead}-feed")
    holder = os.open(locked, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_SH)
    try:
        assert sweep_stale_segments() >= 1  # ours, and any other stale leftovers of this user
        assert not _exists(stale)
        for path in [*kept, locked]:
            assert _exists(path), path
    finally:
        os.close(holder)
        for path in [stale, *kept, locked]:
            if _exists(path):
                os.unlink(path)


@pytest.mark.anyio
async def test_sweep_runs_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_shm_carrier, "_swept", False)
    stale = _touch(f"{KEY_PREFIX}{_dead_pid()}-abc123")
    try:
        carrier = ShmCarrier()
        (await carrier.stage([InputTensor("x", np.ones(1, np.int8))])).release()
        assert not _exists(stale)
        assert _shm_carrier._swept
    finally:
        if _exists(stale):
            os.unlink(stale)


# -- no resource tracker ---------------------------------------------------------------------------


def test_no_resource_tracker_warnings() -> None:
    script = textwrap.dedent(
        """
        import sys, anyio, numpy as np
        from anytcm.carriers._shm import ShmCarrier
        from anytcm.carrier import InputTensor

        async def main():
            staged = await ShmCarrier().stage([InputTensor("x", np.ones(1 << 20, np.float32))])
            staged.release()
            await ShmCarrier().stage([InputTensor("y", np.ones(8, np.float32))])  # never released

        anyio.run(main)
        print(sorted(m for m in sys.modules if m.startswith("multiprocessing")))
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "resource_tracker" not in done.stdout
    assert "shared_memory" not in done.stdout
