"""Staging: the caller's inputs checked, given to a carrier, and encoded as one payload.

What every inference does before anything is sent: the inputs are collected into tensors (or
shared-memory references the caller staged), checked against the model's spec, staged with the
first usable carrier and encoded; a payload whose frame would exceed the manager's cap is
refused unsent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import msgspec
import numpy as np

from .. import wire
from ..carriers import CarrierContext, InputTensor, StagedInputs
from ..carriers._json import JsonCarrier
from ..errors import CarrierUnavailable, InvalidInput, PayloadTooLarge
from ..plugins import load_carrier
from ..results import ModelSpec, Target, Tensor, input_signature
from ..tensors import encode_input

Inputs = Mapping[str, Any] | Sequence["Tensor | wire.SHMReference"]


class Stager:
    """Turns one call's inputs into a payload, for a client whose state it reads through
    callables (the granted capabilities and the longest uuid change as connections come and go).
    """

    def __init__(
        self,
        *,
        max_frame_bytes: int,
        same_host: bool,
        granted: Callable[[], tuple[str, ...] | None],
        uuid_bytes_bound: Callable[[], int],
        model_spec: Callable[[str, Target | None], ModelSpec | None],
    ) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.same_host = same_host
        self._granted = granted
        self._uuid_bytes_bound = uuid_bytes_bound
        self._model_spec = model_spec

    def collect(
        self, model: str, inputs: Inputs, target: Target, input_spec: ModelSpec | None
    ) -> tuple[list[InputTensor], list[wire.SHMReference]]:
        """The caller's inputs as tensors to stage, or SHM references the caller staged."""
        tensors: dict[str, InputTensor] = {}
        shm: list[wire.SHMReference] = []
        if isinstance(inputs, Mapping):
            items: Sequence[Any] = [Tensor(name, value) for name, value in inputs.items()]
        else:
            items = inputs
        for item in items:
            if isinstance(item, wire.SHMReference):
                shm.append(item)
            elif isinstance(item, Tensor):
                if item.name in tensors:
                    raise InvalidInput(f"input {item.name!r} is given twice")
                data = item.data if isinstance(item.data, np.ndarray) else np.asarray(item.data)
                tensors[item.name] = InputTensor(item.name, data, item.datatype)
            else:
                raise InvalidInput(
                    f"inputs must map names to arrays, or be a list of Tensor/SHMReference; "
                    f"got {type(item).__name__}"
                )
        if shm and tensors:
            raise InvalidInput(
                "mixing shared-memory and JSON inputs in one request is refused: the manager "
                f"silently drops the JSON ones ({sorted(tensors)}); send every input through shm",
                given={"shm": [r.name for r in shm], "json": sorted(tensors)},
            )
        spec = input_spec or self._model_spec(model, target)
        if spec is not None and tensors:
            spec.check(
                model,
                input_signature(
                    {n: t.array for n, t in tensors.items()},
                    {n: t.datatype for n, t in tensors.items()},
                ),
            )
        return list(tensors.values()), shm

    def json_items(
        self, model: str, inputs: Inputs, target: Target, where: str
    ) -> list[wire.InputItem]:
        """Inline JSON inputs, for requests that take no other carrier here."""
        tensors, shm = self.collect(model, inputs, target, None)
        if shm:
            raise CarrierUnavailable(
                f"{where} take inline JSON inputs only here (the manager refuses shared memory "
                "for gRPC streams); pass arrays instead of SHMReference items",
                carrier="shm",
                reason=f"not supported for {where}",
            )
        return [msgspec.Raw(encode_input(t.name, t.array, t.datatype)) for t in tensors]

    def carrier_names(self, carrier: str | Sequence[str], *, stream: bool) -> list[str]:
        """A preference order; "auto" is json, then shm (shm never for gRPC streams)."""
        wanted = [carrier] if isinstance(carrier, str) else list(carrier)
        names: list[str] = []
        for name in wanted:
            expanded = (["json"] if stream else ["json", "shm"]) if name == "auto" else [name]
            names.extend(n for n in expanded if n not in names)
        return names

    async def stage(
        self,
        model: str,
        tensors: list[InputTensor],
        carrier: str | Sequence[str],
        build: Callable[[Sequence[wire.InputItem]], msgspec.Raw],
        *,
        stream: bool,
    ) -> tuple[StagedInputs, msgspec.Raw]:
        """Stage the inputs with the first usable carrier; returns them and the sized payload.

        A carrier is usable when the manager granted its capability (and, for json, when the
        frame fits the manager's cap). The caller must `release()` what this returns.
        """
        names = self.carrier_names(carrier, stream=stream)
        context = CarrierContext(self._granted(), self.same_host, self.max_frame_bytes)
        reasons: list[str] = []
        too_large: PayloadTooLarge | None = None
        for index, name in enumerate(names):
            last = index == len(names) - 1
            plugin = load_carrier(name)
            reason = plugin.unavailable_reason(context)
            if reason is None and stream and name == "shm":
                reason = "gRPC streaming does not accept shared-memory inputs (contract §9)"
            if reason is not None:
                reasons.append(f"{name}: {reason}")
                continue
            if name == "json" and not last and _surely_over(tensors, self.max_frame_bytes):
                reasons.append(f"json: the tensors cannot fit the {self.max_frame_bytes}-byte cap")
                continue
            staged = await plugin.stage(tensors)
            try:
                return staged, build(staged.items)
            except PayloadTooLarge as exc:
                staged.release()
                if last:
                    raise
                too_large = exc
                reasons.append(f"{name}: {exc.size} bytes, over the {exc.limit}-byte frame cap")
            except BaseException:
                staged.release()
                raise
        if too_large is not None and all(r.startswith("json") for r in reasons):
            raise too_large
        raise CarrierUnavailable(
            f"no carrier can send the inputs of {model!r} ({'; '.join(reasons)}). Small "
            "tensors go inline as json; large ones need shared memory on the manager's host",
            carrier=",".join(names),
            reason="; ".join(reasons),
        )

    def frame_bytes(self, payload: msgspec.Raw) -> int:
        """The size of the inference frame around an encoded payload, at the longest uuid."""
        return len(payload) + wire.INFERENCE_ENVELOPE_BYTES + self._uuid_bytes_bound()

    def encode_checked(self, payload: wire.InferencePayload, model: str) -> msgspec.Raw:
        """Encode the payload once and refuse it, unsent, if its frame would exceed the cap."""
        raw = wire.encode_payload(payload)
        size = self.frame_bytes(raw)
        if size > self.max_frame_bytes:
            raise PayloadTooLarge(
                f"the inference request for {model!r} is {size} bytes of JSON, over the "
                f"manager's {self.max_frame_bytes}-byte frame cap (it would close the connection "
                "with 1009); nothing was sent. Send large tensors through shared memory "
                "(the 'shm' carrier), or split the batch",
                size=size,
                limit=self.max_frame_bytes,
            )
        return raw

    def inline_fast(
        self,
        model: str,
        inputs: Inputs,
        target: Target,
        input_spec: ModelSpec | None,
        carrier: str | Sequence[str],
        allow_transient: bool,
    ) -> msgspec.Raw | None:
        """The common request, small arrays inline as JSON, without the general staging path.

        Taken only when the general path would surely pick the built-in json carrier: a dict of
        ndarrays, carrier "auto" or "json", no model spec to check against, at most a quarter of
        the frame cap in array bytes. Anything else (or a frame over the cap after all) returns
        None and the general path decides, with its full checks and messages. Perf: the general
        path builds four small objects per input and consults the carrier registry, ~15% of a
        small request's client CPU (`benchmarks/profile_client.py`).
        """
        if (
            (carrier != "auto" and carrier != "json")
            or type(inputs) is not dict
            or input_spec is not None
            or self._model_spec(model, target) is not None
            or type(load_carrier("json")) is not JsonCarrier
        ):
            return None
        items: list[bytes] = []
        budget = self.max_frame_bytes >> 2
        for name, value in inputs.items():
            if type(value) is not np.ndarray or value.dtype.kind not in "biuf":
                return None
            budget -= value.nbytes
            if budget < 0:
                return None
            items.append(encode_input(name, value))
        if not items:
            return None
        raw = wire.encode_inline_payload(
            target.vm_ip, target.container_id, model, allow_transient, items
        )
        if self.frame_bytes(raw) > self.max_frame_bytes:
            return None  # the general path tries shared memory, or explains
        return raw


def input_values(inputs: Inputs) -> Iterator[Any]:
    """The arrays of a call's inputs, however they were given (SHM references have none)."""
    if isinstance(inputs, Mapping):
        yield from inputs.values()
    else:
        yield from (item.data for item in inputs if isinstance(item, Tensor))


def _surely_over(tensors: Sequence[InputTensor], limit: int) -> bool:
    """True when JSON cannot fit: every number takes at least two characters ("0,")."""
    return sum(int(t.array.size) for t in tensors) * 2 > limit
