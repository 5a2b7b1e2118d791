"""`anytcm.carrier`: the carrier plugin interface, at the path plugins have imported it from.

The interface lives in `anytcm.carriers` (beside the built-in carriers); this module re-exports
it unchanged, so a plugin written against either path works.
"""

from __future__ import annotations

from .carriers import Carrier, CarrierContext, InputTensor, Staged, StagedInputs, is_granted

__all__ = ["Carrier", "CarrierContext", "InputTensor", "Staged", "StagedInputs", "is_granted"]
