"""The carrier interface is the client's only view of carriers.

The client picks, skips and fast-paths carriers through their optional members
(`anytcm.carriers.carrier_traits`) and `anytcm.plugins.resolve_carriers`, never by name: a
carrier registered at runtime that opts into "auto" and streams is used exactly where the
built-in json carrier would be, over real sockets to the reference manager. A guard keeps
carrier names and classes out of the client's sources.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pytest

import anytcm
from anytcm import _fast, plugins, wire
from anytcm._client.staging import Stager
from anytcm.carriers import (
    Carrier,
    CarrierContext,
    CarrierTraits,
    InputTensor,
    Staged,
    StagedInputs,
    carrier_traits,
    is_granted,
)
from anytcm.errors import CarrierUnavailable
from anytcm.tensors import encode_input
from anytcm.testing import ReferenceManager

TARGET = anytcm.Target("127.0.0.1", "ref-0")
CAP = 65536


class Ranked:
    """A third-party carrier taking every option: first in "auto", streams, an estimate and an
    encoder. Its items are the contract's JSON form, so any manager granting it decodes them."""

    name = "ranked"
    capability = "ranked"
    auto_rank = 50  # before json
    serves_streams = True

    def __init__(self) -> None:
        self.calls: list[str] = []

    def unavailable_reason(self, context: CarrierContext) -> str | None:
        if is_granted(self.capability, context):
            return None
        return "the manager did not grant the 'ranked' capability"

    async def stage(self, inputs: Sequence[InputTensor]) -> StagedInputs:
        self.calls.append("stage")
        return Staged([msgspec.Raw(encode_input(t.name, t.array, t.datatype)) for t in inputs])

    def encode_item(self, name: str, array: npt.NDArray[Any], datatype: str | None) -> bytes:
        self.calls.append("encode_item")
        return encode_input(name, array, datatype)

    def min_item_bytes(self, inputs: Sequence[InputTensor]) -> int:
        self.calls.append("min_item_bytes")
        return 2 * sum(int(t.array.size) for t in inputs)


class Plain:
    """A carrier written against the four required members only (like anytcm-zstd)."""

    name = "plain"
    capability = "plain"

    def unavailable_reason(self, context: CarrierContext) -> str | None:
        return None

    async def stage(self, inputs: Sequence[InputTensor]) -> StagedInputs:
        return Staged([])


class Wrapper:
    """Wraps another carrier under its name, counting stagings; declares no optional member."""

    def __init__(self, inner: Carrier) -> None:
        self.inner = inner
        self.name = inner.name
        self.capability = inner.capability
        self.staged = 0

    def unavailable_reason(self, context: CarrierContext) -> str | None:
        return self.inner.unavailable_reason(context)

    async def stage(self, inputs: Sequence[InputTensor]) -> StagedInputs:
        self.staged += 1
        return await self.inner.stage(inputs)


@pytest.fixture
def ranked() -> Iterator[Ranked]:
    carrier = Ranked()
    plugins.register_carrier(carrier)
    try:
        yield carrier
    finally:
        plugins.unregister_carrier(carrier.name)


@pytest.fixture(scope="module")
def ranked_manager() -> Iterator[ReferenceManager]:
    with ReferenceManager(extra_args=["--capability", "ranked"]) as manager:
        yield manager


# -- traits ------------------------------------------------------------------------------------


def test_optional_members_default_for_a_carrier_without_them() -> None:
    assert carrier_traits(Plain()) == CarrierTraits()
    traits = CarrierTraits()
    assert traits.auto_rank is None
    assert traits.serves_streams is False
    assert traits.encode_item is None
    assert traits.min_item_bytes is None
    assert isinstance(Plain(), Carrier)  # still a Carrier without them


def test_builtins_declare_their_place() -> None:
    json_traits = plugins.load_carrier_traits("json")[1]
    shm_traits = plugins.load_carrier_traits("shm")[1]
    assert json_traits.auto_rank is not None
    assert shm_traits.auto_rank is not None
    assert json_traits.auto_rank < shm_traits.auto_rank
    assert json_traits.serves_streams
    assert json_traits.encode_item is not None
    assert json_traits.min_item_bytes is not None
    assert not shm_traits.serves_streams  # the manager refuses SHM in gRPC streams
    assert plugins.resolve_carriers("auto") == ("json", "shm")
    assert plugins.resolve_carriers("auto", stream=True) == ("json",)


@pytest.mark.parametrize(
    ("member", "value", "message"),
    [
        ("auto_rank", "first", "auto_rank must be an int"),
        ("auto_rank", True, "auto_rank must be an int"),
        ("serves_streams", 1, "serves_streams must be a bool"),
        ("serves_streams", True, "has no encode_item"),
        ("encode_item", b"{}", "encode_item must be a method"),
        ("min_item_bytes", 3, "min_item_bytes must be a method"),
    ],
)
def test_wrongly_typed_members_are_named(member: str, value: Any, message: str) -> None:
    carrier = Plain()
    setattr(carrier, member, value)
    with pytest.raises(TypeError, match=message) as caught:
        carrier_traits(carrier)
    assert "'plain'" in str(caught.value)


def test_a_broken_carrier_is_left_out_of_auto(caplog: pytest.LogCaptureFixture) -> None:
    carrier = Plain()
    carrier.auto_rank = "first"  # type: ignore[attr-defined]
    plugins.register_carrier(carrier)
    try:
        with caplog.at_level(logging.WARNING, logger="anytcm.plugins"):
            assert plugins.resolve_carriers("auto") == ("json", "shm")
        assert "'plain' left out of 'auto'" in caplog.text
        with pytest.raises(TypeError):  # named, it raises
            plugins.load_carrier_traits("plain")
    finally:
        plugins.unregister_carrier("plain")


def test_a_registered_carrier_takes_its_rank(ranked: Ranked) -> None:
    assert plugins.resolve_carriers("auto") == ("ranked", "json", "shm")
    assert plugins.resolve_carriers("auto", stream=True) == ("ranked", "json")
    assert plugins.resolve_carriers(("shm", "auto")) == ("shm", "ranked", "json")
    assert plugins.first_carrier("auto") == plugins.load_carrier_traits("ranked")
    plugins.unregister_carrier("ranked")
    assert plugins.resolve_carriers("auto") == ("json", "shm")  # forgotten at once


def test_a_wrapper_keeps_the_place_of_the_carrier_it_replaces() -> None:
    wrapper = Wrapper(plugins.load_carrier("json"))
    plugins.register_carrier(wrapper)
    try:
        carrier, traits = plugins.load_carrier_traits("json")
        assert carrier is wrapper
        assert traits.auto_rank == carrier_traits(wrapper.inner).auto_rank
        assert plugins.resolve_carriers("auto") == ("json", "shm")
        # What it does not declare, it does not do: no encoder of the wrapped carrier is used
        # behind its back, and without one it cannot serve streams.
        assert traits.encode_item is None
        assert traits.serves_streams is False
    finally:
        plugins.unregister_carrier("json")
    assert plugins.load_carrier("json") is not wrapper


# -- through a real client ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_granted_third_party_carrier_is_used_as_json_would_be(
    ranked_manager: ReferenceManager, ranked: Ranked
) -> None:
    x = np.arange(6, dtype=np.float32)
    async with anytcm.connect(ranked_manager.ws_url, pool_size=1) as client:
        assert "ranked" in (client.granted_capabilities or ())  # requested: it is installed
        # A dict of small arrays: the inline fast path, through the carrier's encoder.
        result = await client.infer("double", {"INPUT0": x}, target=TARGET)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
        assert ranked.calls == (["encode_item"] if _fast.ENABLED else ["min_item_bytes", "stage"])
        # Tensors: the general path, its estimate first (another carrier is left to try).
        ranked.calls.clear()
        result = await client.infer("double", [anytcm.Tensor("INPUT0", x)], target=TARGET)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
        assert ranked.calls == ["min_item_bytes", "stage"]
        # Streams and pipelines take it too, staged synchronously.
        ranked.calls.clear()
        words = np.array([b"a", b"bc"], dtype=object)
        async with client.infer_stream("stream", {"TEXT": words}, target=TARGET) as stream:
            events = [event async for event in stream]
        assert [e.text for e in events if e.status == "ONGOING"] == ["a", "bc"]
        assert ranked.calls == ["encode_item"]
        ranked.calls.clear()
        steps = await client.pipeline(
            [("double", {"INPUT0": x}), ("identity", {"X": x}, "echo")], target=TARGET
        )
        np.testing.assert_array_equal(steps["double"].as_numpy("OUTPUT0"), 2 * x)
        assert ranked.calls == ["encode_item", "encode_item"]
        # Too large for a frame: skipped on its estimate, unstaged; shared memory takes it.
        ranked.calls.clear()
        big = np.ones(100_000, dtype=np.float32)
        result = await client.infer("checksum", {"INPUT0": big}, target=TARGET)
        assert result.as_numpy("OUTPUT0").tolist() == [100_000.0]
        assert ranked.calls == ["min_item_bytes"]


@pytest.mark.anyio
async def test_a_third_party_carrier_not_granted_falls_back_like_a_builtin(
    manager: ReferenceManager, ranked: Ranked
) -> None:
    x = np.arange(3, dtype=np.float32)
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        # The session's manager grants json and shm only: 'ranked' is requested and dropped,
        # as the real TCM drops what it does not know.
        assert "ranked" not in (client.granted_capabilities or ())
        result = await client.infer("double", {"INPUT0": x}, target=TARGET)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
        async with client.infer_stream(
            "stream", {"TEXT": np.array([b"z"], dtype=object)}, target=TARGET
        ) as stream:
            assert [e.status async for e in stream][-1] == "COMPLETED"
        assert ranked.calls == []  # never used: json took its requests
        with pytest.raises(CarrierUnavailable) as caught:
            await client.infer("double", {"INPUT0": x}, target=TARGET, carrier="ranked")
        assert "did not grant the 'ranked' capability" in caught.value.reason


@pytest.mark.anyio
async def test_a_wrapper_registered_as_json_serves_auto(manager: ReferenceManager) -> None:
    wrapper = Wrapper(plugins.load_carrier("json"))
    plugins.register_carrier(wrapper)
    try:
        async with anytcm.connect(manager.ws_url, pool_size=1) as client:
            x = np.arange(4, dtype=np.float32)
            result = await client.infer("double", {"INPUT0": x}, target=TARGET)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
    finally:
        plugins.unregister_carrier("json")
    assert wrapper.staged == 1  # its own stage, not an encoder it never declared


# -- the inline fast path ----------------------------------------------------------------------


def _stager(granted: tuple[str, ...] | None) -> Stager:
    return Stager(
        max_frame_bytes=CAP,
        same_host=True,
        granted=lambda: granted,
        uuid_bytes_bound=lambda: 36,
        model_spec=lambda model, target: None,
    )


async def _general_payload(stager: Stager, inputs: dict[str, Any], carrier: str) -> bytes:
    def build(items: Sequence[wire.InputItem]) -> msgspec.Raw:
        payload = wire.InferencePayload(
            vm_ip=TARGET.vm_ip,
            container_id=TARGET.container_id,
            model_name="double",
            request=wire.InferenceOptions(inputs=list(items), allow_transient=False),
        )
        return stager.encode_checked(payload, "double")

    tensors, _ = stager.collect("double", inputs, TARGET, None)
    staged, raw = await stager.stage("double", tensors, carrier, build, stream=False)
    staged.release()
    return bytes(raw)


@pytest.mark.anyio
@pytest.mark.parametrize("carrier", ["auto", "json", "ranked"])
async def test_fast_path_gives_the_general_paths_payload(
    ranked: Ranked, monkeypatch: pytest.MonkeyPatch, carrier: str
) -> None:
    stager = _stager(("json", "shm", "ranked"))
    inputs = {
        "A": np.arange(12, dtype=np.int64).reshape(3, 4),
        "B": np.array([0.1, -2.5], np.float32),
    }
    monkeypatch.setattr(_fast, "ENABLED", True)
    fast = stager.inline_fast("double", inputs, TARGET, None, carrier, False)
    assert fast is not None
    assert bytes(fast) == await _general_payload(stager, inputs, carrier)
    monkeypatch.setattr(_fast, "ENABLED", False)  # ANYTCM_NO_FAST_PATHS=1
    assert stager.inline_fast("double", inputs, TARGET, None, carrier, False) is None


def test_fast_path_only_through_a_usable_encoder(ranked: Ranked) -> None:
    inputs = {"A": np.ones(4, np.float32)}

    def fast(stager: Stager, carrier: str) -> msgspec.Raw | None:
        return stager.inline_fast("double", inputs, TARGET, None, carrier, False)

    if not _fast.ENABLED:
        assert fast(_stager(("json", "ranked")), "auto") is None
        return
    assert fast(_stager(("json",)), "ranked") is None  # not granted: the general path explains
    assert fast(_stager(("json", "shm")), "shm") is None  # no encoder
    assert fast(_stager(("json",)), "no-such-carrier") is None  # the general path raises
    ranked.calls.clear()
    assert fast(_stager(("json", "ranked")), "auto") is not None
    assert ranked.calls == ["encode_item"]


# -- the guard -----------------------------------------------------------------------------------

SOURCE_ROOT = Path(anytcm.__file__).parent
CLIENT_SOURCES = [SOURCE_ROOT / "client.py", *sorted((SOURCE_ROOT / "_client").glob("*.py"))]
CARRIER_CLASSES = {"JsonCarrier", "ShmCarrier"}
CARRIER_NAMES = {"json", "shm"}
CARRIER_MODULES = {"_json", "_shm"}


def _mentions(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        if isinstance(node, ast.Name) and node.id in CARRIER_CLASSES:
            found.append(f"line {line}: the name {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in CARRIER_CLASSES | CARRIER_MODULES:
            found.append(f"line {line}: the attribute .{node.attr}")
        elif isinstance(node, ast.alias) and node.name.split(".")[-1] in (
            CARRIER_CLASSES | CARRIER_MODULES
        ):
            found.append(f"line {line}: an import of {node.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] in (
            CARRIER_MODULES
        ):
            found.append(f"line {line}: an import from {node.module}")
        elif isinstance(node, ast.Constant) and node.value in CARRIER_NAMES:
            found.append(f"line {line}: the literal {node.value!r}")
    return found


@pytest.mark.parametrize("path", CLIENT_SOURCES, ids=lambda p: p.relative_to(SOURCE_ROOT).name)
def test_the_client_knows_no_carrier_by_name(path: Path) -> None:
    found = _mentions(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    assert not found, (
        f"{path.relative_to(SOURCE_ROOT)} names carriers ({'; '.join(found)}): the client reaches "
        "carriers through the carrier interface only (anytcm.carriers.carrier_traits, "
        "anytcm.plugins.resolve_carriers)"
    )


def test_the_guard_sees_what_it_forbids() -> None:
    source = (
        "from ..carriers._json import JsonCarrier\n"
        "import anytcm.carriers._shm\n"
        "x = type(c) is ShmCarrier or name == 'json' or ['shm']\n"
        "y = anytcm.carriers._shm\n"
    )
    found = _mentions(ast.parse(source))
    assert len(found) == 7, found
    assert _mentions(ast.parse('"""json and shm in a docstring"""\nz = "jsonish"\n')) == []
