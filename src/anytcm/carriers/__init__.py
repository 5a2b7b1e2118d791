"""The carrier plugin interface: how a request's input tensors travel to the manager.

A carrier turns the input tensors of one request into the `request.inputs` items of the wire
contract: JSON inline (`json`), a POSIX shared-memory reference (`shm`), or a format a plugin
defines (e.g. `zstd`). A carrier states the capability it needs; the client uses it only when
the manager granted that capability in `auth.ok` (the real manager drops unknown capabilities,
contract §3.3), and explains why otherwise.

Staging may hold resources (a shared-memory segment): the client calls `StagedInputs.release()`
after the reply, on failure, on timeout and on cancellation, so nothing outlives its request.

Beyond the four members every carrier has, a carrier may declare optional ones (see `Carrier`):
its place in ``carrier="auto"``, whether it serves gRPC streams and pipelines, a cheap lower
bound of its items' size, and a synchronous encoder. The client reads them through
`carrier_traits` only, so built-in and third-party carriers are treated alike, and a carrier
written before they existed keeps working with their defaults.

Plugins register a `Carrier` class (or a zero-argument factory) in the `anytcm.carriers`
entry-point group; see `anytcm.plugins`. `anytcm.testing.carriers` has a conformance suite to
subclass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeAlias, runtime_checkable

import numpy as np
import numpy.typing as npt

from .. import wire

#: The capability of inline JSON items, which every manager accepts (contract §3.3).
JSON_CAPABILITY: Final = "json"
#: The capability of `SHMReference` items, however they were staged (by the shm carrier or by
#: the caller): the manager grants it when it can read ``/dev/shm`` (contract §3.3, §9).
SHM_CAPABILITY: Final = "shm"


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
    """A way for tensors to travel. Implementations must be safe to share between tasks.

    Required: `name`, `capability`, `unavailable_reason` and `stage`. Optional, read by
    `carrier_traits` with the default in brackets (the Protocol cannot list them, or a carrier
    without them would no longer be a `Carrier`):

    ``auto_rank: int | None`` [None]
        The carrier's place in ``carrier="auto"``: carriers with a rank are tried in rising
        order (ties by name), those without are used only when named. The built-ins take
        ``json`` 100, ``shm`` 200. A carrier registered under a name that already has one
        (`anytcm.plugins.register_carrier`) keeps the replaced carrier's rank unless it
        declares its own, so a wrapper keeps its place.
    ``serves_streams: bool`` [False]
        The manager accepts its items in gRPC streams and pipelines (shared memory it does
        not, contract §9). Those requests are staged synchronously, so it needs `encode_item`.
    ``encode_item(name, array, datatype) -> bytes`` [none]
        One input as the JSON text of its ``request.inputs`` item, synchronously and holding
        nothing: the same bytes `stage` would give for that input. Used for streams and
        pipelines, and by the inline fast path of small requests (`anytcm._fast`).
    ``min_item_bytes(inputs) -> int`` [none]
        A cheap lower bound of the bytes `stage` would put in the frame for these inputs. When
        it exceeds the manager's cap and another carrier is left to try, the client skips this
        one without staging. It must never exceed the true size.
    """

    name: str
    capability: str  # what the manager must grant; "json" is always granted

    def unavailable_reason(self, context: CarrierContext) -> str | None:
        """None when usable on this connection, else a sentence saying why not."""
        ...

    async def stage(self, inputs: Sequence[InputTensor]) -> StagedInputs:
        """Turn the request's inputs into wire items. Raises InvalidInput for bad tensors."""
        ...


#: `Carrier.encode_item`: (input name, array, Triton datatype or None) -> the item's JSON.
ItemEncoder: TypeAlias = Callable[[str, npt.NDArray[Any], str | None], bytes]


@dataclass(frozen=True)
class CarrierTraits:
    """A carrier's optional members, read once with their defaults (see `Carrier`)."""

    auto_rank: int | None = None
    serves_streams: bool = False
    encode_item: ItemEncoder | None = None
    min_item_bytes: Callable[[Sequence[InputTensor]], int] | None = None


def carrier_traits(carrier: Carrier, *, replaces: Carrier | None = None) -> CarrierTraits:
    """The optional members of `carrier`, with their defaults: the one place they are read.

    `replaces` is the carrier `carrier` was registered in place of, whose `auto_rank` it keeps
    unless it declares its own. Raises TypeError for a member of the wrong type, naming it.
    """
    name = getattr(carrier, "name", type(carrier).__name__)
    if hasattr(carrier, "auto_rank") or replaces is None:
        rank = getattr(carrier, "auto_rank", None)
    else:
        rank = carrier_traits(replaces).auto_rank
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool)):
        raise TypeError(f"carrier {name!r}: auto_rank must be an int or None, got {rank!r}")
    streams = getattr(carrier, "serves_streams", False)
    if not isinstance(streams, bool):
        raise TypeError(f"carrier {name!r}: serves_streams must be a bool, got {streams!r}")
    encode = _optional_method(carrier, name, "encode_item")
    if streams and encode is None:
        raise TypeError(
            f"carrier {name!r} declares serves_streams but has no encode_item: streams and "
            "pipelines are staged synchronously"
        )
    return CarrierTraits(rank, streams, encode, _optional_method(carrier, name, "min_item_bytes"))


def _optional_method(carrier: Carrier, name: str, member: str) -> Any:
    method = getattr(carrier, member, None)
    if method is not None and not callable(method):
        raise TypeError(f"carrier {name!r}: {member} must be a method, got {method!r}")
    return method


@dataclass(frozen=True)
class Staged:
    """A `StagedInputs` holding nothing to free (the json carrier's)."""

    items: Sequence[wire.InputItem]

    def release(self) -> None:
        return None


def is_granted(capability: str, context: CarrierContext) -> bool:
    """`json` is always usable; anything else only when the manager granted it."""
    if capability == JSON_CAPABILITY:
        return True
    return context.granted is not None and capability in context.granted


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
