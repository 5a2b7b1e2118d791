"""The carrier plugin interface: how a request's input tensors travel to the manager.

A carrier turns the input tensors of one request into the `request.inputs` items of the wire
contract: JSON inline (`json`), a POSIX shared-memory reference (`shm`), or a format a plugin
defines (e.g. `zstd`). A carrier states the capability it needs; the client uses it only when
the manager granted that capability in `auth.ok` (the real manager drops unknown capabilities,
contract §3.3), and explains why otherwise.

Staging may hold resources (a shared-memory segment): the client calls `StagedInputs.release()`
after the reply, on failure, on timeout and on cancellation, so nothing outlives its request.

Plugins register a `Carrier` class (or a zero-argument factory) in the `anytcm.carriers`
entry-point group; see `anytcm.plugins`. `anytcm.testing.carriers` has a conformance suite to
subclass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from .. import wire


@dataclass(frozen=True)
class InputTensor:
    """One input to stage: its name, its array, and the Triton datatype if the caller gave one."""

    name: str
    array: npt.NDArray[Any]
    datatype: str | None = None

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes) if self.array.dtype != np.object_ else 0


@dataclass(frozen=True)
class CarrierContext:
    """What a carrier may need to know about the connection it will be used on."""

    granted: tuple[str, ...] | None  # capabilities granted in auth.ok (None: legacy reply)
    same_host: bool  # the manager shares this machine's /dev/shm
    max_frame_bytes: int  # the manager's inbound frame cap


@runtime_checkable
class StagedInputs(Protocol):
    """A request's inputs, ready to send; `release()` frees what staging holds (idempotent)."""

    @property
    def items(self) -> Sequence[wire.InputItem]: ...

    def release(self) -> None:
        """Free staged resources. Must not raise and must be safe to call more than once."""
        ...


@runtime_checkable
class Carrier(Protocol):
    """A way for tensors to travel. Implementations must be safe to share between tasks."""

    name: str
    capability: str  # what the manager must grant; "json" is always granted

    def unavailable_reason(self, context: CarrierContext) -> str | None:
        """None when usable on this connection, else a sentence saying why not."""
        ...

    async def stage(self, inputs: Sequence[InputTensor]) -> StagedInputs:
        """Turn the request's inputs into wire items. Raises InvalidInput for bad tensors."""
        ...


@dataclass(frozen=True)
class Staged:
    """A `StagedInputs` holding nothing to free (the json carrier's)."""

    items: Sequence[wire.InputItem]

    def release(self) -> None:
        return None


def is_granted(capability: str, context: CarrierContext) -> bool:
    """`json` is always usable; anything else only when the manager granted it."""
    if capability == "json":
        return True
    return context.granted is not None and capability in context.granted


__all__ = ["Carrier", "CarrierContext", "InputTensor", "Staged", "StagedInputs", "is_granted"]
