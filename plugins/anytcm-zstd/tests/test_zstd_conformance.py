"""The carrier conformance kit (`anytcm.testing.carriers`) run against the zstd carrier."""

from __future__ import annotations

from typing import ClassVar

import pytest
from anytcm_zstd import ZstdCarrier

from anytcm.testing.carriers import CarrierConformance


class TestZstdConformance(CarrierConformance):
    manager_args: ClassVar[list[str]] = ["--capability", "zstd"]

    @pytest.fixture
    def carrier(self) -> ZstdCarrier:
        return ZstdCarrier()


class TestZstdConformanceLevel19(TestZstdConformance):
    """A non-default level goes through the same suite."""

    @pytest.fixture
    def carrier(self) -> ZstdCarrier:
        return ZstdCarrier(level=19, offload_bytes=0)  # and always on a worker thread
