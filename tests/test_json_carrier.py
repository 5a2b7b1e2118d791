"""The json carrier passes the carrier conformance kit (`anytcm.testing.carriers`)."""

from __future__ import annotations

import pytest

from anytcm.carriers._json import JsonCarrier
from anytcm.testing.carriers import CarrierConformance


class TestJsonConformance(CarrierConformance):
    @pytest.fixture
    def carrier(self) -> JsonCarrier:
        return JsonCarrier()
