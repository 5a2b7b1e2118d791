"""`anytcm.carrier`: the carrier plugin interface, at the path plugins have imported it from.

The interface lives in `anytcm.carriers` (beside the built-in carriers); this module re-exports
it unchanged, so a plugin written against either path works.
"""

from __future__ import annotations

from .carriers import (
    JSON_CAPABILITY,
    SHM_CAPABILITY,
    Carrier,
    CarrierContext,
    CarrierTraits,
    InputTensor,
    ItemEncoder,
    Staged,
    StagedInputs,
    carrier_traits,
    is_granted,
)

__all__ = [
    "JSON_CAPABILITY",
    "SHM_CAPABILITY",
    "Carrier",
    "CarrierContext",
    "CarrierTraits",
    "InputTensor",
    "ItemEncoder",
    "Staged",
    "StagedInputs",
    "carrier_traits",
    "is_granted",
]
