"""Value types of the public API: targets, tensors, model specs, results."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from .errors import InvalidInput
from .tensors import datatype_name, decode_output, numpy_dtype, triton_datatype
from .wire import OutputValue


@dataclass(frozen=True)
class Target:
    """Where an inference runs: a Triton server known to the manager by (vm_ip, container_id).

    `manager` (a client of several managers only) names the manager URL that must serve it; by
    default a server created through this client goes to the manager that created it, and any
    other target to any manager. It is not part of the target's identity (equality, hashing).
    """

    vm_ip: str
    container_id: str
    manager: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Tensor:
    """A named input. `datatype` (Triton spelling) overrides the one implied by the array."""

    name: str
    data: Any
    datatype: str | None = None


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model config: name, Triton datatype, dims (-1 = any size)."""

    name: str
    datatype: str
    dims: tuple[int, ...]

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> TensorSpec:
        """From a management reply entry `{name, type: "TYPE_FP32", dims: [...]}`."""
        datatype = datatype_name(str(entry.get("type", entry.get("datatype", ""))))
        dims = entry.get("dims", entry.get("shape", []))
        return cls(str(entry["name"]), datatype, tuple(int(d) for d in dims))


@dataclass(frozen=True)
class ModelSpec:
    """A model's inputs and outputs, used to check inputs before sending and to type outputs."""

    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelSpec:
        """From management data carrying `inputs` and `outputs` lists."""
        return cls(
            tuple(TensorSpec.from_config(e) for e in config.get("inputs") or ()),
            tuple(TensorSpec.from_config(e) for e in config.get("outputs") or ()),
        )

    def check(self, model: str, given: Mapping[str, tuple[str, tuple[int, ...]]]) -> None:
        """Compare inputs (name -> (datatype, shape)) with the spec; raise InvalidInput."""
        if not self.inputs:
            return
        expected = {s.name: s for s in self.inputs}
        problems = []
        missing = sorted(set(expected) - set(given))
        unexpected = sorted(set(given) - set(expected))
        if missing:
            problems.append(f"missing {missing}")
        if unexpected:
            problems.append(f"unexpected {unexpected}")
        for name in sorted(set(expected) & set(given)):
            spec, (datatype, shape) = expected[name], given[name]
            if datatype != spec.datatype:
                problems.append(
                    f"{name}: datatype {datatype}, model expects {spec.datatype}"
                    + _cast_hint(name, spec.datatype)
                )
            if len(shape) != len(spec.dims) or any(
                d != -1 and d != s for d, s in zip(spec.dims, shape, strict=False)
            ):
                problems.append(
                    f"{name}: shape {list(shape)}, model expects dims {list(spec.dims)}"
                )
        if problems:
            raise InvalidInput(
                f"inputs do not match model {model!r}: "
                + "; ".join(problems)
                + f". Expected {_describe(self.inputs)}; given "
                + ", ".join(f"{n} {d}{list(s)}" for n, (d, s) in sorted(given.items())),
                expected={s.name: (s.datatype, s.dims) for s in self.inputs},
                given=dict(given),
            )

    def output_dtype(self, name: str) -> np.dtype[Any] | None:
        for spec in self.outputs:
            if spec.name == name:
                try:
                    return numpy_dtype(spec.datatype)
                except InvalidInput:
                    return None
        return None


def _cast_hint(name: str, datatype: str) -> str:
    """How to convert an input to the datatype a model expects, for the error message."""
    try:
        dtype = numpy_dtype(datatype)
    except InvalidInput:
        return ""
    if dtype.kind in "biuf":
        return f" (convert it: inputs[{name!r}].astype(np.{dtype.name}))"
    return ""


def _describe(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{s.name} {s.datatype}{list(s.dims)}" for s in specs)


@dataclass(repr=False)
class InferResult(Mapping[str, "npt.NDArray[Any]"]):
    """The outputs of one inference, decoded into numpy on first access.

    A read-only mapping of output names to arrays: `result["OUTPUT0"]` is
    `result.as_numpy("OUTPUT0")`, and `dict(result)` decodes them all.

    The manager sends outputs as JSON without dtypes (contract §8): FP16 arrives as FP32 floats,
    BYTES flattened. The dtype of each output comes from `output_dtypes`, else the model spec,
    else it is inferred: integers -> int64, floats -> the float dtype the request's inputs share
    (an FP32 model fed float32 gets float32 back), else float64.
    """

    model_name: str | None
    _raw: Mapping[str, OutputValue]
    _dtypes: Mapping[str, Any] = field(default_factory=dict)
    _spec: ModelSpec | None = None
    _float_dtype: np.dtype[Any] | None = None  # the inputs' shared float dtype, if any
    _decoded: dict[str, npt.NDArray[Any]] = field(default_factory=dict, repr=False)

    @property
    def output_names(self) -> list[str]:
        return list(self._raw)

    def as_numpy(self, name: str) -> npt.NDArray[Any]:
        """One output as a numpy array."""
        array = self._decoded.get(name)
        if array is not None:
            return array
        raw = self._raw.get(name)
        if raw is None:
            raise KeyError(f"no output named {name!r}; the outputs are {self.output_names}")
        dtype = self._dtypes.get(name)
        if dtype is None and self._spec is not None:
            dtype = self._spec.output_dtype(name)
        array = decode_output(raw, dtype)
        if dtype is None and self._float_dtype is not None and array.dtype.kind == "f":
            array = array.astype(self._float_dtype, copy=False)
        self._decoded[name] = array
        return array

    @property
    def outputs(self) -> dict[str, npt.NDArray[Any]]:
        """Every output, decoded."""
        return {name: self.as_numpy(name) for name in self._raw}

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __getitem__(self, name: str) -> npt.NDArray[Any]:
        return self.as_numpy(name)

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, name: object) -> bool:
        return name in self._raw

    def __repr__(self) -> str:
        # Decoding in a repr would be a surprise (and may fail): an output not yet read shows
        # the size of its JSON, one already read its dtype and shape.
        parts = []
        for name, raw in self._raw.items():
            array = self._decoded.get(name)
            if array is not None:
                parts.append(f"{name!r}: {array.dtype}{list(array.shape)}")
            else:
                size = len(raw) if isinstance(raw, msgspec.Raw) else len(msgspec.json.encode(raw))
                parts.append(f"{name!r}: <{size} bytes of JSON, not decoded yet>")
        return f"InferResult(model_name={self.model_name!r}, outputs={{{', '.join(parts)}}})"


@dataclass(frozen=True)
class StreamEvent:
    """One frame of a streamed (gRPC) inference.

    START opens the stream; each ONGOING carries one decoded string (`text`); COMPLETED ends it.
    """

    status: Literal["START", "ONGOING", "COMPLETED"]
    text: str | None = None
    model_name: str | None = None


class QueueStats(msgspec.Struct, frozen=True):
    """The manager's queue_stats (contract §4.1). Unknown future keys are ignored."""

    info_users: int = 0
    management_users: int = 0
    inference_users: int = 0
    total_users: int = 0
    total_queued: int = 0
    info_total_queued: int = 0
    management_total_queued: int = 0
    inference_total_queued: int = 0
    executor_info_pending: int = 0
    executor_management_pending: int = 0
    executor_inference_pending: int = 0
    executor_info_available: int = 0
    executor_management_available: int = 0
    executor_inference_available: int = 0


@dataclass(frozen=True)
class VmCreated:
    vm_ip: str
    vm_id: str


@dataclass(frozen=True)
class ContainerCreated:
    container_id: str
    docker_config: dict[str, Any]


@dataclass(frozen=True)
class ServerCreated:
    """A registered Triton server; `spec` is also remembered by the client for input checks."""

    model_name: str
    spec: ModelSpec


@dataclass(frozen=True)
class Deployment:
    """The result of `creation`: a VM, a container and a registered server in one go."""

    target: Target
    model_name: str
    spec: ModelSpec


@dataclass(frozen=True)
class Deleted:
    vm_id: str | None
    container_id: str | None


def shared_float_dtype(arrays: Iterable[Any]) -> np.dtype[Any] | None:
    """The one float dtype among the float arrays given, or None (none, or several)."""
    found: np.dtype[Any] | None = None
    for array in arrays:
        if isinstance(array, np.ndarray) and array.dtype.kind == "f":
            if found is not None and array.dtype != found:
                return None
            found = array.dtype
    return found


def input_signature(
    inputs: Mapping[str, npt.NDArray[Any]], datatypes: Mapping[str, str | None]
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (Triton datatype, shape), for the spec check."""
    return {
        name: (datatypes.get(name) or triton_datatype(array), tuple(array.shape))
        for name, array in inputs.items()
    }
