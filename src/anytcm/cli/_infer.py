"""`anytcm infer`: one inference from input files, outputs printed or saved as `.npz`.

The manager sends outputs as JSON without datatypes (contract §8), so the printed dtype is what
`--output-dtype` says, else what the JSON numbers imply (int64 / float64). Saved archives never
need pickle to load: BYTES outputs are stored as fixed-width bytes (numpy dtype S).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..results import Target
from ..tensors import triton_datatype
from ._context import CliContext
from ._errors import EXIT_OK, UsageError
from ._output import print_json

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class InferOptions:
    model: str
    target: Target
    inputs: Mapping[str, Array]
    carrier: tuple[str, ...]
    output_dtypes: Mapping[str, np.dtype[Any]]
    save: Path | None
    allow_transient: bool


def check_save_path(path: str | None) -> Path | None:
    """`--save` must name an .npz file (numpy would silently append the suffix otherwise)."""
    if path is None:
        return None
    if not path.endswith(".npz"):
        raise UsageError(f"--save {path}: the outputs are saved as an .npz archive; end it .npz")
    return Path(path)


def run_infer(context: CliContext, options: InferOptions) -> int:
    async def infer() -> tuple[str | None, dict[str, Array]]:
        async with context.client() as client:
            result = await client.infer(
                options.model,
                dict(options.inputs),
                target=options.target,
                carrier=options.carrier[0] if len(options.carrier) == 1 else options.carrier,
                output_dtypes=options.output_dtypes,
                allow_transient=options.allow_transient,
            )
            return result.model_name, result.outputs

    model_name, outputs = context.run(infer)
    if options.save is not None:
        _save(options.save, outputs)
    if context.json:
        print_json(
            {
                "model": model_name or options.model,
                "outputs": {name: _json_output(array) for name, array in outputs.items()},
                "saved": str(options.save) if options.save is not None else None,
            }
        )
        return EXIT_OK
    for name, array in outputs.items():
        print(f"{name}: {_datatype(array)} shape {list(array.shape)}")
        if options.save is None:
            print(np.array2string(array, threshold=64, edgeitems=4, max_line_width=100))
    if options.save is not None:
        print(f"saved {len(outputs)} output(s) to {options.save}")
    return EXIT_OK


def _datatype(array: Array) -> str:
    try:
        return triton_datatype(array)
    except ValueError:
        return str(array.dtype)


def _json_output(array: Array) -> dict[str, Any]:
    """An output for --json: Triton datatype, shape, nested data (BYTES as text)."""
    data: Any
    if array.dtype.kind == "O":
        data = np.vectorize(_text, otypes=[object])(array).tolist() if array.size else []
    elif array.ndim:
        data = np.ascontiguousarray(array)  # orjson writes FP32 in its shortest form
    else:
        data = array.tolist()
    return {"datatype": _datatype(array), "shape": list(array.shape), "data": data}


def _text(value: Any) -> Any:
    """A BYTES element as JSON text; bytes that are not UTF-8 keep their escapes (b'\\xff')."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value


def _save(path: Path, outputs: Mapping[str, Array]) -> None:
    arrays: dict[str, Array] = {}
    for name, array in outputs.items():
        if array.dtype.kind == "O":
            items = [v if isinstance(v, bytes) else str(v).encode() for v in array.flat]
            if any(item.endswith(b"\0") for item in items):
                raise UsageError(
                    f"output {name!r} has a BYTES element ending in a NUL byte, which a "
                    "fixed-width .npz array would drop; use --json to see it instead"
                )
            array = np.array(items, dtype=np.bytes_).reshape(array.shape)
        arrays[name] = array
    try:
        np.savez(path, **arrays)  # type: ignore[arg-type]
    except OSError as exc:
        raise UsageError(f"cannot save the outputs to {path}: {exc}") from None
