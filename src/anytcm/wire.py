"""The TCM wire contract as msgspec Structs: every frame, both directions (contract §2-§4, §6).

Server frames decode once, into a tagged union on `type`. Decoding is forward compatible:
unknown fields are ignored, and a frame of an unknown `type` decodes to `UnknownFrame` instead of
failing, because a newer manager may add frames this client has never heard of.

Inference reply `data` holds each output as its undecoded text (`msgspec.Raw`), parsed straight
into numpy by the tensor codec; a small reply may hold its outputs' numbers instead, parsed with
the frame (`anytcm._fast.frames`). Readers handle both alike (`OutputValue`).

No I/O and no anyio here: this module is tested synchronously.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal, TypeAlias

import msgspec

from . import _fast

# ------------------------------------------------------------------------------------------------
# client -> server


class AuthClientInfo(msgspec.Struct, omit_defaults=True):
    """`payload.client`: only `roles` is ever read, and only by development-mode servers."""

    roles: list[str] | None = None


class AuthPayload(msgspec.Struct, omit_defaults=True):
    """`auth` payload. Without `capability` the server answers with the legacy bare auth.ok."""

    token: str | None = None
    capability: list[str] | None = None
    client: AuthClientInfo | None = None


class InfoPayload(msgspec.Struct, omit_defaults=True):
    """`info` payload; the server echoes `job_id` verbatim, which is how replies are matched."""

    action: str
    job_id: int | None = None


class JsonTensor(msgspec.Struct):
    """An input in the SDK form; `data` is nested to exactly `shape` (contract §4.3)."""

    name: str
    shape: list[int]
    datatype: str
    data: Any


class ManagerTensor(msgspec.Struct):
    """An input in the manager's own form `{name, dims, type, value}`."""

    name: str
    dims: list[int]
    type: str
    value: Any


class SHMReference(msgspec.Struct):
    """An input in POSIX shared memory. All six keys are required for the server to see it."""

    name: str
    shm_key: str
    offset: int
    byte_size: int
    shape: list[int]
    dtype: str


InputItem: TypeAlias = "JsonTensor | ManagerTensor | SHMReference | msgspec.Raw"
"""An input as sent. `msgspec.Raw` holds an input already encoded by a carrier."""


class InferenceOptions(msgspec.Struct, omit_defaults=True):
    """`payload.request`."""

    inputs: list[InputItem]
    protocol: Literal["http", "grpc"] = "http"
    allow_transient: bool = False
    output_name: str | None = None


class PipelineStep(msgspec.Struct, omit_defaults=True):
    """One step of `payload.pipeline` (HTTP only; no output-to-input chaining)."""

    model_name: str
    inputs: list[InputItem]
    name: str | None = None


class InferencePayload(msgspec.Struct, omit_defaults=True):
    """`inference` payload: a single model (`request`) or a `pipeline`."""

    vm_ip: str
    container_id: str
    model_name: str | None = None
    request: InferenceOptions | None = None
    pipeline: list[PipelineStep] | None = None


class ClientFrame(msgspec.Struct, tag_field="type", omit_defaults=True):
    """Base of every client frame: the `uuid`, `type`, `payload` envelope (contract §2.1)."""

    uuid: str


class AuthFrame(ClientFrame, tag="auth"):
    payload: AuthPayload


class InfoFrame(ClientFrame, tag="info"):
    payload: InfoPayload


class ManagementFrame(ClientFrame, tag="management"):
    """`request_id` is an extra top-level key: the server echoes the whole envelope (§4.2)."""

    payload: dict[str, Any]
    request_id: str


class InferenceFrame(ClientFrame, tag="inference"):
    """`payload` may be pre-encoded (`msgspec.Raw`): the client encodes it once, checks its size
    against the manager's frame cap, and sends those same bytes."""

    payload: InferencePayload | msgspec.Raw


# ------------------------------------------------------------------------------------------------
# server -> client


class AuthOkPayload(msgspec.Struct):
    capability: list[str] | None = None


class AuthOk(msgspec.Struct, tag="auth.ok", tag_field="type"):
    """Successful auth. `payload` is None for the legacy reply (no capability requested)."""

    payload: AuthOkPayload | None = None


class ErrorPayload(msgspec.Struct):
    """Both error shapes (§6.1): `message` only, or a `code` with optional extra fields."""

    message: str = ""
    code: str | None = None
    dropped_type: str | None = None
    job_type: str | None = None
    tenant_id: str | None = None


class ErrorFrame(msgspec.Struct, tag="error", tag_field="type"):
    payload: ErrorPayload


class InfoResponsePayload(msgspec.Struct):
    job_id: Any = None
    request_type: str | None = None
    status: str = "success"
    data: Any = None
    error: str | None = None


class InfoResponse(msgspec.Struct, tag="info_response", tag_field="type"):
    payload: InfoResponsePayload


class ManagementResult(msgspec.Struct):
    status: bool
    data: Any = None


class ManagementReply(msgspec.Struct, tag="management", tag_field="type"):
    """The inbound envelope echoed, `payload` replaced by `{status, data}` (§4.2)."""

    payload: ManagementResult
    uuid: str | None = None
    request_id: Any = None


InferenceStatus: TypeAlias = Literal["START", "ONGOING", "COMPLETED", "FAILED"]


# A flat list of numbers or a bare number, as the frame decoder parsed it: integers exact (a
# Python int), never a bool or null.
Numbers: TypeAlias = list[int | float] | int | float
# One value of an inference reply's `data`: its JSON text, or the numbers it holds.
OutputValue: TypeAlias = msgspec.Raw | Numbers


class InferenceReplyPayload(msgspec.Struct):
    """`data` per status: COMPLETED -> {output: value}; FAILED -> object or string;
    ONGOING -> one string; START and streamed COMPLETED -> null.

    Decoded as one of two subclasses, which differ only in how `data` values are read (see
    `ServerFrameDecoder` and `anytcm._fast.frames`); code that reads a reply sees this class
    and `OutputValue`.
    """

    status: str
    data: Mapping[str, OutputValue] | str | None = None
    model_name: str | None = None


class InferenceReply(msgspec.Struct, tag="inference", tag_field="type"):
    payload: InferenceReplyPayload
    uuid: str | None = None


class _TextReplyPayload(InferenceReplyPayload):
    data: dict[str, msgspec.Raw] | str | None = None


class _TextReply(InferenceReply, tag="inference"):
    """How the general path decodes every reply: each `data` value kept as its JSON text."""

    payload: _TextReplyPayload


class Alert(msgspec.Struct, tag="alert", tag_field="type"):
    """Unsolicited backend state change; top-level fields, no payload."""

    error_type: str | None = None
    message: str = ""
    timestamp: float | None = None


class UnknownFrame(msgspec.Struct):
    """A frame whose `type` this client does not know; kept whole for the caller to inspect."""

    type: str | None
    raw: dict[str, Any]


KnownServerFrame: TypeAlias = (
    "AuthOk | ErrorFrame | InfoResponse | ManagementReply | InferenceReply | Alert"
)
ServerFrame: TypeAlias = "KnownServerFrame | UnknownFrame"

KNOWN_SERVER_TYPES: Final = frozenset(
    {"auth.ok", "error", "info_response", "management", "inference", "alert"}
)


class FrameDecodeError(ValueError):
    """A frame that is not a JSON object, or a known frame type with a malformed body."""


class ServerFrameDecoder:
    """Decodes server frames. One per connection: it reuses msgspec decoders (they are not cheap
    to build) and holds the per-connection state of the fast paths.

    :param fast_paths: try the shortcuts of `anytcm._fast.frames` first; they give the frames
        this decoder gives without them. On unless ``ANYTCM_NO_FAST_PATHS=1``.
    """

    decode: Callable[[bytes], ServerFrame]
    """One server frame; a malformed one raises `FrameDecodeError`. Chosen when the decoder is
    built, so that a frame costs one call whichever path decodes it."""

    def __init__(self, *, fast_paths: bool = _fast.ENABLED) -> None:
        # Annotated so mypy knows what decode() returns (a runtime union expression is Any).
        self._typed: msgspec.json.Decoder[KnownServerFrame] = msgspec.json.Decoder(
            AuthOk | ErrorFrame | InfoResponse | ManagementReply | _TextReply | Alert
        )
        self._generic = msgspec.json.Decoder(dict[str, Any])
        self.decode = self._decode
        if fast_paths:
            # Imported here: the shortcuts build on the Structs of this module.
            from ._fast.frames import FrameShortcuts

            self.decode = FrameShortcuts(self._typed, self._decode).decode

    def _decode(self, data: bytes) -> ServerFrame:
        """The general path: every frame, outputs kept as text."""
        try:
            return self._typed.decode(data)
        except RecursionError:
            # Nested deeper than msgspec recurses. An output value nested so deep is the tensor
            # codec's to refuse, as any malformed output is, and the connection stays: a large
            # one is cut out (`decode_cut`) and the rest of the frame decoded.
            frame = decode_cut(self._typed, bytes(data))
            if frame is None:
                raise
            return frame
        except msgspec.ValidationError as exc:
            try:
                generic = self._generic.decode(data)
            except msgspec.DecodeError:
                raise FrameDecodeError(f"server frame is not a JSON object: {exc}") from None
            frame_type = generic.get("type")
            if frame_type in KNOWN_SERVER_TYPES:
                raise FrameDecodeError(f"malformed {frame_type!r} frame: {exc}") from None
            return UnknownFrame(frame_type if isinstance(frame_type, str) else None, generic)
        except msgspec.DecodeError as exc:
            raise FrameDecodeError(f"server frame is not valid JSON: {exc}") from None


# ------------------------------------------------------------------------------------------------
# large replies with their arrays cut out

# Array values from this size on are cut out.
_CUT_VALUE_BYTES: Final = 1 << 14
# Candidates examined per frame, and colons looked at: bound the scans on a frame full of
# look-alikes in strings.
_CUT_MAX_CANDIDATES: Final = 64
_CUT_MAX_COLONS: Final = 1024
# `]` hops before `_closing_run` falls back to a search for the whole run.
_CLOSING_HOPS: Final = 1024
_PLACEHOLDER_PREFIX: Final = b"\\u0000anytcm:"
_PLACEHOLDER_MAX: Final = len(_PLACEHOLDER_PREFIX) + 2 + len(str(_CUT_MAX_CANDIDATES))


def decode_cut(
    decoder: msgspec.json.Decoder[KnownServerFrame], data: bytes
) -> InferenceReply | None:
    """An inference reply decoded with its large array values cut out, or None to decline.

    To slice a value as `msgspec.Raw`, msgspec still parses every number in it and recurses
    into every list. Cut out, an array costs a few memchr scans; the tensor codec parses its
    text once, later, and refuses it with its own error if it is no array (nested too deep
    for any, say): that is the call's problem, not the connection's. Any doubt declines, and
    then the frame is decoded whole.
    """
    cut = _cut_arrays(data)
    if cut is None:
        return None
    rest, spans = cut
    # Every placeholder-like text left must be one of ours: then a match below is ours.
    if rest.count(_PLACEHOLDER_PREFIX) != len(spans):
        return None
    try:
        frame = decoder.decode(rest)
    except (msgspec.DecodeError, RecursionError):  # the whole frame's decode explains
        return None
    if not isinstance(frame, InferenceReply):
        return None
    values = frame.payload.data
    if not isinstance(values, dict):
        return None
    found = 0
    for name, value in values.items():
        if type(value) is not msgspec.Raw or len(value) > _PLACEHOLDER_MAX:
            continue
        span = spans.get(bytes(value))
        if span is not None:
            values[name] = msgspec.Raw(span)
            found += 1
    # A placeholder anywhere else (a pipeline step, an error's details) declines.
    return frame if found == len(spans) else None


def _cut_arrays(data: bytes) -> tuple[bytes, dict[bytes, memoryview]] | None:
    """``data`` with each large array value of an object member replaced by a placeholder
    string, and the placeholders' texts -> the arrays' spans; None if there is none to cut.

    A candidate starts at ``":[`` (or ``": [``) and ends at the first run of as many ``]``
    as it opens with. It is cut only if it holds no ``"``. Why the result is exact when the
    rest decodes (`decode_cut` checks that it does):

    * The candidate starts inside a string: the placeholder's opening quote ends that string and
      the placeholder's text (which starts with a backslash) follows it bare: invalid JSON.
    * The run of ``]`` ends the array early (ragged nesting, whitespace between brackets):
      what follows the placeholder is the rest of the array (``,`` or ``]`` and no key) in
      an object: invalid JSON.
    * The array ends before the run: past its end comes the next member's key (a quote: not
      cut) or the ``}`` that closes the object. A cut past that ``}`` holds no other object
      but ``{}`` (a key needs a quote), so the rest leaves an object open: invalid.

    The array text itself is checked when the tensor codec parses it (strict JSON).
    """
    find = data.find
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    spans: dict[bytes, memoryview] = {}
    kept = pos = 0
    candidates = 0
    # Colons are found at memchr speed; a search for the three bytes ``":[`` is far slower.
    for _ in range(_CUT_MAX_COLONS):
        colon = find(b":", pos)
        if colon < 0:
            break
        pos = start = colon + 1
        if data[start : start + 1] == b" ":  # json.dumps writes ": " (orjson writes ":")
            start += 1
        if data[colon - 1] != 0x22 or data[start : start + 1] != b"[":  # '"'
            continue
        candidates += 1
        if candidates > _CUT_MAX_CANDIDATES:
            break
        depth = 1
        while data[start + depth : start + depth + 1] == b"[":
            depth += 1
        end = _closing_run(data, start + depth, depth)
        if end < 0:
            break
        end += depth
        if end - start < _CUT_VALUE_BYTES or find(b'"', start, end) >= 0:
            pos = start
            continue
        placeholder = b'"%s%d"' % (_PLACEHOLDER_PREFIX, len(spans))
        parts += (view[kept:start], placeholder)
        spans[placeholder] = view[start:end]
        kept = pos = end
    if not spans:
        return None
    parts.append(view[kept:])
    return b"".join(parts), spans


def _closing_run(data: bytes, pos: int, depth: int) -> int:
    """Where the first run of ``depth`` ``]`` starts from ``pos``, or -1.

    A search for one byte runs at memchr speed, one for several bytes much slower: hopping
    from ``]`` to ``]`` finds the end of an array of up to `_CLOSING_HOPS` rows sooner, and
    only more rows than that fall back to the search for the whole run.
    """
    if depth == 1:
        return data.find(b"]", pos)
    run = b"]" * depth
    for _ in range(_CLOSING_HOPS):
        hit = data.find(b"]", pos)
        if hit < 0 or data.startswith(run, hit):
            return hit
        pos = hit + 1
    return data.find(run, pos)


class FailedObject(msgspec.Struct):
    """A typed Triton error (FAILED `data` object, contract §6.2)."""

    code: str
    message: str = ""
    retriable: bool = False
    retry_after_seconds: float | None = None


_raw_dict_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


def decode_failed_object(data: Mapping[str, OutputValue]) -> FailedObject:
    """Rebuild a FAILED object from its fields (undecoded, or numbers already parsed)."""
    return msgspec.convert(
        {k: msgspec.json.decode(v) if type(v) is msgspec.Raw else v for k, v in data.items()},
        FailedObject,
        strict=False,
    )


def decode_raw_dict(raw: OutputValue) -> dict[str, msgspec.Raw]:
    """One level of a nested object (pipeline replies are {step: {output: value}}).

    :raises msgspec.ValidationError: the value is not an object (numbers the frame decoder
        parsed never are).
    """
    if type(raw) is not msgspec.Raw:
        raise msgspec.ValidationError(f"Expected `object`, got {type(raw).__name__}")
    return _raw_dict_decoder.decode(raw)


_encoder = msgspec.json.Encoder()


def encode(frame: ClientFrame) -> bytes:
    """Encode a client frame to the UTF-8 JSON text the manager reads."""
    return _encoder.encode(frame)


def encode_payload(payload: InferencePayload) -> msgspec.Raw:
    """An inference payload encoded once, to be sized and then sent as is."""
    return msgspec.Raw(_encoder.encode(payload))


def encode_inline_payload(
    vm_ip: str, container_id: str, model_name: str, allow_transient: bool, inputs: Sequence[bytes]
) -> msgspec.Raw:
    """The payload `encode_payload` would write for one model with these encoded inputs.

    The text around the inputs depends only on the target, model and flag, so it is encoded
    once per combination (`_inline_payload_parts`) and the inputs spliced in, instead of two
    Structs built and encoded for every request (see docs/performance.md).
    """
    head, tail = _inline_payload_parts(vm_ip, container_id, model_name, allow_transient)
    return msgspec.Raw(head + b",".join(inputs) + tail)


_NO_INPUTS: Final = b'"inputs":[]'


@functools.lru_cache(maxsize=256)
def _inline_payload_parts(
    vm_ip: str, container_id: str, model_name: str, allow_transient: bool
) -> tuple[bytes, bytes]:
    """The payload text before and after its inputs' elements.

    The cut is at the one ``"inputs":[]`` in the text: inside a JSON string its quotes would
    be escaped, so it can only be the field itself.
    """
    options = InferenceOptions(inputs=[], allow_transient=allow_transient)
    payload = InferencePayload(
        vm_ip=vm_ip, container_id=container_id, model_name=model_name, request=options
    )
    text = _encoder.encode(payload)
    cut = text.index(_NO_INPUTS) + len(_NO_INPUTS) - 1
    return text[:cut], text[cut:]


INFERENCE_ENVELOPE_BYTES: Final = (
    len(_encoder.encode(InferenceFrame(uuid="", payload=msgspec.Raw(b"{}")))) - 2
)
"""Bytes an inference frame adds around its payload, besides the uuid itself."""
