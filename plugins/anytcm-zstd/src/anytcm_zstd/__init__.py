"""anytcm-zstd: the `zstd` carrier, tensors inline as base64 of zstd-compressed raw bytes.

Each input becomes ``{"name", "shape", "datatype", "zstd": "<base64>"}`` where the base64 holds
one zstd frame of the tensor's raw little-endian C-order bytes (BYTES: Triton's serialisation,
a 4-byte little-endian length before each element). See ``docs/zstd-carrier.md``.

The carrier is only usable when the manager granted the ``zstd`` capability in ``auth.ok``. The
real TCM does not know it and drops it from the negotiated list, so a client asking for
``carrier=("zstd", "auto")`` falls back to json there. The frame is still capped at 64 KiB:
the client size-checks the request after staging, as for json.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

import anyio.to_thread
import msgspec
import numpy as np
import numpy.typing as npt
import zstandard

from anytcm.carrier import CarrierContext, InputTensor, Staged, StagedInputs, is_granted
from anytcm.errors import InvalidInput
from anytcm.tensors import numpy_dtype, triton_datatype

__all__ = ["CAPABILITY", "DEFAULT_LEVEL", "OFFLOAD_BYTES", "ZstdCarrier", "encode_item"]

try:
    __version__ = version("anytcm-zstd")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

CAPABILITY: Final = "zstd"
#: zstd's own default: fast, and most of the gain on tensors.
DEFAULT_LEVEL: Final = 3
#: Requests with more raw tensor bytes than this are compressed on a worker thread.
OFFLOAD_BYTES: Final = 1024 * 1024

_ENCODE = msgspec.json.Encoder()
_MIN_LEVEL: Final = -(1 << 17)  # ZSTD_minCLevel(): the fastest "negative" levels


class ZstdCarrier:
    """Compresses each input with zstd (``level``, default 3) and inlines it as base64.

    Safe to share between tasks: every `stage` call uses its own compressor (zstandard's
    compressors must not be used from two threads at once).
    """

    name = "zstd"
    capability = CAPABILITY

    def __init__(self, level: int = DEFAULT_LEVEL, *, offload_bytes: int = OFFLOAD_BYTES) -> None:
        lowest, highest = _MIN_LEVEL, zstandard.MAX_COMPRESSION_LEVEL
        if (
            not isinstance(level, int)
            or isinstance(level, bool)
            or not (lowest <= level <= highest)
        ):
            raise ValueError(
                f"zstd level must be an integer in [{lowest}, {highest}], got {level!r}"
            )
        self.level = level
        self.offload_bytes = offload_bytes

    def __repr__(self) -> str:
        return f"ZstdCarrier(level={self.level})"

    def unavailable_reason(self, context: CarrierContext) -> str | None:
        if is_granted(self.capability, context):
            return None
        if context.granted is None:
            return (
                "the manager answered auth without capability negotiation (legacy auth.ok), "
                "so it did not grant 'zstd'"
            )
        return (
            f"the manager did not grant the 'zstd' capability (granted: {list(context.granted)}); "
            "the real TCM does not support it, only a manager offering it does"
        )

    async def stage(self, inputs: Sequence[InputTensor]) -> StagedInputs:
        total = sum(t.nbytes for t in inputs)
        if total > self.offload_bytes:
            items = await anyio.to_thread.run_sync(self._encode_all, inputs)
        else:
            items = self._encode_all(inputs)
        return Staged(items)

    def _encode_all(self, inputs: Sequence[InputTensor]) -> list[msgspec.Raw]:
        compressor = zstandard.ZstdCompressor(level=self.level, write_content_size=True)
        return [encode_item(t, compressor) for t in inputs]


def encode_item(tensor: InputTensor, compressor: zstandard.ZstdCompressor) -> msgspec.Raw:
    """One input as the JSON of the zstd item ``{name, shape, datatype, zstd}``."""
    name = tensor.name
    if not isinstance(name, str) or not name:
        raise InvalidInput(
            f"input names are non-empty strings, got {name!r}", expected="str", given=name
        )
    array = _as_array(name, tensor.array)
    datatype = triton_datatype(array) if tensor.datatype is None else _datatype(tensor.datatype)
    if array.ndim == 0:
        array = array.reshape(1)  # as the json carrier: a scalar travels as shape [1]
    shape = [int(n) for n in array.shape]
    if datatype == "BYTES":
        raw = _serialize_bytes(name, array)
    else:
        array = _cast(name, array, numpy_dtype(datatype), datatype)
        little = array.dtype.newbyteorder("<")
        raw = np.ascontiguousarray(array, dtype=little).tobytes()
    payload = base64.b64encode(compressor.compress(raw)).decode("ascii")
    return msgspec.Raw(
        _ENCODE.encode({"name": name, "shape": shape, "datatype": datatype, "zstd": payload})
    )


def _as_array(name: str, value: Any) -> npt.NDArray[Any]:
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            f"input {name!r} is not a regular array ({exc})",
            expected="a regular nested sequence",
            given=type(value).__name__,
        ) from None


def _datatype(datatype: str) -> str:
    """The API spelling of a datatype (``TYPE_FP32`` -> ``FP32``); InvalidInput if unknown."""
    return triton_datatype(numpy_dtype(datatype))


def _cast(
    name: str, array: npt.NDArray[Any], target: np.dtype[Any], datatype: str
) -> npt.NDArray[Any]:
    """`array` as `target`, refusing casts that change a value (as the json carrier does)."""
    given = triton_datatype(array)  # InvalidInput for complex, datetime, ...
    if array.dtype.newbyteorder("=") == target:
        return array
    if given == "BYTES":
        raise InvalidInput(
            f"input {name!r} holds BYTES data but its datatype is {datatype}",
            expected=datatype,
            given=given,
        )
    with np.errstate(all="ignore"):
        cast = array.astype(target)
        exact = _same_values(array, cast)
    if not exact:
        raise InvalidInput(
            f"input {name!r}: casting {given} to {datatype} would change values; convert it "
            f"yourself (e.g. arr.astype(np.{target.name})) if rounding is intended",
            expected=datatype,
            given=given,
        )
    return cast


def _same_values(src: npt.NDArray[Any], cast: npt.NDArray[Any]) -> bool:
    if src.size == 0:
        return True
    if cast.dtype.kind in "biu":
        if src.dtype.kind == "f" and not np.isfinite(src).all():
            return False
        # Compare as Python ints: exact at any size (int64 -1 vs uint64 2**64-1 differ).
        return bool(src.astype(object).ravel().tolist() == cast.astype(object).ravel().tolist())
    back = cast.astype(src.dtype)
    if src.dtype.kind in "biu" and not np.isfinite(cast).all():
        return False
    return bool(np.array_equal(back, src, equal_nan=src.dtype.kind == "f"))


def _serialize_bytes(name: str, array: npt.NDArray[Any]) -> bytes:
    """Triton's BYTES serialisation: each element as a 4-byte LE length, then its bytes."""
    if array.dtype.kind not in "OSU":
        raise InvalidInput(
            f"input {name!r} holds {triton_datatype(array)} data but its datatype is BYTES",
            expected="BYTES",
            given=triton_datatype(array),
        )
    parts: list[bytes] = []
    for index, element in enumerate(array.ravel().tolist()):
        if isinstance(element, str):
            try:
                data = element.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidInput(
                    f"input {name!r}: element {index} is not encodable as UTF-8 ({exc})",
                    expected="str or bytes",
                    given=repr(element),
                ) from None
        elif isinstance(element, bytes | bytearray | memoryview):
            data = bytes(element)
        else:
            raise InvalidInput(
                f"input {name!r}: BYTES element {index} is {type(element).__name__}, "
                "expected str or bytes",
                expected="str or bytes",
                given=type(element).__name__,
            )
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)
