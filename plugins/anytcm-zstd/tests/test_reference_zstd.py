"""The reference manager's side of the zstd extension (docs/zstd-carrier.md), wire level.

Like `tests/conformance`, these talk to the server with a plain `websockets.sync.client`, and
build the zstd items by hand: no anytcm client code, so a bug shared by the carrier and the
server cannot hide.
"""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zstandard
from websockets.sync.client import ClientConnection, connect

from anytcm.testing import ReferenceManager
from anytcm.testing._manager.errors import TritonError
from anytcm.testing._manager.tensors import decode_zstd_input

Json = dict[str, Any]
TIMEOUT = 10.0


# -- a plain client ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zstd_manager() -> Iterator[ReferenceManager]:
    """A reference manager offering `zstd`."""
    with ReferenceManager(extra_args=["--capability", "zstd"]) as manager:
        yield manager


@pytest.fixture(scope="module")
def plain_manager() -> Iterator[ReferenceManager]:
    """A reference manager that does not offer `zstd` (the real TCM's behaviour)."""
    with ReferenceManager() as manager:
        yield manager


class Session:
    def __init__(self, ws: ClientConnection, uid: str, auth_reply: Json) -> None:
        self.ws = ws
        self.uuid = uid
        self.auth_reply = auth_reply

    def infer(self, model: str, inputs: list[Json], **payload: Any) -> Json:
        """Send one inference to the registered target and return its reply payload."""
        body = {
            "vm_ip": "127.0.0.1",
            "container_id": "ref-0",
            "model_name": model,
            "request": {"inputs": inputs},
            **payload,
        }
        self.ws.send(json.dumps({"uuid": self.uuid, "type": "inference", "payload": body}))
        while True:
            frame = json.loads(self.ws.recv(timeout=TIMEOUT))
            if frame.get("type") == "inference":
                reply: Json = frame["payload"]
                return reply


@contextlib.contextmanager
def session(url: str, capability: list[str] | None = None) -> Iterator[Session]:
    with connect(url, max_size=64 * 1024 * 1024, proxy=None, open_timeout=TIMEOUT) as ws:
        uid = uuid.uuid4().hex
        auth: Json = {} if capability is None else {"capability": capability}
        ws.send(json.dumps({"uuid": uid, "type": "auth", "payload": auth}))
        reply = json.loads(ws.recv(timeout=TIMEOUT))
        assert reply["type"] == "auth.ok", reply
        yield Session(ws, uid, reply)


def zstd_item(
    name: str, array: np.ndarray[Any, Any], datatype: str, overrides: Json | None = None
) -> Json:
    """A zstd input built from the spec: base64(zstd(raw little-endian C-order bytes))."""
    raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    payload = base64.b64encode(zstandard.ZstdCompressor(level=3).compress(raw)).decode()
    item = {"name": name, "shape": list(array.shape), "datatype": datatype, "zstd": payload}
    item.update(overrides or {})
    return item


def zstd_bytes_item(name: str, elements: list[bytes], shape: list[int]) -> Json:
    raw = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    payload = base64.b64encode(zstandard.ZstdCompressor().compress(raw)).decode()
    return {"name": name, "shape": shape, "datatype": "BYTES", "zstd": payload}


def b64zstd(raw: bytes, *, content_size: bool = True) -> str:
    compressor = zstandard.ZstdCompressor(write_content_size=content_size)
    if content_size:
        return base64.b64encode(compressor.compress(raw)).decode()
    stream = compressor.compressobj()
    return base64.b64encode(stream.compress(raw) + stream.flush()).decode()


def failed(reply: Json) -> Json:
    assert reply["status"] == "FAILED", reply
    data: Json = reply["data"]
    assert isinstance(data, dict), reply
    return data


# -- negotiation ---------------------------------------------------------------------------------


def test_zstd_is_granted_only_when_offered(
    zstd_manager: ReferenceManager, plain_manager: ReferenceManager
) -> None:
    with session(zstd_manager.ws_url, ["json", "zstd"]) as s:
        assert s.auth_reply["payload"]["capability"] == ["json", "zstd"]
    with session(plain_manager.ws_url, ["json", "zstd"]) as s:
        assert s.auth_reply["payload"]["capability"] == ["json"]  # dropped, as the real TCM does


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "array"),
    [
        ("FP32", np.arange(12, dtype=np.float32).reshape(3, 4) / 7),
        ("FP64", np.array([[1e300, -0.0], [np.pi, 5e-324]])),
        ("INT64", np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max, 0])),
        ("UINT16", np.arange(10, dtype=np.uint16).reshape(2, 5)),
        ("BOOL", np.array([True, False, True])),
        ("FP16", np.array([0.5, -2.0, 65504.0], dtype=np.float16)),
        ("INT8", np.zeros((2, 0), dtype=np.int8)),
    ],
)
def test_identity_roundtrip(
    zstd_manager: ReferenceManager, datatype: str, array: np.ndarray[Any, Any]
) -> None:
    with session(zstd_manager.ws_url, ["json", "zstd"]) as s:
        reply = s.infer("identity", [zstd_item("X", array, datatype)])
    assert reply["status"] == "COMPLETED", reply
    got = np.array(reply["data"]["OUT_X"], dtype=np.float32 if datatype == "FP16" else array.dtype)
    np.testing.assert_array_equal(got.reshape(array.shape), array.astype(got.dtype))


def test_big_endian_arrays_are_sent_little_endian(zstd_manager: ReferenceManager) -> None:
    array = np.array([1, 256, 65536], dtype=">i4")
    with session(zstd_manager.ws_url) as s:
        reply = s.infer("identity", [zstd_item("X", array, "INT32")])
    assert reply["data"]["OUT_X"] == [1, 256, 65536]


def test_bytes_roundtrip(zstd_manager: ReferenceManager) -> None:
    elements = [b"", "héllo".encode(), b"plain", "日本".encode()]
    with session(zstd_manager.ws_url, ["json", "zstd"]) as s:
        reply = s.infer("identity", [zstd_bytes_item("T", elements, [2, 2])])
    assert reply["status"] == "COMPLETED", reply
    assert reply["data"]["OUT_T"] == ["", "héllo", "plain", "日本"]  # flattened (contract §8)


def test_checksum_and_mixed_with_json(zstd_manager: ReferenceManager) -> None:
    values = np.linspace(0, 1, 4096, dtype=np.float64)
    with session(zstd_manager.ws_url, ["json", "zstd"]) as s:
        reply = s.infer("checksum", [zstd_item("INPUT0", values, "FP64")])
        assert reply["status"] == "COMPLETED", reply
        assert reply["data"]["OUTPUT0"] == pytest.approx([float(values.sum())])
        mixed = [
            zstd_item("A", np.ones(3, np.float32), "FP32"),
            {"name": "B", "shape": [2], "datatype": "INT32", "data": [7, 8]},
        ]
        reply = s.infer("identity", mixed)
    assert reply["data"] == {"OUT_A": [1.0, 1.0, 1.0], "OUT_B": [7, 8]}


def test_compressible_tensor_far_beyond_json_in_one_frame(zstd_manager: ReferenceManager) -> None:
    """The point of the extension: 1 Mi zeros (4 MiB raw) fit one 64 KiB frame."""
    zeros = np.zeros(1 << 20, dtype=np.float32)
    item = zstd_item("INPUT0", zeros, "FP32")
    assert len(json.dumps(item)) < 2048
    with session(zstd_manager.ws_url, ["json", "zstd"]) as s:
        reply = s.infer("checksum", [item])
    assert reply["data"]["OUTPUT0"] == [0.0]


def test_accepted_without_negotiating_it(zstd_manager: ReferenceManager) -> None:
    """Like shm (§3.3), acceptance follows what the server offers, not the negotiated list."""
    with session(zstd_manager.ws_url, capability=None) as s:
        reply = s.infer("double", [zstd_item("INPUT0", np.array([1.5], np.float32), "FP32")])
    assert reply["data"] == {"OUTPUT0": [3.0]}


# -- failures ------------------------------------------------------------------------------------


def test_corrupt_payload_fails(zstd_manager: ReferenceManager) -> None:
    item = zstd_item(
        "X", np.ones(4, np.float32), "FP32", {"zstd": base64.b64encode(b"nope").decode()}
    )
    with session(zstd_manager.ws_url, ["json", "zstd"]) as s:
        data = failed(s.infer("identity", [item]))
    assert data["code"] == "TRITON_INFERENCE_FAILED"
    assert data["retriable"] is False
    assert "corrupt zstd data" in data["message"]
    assert "zstd input 'X'" in data["message"]


def test_truncated_frame_fails(zstd_manager: ReferenceManager) -> None:
    compressed = zstandard.ZstdCompressor().compress(np.arange(1000, dtype=np.int32).tobytes())
    item = {
        "name": "X",
        "shape": [1000],
        "datatype": "INT32",
        "zstd": base64.b64encode(compressed[:-8]).decode(),
    }
    with session(zstd_manager.ws_url) as s:
        data = failed(s.infer("identity", [item]))
    assert data["code"] == "TRITON_INFERENCE_FAILED"
    assert "zstd input 'X'" in data["message"]


def test_invalid_base64_fails(zstd_manager: ReferenceManager) -> None:
    item = zstd_item("X", np.ones(4, np.float32), "FP32", {"zstd": "%%% not base64 %%%"})
    with session(zstd_manager.ws_url) as s:
        data = failed(s.infer("identity", [item]))
    assert data["code"] == "TRITON_INFERENCE_FAILED"
    assert "not valid base64" in data["message"]


def test_trailing_data_after_the_frame_fails(zstd_manager: ReferenceManager) -> None:
    raw = np.ones(4, np.float32).tobytes()
    compressed = zstandard.ZstdCompressor().compress(raw) + b"trailing"
    item = {
        "name": "X",
        "shape": [4],
        "datatype": "FP32",
        "zstd": base64.b64encode(compressed).decode(),
    }
    with session(zstd_manager.ws_url) as s:
        data = failed(s.infer("identity", [item]))
    assert data["code"] == "TRITON_INFERENCE_FAILED"
    assert "corrupt zstd data" in data["message"]


@pytest.mark.parametrize("content_size", [True, False], ids=["declared", "undeclared"])
@pytest.mark.parametrize("delta", [-4, 4, 4096])
def test_size_mismatch_fails(
    zstd_manager: ReferenceManager, content_size: bool, delta: int
) -> None:
    """Decompressed size must be numel x itemsize: 4 FP32 = 16 bytes."""
    item = {
        "name": "X",
        "shape": [4],
        "datatype": "FP32",
        "zstd": b64zstd(bytes(16 + delta), content_size=content_size),
    }
    with session(zstd_manager.ws_url) as s:
        data = failed(s.infer("identity", [item]))
    assert data["code"] == "TRITON_INFERENCE_FAILED"
    assert "decompressed size mismatch" in data["message"]
    assert "expected 16" in data["message"]


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(struct.pack("<I", 3) + b"ab", id="truncated-element"),
        pytest.param(struct.pack("<I", 1) + b"a", id="missing-element"),
        pytest.param((struct.pack("<I", 1) + b"a") * 2 + b"x", id="trailing-bytes"),
    ],
)
def test_malformed_bytes_fail(zstd_manager: ReferenceManager, raw: bytes) -> None:
    item = {"name": "T", "shape": [2], "datatype": "BYTES", "zstd": b64zstd(raw)}
    with session(zstd_manager.ws_url) as s:
        data = failed(s.infer("identity", [item]))
    assert data["code"] == "TRITON_INFERENCE_FAILED"
    assert "zstd input 'T'" in data["message"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"datatype": "BF16"}, "unsupported datatype 'BF16'"),
        ({"shape": [-1]}, "shape must be a list of integers >= 0"),
        ({"shape": 4}, "shape must be a list of integers >= 0"),
        ({"zstd": 12}, "zstd must be a base64 string"),
        ({"name": ""}, "name must be a non-empty string"),
    ],
)
def test_invalid_fields_fail(
    zstd_manager: ReferenceManager, overrides: Json, expected: str
) -> None:
    item = zstd_item("X", np.ones(4, np.float32), "FP32", overrides)
    with session(zstd_manager.ws_url) as s:
        data = failed(s.infer("identity", [item]))
    assert data["code"] == "TRITON_INFERENCE_FAILED"
    assert expected in data["message"]


def test_type_spelling_accepted(zstd_manager: ReferenceManager) -> None:
    item = zstd_item("X", np.array([1, 2], np.int32), "TYPE_INT32")
    with session(zstd_manager.ws_url) as s:
        reply = s.infer("identity", [item])
    assert reply["data"] == {"OUT_X": [1, 2]}


def test_413_estimate_counts_elements_not_compressed_bytes() -> None:
    """§6.4: numel x bytes per element, like JSON: 300 000 FP32 zeros are 1 200 000 bytes."""
    args = ["--capability", "zstd", "--max-request-payload-mb", "1"]
    with ReferenceManager(extra_args=args) as manager, session(manager.ws_url) as s:
        zeros = zstd_item("INPUT0", np.zeros(300_000, np.float32), "FP32")
        data = failed(s.infer("checksum", [zeros]))
        assert data["code"] == "TRITON_INFERENCE_FAILED"
        assert (
            "413 Payload Too Large: estimated_bytes=1200000 limit_bytes=1048576"
            in (data["message"])
        )
        fits = zstd_item("INPUT0", np.zeros(200_000, np.float32), "FP32")
        assert s.infer("checksum", [fits])["data"] == {"OUTPUT0": [0.0]}


# -- without the capability ------------------------------------------------------------------------


def test_not_offered_fails_like_a_partial_dict(plain_manager: ReferenceManager) -> None:
    """Without `--capability zstd` the item is an unrecognised partial dict (contract §4.3)."""
    item = zstd_item("X", np.ones(4, np.float32), "FP32")
    partial = {"name": "X", "shape": [4], "datatype": "FP32", "value": [1, 1, 1, 1]}
    with session(plain_manager.ws_url, ["json", "zstd"]) as s:
        zstd_failure = failed(s.infer("identity", [item]))
        partial_failure = failed(s.infer("identity", [partial]))
    assert zstd_failure == partial_failure
    assert zstd_failure["code"] == "TRITON_INFERENCE_FAILED"
    assert zstd_failure["message"].endswith("reason='dims'")


# -- the server without zstandard ----------------------------------------------------------------


def test_missing_zstandard_is_a_clear_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoder imports zstandard lazily; without it, a FAILED saying what to install."""
    monkeypatch.setitem(sys.modules, "zstandard", None)  # `import zstandard` raises ImportError
    item = {"name": "X", "shape": [1], "datatype": "FP32", "zstd": base64.b64encode(b"x").decode()}
    with pytest.raises(TritonError) as caught:
        decode_zstd_input(item, "identity")
    assert caught.value.code == "TRITON_INFERENCE_FAILED"
    assert "'zstandard' package is not installed" in caught.value.reason


def test_server_modules_do_not_import_zstandard_eagerly() -> None:
    import subprocess

    probe = (
        "import sys; sys.modules['zstandard'] = None\n"
        "import anytcm.testing._manager.server, anytcm.testing._manager.inference\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
