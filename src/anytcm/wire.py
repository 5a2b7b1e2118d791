"""The TCM wire contract as msgspec Structs: every frame, both directions (contract §2-§4, §6).

Server frames decode once, into a tagged union on `type`. Decoding is forward compatible:
unknown fields are ignored, and a frame of an unknown `type` decodes to `UnknownFrame` instead of
failing, because a newer manager may add frames this client has never heard of.

Inference reply `data` holds each output either as its undecoded text (`msgspec.Raw`), parsed
straight into numpy by the tensor codec, or, for a small reply whose outputs are all flat lists of
numbers, as those numbers, parsed with the frame in one pass (`ServerFrameDecoder`).

No I/O and no anyio here: this module is tested synchronously.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, TypeAlias

import msgspec

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
    `ServerFrameDecoder`); code that reads a reply sees this class and `OutputValue`.
    """

    status: str
    data: Mapping[str, OutputValue] | str | None = None
    model_name: str | None = None


class InferenceReply(msgspec.Struct, tag="inference", tag_field="type"):
    payload: InferenceReplyPayload
    uuid: str | None = None


# The two forms replies decode into. Perf: neither is tracked by the garbage collector
# (`gc=False`): a decoded reply holds strings, numbers and containers of them, never itself,
# so it can be part of no reference cycle unless a caller puts it inside its own `data`.
# Untracked, a small reply takes ~140 fewer instructions to decode (callgrind, of ~19k from
# bytes to an FP32 array) and adds nothing to the young generation's collection count.


class _TextReplyPayload(InferenceReplyPayload, gc=False):
    data: dict[str, msgspec.Raw] | str | None = None


class _TextReply(InferenceReply, tag="inference", gc=False):
    """Every reply: each `data` value kept as its JSON text."""

    payload: _TextReplyPayload


class _NumbersReplyPayload(InferenceReplyPayload, gc=False):
    data: dict[str, Numbers] | str | None = None


class _NumbersReply(InferenceReply, tag="inference", gc=False):
    """A reply whose `data` values are all flat lists of numbers or bare numbers, parsed."""

    payload: _NumbersReplyPayload


class Alert(msgspec.Struct, tag="alert", tag_field="type"):
    """Unsolicited backend state change; top-level fields, no payload."""

    error_type: str | None = None
    message: str = ""
    timestamp: float | None = None


class UnknownFrame(msgspec.Struct):
    """A frame whose `type` this client does not know; kept whole for the caller to inspect."""

    type: str | None
    raw: dict[str, Any]


ServerFrame: TypeAlias = (
    "AuthOk | ErrorFrame | InfoResponse | ManagementReply | InferenceReply | Alert | UnknownFrame"
)

KNOWN_SERVER_TYPES: Final = frozenset(
    {"auth.ok", "error", "info_response", "management", "inference", "alert"}
)


class FrameDecodeError(ValueError):
    """A frame that is not a JSON object, or a known frame type with a malformed body."""


# Frames up to this size may be decoded with their numbers parsed (`ServerFrameDecoder.decode`);
# the tensor codec's small path takes values up to about the same size.
_NUMBERS_FRAME_BYTES: Final = 12288
# After the numbers decoder refused a frame, the small frames decoded as text before it tries again.
_NUMBERS_PAUSE: Final = 16
# Frames and array values from these sizes on are decoded by cutting the arrays out first.
_CUT_FRAME_BYTES: Final = 1 << 16
_CUT_VALUE_BYTES: Final = 1 << 14
# Candidates examined per frame, and colons looked at: bound the scans on a frame full of
# look-alikes in strings.
_CUT_MAX_CANDIDATES: Final = 64
_CUT_MAX_COLONS: Final = 1024
# `]` hops before `_closing_run` falls back to a search for the whole run.
_CLOSING_HOPS: Final = 1024
_PLACEHOLDER_PREFIX: Final = b"\\u0000anytcm:"
_PLACEHOLDER_MAX: Final = len(_PLACEHOLDER_PREFIX) + 2 + len(str(_CUT_MAX_CANDIDATES))


def _cut_arrays(data: bytes) -> tuple[bytes, dict[bytes, memoryview]] | None:
    """``data`` with each large array value of an object member replaced by a placeholder
    string, and the placeholders' texts -> the arrays' spans; None if there is none to cut.

    A candidate starts at ``":[`` (or ``": [``) and ends at the first run of as many ``]``
    as it opens with. It is cut only if it holds no ``"``. Why the result is exact when the
    rest decodes (`ServerFrameDecoder._decode_cut` checks that it does):

    * The candidate starts inside a string: the placeholder's opening quote ends that string and the
      placeholder's text (which starts with a backslash) follows it bare: invalid JSON.
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
    # Perf: colons are found at memchr speed; a search for ``":[`` would run ~40x slower.
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

    Perf: a search for several bytes runs at ~1.3 ns per byte, one for a single byte at memchr
    speed. Hopping from ``]`` to ``]`` (~0.15 us a hop) finds the end of an array of up to
    ~1000 rows sooner; only more rows than that fall back to the longer search.
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


class ServerFrameDecoder:
    """Decodes server frames. One per connection; reuses msgspec decoders (they are not cheap)."""

    def __init__(self) -> None:
        # Annotated so mypy knows what decode() returns (a runtime union expression is Any).
        self._typed: msgspec.json.Decoder[
            AuthOk | ErrorFrame | InfoResponse | ManagementReply | InferenceReply | Alert
        ] = msgspec.json.Decoder(
            AuthOk | ErrorFrame | InfoResponse | ManagementReply | _TextReply | Alert
        )
        self._numbers: msgspec.json.Decoder[
            AuthOk | ErrorFrame | InfoResponse | ManagementReply | InferenceReply | Alert
        ] = msgspec.json.Decoder(
            AuthOk | ErrorFrame | InfoResponse | ManagementReply | _NumbersReply | Alert
        )
        self._generic = msgspec.json.Decoder(dict[str, Any])
        self._numbers_pause = 0  # small frames still to decode as text before the next try

    def decode(self, data: bytes) -> ServerFrame:
        """One server frame. Inference replies come in one of two forms, the same to a reader.

        Perf: kept as text, an output's numbers are parsed twice, once by msgspec to find
        where the value ends and again by the tensor codec: about a fifth of the time from a
        small reply's bytes to its FP32 array (timeit, FP32[16]). A small frame is therefore
        first decoded with its numbers parsed; every other frame type decodes the same either
        way. Anything that decoder refuses (string outputs, nulls for NaN, booleans, nested
        lists, a FAILED object, bad JSON) is decoded again as text, so the result and its
        errors are those of the text decoder. A refusal costs about two decodes, and a
        connection's replies tend to share their form (a model's outputs are nested or not),
        so after one this decoder skips the attempt for the next `_NUMBERS_PAUSE` frames: a
        scan of the frame to predict the refusal would cost half the saving on every frame.
        """
        size = len(data)
        if size >= _CUT_FRAME_BYTES and type(data) is bytes:
            reply = self._decode_cut(data)
            if reply is not None:
                return reply
        elif size <= _NUMBERS_FRAME_BYTES:
            if self._numbers_pause:
                self._numbers_pause -= 1
            else:
                try:
                    return self._numbers.decode(data)
                except msgspec.DecodeError:  # ValidationError too: the text decoder decides
                    self._numbers_pause = _NUMBERS_PAUSE
        try:
            return self._typed.decode(data)
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

    def _decode_cut(self, data: bytes) -> InferenceReply | None:
        """An inference reply decoded with its large array values cut out, or None to decline.

        Perf: to slice a value as `msgspec.Raw`, msgspec still parses every number in it
        (~2 ns per byte: 5 ms of a 2.8 MB reply, a quarter of the cost of decoding it into
        numpy). Cut out, each array costs a few memchr scans, and the tensor codec parses its
        text once, later. Any doubt declines, and the whole frame is decoded as usual.
        """
        cut = _cut_arrays(data)
        if cut is None:
            return None
        rest, spans = cut
        # Every placeholder-like text left must be one of ours: then a match below is ours.
        if rest.count(_PLACEHOLDER_PREFIX) != len(spans):
            return None
        try:
            frame = self._typed.decode(rest)
        except msgspec.DecodeError:  # ValidationError too: the full decode explains
            return None
        if type(frame) is not _TextReply or type(frame.payload.data) is not dict:
            return None
        values = frame.payload.data
        found = 0
        for name, value in values.items():
            span = spans.get(bytes(value)) if len(value) <= _PLACEHOLDER_MAX else None
            if span is not None:
                values[name] = msgspec.Raw(span)
                found += 1
        # A placeholder anywhere else (a pipeline step, an error's details) declines.
        return frame if found == len(spans) else None


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

    Perf: the text around the inputs depends only on the target, model and flag, so it is
    encoded once per combination (`_inline_payload_parts`) and the inputs spliced in, instead
    of building two Structs and encoding them for every request.
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
