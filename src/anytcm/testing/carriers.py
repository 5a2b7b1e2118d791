"""A conformance suite for carrier plugins: subclass `CarrierConformance` in your tests.

Every carrier (the built-in ``json`` and ``shm``, and plugins such as ``zstd``) must stage every
datatype the manager carries so that the tensors arrive unchanged, free whatever it holds on
`StagedInputs.release()` (and when staging fails), and refuse what it cannot carry with
`anytcm.InvalidInput`. The tests here check that **through the reference manager**: they stage,
send an inference to the ``identity`` model with ``client.infer(..., carrier=<name>)`` and
compare what comes back.

A plugin's test module::

    import pytest
    from anytcm.testing.carriers import CarrierConformance
    from anytcm_zstd import ZstdCarrier

    class TestZstdConformance(CarrierConformance):
        manager_args = ("--capability", "zstd")  # extra `ReferenceManager` arguments

        @pytest.fixture
        def carrier(self) -> ZstdCarrier:
            return ZstdCarrier()

Optional overrides: the `context` fixture (a `CarrierContext` in which the carrier must be
usable; default: its capability granted, same host, 64 KiB frames) and `leftovers()` (what the
carrier has created and not yet freed; default: ``/dev/shm`` entries whose name holds this
process's pid).

The async tests run on asyncio **and** trio through anyio's pytest plugin, which takes the
backends from an ``anyio_backend`` fixture. Your test suite must provide it, e.g. in
``conftest.py``::

    import pytest

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(request):
        return request.param

This module imports the client (`anytcm.connect`, the carrier interface), so the reference
manager package (`anytcm.testing`) does not import it: import it by its full name.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import msgspec
import numpy as np
import numpy.typing as npt
import pytest

import anytcm
from anytcm.carrier import Carrier, CarrierContext, InputTensor, StagedInputs
from anytcm.carriers import carrier_traits
from anytcm.errors import CarrierError, InferenceFailed, InvalidInput
from anytcm.plugins import load_carrier, register_carrier, unregister_carrier
from anytcm.results import Target, Tensor
from anytcm.tensors import numpy_dtype

from . import ReferenceManager

__all__ = ("BYTES_VALUES", "NUMERIC_DATATYPES", "SHAPES", "CarrierConformance", "sample")

#: Every numeric datatype the manager carries (contract §8).
NUMERIC_DATATYPES: tuple[str, ...] = (
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
)
#: BYTES elements of the round trip: empty, ASCII, non-ASCII text, and bytes.
BYTES_VALUES: tuple[str | bytes, ...] = (
    "",
    "plain ascii",
    "héllo wörld",
    "日本語のテキスト",
    "emoji 🎉 and Ω",
    b"raw \xc3\xa9 bytes",
    "tab\tand newline\n",
)
#: Shapes every carrier must round trip: 0-d (arrives as [1]), 1 element, multi-dimensional.
SHAPES: tuple[tuple[int, ...], ...] = ((), (1,), (5,), (2, 3), (2, 1, 3))
#: Empty shapes: a carrier sends them, or refuses them with InvalidInput.
EMPTY_SHAPES: tuple[tuple[int, ...], ...] = ((0,), (3, 0), (0, 3))

TARGET = Target("127.0.0.1", "ref-0")


def _values(datatype: str) -> list[Any]:
    """Values of a datatype that stress it: its extremes, zero, fractions."""
    if datatype == "BYTES":
        return list(BYTES_VALUES)
    dtype = numpy_dtype(datatype)
    if dtype.kind == "b":
        return [True, False, False, True]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return [int(info.min), int(info.max), 0, 1, int(info.max) // 3, int(info.min) // 7]
    finfo = np.finfo(dtype)
    return [float(finfo.max), float(finfo.tiny), -0.5, 0.1, 1 / 3, -float(finfo.max), 0.0, 42.0]


def sample(datatype: str, shape: tuple[int, ...]) -> npt.NDArray[Any]:
    """An array of `datatype` and `shape` filled with the stress values of that datatype."""
    values = _values(datatype)
    count = math.prod(shape)
    flat = [values[i % len(values)] for i in range(count)]
    if datatype == "BYTES":
        array: npt.NDArray[Any] = np.empty(count, dtype=object)
        array[:] = flat
        return array.reshape(shape)
    return np.array(flat, dtype=numpy_dtype(datatype)).reshape(shape)


def _as_bytes(value: Any) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _assert_same(sent: npt.NDArray[Any], got: npt.NDArray[Any], datatype: str) -> None:
    """What came back is what was sent, given the manager's JSON outputs (contract §8):
    0-d tensors travel as shape [1], BYTES outputs are flattened, empty ones lose their shape."""
    expected = sent.reshape(1) if sent.ndim == 0 else sent
    assert got.size == expected.size, f"{datatype}: sent {expected.shape}, got {got.shape}"
    if datatype == "BYTES":
        assert got.dtype == np.dtype(object)
        assert [_as_bytes(v) for v in got.reshape(-1).tolist()] == [
            _as_bytes(v) for v in expected.reshape(-1).tolist()
        ]
        return
    assert got.dtype == numpy_dtype(datatype), f"{datatype}: got dtype {got.dtype}"
    if expected.size:
        assert got.shape == expected.shape, f"{datatype}: sent {expected.shape}, got {got.shape}"
    np.testing.assert_array_equal(got.reshape(expected.shape), expected, strict=True)


class CarrierConformance:
    """The tests every carrier must pass. Subclass it and provide a `carrier` fixture."""

    #: Extra `ReferenceManager` arguments, e.g. ``("--capability", "zstd")``.
    manager_args: ClassVar[Sequence[str]] = ()

    # -- fixtures and hooks a subclass may override -----------------------------------------

    @pytest.fixture
    def carrier(self) -> Carrier:
        raise NotImplementedError("provide a `carrier` fixture returning the carrier instance")

    @pytest.fixture
    def context(self, carrier: Carrier) -> CarrierContext:
        """A connection on which `carrier` must be usable."""
        return CarrierContext(
            granted=tuple(dict.fromkeys(("json", carrier.capability))),
            same_host=True,
            max_frame_bytes=65536,
        )

    def leftovers(self) -> set[str]:
        """What the carrier created and has not freed. Default: ``/dev/shm`` entries whose name
        holds this process's pid as a number; override for carriers that hold other things."""
        try:
            names = os.listdir("/dev/shm")
        except OSError:
            return set()
        mine = re.compile(rf"(?<!\d){os.getpid()}(?!\d)")
        return {name for name in names if mine.search(name)}

    # -- fixtures of the suite ---------------------------------------------------------------

    @pytest.fixture(scope="module")
    @classmethod
    def reference_manager(cls) -> Iterator[ReferenceManager]:
        """One reference manager per test module, started with `manager_args`."""
        with ReferenceManager(extra_args=list(cls.manager_args)) as manager:
            yield manager

    @pytest.fixture
    def registered(self, carrier: Carrier) -> Iterator[Carrier]:
        """`carrier` under its name for `client.infer(carrier=...)`, restored afterwards."""
        try:
            previous: Carrier | None = load_carrier(carrier.name)
        except CarrierError:
            previous = None
        if previous is carrier:
            yield carrier
            return
        register_carrier(carrier)
        try:
            yield carrier
        finally:
            unregister_carrier(carrier.name)
            if previous is not None:
                try:
                    restored: Carrier | None = load_carrier(carrier.name)
                except CarrierError:
                    restored = None
                if type(restored) is not type(previous):  # it had been registered explicitly
                    register_carrier(previous)

    @pytest.fixture
    def clean(self) -> Iterator[None]:
        """Fails the test if the carrier left anything behind."""
        before = self.leftovers()
        yield
        left = self.leftovers() - before
        assert not left, f"the carrier left {sorted(left)} behind"

    async def _roundtrip(
        self,
        manager: ReferenceManager,
        carrier: Carrier,
        inputs: dict[str, npt.NDArray[Any]],
        datatypes: dict[str, str],
    ) -> dict[str, npt.NDArray[Any]]:
        """Send `inputs` to the identity model through `carrier`; the echoed outputs by input."""
        async with anytcm.connect(
            manager.ws_url, pool_size=1, capabilities=[carrier.capability]
        ) as client:
            granted = client.granted_capabilities or ()
            if carrier.capability != "json":
                assert carrier.capability in granted, (
                    f"the reference manager did not grant {carrier.capability!r} (granted: "
                    f"{list(granted)}); offer it with manager_args = ('--capability', ...)"
                )
            result = await client.infer(
                "identity",
                [Tensor(name, array, datatypes[name]) for name, array in inputs.items()],
                target=TARGET,
                carrier=carrier.name,
                output_dtypes={f"OUT_{name}": dt for name, dt in datatypes.items()},
            )
        return {name: result.as_numpy(f"OUT_{name}") for name in inputs}

    # -- the interface ----------------------------------------------------------------------

    def test_is_a_carrier(self, carrier: Carrier, context: CarrierContext) -> None:
        assert isinstance(carrier, Carrier)
        assert isinstance(carrier.name, str)
        assert carrier.name
        assert isinstance(carrier.capability, str)
        assert carrier.capability
        assert carrier.unavailable_reason(context) is None

    def test_unavailable_when_not_granted(self, carrier: Carrier, context: CarrierContext) -> None:
        if carrier.capability == "json":
            pytest.skip("'json' is always granted")
        others = tuple(c for c in context.granted or () if c != carrier.capability)
        for granted in (others, None):
            denied = CarrierContext(granted, context.same_host, context.max_frame_bytes)
            reason = carrier.unavailable_reason(denied)
            assert isinstance(reason, str), f"usable with granted={granted}?"
            assert reason.strip()

    # -- the optional members (`anytcm.carriers.Carrier`) ----------------------------------------

    def test_optional_members(self, carrier: Carrier) -> None:
        """Declared with the right types (a carrier declaring none passes with the defaults)."""
        traits = carrier_traits(carrier)  # TypeError, naming the member, for a wrong type
        if traits.serves_streams:
            assert traits.encode_item is not None

    @pytest.mark.anyio
    async def test_encode_item_gives_what_stage_gives(self, carrier: Carrier, clean: None) -> None:
        """Streams, pipelines and the inline fast path send `encode_item`'s bytes instead of
        staging: they must be the very items `stage` makes."""
        encode = carrier_traits(carrier).encode_item
        if encode is None:
            pytest.skip("the carrier has no encode_item")
        for datatype in [*NUMERIC_DATATYPES, "BYTES"]:
            inputs = [
                InputTensor(f"x{i}", sample(datatype, shape), given)
                for i, shape in enumerate(SHAPES)
                for given in (None, datatype)
            ]
            staged = await carrier.stage(inputs)
            try:
                expected = [msgspec.json.encode(item) for item in staged.items]
            finally:
                staged.release()
            assert [encode(t.name, t.array, t.datatype) for t in inputs] == expected, datatype

    @pytest.mark.anyio
    async def test_min_item_bytes_is_a_lower_bound(self, carrier: Carrier, clean: None) -> None:
        """The client skips a carrier on this estimate: above the true size it would skip one
        that fits."""
        estimate = carrier_traits(carrier).min_item_bytes
        if estimate is None:
            pytest.skip("the carrier has no min_item_bytes")
        cases = [[InputTensor("x", sample(dt, shape))] for dt in ("BOOL", "INT8", "FP64", "BYTES")
                 for shape in (*SHAPES, *EMPTY_SHAPES[:1], (64, 64))]  # fmt: skip
        cases.append([InputTensor(f"x{i}", sample("UINT8", (i + 1,))) for i in range(8)])
        for inputs in cases:
            staged = await carrier.stage(inputs)
            try:
                size = sum(len(msgspec.json.encode(item)) for item in staged.items)
            finally:
                staged.release()
            bound = estimate(inputs)
            assert 0 <= bound <= size, f"{inputs[0].array.dtype} {inputs[0].array.shape}"

    # -- round trips through the reference manager -------------------------------------------

    @pytest.mark.anyio
    @pytest.mark.parametrize("datatype", [*NUMERIC_DATATYPES, "BYTES"])
    async def test_roundtrip(
        self,
        reference_manager: ReferenceManager,
        registered: Carrier,
        datatype: str,
        clean: None,
    ) -> None:
        """Every shape of SHAPES, one input each, in one request to the identity model."""
        inputs = {f"x{i}": sample(datatype, shape) for i, shape in enumerate(SHAPES)}
        outputs = await self._roundtrip(
            reference_manager, registered, inputs, dict.fromkeys(inputs, datatype)
        )
        for name, sent in inputs.items():
            _assert_same(sent, outputs[name], datatype)

    @pytest.mark.anyio
    @pytest.mark.parametrize("datatype", ["FP32", "INT64", "BYTES"])
    @pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=str)
    async def test_empty(
        self,
        reference_manager: ReferenceManager,
        registered: Carrier,
        datatype: str,
        shape: tuple[int, ...],
        clean: None,
    ) -> None:
        """An empty tensor arrives empty, or is refused up front with InvalidInput."""
        array = sample(datatype, shape)
        refused: InvalidInput | None = None
        try:
            staged = await registered.stage([InputTensor("x", array, datatype)])
        except InvalidInput as exc:
            refused = exc
        if refused is not None:
            assert str(refused), "InvalidInput needs a message saying why"
            return
        staged.release()
        outputs = await self._roundtrip(
            reference_manager, registered, {"x": array}, {"x": datatype}
        )
        _assert_same(array, outputs["x"], datatype)

    @pytest.mark.anyio
    async def test_mixed_datatypes_in_one_request(
        self, reference_manager: ReferenceManager, registered: Carrier, clean: None
    ) -> None:
        inputs = {
            "a": sample("FP32", (4, 2)),
            "b": sample("BYTES", (3,)),
            "c": sample("UINT8", (7,)),
            "d": sample("BOOL", ()),
        }
        datatypes = {"a": "FP32", "b": "BYTES", "c": "UINT8", "d": "BOOL"}
        outputs = await self._roundtrip(reference_manager, registered, inputs, datatypes)
        for name, sent in inputs.items():
            _assert_same(sent, outputs[name], datatypes[name])

    # -- cleanup -----------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_release_frees_everything(self, carrier: Carrier, clean: None) -> None:
        before = self.leftovers()
        staged = await carrier.stage(
            [
                InputTensor("a", sample("FP32", (64, 64))),
                InputTensor("b", sample("BYTES", (5,))),
                InputTensor("c", sample("INT16", ())),
            ]
        )
        assert isinstance(staged, StagedInputs)
        assert len(staged.items) == 3
        staged.release()
        assert self.leftovers() - before == set()
        staged.release()  # twice is fine
        staged.release()

    @pytest.mark.anyio
    async def test_concurrent_staging(self, carrier: Carrier, clean: None) -> None:
        import anyio

        done: list[StagedInputs] = []

        async def stage(i: int) -> None:
            done.append(await carrier.stage([InputTensor(f"x{i}", sample("INT32", (i + 1,)))]))

        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(stage, i)
        assert len(done) == 16
        for staged in done:
            staged.release()

    @pytest.mark.anyio
    @pytest.mark.parametrize(
        "bad",
        [
            pytest.param(np.array([1 + 2j, 3j]), id="complex"),
            pytest.param(np.array([1, "two", 3.0], dtype=object), id="bytes-with-a-number"),
        ],
    )
    async def test_staging_error_frees_what_was_staged(
        self, carrier: Carrier, bad: npt.NDArray[Any], clean: None
    ) -> None:
        good = [
            InputTensor("a", sample("FP64", (256, 256))),
            InputTensor("b", sample("BYTES", (2,))),
        ]
        with pytest.raises(InvalidInput):
            await carrier.stage([*good, InputTensor("bad", bad)])
        with pytest.raises(InvalidInput):
            await carrier.stage([good[0], InputTensor("bad", bad), good[1]])

    @pytest.mark.anyio
    async def test_release_after_a_failed_request(
        self, reference_manager: ReferenceManager, registered: Carrier, clean: None
    ) -> None:
        async with anytcm.connect(
            reference_manager.ws_url, pool_size=1, capabilities=[registered.capability]
        ) as client:
            with pytest.raises(InferenceFailed):
                await client.infer(
                    "fail", {"INPUT0": sample("FP32", (8,))}, target=TARGET, carrier=registered.name
                )

    # -- errors ------------------------------------------------------------------------------

    @pytest.mark.anyio
    @pytest.mark.parametrize(
        "array",
        [
            pytest.param(np.zeros(3, dtype=np.complex64), id="complex64"),
            pytest.param(np.zeros((), dtype=np.complex128), id="complex128-0d"),
            pytest.param(np.zeros(2, dtype="datetime64[s]"), id="datetime64"),
        ],
    )
    async def test_unsupported_dtype(
        self, carrier: Carrier, array: npt.NDArray[Any], clean: None
    ) -> None:
        with pytest.raises(InvalidInput) as caught:
            await carrier.stage([InputTensor("x", array)])
        assert str(caught.value)
