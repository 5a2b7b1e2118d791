"""Staging: the caller's inputs checked, given to a carrier, and encoded as one payload.

What every inference does before anything is sent: the inputs are collected into tensors (or
shared-memory references the caller staged), checked against the model's spec, staged with the
first usable carrier and encoded; a payload whose frame would exceed the manager's cap is
refused unsent.

Which carrier, and what it can do, comes from the carrier interface alone (`carrier_traits`,
`anytcm.plugins.resolve_carriers`): this module knows no carrier by name, so a plugin's carrier
is chosen, skipped and fast-pathed by the same rules as the built-in ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import msgspec
import numpy as np

from .. import _fast, wire
from ..carriers import (
    JSON_CAPABILITY,
    SHM_CAPABILITY,
    CarrierContext,
    InputTensor,
    ItemEncoder,
    StagedInputs,
)
from ..errors import CarrierError, CarrierUnavailable, InvalidInput, PayloadTooLarge
from ..plugins import AUTO, first_carrier, load_carrier_traits, resolve_carriers
from ..results import ModelSpec, Target, Tensor, input_signature

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
        self._last_context = CarrierContext(None, same_host, max_frame_bytes)

    def context(self) -> CarrierContext:
        """What carriers are told about the connection (rebuilt only when the grant changes)."""
        granted = self._granted()
        if granted is not self._last_context.granted:
            self._last_context = CarrierContext(granted, self.same_host, self.max_frame_bytes)
        return self._last_context

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
                given={SHM_CAPABILITY: [r.name for r in shm], JSON_CAPABILITY: sorted(tensors)},
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
        """Inline inputs for a gRPC stream or a pipeline step (`where` names which).

        They take the first carrier of ``"auto"`` that serves streams and is usable here,
        encoded synchronously (`encode_item`): such requests hold nothing to release.
        """
        tensors, shm = self.collect(model, inputs, target, None)
        if shm:
            raise CarrierUnavailable(
                f"{where} take inline JSON inputs only here (the manager refuses shared memory "
                "for gRPC streams); pass arrays instead of SHMReference items",
                carrier=SHM_CAPABILITY,
                reason=f"not supported for {where}",
            )
        names = resolve_carriers(AUTO, stream=True)
        context = self.context()
        reasons: list[str] = []
        for name in names:
            plugin, traits = load_carrier_traits(name)
            encode = traits.encode_item
            if encode is None:
                continue  # not reached: serving streams takes an encode_item (carrier_traits)
            reason = plugin.unavailable_reason(context)
            if reason is not None:
                reasons.append(f"{name}: {reason}")
                continue
            return [msgspec.Raw(encode(t.name, t.array, t.datatype)) for t in tensors]
        reasons = reasons or ["no installed carrier serves them (serves_streams and auto_rank)"]
        raise CarrierUnavailable(
            f"no carrier can send the inputs of {model!r} for {where} ({'; '.join(reasons)})",
            carrier=",".join(names),
            reason="; ".join(reasons),
        )

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

        A carrier is usable when the manager granted its capability (and, with `stream`, when
        it serves streams). One that cannot fit the frame cap is skipped on its own estimate,
        or on the frame it built, while another is left to try; the last one raises
        `PayloadTooLarge`. The caller must `release()` what this returns.
        """
        names = resolve_carriers(carrier, stream=stream)
        context = self.context()
        reasons: list[str] = []
        for index, name in enumerate(names):
            last = index == len(names) - 1
            plugin, traits = load_carrier_traits(name)
            reason = plugin.unavailable_reason(context)
            if reason is None and stream and not traits.serves_streams:
                reason = "it does not serve gRPC streams and pipelines"
            if reason is not None:
                reasons.append(f"{name}: {reason}")
                continue
            estimate = traits.min_item_bytes
            if not last and estimate is not None and estimate(tensors) > self.max_frame_bytes:
                reasons.append(
                    f"{name}: the tensors cannot fit the {self.max_frame_bytes}-byte cap"
                )
                continue
            staged = await plugin.stage(tensors)
            try:
                return staged, build(staged.items)
            except PayloadTooLarge as exc:
                staged.release()
                if last:
                    raise
                reasons.append(f"{name}: {exc.size} bytes, over the {exc.limit}-byte frame cap")
            except BaseException:
                staged.release()
                raise
        if not names:
            reasons.append("no installed carrier takes part in 'auto' (auto_rank)")
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
        """The common request, small arrays inline, without the general staging path.

        Taken only when the general path would surely stage with the first carrier of the
        choice and that carrier has an `encode_item`: a dict of numeric ndarrays, one carrier
        name (or "auto"), no model spec to check against, at most a quarter of the frame cap
        in array bytes. Anything else (or a frame over the cap after all) returns None and the
        general path decides, with its full checks and messages. Its gain is what the general
        path spends per input on wrapper objects and carrier look-ups.
        """
        if (
            not _fast.ENABLED
            or type(inputs) is not dict
            or not isinstance(carrier, str)
            or input_spec is not None
        ):
            return None
        encode = self._inline_encoder(carrier)
        if encode is None or self._model_spec(model, target) is not None:
            return None
        items: list[bytes] = []
        budget = self.max_frame_bytes >> 2
        for name, value in inputs.items():
            if type(value) is not np.ndarray or value.dtype.kind not in "biuf":
                return None
            budget -= value.nbytes
            if budget < 0:
                return None
            items.append(encode(name, value, None))
        if not items:
            return None
        raw = wire.encode_inline_payload(
            target.vm_ip, target.container_id, model, allow_transient, items
        )
        if self.frame_bytes(raw) > self.max_frame_bytes:
            return None  # the general path tries the next carrier, or explains
        return raw

    def _inline_encoder(self, carrier: str) -> ItemEncoder | None:
        """The `encode_item` of the carrier the general path would try first, if usable here."""
        try:
            first = first_carrier(carrier)
        except (CarrierError, TypeError):
            return None  # the general path raises it, after the checks that come first there
        if first is None or first[1].encode_item is None:
            return None
        if first[0].unavailable_reason(self.context()) is not None:
            return None
        return first[1].encode_item


def input_values(inputs: Inputs) -> Iterator[Any]:
    """The arrays of a call's inputs, however they were given (SHM references have none)."""
    if isinstance(inputs, Mapping):
        yield from inputs.values()
    else:
        yield from (item.data for item in inputs if isinstance(item, Tensor))
