"""Input tensors for `anytcm infer`, read from `.npy`, `.npz` and JSON files.

Every problem with a file (missing, not the format its name says, an object array that would
need pickle, a value that does not fit its datatype) is a `UsageError` naming the file and,
where there is one, the input: exit code 2 and one line, never a numpy traceback.

The three forms (also in `anytcm infer --help`, see `INPUT_HELP`):

* `NAME=FILE.npy`: one tensor, named on the command line (a .npy file holds no name).
* `FILE.npz`: every array of the archive, named as in the archive (`numpy.savez(f, INPUT0=x)`).
* `FILE.json`: tensors with explicit Triton datatypes, because JSON numbers have none:
  `{"INPUT0": {"datatype": "FP32", "shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]}}`, or
  the Triton / KServe v2 request body `{"inputs": [{"name": "INPUT0", "datatype": ..., ...}]}`.
  `data` is nested to the shape or flat (row-major); `shape` is optional with nested data.

Pickle is never loaded (`allow_pickle=False`): an input file may come from anywhere.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from ..errors import InvalidInput
from ..tensors import SUPPORTED_DATATYPES, numpy_dtype
from ._errors import UsageError

Array = npt.NDArray[Any]

INPUT_HELP: Final = (
    "an input tensor, repeatable: NAME=FILE.npy (one tensor, named here); FILE.npz (every "
    "array of the archive, by its name in the archive); FILE.json (tensors with Triton "
    'datatypes: {"NAME": {"datatype": "FP32", "shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]}}'
    ', or a Triton/KServe v2 request body {"inputs": [{"name": ..., "datatype": ..., '
    '"shape": ..., "data": ...}]}; "data" nested to the shape or flat, "shape" optional with '
    "nested data, BYTES data as strings, FP NaN as null). Pickled (object) arrays are refused"
)

_READ_ERRORS: Final = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def read_inputs(arguments: Sequence[str]) -> dict[str, Array]:
    """Every `--input` argument, read into one name -> array mapping (names must not repeat)."""
    inputs: dict[str, Array] = {}
    for argument in arguments:
        for name, array in _read_argument(argument).items():
            if name in inputs:
                raise UsageError(f"input {name!r} is given twice (last by --input {argument})")
            inputs[name] = array
    if not inputs:
        raise UsageError("no inputs: give at least one --input (see anytcm infer --help)")
    return inputs


def _read_argument(argument: str) -> dict[str, Array]:
    name, path = _split(argument)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if name is None:
            raise UsageError(
                f"--input {argument}: a .npy file holds no tensor name; write NAME={argument}"
            )
        return {name: _load_npy(path)}
    if suffix in (".npz", ".json"):
        if name is not None:
            raise UsageError(
                f"--input {argument}: a {suffix} file names its tensors itself; drop {name + '='!r}"
            )
        return _load_npz(path) if suffix == ".npz" else _load_json(path)
    raise UsageError(
        f"--input {argument}: unknown file type {path.suffix or '(none)'!r}; "
        "use NAME=FILE.npy, FILE.npz or FILE.json"
    )


def _split(argument: str) -> tuple[str | None, Path]:
    """`NAME=PATH` or `PATH` (a path that exists is taken whole, even with an '=' in it)."""
    name, equals, rest = argument.partition("=")
    if not equals or Path(argument).exists():
        return None, Path(argument)
    if not name:
        raise UsageError(f"--input {argument}: the tensor name before '=' is empty")
    return name, Path(rest)


def _unreadable(path: Path, error: BaseException) -> UsageError:
    detail = " ".join(str(error).split()) or type(error).__name__
    if "pickle" in detail.lower() or "allow_pickle" in detail:
        detail = (
            "it holds pickled (object) arrays, which anytcm does not load; save BYTES tensors "
            "as fixed-width bytes or str arrays (numpy dtype S or U)"
        )
    return UsageError(f"cannot read input file {path}: {detail}")


def _load_npy(path: Path) -> Array:
    try:
        loaded = np.load(path, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from None
    if not isinstance(loaded, np.ndarray):
        loaded.close()
        raise UsageError(f"cannot read input file {path}: it is an .npz archive, not a .npy file")
    return loaded


def _load_npz(path: Path) -> dict[str, Array]:
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            raise UsageError(f"cannot read input file {path}: it is a .npy file, not .npz")
        with loaded as archive:
            arrays = {name: archive[name] for name in archive.files}
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from None
    if not arrays:
        raise UsageError(f"input file {path} holds no arrays")
    return arrays


def _load_json(path: Path) -> dict[str, Array]:
    try:
        document = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise _unreadable(path, exc) from None
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"input file {path} is not valid JSON: {exc}") from None
    entries: list[tuple[str, Any]]
    if isinstance(document, dict) and isinstance(document.get("inputs"), list):
        entries = []
        for index, item in enumerate(document["inputs"]):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise UsageError(f"{path}: inputs[{index}] must be an object with a string 'name'")
            entries.append((item["name"], item))
    elif isinstance(document, dict) and document:
        entries = list(document.items())
    else:
        raise UsageError(
            f'{path}: expected an object {{"NAME": {{"datatype": ..., "data": ...}}}} or '
            '{"inputs": [...]} (see anytcm infer --help)'
        )
    arrays: dict[str, Array] = {}
    for name, entry in entries:
        if name in arrays:
            raise UsageError(f"{path}: input {name!r} is given twice")
        arrays[name] = json_tensor(entry, where=f"{path}: input {name!r}")
    return arrays


def json_tensor(entry: Any, *, where: str) -> Array:
    """One `{"datatype", "data", "shape"?}` object as an array of exactly that datatype."""
    if not isinstance(entry, Mapping) or "data" not in entry or "datatype" not in entry:
        raise UsageError(f"{where}: expected an object with 'datatype' and 'data'")
    datatype = entry["datatype"]
    if not isinstance(datatype, str):
        raise UsageError(f"{where}: 'datatype' must be a string such as \"FP32\"")
    try:
        dtype = numpy_dtype(datatype)
    except InvalidInput as exc:
        raise UsageError(f"{where}: {exc}") from None
    array = _typed(entry["data"], dtype, datatype.upper(), where)
    shape = entry.get("shape")
    if shape is None:
        return array
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise UsageError(f"{where}: 'shape' must be a list of integers >= 0, got {shape!r}")
    if array.size != int(np.prod(shape, dtype=np.int64)):
        raise UsageError(
            f"{where}: 'data' has {array.size} values but 'shape' {shape} needs "
            f"{int(np.prod(shape, dtype=np.int64))}"
        )
    return array.reshape(shape)


def _typed(data: Any, dtype: np.dtype[Any], datatype: str, where: str) -> Array:
    """JSON values as an array of `dtype`, refusing any value the datatype cannot hold as is."""
    try:
        if dtype.kind == "O":  # BYTES: strings, sent as their UTF-8 bytes
            raw = np.asarray(data, dtype=object)
            if not all(isinstance(v, str) for v in raw.flat):
                raise UsageError(f"{where}: BYTES data must be strings")
            encoded = np.empty(raw.shape, dtype=object)
            for index, value in np.ndenumerate(raw):
                encoded[index] = value.encode()
            return encoded
        if dtype.kind == "f":
            wide = np.asarray(data, dtype=np.float64)  # null is NaN
            with np.errstate(over="ignore"):
                cast = wide.astype(dtype)
            if np.any(np.isinf(cast) & np.isfinite(wide)):
                raise UsageError(f"{where}: a value is outside the range of {datatype}")
            return cast
        plain = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{where}: 'data' is not a regular {datatype} array ({exc})") from None
    if dtype.kind == "b":
        if plain.size and plain.dtype.kind != "b":
            raise UsageError(f"{where}: BOOL data must be true/false")
        return plain.astype(dtype)
    if plain.size and plain.dtype.kind not in "iu":
        raise UsageError(f"{where}: {datatype} data must be integers")
    if plain.size:
        low, high = np.iinfo(dtype).min, np.iinfo(dtype).max
        if int(plain.min()) < low or int(plain.max()) > high:
            raise UsageError(f"{where}: a value is outside the range of {datatype}")
    return plain.astype(dtype)


def parse_output_dtypes(arguments: Sequence[str]) -> dict[str, np.dtype[Any]]:
    """`--output-dtype NAME=DATATYPE` arguments (Triton spellings, e.g. FP32 or TYPE_FP32)."""
    dtypes: dict[str, np.dtype[Any]] = {}
    for argument in arguments:
        name, equals, datatype = argument.partition("=")
        if not equals or not name or not datatype:
            raise UsageError(
                f"--output-dtype {argument}: expected NAME=DATATYPE, e.g. OUTPUT0=FP32"
            )
        try:
            dtypes[name] = numpy_dtype(datatype)
        except InvalidInput:
            raise UsageError(
                f"--output-dtype {argument}: unknown datatype {datatype!r}; one of "
                f"{', '.join(SUPPORTED_DATATYPES)}"
            ) from None
    return dtypes
