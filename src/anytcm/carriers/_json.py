"""The `json` carrier: tensors inline in the request, as nested JSON lists (contract §4.3).

Always available (every manager speaks JSON), bounded by the manager's 64 KiB frame cap.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from ..tensors import encode_input
from . import CarrierContext, InputTensor, Staged, StagedInputs


class JsonCarrier:
    """Encodes each input with the tensor codec (orjson; float32 in shortest form)."""

    name = "json"
    capability = "json"

    def unavailable_reason(self, context: CarrierContext) -> str | None:
        return None

    async def stage(self, inputs: Sequence[InputTensor]) -> StagedInputs:
        return Staged([msgspec.Raw(encode_input(t.name, t.array, t.datatype)) for t in inputs])
