"""The reference manager's model zoo: small numpy models that behave like Triton models.

Each model checks its inputs the way Triton does (names, datatypes) and fails with Triton's
HTTP-style reasons, so clients see realistic errors without a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import TritonError
from .tensors import datatype_of

Tensors = dict[str, npt.NDArray[Any]]
NUMERIC: tuple[str, ...] = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32")
NUMERIC += ("UINT64", "FP16", "FP32", "FP64", "BOOL")


@dataclass(frozen=True)
class TensorSpec:
    """One entry of a model config's input or output list."""

    name: str
    datatype: str  # Triton API spelling, or "*" for "any"
    dims: tuple[int, ...] = (-1,)

    def config_entry(self) -> dict[str, Any]:
        """The `{name, type, dims}` entry management replies carry (TYPE_* spelling)."""
        spelled = "TYPE_STRING" if self.datatype == "BYTES" else f"TYPE_{self.datatype}"
        if self.datatype == "*":
            spelled = "TYPE_FP32"
        return {"name": self.name, "type": spelled, "dims": list(self.dims)}


@dataclass(frozen=True)
class Model:
    """A zoo model. `run` maps input tensors to output tensors; `stream` yields chunks."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    run: Callable[[Tensors], Tensors]
    # Inputs the model accepts beyond `inputs` (identity accepts anything).
    open_inputs: bool = False
    optional_inputs: frozenset[str] = field(default_factory=frozenset)
    decoupled: bool = False
    # Sleeps or streams: must run on a worker thread, never on the event loop.
    blocking: bool = False

    def check_inputs(self, tensors: Tensors) -> None:
        """Triton's own checks on names and datatypes, with its 400 reasons."""
        if self.open_inputs:
            return
        required = [s for s in self.inputs if s.name not in self.optional_inputs]
        known = {s.name: s for s in self.inputs}
        for name in tensors:
            if name not in known:
                raise TritonError(
                    "TRITON_INFERENCE_FAILED",
                    self.name,
                    f"[400] unexpected inference input '{name}' for model '{self.name}'",
                )
        missing = [s.name for s in required if s.name not in tensors]
        if missing:
            raise TritonError(
                "TRITON_INFERENCE_FAILED",
                self.name,
                f"[400] expected {len(required)} inputs but got {len(tensors)} inputs for "
                f"model '{self.name}' (missing {', '.join(missing)})",
            )
        for name, array in tensors.items():
            spec = known[name]
            given = datatype_of(array)
            allowed = NUMERIC if spec.datatype == "*" else (spec.datatype,)
            if given not in allowed:
                raise TritonError(
                    "TRITON_INFERENCE_FAILED",
                    self.name,
                    f"[400] inference input '{name}' data-type is '{given}', but model "
                    f"'{self.name}' expects '{spec.datatype}'",
                )

    def config(self) -> dict[str, Any]:
        """What management replies report for this model (inputs/outputs of config.pbtxt)."""
        return {
            "model_name": self.name,
            "inputs": [s.config_entry() for s in self.inputs],
            "outputs": [s.config_entry() for s in self.outputs],
        }


def _double(tensors: Tensors) -> Tensors:
    return {"OUTPUT0": (tensors["INPUT0"] * np.float32(2)).astype(np.float32)}


def _slow(tensors: Tensors) -> Tensors:
    delay_ms = int(tensors["DELAY_MS"].reshape(-1)[0]) if tensors["DELAY_MS"].size else 0
    time.sleep(max(delay_ms, 0) / 1000)
    return _double(tensors)


def _identity(tensors: Tensors) -> Tensors:
    return {f"OUT_{name}": array for name, array in tensors.items()}


def _fail(tensors: Tensors) -> Tensors:
    raise TritonError(
        "TRITON_INFERENCE_FAILED", "fail", "[500] model 'fail' is configured to always fail"
    )


def _stream_http(tensors: Tensors) -> Tensors:
    return {"output": tensors["TEXT"].reshape(-1)}


def _checksum(tensors: Tensors) -> Tensors:
    total = np.sum(tensors["INPUT0"], dtype=np.float64)
    return {"OUTPUT0": np.array([total], dtype=np.float64)}


# The reply is JSON (~12 bytes a value) built in memory by a worker: 2**22 values (16 MiB of
# FP32, ~50 MB of JSON) bound what one 16-byte request can make the server allocate, with room
# above the benchmarks' largest reply (2**20 values).
GENERATE_MAX_SIZE = 1 << 22


def _generate(tensors: Tensors) -> Tensors:
    size = int(tensors["SIZE"].reshape(-1)[0])
    if size < 0 or size > GENERATE_MAX_SIZE:
        raise TritonError(
            "TRITON_INFERENCE_FAILED",
            "generate",
            f"[400] SIZE must be in [0, {GENERATE_MAX_SIZE}], got {size}",
        )
    values = np.random.default_rng(size).random(size, dtype=np.float32)
    return {"OUTPUT0": values}


def stream_chunks(tensors: Tensors) -> Iterator[Tensors]:
    """The `stream` model's decoupled responses: one per element of TEXT."""
    delay = tensors.get("DELAY_MS")
    delay_s = max(int(delay.reshape(-1)[0]), 0) / 1000 if delay is not None and delay.size else 0
    for element in tensors["TEXT"].reshape(-1):
        if delay_s:
            time.sleep(delay_s)
        yield {"output": np.array([element], dtype=np.object_)}


FP32_ANY = TensorSpec("INPUT0", "FP32")
MODELS: dict[str, Model] = {
    model.name: model
    for model in (
        Model("double", (FP32_ANY,), (TensorSpec("OUTPUT0", "FP32"),), _double),
        Model(
            "slow",
            (FP32_ANY, TensorSpec("DELAY_MS", "INT32", (1,))),
            (TensorSpec("OUTPUT0", "FP32"),),
            _slow,
            blocking=True,
        ),
        Model("identity", (), (), _identity, open_inputs=True),
        Model("fail", (), (), _fail, open_inputs=True),
        Model(
            "stream",
            (TensorSpec("TEXT", "BYTES"), TensorSpec("DELAY_MS", "INT32", (1,))),
            (TensorSpec("output", "BYTES"),),
            _stream_http,
            optional_inputs=frozenset({"DELAY_MS"}),
            decoupled=True,
            blocking=True,
        ),
        Model(
            "checksum",
            (TensorSpec("INPUT0", "*"),),
            (TensorSpec("OUTPUT0", "FP64", (1,)),),
            _checksum,
        ),
        Model(
            "generate",
            (TensorSpec("SIZE", "INT64", (1,)),),
            (TensorSpec("OUTPUT0", "FP32"),),
            _generate,
        ),
    )
}


def get_model(name: str) -> Model:
    """Look a model up; unknown names fail as Triton's 404 does."""
    model = MODELS.get(name)
    if model is None:
        raise TritonError(
            "TRITON_INFERENCE_FAILED",
            name,
            f"[404] Request for unknown model: '{name}' is not found",
        )
    return model
