"""The installed plugin end to end: discovery, negotiation, use, and fallback when not granted.

Needs the distribution installed (`pip install -e plugins/anytcm-zstd`): discovery reads its
entry point from the installed metadata.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from importlib.metadata import version

import numpy as np
import pytest
from anytcm_zstd import ZstdCarrier

import anytcm
from anytcm.carrier import CarrierContext, InputTensor, StagedInputs
from anytcm.errors import CarrierUnavailable, PayloadTooLarge
from anytcm.plugins import (
    carrier_names,
    list_plugins,
    load_carrier,
    register_carrier,
    unregister_carrier,
)
from anytcm.results import Target
from anytcm.testing import ReferenceManager

TARGET = Target("127.0.0.1", "ref-0")


# -- discovery -----------------------------------------------------------------------------------


def test_entry_point_discovery() -> None:
    assert "zstd" in carrier_names()
    carrier = load_carrier("zstd")
    assert isinstance(carrier, ZstdCarrier)
    assert load_carrier("zstd") is carrier  # loaded once


def test_listed_with_its_distribution() -> None:
    (row,) = [r for r in list_plugins() if r.group == "anytcm.carriers" and r.name == "zstd"]
    assert row.value == "anytcm_zstd:ZstdCarrier"
    assert row.distribution == "anytcm-zstd"
    assert row.version == version("anytcm-zstd") == "0.1.0"


# -- spying on which carrier staged a request ----------------------------------------------------


class Spy:
    """Wraps a carrier under its own name and records every stage() call."""

    def __init__(self, inner: anytcm.carrier.Carrier) -> None:
        self.inner = inner
        self.name = inner.name
        self.capability = inner.capability
        self.staged: list[list[str]] = []

    def unavailable_reason(self, context: CarrierContext) -> str | None:
        return self.inner.unavailable_reason(context)

    async def stage(self, inputs: Sequence[InputTensor]) -> StagedInputs:
        self.staged.append([t.name for t in inputs])
        return await self.inner.stage(inputs)


@pytest.fixture
def spies() -> Iterator[dict[str, Spy]]:
    found = {name: Spy(load_carrier(name)) for name in ("json", "zstd")}
    for spy in found.values():
        register_carrier(spy)
    try:
        yield found
    finally:
        for name in found:
            unregister_carrier(name)


@pytest.fixture(scope="module")
def zstd_manager() -> Iterator[ReferenceManager]:
    with ReferenceManager(extra_args=["--capability", "zstd"]) as manager:
        yield manager


@pytest.fixture(scope="module")
def plain_manager() -> Iterator[ReferenceManager]:
    """Does not offer zstd: it drops the capability like the real TCM."""
    with ReferenceManager() as manager:
        yield manager


# -- granted -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_requested_and_used_when_granted(
    zstd_manager: ReferenceManager, spies: dict[str, Spy]
) -> None:
    """Installed carriers' capabilities are requested in auth; zstd is granted and used."""
    async with anytcm.connect(zstd_manager.ws_url, pool_size=1) as client:
        assert "zstd" in (client.granted_capabilities or ())
        x = np.arange(8, dtype=np.float32)
        result = await client.infer("double", {"INPUT0": x}, target=TARGET, carrier="zstd")
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
        result = await client.infer(
            "double", {"INPUT0": x}, target=TARGET, carrier=("zstd", "auto")
        )
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
    assert spies["zstd"].staged == [["INPUT0"], ["INPUT0"]]
    assert spies["json"].staged == []


@pytest.mark.anyio
async def test_sends_what_json_cannot_fit(zstd_manager: ReferenceManager) -> None:
    """4 MiB of zeros: over the 64 KiB cap as JSON, a few hundred bytes compressed."""
    zeros = np.zeros(1 << 20, dtype=np.float32)
    async with anytcm.connect(zstd_manager.ws_url, pool_size=1) as client:
        with pytest.raises(PayloadTooLarge):
            await client.infer("checksum", {"INPUT0": zeros}, target=TARGET, carrier="json")
        result = await client.infer("checksum", {"INPUT0": zeros}, target=TARGET, carrier="zstd")
        assert result.as_numpy("OUTPUT0").tolist() == [0.0]


@pytest.mark.anyio
async def test_still_size_checked(zstd_manager: ReferenceManager) -> None:
    """Incompressible data is bounded by the frame cap too: refused before sending."""
    noise = np.random.default_rng(1).random(60_000).astype(np.float32)  # 240 KB raw
    async with anytcm.connect(zstd_manager.ws_url, pool_size=1) as client:
        with pytest.raises(PayloadTooLarge) as caught:
            await client.infer("checksum", {"INPUT0": noise}, target=TARGET, carrier="zstd")
        assert caught.value.limit == 65536
        # the connection is still fine: nothing was sent
        small = await client.infer(
            "checksum", {"INPUT0": noise[:100]}, target=TARGET, carrier="zstd"
        )
        assert small.as_numpy("OUTPUT0")[0] == pytest.approx(
            float(noise[:100].sum(dtype=np.float64))
        )


# -- not granted: fallback -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_not_granted_explains_why(plain_manager: ReferenceManager) -> None:
    async with anytcm.connect(plain_manager.ws_url, pool_size=1) as client:
        granted = client.granted_capabilities
        assert granted is not None
        assert "zstd" not in granted  # requested, dropped by the manager
        context = CarrierContext(granted, same_host=True, max_frame_bytes=65536)
        reason = load_carrier("zstd").unavailable_reason(context)
        assert isinstance(reason, str)
        assert "did not grant the 'zstd' capability" in reason
        with pytest.raises(CarrierUnavailable) as caught:
            await client.infer(
                "double", {"INPUT0": np.ones(2, np.float32)}, target=TARGET, carrier="zstd"
            )
        assert "zstd" in str(caught.value)
        assert caught.value.reason


@pytest.mark.anyio
async def test_auto_falls_back_to_json(
    plain_manager: ReferenceManager, spies: dict[str, Spy]
) -> None:
    async with anytcm.connect(plain_manager.ws_url, pool_size=1) as client:
        x = np.arange(4, dtype=np.float32)
        result = await client.infer(
            "double", {"INPUT0": x}, target=TARGET, carrier=("zstd", "auto")
        )
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
    assert spies["zstd"].staged == []  # never staged: not granted
    assert spies["json"].staged == [["INPUT0"]]


@pytest.mark.anyio
async def test_legacy_auth_is_not_a_grant(zstd_manager: ReferenceManager) -> None:
    """`capabilities=None` sends the legacy auth: nothing negotiated, zstd unusable."""
    async with anytcm.connect(zstd_manager.ws_url, pool_size=1, capabilities=None) as client:
        assert client.granted_capabilities is None
        x = np.ones(3, np.float32)
        with pytest.raises(CarrierUnavailable, match="legacy"):
            await client.infer("double", {"INPUT0": x}, target=TARGET, carrier="zstd")
        result = await client.infer(
            "double", {"INPUT0": x}, target=TARGET, carrier=("zstd", "json")
        )
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
