"""Plugin discovery and carrier selection, end to end.

A fake distribution with an `anytcm.carriers` entry point is written to a temporary directory
and put on `sys.path`, exactly what an installed third-party plugin looks like to
`importlib.metadata`. Its carrier counts how often it stages and releases, so the tests can
check that the client releases staged inputs on every path.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import numpy as np
import pytest

import anytcm
from anytcm import plugins
from anytcm.carrier import Carrier, CarrierContext, InputTensor, Staged, StagedInputs
from anytcm.errors import CarrierUnavailable, PayloadTooLarge, UnknownCarrier
from anytcm.testing import ReferenceManager

TARGET = anytcm.Target("127.0.0.1", "ref-0")

FAKE_MODULE = '''
"""A third-party carrier: inline JSON, but counted, and needing capability 'fake'."""
import msgspec
from anytcm.carrier import Staged, is_granted
from anytcm.tensors import encode_input

EVENTS = []


class _Counted(Staged):
    def release(self):
        EVENTS.append("release")


class FakeCarrier:
    name = "fake"
    capability = "fake"

    def unavailable_reason(self, context):
        if is_granted(self.capability, context):
            return None
        return "the manager did not grant the 'fake' capability"

    async def stage(self, inputs):
        EVENTS.append("stage")
        return _Counted([msgspec.Raw(encode_input(t.name, t.array, t.datatype)) for t in inputs])
'''


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """`fakecarrier` 0.1 with an `anytcm.carriers` entry point, importable from tmp_path."""
    (tmp_path / "fakecarrier.py").write_text(FAKE_MODULE)
    info = tmp_path / "fakecarrier-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakecarrier\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [anytcm.carriers]
            fake = fakecarrier:FakeCarrier
            broken = fakecarrier:DoesNotExist
            json = fakecarrier:FakeCarrier
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    plugins.unregister_carrier("fake")  # drop the loaded instance with the fake module
    sys.modules.pop("fakecarrier", None)


def _events() -> list[str]:
    events: list[str] = sys.modules["fakecarrier"].EVENTS
    return events


def test_builtins_are_listed_with_their_distribution() -> None:
    rows = {(r.group, r.name): r for r in plugins.list_plugins()}
    for key in [("anytcm.carriers", "json"), ("anytcm.carriers", "shm")]:
        assert rows[key].distribution == "anytcm"
        assert rows[key].version == anytcm.__version__
    assert rows[("anytcm.transports", "websockets")].distribution == "anytcm"


def test_builtins_are_declared_once() -> None:
    """The built-in table of `anytcm.plugins` is their only declaration: pyproject.toml must
    not repeat it as entry points, a twin that could drift from it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text("utf-8"))
    groups = pyproject["project"].get("entry-points", {})
    for group, builtins in [
        (plugins.CARRIER_GROUP, plugins.BUILTIN_CARRIERS),
        (plugins.TRANSPORT_GROUP, plugins.BUILTIN_TRANSPORTS),
    ]:
        twins = sorted(set(groups.get(group, {})) & set(builtins))
        assert not twins, f"pyproject.toml declares the built-in {group} {twins} again"


def test_a_builtin_name_is_the_builtin_whoever_else_declares_it(fake_distribution: Path) -> None:
    rows = {r.name: r for r in plugins.list_plugins() if r.group == plugins.CARRIER_GROUP}
    assert rows["json"].distribution == "anytcm"  # listed as what loads
    assert rows["json"].value == plugins.BUILTIN_CARRIERS["json"]
    assert type(plugins.load_carrier("json")).__name__ == "JsonCarrier"


def test_discovered_plugin_is_listed_before_it_is_imported(fake_distribution: Path) -> None:
    rows = {r.name: r for r in plugins.list_plugins() if r.group == plugins.CARRIER_GROUP}
    assert rows["fake"].distribution == "fakecarrier"
    assert rows["fake"].version == "0.1"
    assert rows["fake"].loaded is False
    assert "fakecarrier" not in sys.modules  # listing reads metadata only
    carrier = plugins.load_carrier("fake")
    assert type(carrier).__name__ == "FakeCarrier"
    assert "fakecarrier" in sys.modules
    assert plugins.load_carrier("fake") is carrier  # loaded once


def test_autoload_can_be_turned_off(
    fake_distribution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(plugins.AUTOLOAD_VARIABLE, "1")
    assert "fake" not in plugins.carrier_names()
    assert {"json", "shm"} <= set(plugins.carrier_names())
    with pytest.raises(UnknownCarrier):
        plugins.load_carrier("fake")


def test_unknown_carrier_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(plugins.KNOWN_PLUGINS, "nosuchcarrier", "pip install anytcm-nosuch")
    with pytest.raises(UnknownCarrier) as caught:
        plugins.load_carrier("nosuchcarrier")
    assert caught.value.name == "nosuchcarrier"
    assert "pip install anytcm-nosuch" in str(caught.value)
    assert isinstance(caught.value, LookupError)


def test_a_broken_plugin_is_reported_as_such(fake_distribution: Path) -> None:
    with pytest.raises(UnknownCarrier, match="failed to load") as caught:
        plugins.load_carrier("broken")
    assert "fakecarrier:DoesNotExist" in str(caught.value)


def test_explicit_registration_wins(fake_distribution: Path) -> None:
    class Mine:
        name = "fake"
        capability = "json"

        def unavailable_reason(self, context: CarrierContext) -> str | None:
            return None

        async def stage(self, inputs: Sequence[InputTensor]) -> StagedInputs:
            return Staged([])

    mine: Carrier = Mine()
    plugins.register_carrier(mine)
    try:
        assert plugins.load_carrier("fake") is mine
    finally:
        plugins.unregister_carrier("fake")
    assert type(plugins.load_carrier("fake")).__name__ == "FakeCarrier"


def test_unknown_transport_is_a_lookup_error() -> None:
    with pytest.raises(LookupError, match="no transport named 'carrier-pigeon'"):
        plugins.load_transport("carrier-pigeon")


# -- selection through a real client -----------------------------------------------------------


@pytest.fixture(scope="module")
def manager() -> Iterator[ReferenceManager]:
    with ReferenceManager(extra_args=["--capability", "fake"]) as m:
        yield m


@pytest.fixture(scope="module")
def plain_manager() -> Iterator[ReferenceManager]:
    with ReferenceManager(extra_args=["--no-shm"]) as m:
        yield m


@pytest.mark.anyio
async def test_granted_plugin_carrier_is_used_and_released(
    manager: ReferenceManager, fake_distribution: Path
) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        assert client.granted_capabilities is not None
        assert "fake" in client.granted_capabilities  # requested because it is installed
        x = np.arange(5, dtype=np.float32)
        result = await client.infer(
            "double", {"INPUT0": x}, target=TARGET, carrier="fake",
            output_dtypes={"OUTPUT0": np.float32},
        )  # fmt: skip
        assert np.array_equal(result.as_numpy("OUTPUT0"), 2 * x)
        assert _events() == ["stage", "release"]
        with pytest.raises(anytcm.InferenceFailed):
            await client.infer("fail", {"X": x}, target=TARGET, carrier="fake")
        assert _events()[-2:] == ["stage", "release"]  # released on failure too
        manager.set_faults(**{"latency.slow": 0})
        with anyio.move_on_after(0.3) as scope:
            await client.infer(
                "slow",
                {"INPUT0": x, "DELAY_MS": np.array([2000], np.int32)},
                target=TARGET,
                carrier="fake",
            )
        assert scope.cancelled_caught
        assert _events()[-2:] == ["stage", "release"]  # and on cancellation


@pytest.mark.anyio
async def test_not_granted_carrier_is_refused_or_skipped(
    plain_manager: ReferenceManager, fake_distribution: Path
) -> None:
    async with anytcm.connect(plain_manager.ws_url, pool_size=1) as client:
        assert client.granted_capabilities == ("json",)
        x = np.ones(3, dtype=np.float32)
        with pytest.raises(CarrierUnavailable) as caught:
            await client.infer("double", {"INPUT0": x}, target=TARGET, carrier="fake")
        assert "did not grant the 'fake' capability" in str(caught.value)
        # A preference list falls back to the next usable carrier.
        result = await client.infer(
            "double", {"INPUT0": x}, target=TARGET, carrier=("fake", "auto")
        )
        assert result.as_numpy("OUTPUT0").tolist() == [2.0, 2.0, 2.0]
        # Too big for json and no shm granted: the error says why for each carrier.
        big = np.zeros(100_000, dtype=np.float32)
        with pytest.raises(CarrierUnavailable) as caught:
            await client.infer("double", {"INPUT0": big}, target=TARGET)
        message = str(caught.value)
        assert "json:" in message
        assert "shm:" in message
        with pytest.raises(PayloadTooLarge):
            await client.infer("double", {"INPUT0": big}, target=TARGET, carrier="json")
        with pytest.raises(UnknownCarrier):
            await client.infer("double", {"INPUT0": x}, target=TARGET, carrier="nope")
