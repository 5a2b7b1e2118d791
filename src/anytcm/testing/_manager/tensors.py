"""Tensor decoding and encoding as the real manager does it (contract §4.3, §6.4, §8, §9).

This module belongs to the reference *server*. It deliberately shares nothing with the client's
carriers: the point of the reference manager is to catch the client's mistakes, which it cannot
do if both sides run the same conversion code.
"""

from __future__ import annotations

import base64
import binascii
import math
import mmap
import os
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import TritonError

# Triton API datatype -> numpy dtype (infer.py:39-52); BYTES is an object array of bytes.
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

# The 413 estimate's bytes per element (base.py:136-203); unknown datatypes count 4.
ESTIMATE_BYTES_PER_ELEMENT: dict[str, int] = {
    "BOOL": 1,
    "INT8": 1,
    "UINT8": 1,
    "INT16": 2,
    "UINT16": 2,
    "FP16": 2,
    "INT32": 4,
    "UINT32": 4,
    "FP32": 4,
    "INT64": 8,
    "UINT64": 8,
    "FP64": 8,
    "BYTES": 8,
}

SHM_REFERENCE_KEYS = ("name", "shm_key", "offset", "byte_size", "shape", "dtype")
SHM_DIR = "/dev/shm"

# The zstd input extension (docs/zstd-carrier.md): recognised only when the server offers the
# `zstd` capability (`--capability zstd`); the real manager does not know it.
ZSTD_INPUT_KEYS = ("name", "shape", "datatype", "zstd")
ZSTD_CAPABILITY = "zstd"
# A BYTES tensor's decompressed size is not fixed by its shape: bound it against zstd bombs.
ZSTD_MAX_BYTES_TENSOR = 64 * 1024 * 1024


def canonical_datatype(name: str) -> str:
    """Accept the Triton API spelling or the config.pbtxt `TYPE_*` spelling."""
    if name.startswith("TYPE_"):
        name = name[5:]
        if name == "STRING":
            return "BYTES"
    return name


def datatype_of(array: npt.NDArray[Any]) -> str:
    """The Triton datatype of a numpy array (object/bytes/str arrays are BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    for name, dtype in NUMPY_DTYPES.items():
        if dtype == array.dtype:
            return name
    raise TritonError("TRITON_INFERENCE_FAILED", "unknown", f"unsupported dtype {array.dtype}")


def normalise_dims(dims: Any) -> list[int]:
    """`dims`/`shape` may be an int (-> [n]) or a list of ints (infer.py:157-158)."""
    if isinstance(dims, int) and not isinstance(dims, bool):
        return [dims]
    if isinstance(dims, list) and all(isinstance(d, int) for d in dims):
        return list(dims)
    raise TritonError("TRITON_INFERENCE_FAILED", "unknown", f"invalid dims {dims!r}")


def to_manager_form(item: Any) -> Any:
    """SDK form `{name, shape, datatype, data}` -> manager form `{name, dims, type, value}`.

    Anything else (manager form, SHM references, partial dicts) passes through unchanged, as in
    base.py:26-63; partial dicts then fail later with an opaque `'dims'` reason.
    """
    if isinstance(item, dict) and all(k in item for k in ("name", "shape", "datatype", "data")):
        return {
            "name": item["name"],
            "dims": item["shape"],
            "type": item["datatype"],
            "value": item["data"],
        }
    return item


def is_shm_reference(item: Any) -> bool:
    """An input is an SHMReference only when it carries all six keys (http.py:148-166)."""
    return isinstance(item, dict) and all(k in item for k in SHM_REFERENCE_KEYS)


def is_zstd_input(item: Any) -> bool:
    """A zstd input carries all four keys (and is not an SHMReference)."""
    return (
        isinstance(item, dict)
        and all(k in item for k in ZSTD_INPUT_KEYS)
        and not is_shm_reference(item)
    )


def estimate_request_bytes(inputs: list[Any]) -> int:
    """The manager's payload estimate: numel(dims) x bytes per element; SHM counts byte_size.

    A zstd input counts like a JSON one (its `shape` and `datatype`), not its compressed size.
    """
    total = 0
    for raw in inputs:
        if is_shm_reference(raw):
            byte_size = raw.get("byte_size")
            total += byte_size if isinstance(byte_size, int) else 0
            continue
        item = to_manager_form(raw)
        if not isinstance(item, dict):
            continue
        dims = item.get("dims", item.get("shape"))
        try:
            numel = math.prod(normalise_dims(dims))
        except TritonError:
            numel = 0
        datatype = item.get("type", item.get("datatype"))
        per = ESTIMATE_BYTES_PER_ELEMENT.get(
            canonical_datatype(datatype) if isinstance(datatype, str) else "", 4
        )
        total += numel * per
    return total


def decode_json_input(item: dict[str, Any], model: str) -> tuple[str, npt.NDArray[Any]]:
    """Turn one manager-form input into a numpy array (infer.py:77-125)."""
    # Missing keys surface as the opaque KeyError text the real manager produces.
    try:
        name = item["name"]
        dims = item["dims"]
        datatype = canonical_datatype(str(item["type"]))
        value = item["value"]
    except KeyError as exc:
        raise TritonError("TRITON_INFERENCE_FAILED", model, str(exc)) from None
    shape = normalise_dims(dims)
    if datatype == "BF16":
        raise TritonError(
            "TRITON_INFERENCE_FAILED",
            model,
            "got unexpected datatype float64 from numpy array, expected BF16",
        )
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise TritonError("TRITON_INFERENCE_FAILED", model, f"unsupported datatype '{datatype}'")
    if not isinstance(value, list):
        value = [value]  # a scalar becomes a 1-element vector
    try:
        if datatype == "BYTES":
            array = np.array(_encode_strings(value), dtype=np.object_)
        else:
            array = np.array(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        raise TritonError(
            "TRITON_SHAPE_MISMATCH",
            "unknown",
            f"input '{name}': value does not match dims {shape} and datatype {datatype}",
        ) from None
    if list(array.shape) != shape:
        raise TritonError(
            "TRITON_SHAPE_MISMATCH",
            "unknown",
            f"input '{name}': value has shape {list(array.shape)} but dims are {shape}",
        )
    return str(name), array


def _encode_strings(value: Any) -> Any:
    if isinstance(value, list):
        return [_encode_strings(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise ValueError("BYTES elements must be strings")


def decode_zstd_input(item: Mapping[str, Any], model: str) -> tuple[str, npt.NDArray[Any]]:
    """Decode a zstd input `{name, shape, datatype, zstd}` (docs/zstd-carrier.md).

    `zstd` is base64 of one zstd frame holding the raw little-endian C-order bytes of the
    tensor (BYTES: Triton's 4-byte little-endian length before each element). The decompressed
    size must be numel x itemsize. Every problem is a `TRITON_INFERENCE_FAILED` with a reason.
    """
    name, shape_value, datatype_value, encoded = (item[k] for k in ZSTD_INPUT_KEYS)

    def fail(reason: str) -> TritonError:
        return TritonError("TRITON_INFERENCE_FAILED", model, f"zstd input '{name}': {reason}")

    if not isinstance(name, str) or not name:
        raise TritonError(
            "TRITON_INFERENCE_FAILED", model, "zstd input: name must be a non-empty string"
        )
    if not isinstance(shape_value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape_value
    ):
        raise fail(f"shape must be a list of integers >= 0, got {shape_value!r}")
    shape = list(shape_value)
    if not isinstance(datatype_value, str):
        raise fail(f"datatype must be a string, got {datatype_value!r}")
    datatype = canonical_datatype(datatype_value)
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise fail(f"unsupported datatype '{datatype}'")
    if not isinstance(encoded, str):
        raise fail("zstd must be a base64 string")
    try:
        compressed = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise fail(f"zstd is not valid base64 ({exc})") from None
    try:
        import zstandard  # lazily: the server runs without it, and refuses zstd inputs then
    except ImportError:
        raise fail(
            "the reference manager cannot decode zstd inputs: the 'zstandard' package is not "
            "installed (pip install zstandard)"
        ) from None
    numel = math.prod(shape)
    is_bytes = datatype == "BYTES"
    expected = None if is_bytes else numel * dtype.itemsize
    limit = ZSTD_MAX_BYTES_TENSOR if expected is None else expected
    try:
        declared = zstandard.frame_content_size(compressed)
        if expected is not None and declared >= 0 and declared != expected:
            raise fail(
                f"decompressed size mismatch: the frame declares {declared} bytes, expected "
                f"{expected} (numel {numel} x {dtype.itemsize} bytes for {datatype})"
            )
        raw = _decompress_bounded(zstandard, compressed, limit)
    except zstandard.ZstdError as exc:
        raise fail(f"corrupt zstd data ({exc})") from None
    if expected is not None and len(raw) != expected:
        got = f"more than {limit}" if len(raw) > limit else str(len(raw))
        raise fail(
            f"decompressed size mismatch: got {got} bytes, expected {expected} "
            f"(numel {numel} x {dtype.itemsize} bytes for {datatype}); "
            "the frame may be truncated"
        )
    if is_bytes:
        if len(raw) > limit:
            raise fail(f"BYTES tensor decompresses to more than {limit} bytes")
        return name, _deserialize_bytes(raw, shape, fail)
    flat: npt.NDArray[Any] = np.frombuffer(raw, dtype=dtype.newbyteorder("<"), count=numel)
    array: npt.NDArray[Any] = flat.astype(dtype).reshape(shape)
    return name, array


def _decompress_bounded(zstandard: Any, compressed: bytes, limit: int) -> bytes:
    """One zstd frame's content, read up to `limit + 1` bytes (trailing data is an error)."""
    out = bytearray()
    reader = zstandard.ZstdDecompressor().stream_reader(compressed, read_across_frames=False)
    with reader:
        while len(out) <= limit:
            chunk = reader.read(limit + 1 - len(out))
            if not chunk:
                break
            out += chunk
    return bytes(out)


def _deserialize_bytes(raw: bytes, shape: list[int], fail: Any) -> npt.NDArray[Any]:
    """Triton's serialised BYTES: a 4-byte little-endian length before each element."""
    numel = math.prod(shape)
    elements: list[bytes] = []
    pos = 0
    for index in range(numel):
        if pos + 4 > len(raw):
            raise fail(f"BYTES data ends before element {index} of {numel}")
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + length > len(raw):
            raise fail(f"BYTES element {index} is truncated")
        elements.append(raw[pos : pos + length])
        pos += length
    if pos != len(raw):
        raise fail(f"{len(raw) - pos} bytes left after the {numel} BYTES elements")
    strings: npt.NDArray[Any] = np.empty(numel, dtype=np.object_)
    strings[:] = elements
    return strings.reshape(shape)


@dataclass(frozen=True)
class ShmReference:
    """A validated SHMReference input (orch.py:343-369)."""

    name: str
    key: str
    offset: int
    byte_size: int
    shape: list[int]
    datatype: str

    @classmethod
    def parse(cls, item: Mapping[str, Any], model: str) -> ShmReference:
        name, key, offset = item["name"], item["shm_key"], item["offset"]
        byte_size, shape, dtype = item["byte_size"], item["shape"], item["dtype"]
        problems = []
        if not isinstance(name, str) or not name:
            problems.append("name must be a non-empty string")
        if not isinstance(key, str) or not key:
            problems.append("shm_key must be a non-empty string")
        elif not _is_segment_name(key):
            problems.append(
                f"shm_key must name a segment directly under {SHM_DIR} "
                "(one optional leading '/', no other '/', not '.' or '..', no NUL)"
            )
        if not isinstance(dtype, str) or not dtype:
            problems.append("dtype must be a non-empty string")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            problems.append("offset must be an integer >= 0")
        if not isinstance(byte_size, int) or isinstance(byte_size, bool) or byte_size <= 0:
            problems.append("byte_size must be an integer > 0")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            problems.append("shape must be a list of integers >= 0")
        if problems:
            raise TritonError(
                "TRITON_SHM_UNAVAILABLE", model, "invalid SHM reference: " + "; ".join(problems)
            )
        return cls(name, key, offset, byte_size, list(shape), canonical_datatype(dtype))

    @property
    def path(self) -> str:
        # parse() admits only plain names: the path cannot leave SHM_DIR.
        return os.path.join(SHM_DIR, self.key.removeprefix("/"))


def _is_segment_name(key: str) -> bool:
    """A POSIX shm name (`shm_open` style): a file name directly in SHM_DIR, nothing else.

    Anything that could resolve elsewhere (`../x`, `a/b`, an absolute path such as `/etc/x`)
    is refused before the file system is asked.
    """
    name = key.removeprefix("/")
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


def shm_segment_problem(ref: ShmReference) -> str | None:
    """Why `ref` does not name a readable segment (None: it exists as a regular file).

    A symbolic link is refused even when it points into SHM_DIR: where it points is the
    client's choice, not a segment it created.
    """
    try:
        info = os.lstat(ref.path)
    except OSError:
        return f"shared memory key '{ref.key}' not found under {SHM_DIR}"
    if not stat.S_ISREG(info.st_mode):
        return f"shared memory key '{ref.key}' is not a shared memory segment under {SHM_DIR}"
    return None


def read_shm_input(ref: ShmReference, model: str) -> npt.NDArray[Any]:
    """Read an input the way Triton reads a registered system-shared-memory region."""
    # O_NOFOLLOW and the regular-file check close the gap between shm_segment_problem() and
    # this open (the name could be swapped for a link); O_NONBLOCK keeps a FIFO from blocking.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(ref.path, flags)
    except OSError as exc:
        raise TritonError(
            "TRITON_SHM_UNAVAILABLE",
            model,
            f"shared memory key '{ref.key}' is not accessible under {SHM_DIR}: {exc.strerror}",
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TritonError(
                "TRITON_SHM_UNAVAILABLE",
                model,
                f"shared memory key '{ref.key}' is not a shared memory segment under {SHM_DIR}",
            )
        size = info.st_size
        if size < ref.byte_size:
            raise TritonError(
                "TRITON_SHM_REGISTRATION_FAILED",
                model,
                f"[400] shared memory region '{ref.key}' is {size} bytes, byte_size is "
                f"{ref.byte_size}",
            )
        # Like Triton, read the region in place: the mapping stays valid after the client
        # unlinks the key, and lives exactly as long as the array built on it (no copy).
        region = mmap.mmap(fd, ref.byte_size, prot=mmap.PROT_READ)
        return _array_from_region(region, ref, model)
    finally:
        os.close(fd)


def _array_from_region(region: mmap.mmap, ref: ShmReference, model: str) -> npt.NDArray[Any]:
    numel = math.prod(ref.shape)
    if ref.datatype == "BYTES":
        # Triton's serialised BYTES layout: a 4-byte little-endian length before each element.
        elements: list[bytes] = []
        pos = 0
        for _ in range(numel):
            if pos + 4 > ref.byte_size:
                break
            (length,) = struct.unpack_from("<I", region, pos)
            elements.append(bytes(region[pos + 4 : pos + 4 + length]))
            pos += 4 + length
        if len(elements) != numel:
            raise TritonError(
                "TRITON_INFERENCE_FAILED",
                model,
                f"[400] unexpected shared memory region size for input '{ref.name}'",
            )
        strings: npt.NDArray[Any] = np.array(elements, dtype=np.object_)
        return strings.reshape(ref.shape)
    dtype = NUMPY_DTYPES.get(ref.datatype)
    if dtype is None:
        raise TritonError(
            "TRITON_INFERENCE_FAILED", model, f"unsupported datatype '{ref.datatype}'"
        )
    needed = numel * dtype.itemsize
    if needed > ref.byte_size:
        raise TritonError(
            "TRITON_INFERENCE_FAILED",
            model,
            f"[400] input byte size mismatch for input '{ref.name}' for model '{model}'. "
            f"Expected {needed}, got {ref.byte_size}",
        )
    flat: npt.NDArray[Any] = np.frombuffer(region, dtype=dtype, count=numel)
    array: npt.NDArray[Any] = flat.reshape(ref.shape)
    return array


def encode_output(array: npt.NDArray[Any]) -> Any:
    """An output tensor as the manager re-encodes it (infer.py:175-199).

    Numeric and BOOL outputs stay numpy arrays: orjson writes them as nested lists, NaN/Inf as
    null. FP16 becomes FP32. BYTES are flattened to UTF-8 strings, a one-element BYTES tensor
    becomes a bare string; a 0-d numeric tensor becomes a bare number.
    """
    if array.dtype.kind in "OSU":
        flat = [_as_text(v) for v in array.reshape(-1).tolist()]
        return flat[0] if len(flat) == 1 else flat
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    if array.ndim == 0:
        scalar = array.item()
        if isinstance(scalar, float) and not math.isfinite(scalar):
            return None
        return scalar
    return np.ascontiguousarray(array)


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


__all__ = [
    "NUMPY_DTYPES",
    "ZSTD_CAPABILITY",
    "ShmReference",
    "canonical_datatype",
    "datatype_of",
    "decode_json_input",
    "decode_zstd_input",
    "encode_output",
    "estimate_request_bytes",
    "is_shm_reference",
    "is_zstd_input",
    "read_shm_input",
    "shm_segment_problem",
    "to_manager_form",
]
