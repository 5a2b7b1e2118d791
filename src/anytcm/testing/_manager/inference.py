"""The inference job: validation, routing, SHM, the model call and the reply frames (§4.3, §9).

Check order follows the real manager: protocol, missing fields, the 413 budget, the Docker-cache
check, the registered-server lookup, then inputs and the model.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from .config import ServerConfig
from .errors import TritonError, ValidationFailure
from .faults import FaultSwitches
from .registry import Registry, TritonServer
from .tensors import (
    ZSTD_CAPABILITY,
    ShmReference,
    decode_json_input,
    decode_zstd_input,
    encode_output,
    estimate_request_bytes,
    is_shm_reference,
    is_zstd_input,
    read_shm_input,
    shm_segment_problem,
    to_manager_form,
)
from .zoo import Model, Tensors, get_model, stream_chunks

Emit = Callable[[str, Any, Any], Awaitable[None]]  # (status, data, model_name)
OFFLOAD_BYTES = 256 * 1024  # inputs larger than this are decoded and run on a worker thread


@dataclass
class Step:
    """One model call: a single-model request, or one step of a pipeline."""

    key: str
    model: Model
    inputs: list[Any]


class InferenceHandler:
    """Runs inference jobs against the zoo, emitting frames through a callback."""

    def __init__(
        self,
        config: ServerConfig,
        registry: Registry,
        faults: FaultSwitches,
        executor: Executor,
    ) -> None:
        self._config = config
        self._registry = registry
        self._faults = faults
        self._executor = executor

    async def handle(self, payload: dict[str, Any], emit: Emit) -> None:
        """Handle one inference payload; every outcome is emitted, except a deliberate hang."""
        if self._faults.should_hang():
            return
        model_name = payload.get("model_name")
        try:
            await self._handle(payload, emit)
        except ValidationFailure as exc:
            await emit("FAILED", str(exc), None)
        except TritonError as exc:
            await emit("FAILED", exc.to_data(), exc.model)
        except Exception as exc:  # noqa: BLE001 - the handler's catch-all (inf.py:183-188)
            await emit("FAILED", f"Unexpected error: {exc}", model_name)

    async def _handle(self, payload: dict[str, Any], emit: Emit) -> None:
        request = payload.get("request")
        if "inputs" in payload and not (isinstance(request, dict) and "inputs" in request):
            request = {
                **(request if isinstance(request, dict) else {}),
                "inputs": payload["inputs"],
            }
        request = request if isinstance(request, dict) else {}
        protocol = request.get("protocol", "http")
        if protocol not in ("http", "grpc"):
            raise ValidationFailure(f"Unsupported inference protocol: '{protocol}'")
        if payload.get("pipeline") is not None:
            await self._pipeline(payload, emit)
            return
        if "inputs" not in request:
            raise ValidationFailure("Missing required field 'request.inputs'")
        vm_ip, container_id = self._target(payload)
        model_name = payload.get("model_name")
        if not model_name:
            raise ValidationFailure("Missing required field 'model_name'")
        model_name = str(model_name)
        inputs = request["inputs"]
        if not isinstance(inputs, list):
            raise ValidationFailure("Field 'request.inputs' must be a list")
        if protocol == "http":
            self._check_budget(inputs, model_name)
        allow_transient = bool(request.get("allow_transient", False))
        if not allow_transient:
            self._check_container(vm_ip, container_id)
        server = self._registry.servers.get((vm_ip, container_id))
        if server is None and not allow_transient:
            raise TritonError(
                "TRITON_INFERENCE_FAILED", model_name, "No active Triton session for this instance"
            )
        await self._apply_faults(model_name)
        model = get_model(model_name)
        step = Step(model_name, model, inputs)
        if protocol == "grpc":
            await self._stream(step, request, server, vm_ip, emit)
        else:
            outputs = await self._run_step(step, server, vm_ip)
            await emit("COMPLETED", outputs, model_name)

    def _target(self, payload: dict[str, Any]) -> tuple[str, str]:
        vm_ip = payload.get("vm_ip")
        container_id = payload.get("container_id")
        if not vm_ip:
            # vm_ip may be omitted when the container is in the Docker cache (base.py:98-111)
            vm_ip = self._registry.containers.get(str(container_id)) if container_id else None
            if not vm_ip:
                raise ValidationFailure("Missing required field 'vm_ip'")
        if not container_id:
            raise ValidationFailure("Missing required field 'container_id'")
        return str(vm_ip), str(container_id)

    def _check_container(self, vm_ip: str, container_id: str) -> None:
        try:
            self._registry.check_container(vm_ip, container_id)
        except ValueError as exc:
            raise ValidationFailure(str(exc)) from None

    def _check_budget(self, inputs: list[Any], model_name: str) -> None:
        limit_mb = self._config.max_request_payload_mb
        if limit_mb <= 0:
            return
        limit = int(limit_mb * 1024 * 1024)
        estimated = estimate_request_bytes(inputs)
        if estimated > limit:
            raise TritonError(
                "TRITON_INFERENCE_FAILED",
                model_name,
                f"413 Payload Too Large: estimated_bytes={estimated} limit_bytes={limit}",
            )

    async def _apply_faults(self, model_name: str) -> None:
        delay_ms = self._faults.latency_ms.get(model_name, 0.0)
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        code = self._faults.take_error(model_name)
        if code is not None:
            retry_after = 1.0 if code == "TRITON_CIRCUIT_OPEN" else None
            raise TritonError(
                code, model_name, "injected by fault switch", retry_after_seconds=retry_after
            )

    # -- inputs -------------------------------------------------------------------------------

    def _decode_inputs(
        self, step: Step, server: TritonServer | None, vm_ip: str, protocol: str
    ) -> Tensors:
        shm_items = [item for item in step.inputs if is_shm_reference(item)]
        if not shm_items:
            try:
                return dict(self._decode_inline(item, step.key) for item in step.inputs)
            except TritonError:
                raise
            except Exception as exc:  # noqa: BLE001 - the runner wraps untyped errors (infer.py:292-298)
                raise TritonError("TRITON_INFERENCE_FAILED", step.key, str(exc)) from None
        if protocol == "grpc":
            raise TritonError(
                "TRITON_INFERENCE_FAILED",
                step.key,
                "SHM references are not supported for gRPC streaming yet",
            )
        # Plain JSON inputs mixed with SHM ones are silently dropped (http.py:167-174).
        tensors: Tensors = {}
        for item in shm_items:
            ref = ShmReference.parse(item, step.key)
            problem = shm_segment_problem(ref)
            if problem is not None:
                raise TritonError("TRITON_SHM_UNAVAILABLE", step.key, problem)
            self._registry.register_shm(server, vm_ip, ref.key, ref.byte_size, step.key)
            if ref.offset > 0:
                raise TritonError(
                    "TRITON_INFERENCE_FAILED",
                    step.key,
                    "[400] Invalid offset for shared memory region",
                )
            tensors[ref.name] = read_shm_input(ref, step.key)
        return tensors

    def _decode_inline(self, item: Any, model: str) -> tuple[str, npt.NDArray[Any]]:
        """A JSON input, or a zstd input when this server offers `zstd` (docs/zstd-carrier.md).

        Without the capability a zstd item is just a partial dict, failing like one ('dims').
        """
        if ZSTD_CAPABILITY in self._config.extra_capabilities and is_zstd_input(item):
            return decode_zstd_input(item, model)
        return decode_json_input(to_manager_form(item), model)

    # -- running ------------------------------------------------------------------------------

    async def _run_step(
        self, step: Step, server: TritonServer | None, vm_ip: str
    ) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            tensors = self._decode_inputs(step, server, vm_ip, "http")
            step.model.check_inputs(tensors)
            outputs = step.model.run(tensors)
            return {name: encode_output(array) for name, array in outputs.items()}

        if step.model.blocking or _declared_bytes(step.inputs) > OFFLOAD_BYTES:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, work)
        return work()

    async def _stream(
        self,
        step: Step,
        request: dict[str, Any],
        server: TritonServer | None,
        vm_ip: str,
        emit: Emit,
    ) -> None:
        """gRPC streaming: START, ONGOING per decoupled response, COMPLETED (grpc.py:113-134)."""
        tensors = self._decode_inputs(step, server, vm_ip, "grpc")
        await emit("START", None, None)
        output_name = str(request.get("output_name", "output"))
        step.model.check_inputs(tensors)
        if not step.model.decoupled:
            step.model.run(tensors)  # a model error wins over the decode error
            raise TritonError(
                "TRITON_INFERENCE_FAILED",
                step.key,
                f"STREAM_DECODE_ERROR: output '{output_name}' is not a BYTES tensor",
            )
        loop = asyncio.get_running_loop()
        chunks = stream_chunks(tensors)
        while True:
            chunk = await loop.run_in_executor(self._executor, next, chunks, None)
            if chunk is None:
                break
            if output_name not in chunk:
                raise TritonError(
                    "TRITON_INFERENCE_FAILED",
                    step.key,
                    f"STREAM_DECODE_ERROR: no output named '{output_name}' in the response",
                )
            await emit("ONGOING", _first_text(chunk[output_name]), None)
        await emit("COMPLETED", None, step.key)

    async def _pipeline(self, payload: dict[str, Any], emit: Emit) -> None:
        """Sequential HTTP steps on a registered server (http.py:44-96, orch.py:125-145)."""
        vm_ip, container_id = self._target(payload)
        self._check_container(vm_ip, container_id)
        server = self._registry.servers.get((vm_ip, container_id))
        if server is None:
            raise TritonError(
                "TRITON_INFERENCE_FAILED", "pipeline", "No active Triton session for this instance"
            )
        steps = payload["pipeline"]
        if not isinstance(steps, list) or not steps:
            raise ValidationFailure("Field 'pipeline' must be a non-empty list")
        results: dict[str, Any] = {}
        for raw in steps:
            if not isinstance(raw, dict) or "model_name" not in raw:
                raise ValidationFailure("Missing required field 'model_name'")
            model_name = str(raw["model_name"])
            if raw.get("protocol", "http") != "http":
                raise TritonError(
                    "TRITON_INFERENCE_FAILED",
                    "pipeline",
                    f"Pipeline step '{raw.get('name', model_name)}' is not HTTP",
                )
            inputs = raw.get("inputs", [])
            self._check_budget(inputs, model_name)
            await self._apply_faults(model_name)
            step = Step(str(raw.get("name") or model_name), get_model(model_name), inputs)
            results[step.key] = await self._run_step(step, server, vm_ip)
        await emit("COMPLETED", results, payload.get("model_name"))


def _declared_bytes(inputs: list[Any]) -> int:
    """A cheap size guess from declared shapes (SHM byte_size included)."""
    total = 0
    for item in inputs:
        if is_shm_reference(item):
            total += int(item.get("byte_size") or 0)
        elif isinstance(item, dict):
            dims = item.get("dims", item.get("shape"))
            if isinstance(dims, list) and all(isinstance(d, int) for d in dims):
                total += math.prod(dims) * 8
    return total


def _first_text(array: npt.NDArray[Any]) -> str:
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
