"""`anytcm infer`: inputs from .npy, .npz and JSON files, outputs printed, as JSON or saved.

Runs in-process through `anytcm.cli.main` against one reference manager (its `double`,
`identity` and `fail` models), on asyncio and trio; bad files must be exit 2 with one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _cli_helpers import BACKENDS, assert_one_line_error, cli
from anytcm.testing import ReferenceManager


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def infer(manager: ReferenceManager, backend: str, capsys: pytest.CaptureFixture[str]) -> Any:
    """`anytcm infer MODEL ARGS...` against the shared manager and its registered target."""

    def run(model: str, *args: str) -> tuple[int, str, str]:
        outcome = cli(
            capsys,
            *("infer", model, "--url", manager.ws_url, "--backend", backend),
            *("--vm-ip", "127.0.0.1", "--container-id", "ref-0", *args),
        )
        return outcome.code, outcome.out, outcome.err

    return run


def own_segments() -> list[str]:
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"anytcm-{os.getpid()}-")]


X = np.arange(6, dtype=np.float32).reshape(2, 3) - np.float32(2.5)


def test_npy_input_printed(infer: Any, tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, X)
    code, out, err = infer("double", "--input", f"INPUT0={path}", "--output-dtype", "OUTPUT0=FP32")
    assert code == 0, err
    assert "OUTPUT0: FP32 shape [2, 3]" in out
    assert "[[-5. -3. -1.]\n [ 1.  3.  5.]]" in out  # 2 * (arange(6) - 2.5), as numpy prints


def test_npz_input_as_json(infer: Any, tmp_path: Path) -> None:
    path = tmp_path / "inputs.npz"
    np.savez(path, INPUT0=X)
    code, out, err = infer(
        "double", "--input", str(path), "--json", "--output-dtype", "OUTPUT0=FP32"
    )
    assert code == 0, err
    document = json.loads(out)
    assert document["model"] == "double"
    output = document["outputs"]["OUTPUT0"]
    assert output["datatype"] == "FP32"
    assert output["shape"] == [2, 3]
    np.testing.assert_array_equal(np.array(output["data"], dtype=np.float32), 2 * X)


def test_json_input_flat_data_with_shape_and_save(infer: Any, tmp_path: Path) -> None:
    source = tmp_path / "inputs.json"
    source.write_text(
        json.dumps({"INPUT0": {"datatype": "FP32", "shape": [2, 2], "data": [0.1, 0.2, 0.3, 1e3]}})
    )
    saved = tmp_path / "out.npz"
    code, out, err = infer(
        "double", "--input", str(source), "--output-dtype", "OUTPUT0=FP32", "--save", str(saved)
    )
    assert code == 0, err
    assert f"saved 1 output(s) to {saved}" in out
    with np.load(saved, allow_pickle=False) as archive:
        result = archive["OUTPUT0"]
    expected = np.array([[0.1, 0.2], [0.3, 1e3]], dtype=np.float32) * np.float32(2)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, expected)


def test_v2_request_body_with_bytes_through_shm(infer: Any, tmp_path: Path) -> None:
    """The Triton/KServe v2 form, BYTES and an INT32 tensor, sent through shared memory."""
    source = tmp_path / "request.json"
    source.write_text(
        json.dumps(
            {
                "inputs": [
                    {"name": "TEXT", "datatype": "BYTES", "shape": [2], "data": ["hé", "b"]},
                    {"name": "IDS", "datatype": "INT32", "data": [[1, -2], [3, 4]]},
                ]
            }
        )
    )
    saved = tmp_path / "out.npz"
    code, out, err = infer(
        "identity",
        *("--input", str(source), "--carrier", "shm", "--json", "--save", str(saved)),
        *("--output-dtype", "OUT_IDS=INT32"),
    )
    assert code == 0, err
    outputs = json.loads(out)["outputs"]
    assert outputs["OUT_TEXT"]["data"] == ["hé", "b"]
    assert outputs["OUT_TEXT"]["datatype"] == "BYTES"
    assert outputs["OUT_IDS"] == {"datatype": "INT32", "shape": [2, 2], "data": [[1, -2], [3, 4]]}
    with np.load(saved, allow_pickle=False) as archive:  # BYTES saved without pickle
        assert archive["OUT_TEXT"].tolist() == ["hé".encode(), b"b"]
        assert archive["OUT_IDS"].dtype == np.int32
    assert own_segments() == []


def test_carrier_preference_list(infer: Any, tmp_path: Path) -> None:
    big = np.ones(100_000, dtype=np.float32)  # 400 KB: json cannot carry it, shm can
    path = tmp_path / "big.npy"
    np.save(path, big)
    code, out, err = infer("double", "--input", f"INPUT0={path}", "--carrier", "json,shm", "--json")
    assert code == 0, err
    assert json.loads(out)["outputs"]["OUTPUT0"]["shape"] == [100_000]
    code, _, err = infer("double", "--input", f"INPUT0={path}", "--carrier", "json")
    assert code == 1
    assert_one_line_error(err, "PayloadTooLarge", "shm")


def test_inference_failure_is_exit_1(infer: Any, tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, X)
    code, _, err = infer("fail", "--input", f"INPUT0={path}")
    assert code == 1
    assert_one_line_error(err, "InferenceFailed", "always fail")


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("backend", ["asyncio"])  # nothing is sent: one backend is enough
def test_bad_inputs_are_usage_errors(infer: Any, tmp_path: Path) -> None:
    npy = tmp_path / "x.npy"
    np.save(npy, X)
    pickled = tmp_path / "objects.npz"
    np.savez(pickled, TEXT=np.array([b"a", b"b"], dtype=object))
    cases: list[tuple[list[str], tuple[str, ...]]] = [
        (["--input", str(tmp_path / "missing.npz")], ("cannot read", "No such file")),
        (["--input", str(npy)], ("holds no tensor name", "NAME=")),
        (["--input", f"INPUT0={tmp_path / 'x.npz'}"], ("names its tensors itself",)),
        (["--input", "INPUT0=x.csv"], ("unknown file type", ".csv")),
        (["--input", str(pickled)], ("pickled", "dtype S or U")),
        (["--input", write(tmp_path, "a.json", "{not json")], ("not valid JSON",)),
        (
            ["--input", write(tmp_path, "b.json", '{"INPUT0": {"datatype": "FP99", "data": [1]}}')],
            ("INPUT0", "unknown datatype"),
        ),
        (
            ["--input", write(tmp_path, "c.json", '{"IDS": {"datatype": "INT8", "data": [300]}}')],
            ("IDS", "outside the range of INT8"),
        ),
        (
            ["--input", write(tmp_path, "d.json", '{"IDS": {"datatype": "INT32", "data": [1.5]}}')],
            ("must be integers",),
        ),
        (
            [
                "--input",
                write(
                    tmp_path, "e.json", '{"X": {"datatype": "FP32", "shape": [2, 2], "data": [1]}}'
                ),
            ],
            ("1 values", "needs 4"),
        ),
        (["--input", write(tmp_path, "f.json", "[1, 2]")], ("expected an object",)),
        (["--input", f"INPUT0={npy}", "--input", f"INPUT0={npy}"], ("given twice",)),
        (["--input", f"INPUT0={npy}", "--carrier", "bogus"], ("UnknownCarrier", "bogus")),
        (["--input", f"INPUT0={npy}", "--output-dtype", "OUTPUT0"], ("NAME=DATATYPE",)),
        (["--input", f"INPUT0={npy}", "--save", str(tmp_path / "out.txt")], (".npz",)),
    ]
    for args, fragments in cases:
        code, _, err = infer("double", *args)
        assert code == 2, (args, err)
        assert_one_line_error(err, *fragments)


def test_input_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    outcome = cli(capsys, "infer", "double", "--vm-ip", "127.0.0.1", "--container-id", "x")
    code, err = outcome.code, outcome.err
    assert code == 2
    assert "--input" in err
