"""The `json` carrier: tensors inline in the request, as nested JSON lists (contract §4.3).

Always available (every manager speaks JSON), bounded by the manager's 64 KiB frame cap. It is
the first choice of ``carrier="auto"`` and the carrier of gRPC streams and pipelines.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from ..tensors import encode_input
from . import JSON_CAPABILITY, CarrierContext, InputTensor, Staged, StagedInputs


class JsonCarrier:
    """Encodes each input with the tensor codec (orjson; float32 in shortest form)."""

    name = "json"
    capability = JSON_CAPABILITY
    auto_rank = 100  # before shm: a request that fits a frame needs no shared memory
    serves_streams = True
    # The codec itself rather than a method around it: the inline fast path calls it per input.
    encode_item = staticmethod(encode_input)

    def unavailable_reason(self, context: CarrierContext) -> str | None:
        return None

    async def stage(self, inputs: Sequence[InputTensor]) -> StagedInputs:
        return Staged([msgspec.Raw(encode_input(t.name, t.array, t.datatype)) for t in inputs])

    def min_item_bytes(self, inputs: Sequence[InputTensor]) -> int:
        """Every element takes at least two characters: a digit (or quotes) and a separator."""
        return 2 * sum(int(t.array.size) for t in inputs)
