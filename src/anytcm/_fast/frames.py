"""Inference replies decoded in fewer passes over their numbers.

`anytcm.wire.ServerFrameDecoder`'s general path keeps each output of a reply as its JSON text
(`msgspec.Raw`), which the tensor codec parses later. To find where that text ends, msgspec
already parses every number in it, so every number is parsed twice. Two shortcuts avoid that,
each for the replies it pays off on; both give the frame the general path gives, or decline:

* **Numbers with a small frame.** A small reply whose outputs are all flat lists of numbers (or
  bare numbers) is decoded with those numbers parsed, in the frame's one pass; the tensor codec
  packs them as they are. Anything that decoder refuses (string outputs, nulls for NaN,
  booleans, nested lists, a FAILED object, bad JSON) declines, and the general decode gives the
  result and its errors. A refusal costs a second decode, and a connection's replies tend to
  share their form (a model's outputs are nested or not), so after one the next `_PAUSE` small
  frames skip the attempt: a scan of each frame to predict the refusal would cost about what
  the shortcut saves.
* **Arrays cut out of a large frame.** A large reply is decoded with its large array values
  cut out first (`anytcm.wire.decode_cut`, a few memchr scans each), and put back as
  `msgspec.Raw` slices of the original bytes: msgspec never parses their numbers, and the
  tensor codec parses them once. The general path cuts them out only when msgspec cannot
  decode the frame whole; either way the frame is the same. Any doubt declines, and the whole
  frame is decoded as usual.

Only the entry point `FrameShortcuts.decode` is used from outside. No I/O and no anyio here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec

from ..wire import (
    Alert,
    AuthOk,
    ErrorFrame,
    InferenceReply,
    InferenceReplyPayload,
    InfoResponse,
    KnownServerFrame,
    ManagementReply,
    Numbers,
    ServerFrame,
    decode_cut,
)

__all__ = ("FrameShortcuts",)

# Frames up to this size may be decoded with their numbers parsed; the tensor codec's small
# path (`anytcm._fast.floats`) takes values up to about the same size.
_NUMBERS_FRAME_BYTES: Final = 12288
# After the numbers decoder refused a frame, the small frames left to the general path.
_PAUSE: Final = 16
# Frames from this size on are decoded with their large arrays cut out first (`wire.decode_cut`).
_CUT_FRAME_BYTES: Final = 1 << 16


class _NumbersReplyPayload(InferenceReplyPayload):
    data: dict[str, Numbers] | str | None = None


class _NumbersReply(InferenceReply, tag="inference"):
    """A reply whose `data` values are all flat lists of numbers or bare numbers, parsed."""

    payload: _NumbersReplyPayload


class FrameShortcuts:
    """The two shortcuts of one connection's frame decoder (the pause is per connection)."""

    def __init__(
        self,
        text: msgspec.json.Decoder[KnownServerFrame],
        general: Callable[[bytes], ServerFrame],
    ) -> None:
        """``text``: the general path's decoder of the known frame types (outputs as text);
        ``general``: the general path, which decodes every frame the shortcuts leave."""
        self._text = text
        self._general = general
        self._numbers: msgspec.json.Decoder[KnownServerFrame] = msgspec.json.Decoder(
            AuthOk | ErrorFrame | InfoResponse | ManagementReply | _NumbersReply | Alert
        )
        self._pause = 0  # small frames still to leave to the general path

    def decode(self, data: bytes) -> ServerFrame:
        """The frame the general path decodes from ``data``, by a shortcut if one takes it."""
        size = len(data)
        if size >= _CUT_FRAME_BYTES and type(data) is bytes:
            return decode_cut(self._text, data) or self._general(data)
        if size <= _NUMBERS_FRAME_BYTES:
            if self._pause:
                self._pause -= 1
            else:
                try:
                    return self._numbers.decode(data)
                except msgspec.DecodeError:  # ValidationError too: the general path decides
                    self._pause = _PAUSE
        return self._general(data)
