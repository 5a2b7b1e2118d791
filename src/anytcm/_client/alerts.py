"""Unsolicited frames (alerts, budget warnings, unknown types) fanned out to subscribers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .. import wire

logger = logging.getLogger("anytcm.client")


class Alerts:
    """Every subscriber gets every frame; one that falls behind loses frames, never the client."""

    __slots__ = ("_subscribers", "dropped")

    def __init__(self) -> None:
        self._subscribers: set[MemoryObjectSendStream[wire.ServerFrame]] = set()
        self.dropped = 0  # frames a full subscriber did not get

    def deliver(self, frame: wire.ServerFrame) -> None:
        logger.info("unsolicited frame: %.300s", frame)  # a hostile one may be megabytes
        for stream in list(self._subscribers):
            try:
                stream.send_nowait(frame)
            except anyio.WouldBlock:
                self.dropped += 1
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.discard(stream)

    @asynccontextmanager
    async def subscribe(
        self, buffer: int
    ) -> AsyncIterator[MemoryObjectReceiveStream[wire.ServerFrame]]:
        send, receive = anyio.create_memory_object_stream[wire.ServerFrame](buffer)
        self._subscribers.add(send)
        try:
            async with receive:
                yield receive
        finally:
            self._subscribers.discard(send)
            send.close()
