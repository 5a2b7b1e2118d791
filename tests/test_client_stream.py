"""Client integration: `infer_stream` (the gRPC protocol: START, ONGOING per chunk, COMPLETED).

The `stream` model sleeps DELAY_MS before each chunk, which makes idle and overall deadlines
testable. A stream given up on must leave the client usable, and none of its late frames may
reach a later caller (pool_size=1 forces the same connection to be reused).
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from typing import Any

import anyio
import numpy as np
import pytest

import anytcm
from _client_helpers import REF, distinct, f32, infer_double, text
from anytcm.testing import ReferenceManager

# The stream's memory channels are checked by `test_stream_leaves_no_unclosed_channels` alone;
# the other tests check behaviour, so a leaked channel's ResourceWarning (raised at GC time, as
# an "unraisable" exception) is not counted against them.
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in.*MemoryObject:pytest.PytestUnraisableExceptionWarning"
    ),
]


def stream_inputs(*items: str, delay_ms: int = 0) -> dict[str, Any]:
    inputs: dict[str, Any] = {"TEXT": text(*items)}
    if delay_ms:
        inputs["DELAY_MS"] = np.array([delay_ms], dtype=np.int32)
    return inputs


async def collect(stream: anytcm.InferStream) -> list[anytcm.StreamEvent]:
    return [event async for event in stream]


async def drain(stream: anytcm.InferStream, seen: list[anytcm.StreamEvent]) -> None:
    """Open, read to the end (recording each event as it comes), close."""
    async with stream:
        async for event in stream:
            seen.append(event)


async def test_stream_events(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        async with client.infer_stream("stream", stream_inputs("a", "bc", "ü"), target=REF) as s:
            events = await collect(s)
        assert events == [
            anytcm.StreamEvent("START"),
            anytcm.StreamEvent("ONGOING", "a"),
            anytcm.StreamEvent("ONGOING", "bc"),
            anytcm.StreamEvent("ONGOING", "ü"),
            anytcm.StreamEvent("COMPLETED", None, "stream"),
        ]
        # Iterating a finished stream again ends at once.
        assert await collect(s) == []
        await infer_double(client, f32(1.0))  # the connection was given back


async def test_stream_without_context_manager(manager: ReferenceManager) -> None:
    """`async for event in client.infer_stream(...)` starts the stream on first iteration."""
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        events = await collect(client.infer_stream("stream", stream_inputs("x", "y"), target=REF))
        assert [e.status for e in events] == ["START", "ONGOING", "ONGOING", "COMPLETED"]
        assert [e.text for e in events if e.status == "ONGOING"] == ["x", "y"]
        await infer_double(client, f32(2.0))


async def test_consecutive_streams_do_not_mix(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        for i in range(5):
            words = [f"s{i}-{k}" for k in range(i + 1)]
            async with client.infer_stream("stream", stream_inputs(*words), target=REF) as s:
                events = await collect(s)
            assert [e.text for e in events if e.status == "ONGOING"] == words


async def test_concurrent_streams_on_a_pool(manager: ReferenceManager) -> None:
    results: dict[int, list[str | None]] = {}

    async def one(client: anytcm.AsyncClient, i: int) -> None:
        words = [f"{i}:{k}" for k in range(3)]
        async with client.infer_stream("stream", stream_inputs(*words), target=REF) as s:
            results[i] = [e.text for e in await collect(s) if e.status == "ONGOING"]

    async with (
        anytcm.connect(manager.ws_url, pool_size=3) as client,
        anyio.create_task_group() as tg,
    ):
        for i in range(9):
            tg.start_soon(one, client, i)
    assert results == {i: [f"{i}:{k}" for k in range(3)] for i in range(9)}


async def test_idle_timeout_shorter_than_chunk_delay(manager: ReferenceManager) -> None:
    """The silence between two frames exceeds `idle_timeout` -> RequestTimeout, and the client
    (one connection) stays usable: later calls get their own replies, not the late chunks."""
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        started = anyio.current_time()
        s = client.infer_stream(
            "stream", stream_inputs("p", "q", delay_ms=400), target=REF, idle_timeout=0.1
        )
        seen: list[anytcm.StreamEvent] = []
        with pytest.raises(anytcm.RequestTimeout) as caught:
            await drain(s, seen)
        assert anyio.current_time() - started < 5.0
        assert caught.value.timeout == pytest.approx(0.1)
        assert isinstance(caught.value, TimeoutError)
        assert [e.status for e in seen] in (["START"], [])
        # The same (only) connection: the late ONGOING/COMPLETED frames must be dropped.
        await infer_double(client, distinct(1), timeout=10)
        async with client.infer_stream("stream", stream_inputs("after"), target=REF) as again:
            events = await collect(again)
        assert [e.text for e in events if e.status == "ONGOING"] == ["after"]
        await infer_double(client, distinct(2), timeout=10)


async def test_overall_timeout_longer_than_the_stream(manager: ReferenceManager) -> None:
    """Idle timeout longer than one chunk delay, overall timeout longer than the sum: the stream
    completes even though it lasts much longer than the idle timeout."""
    async with (
        anytcm.connect(manager.ws_url, pool_size=1) as client,
        client.infer_stream(
            "stream",
            stream_inputs("a", "b", "c", "d", delay_ms=150),
            target=REF,
            timeout=10.0,
            idle_timeout=1.5,
        ) as s,
    ):
        events = await collect(s)
    assert [e.text for e in events if e.status == "ONGOING"] == ["a", "b", "c", "d"]
    assert events[-1] == anytcm.StreamEvent("COMPLETED", None, "stream")


async def test_overall_timeout_bounds_the_whole_stream(manager: ReferenceManager) -> None:
    """Frames keep coming (idle never exceeded), but the overall `timeout` still ends it."""
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        started = anyio.current_time()
        with pytest.raises(anytcm.RequestTimeout) as caught:
            async with client.infer_stream(
                "stream",
                stream_inputs(*"abcdefgh", delay_ms=150),
                target=REF,
                timeout=0.5,
                idle_timeout=2.0,
            ) as s:
                await collect(s)
        assert caught.value.timeout == pytest.approx(0.5)
        assert anyio.current_time() - started < 5.0
        await infer_double(client, distinct(3), timeout=10)


@pytest.mark.parametrize("how", ["aclose", "context-exit", "break-in-for"])
async def test_leaving_a_stream_early(manager: ReferenceManager, how: str) -> None:
    """Stop reading after the first chunk; the client stays usable and the abandoned stream's
    remaining chunks never show up in a later stream or inference."""
    inputs = stream_inputs("first", "second", "third", delay_ms=100)
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        if how == "aclose":
            s = client.infer_stream("stream", inputs, target=REF)
            assert (await s.__anext__()).status == "START"
            assert (await s.__anext__()).text == "first"
            await s.aclose()
            with pytest.raises(StopAsyncIteration):
                await s.__anext__()
        elif how == "context-exit":
            async with client.infer_stream("stream", inputs, target=REF) as s:
                assert (await s.__anext__()).status == "START"
                assert (await s.__anext__()).text == "first"
        else:
            async with client.infer_stream("stream", inputs, target=REF) as s:
                async for event in s:
                    if event.status == "ONGOING":
                        break
        await infer_double(client, distinct(7), timeout=10)
        async with client.infer_stream("stream", stream_inputs("fresh"), target=REF) as s2:
            events = await collect(s2)
        assert [e.text for e in events if e.status == "ONGOING"] == ["fresh"]
        assert events[-1].status == "COMPLETED"
        await infer_double(client, distinct(8), timeout=10)


async def test_failing_stream_raises_inference_failed(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        seen: list[anytcm.StreamEvent] = []
        with pytest.raises(anytcm.InferenceFailed) as caught:
            await drain(client.infer_stream("fail", stream_inputs("x"), target=REF), seen)
        assert caught.value.code == "TRITON_INFERENCE_FAILED"
        assert caught.value.model_name == "fail"
        assert "COMPLETED" not in [e.status for e in seen]
        await infer_double(client, distinct(9), timeout=10)


async def test_stream_contract_error_for_unknown_container(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        with pytest.raises(anytcm.ContractError):
            async with client.infer_stream(
                "stream", stream_inputs("x"), target=anytcm.Target("127.0.0.1", "no-such")
            ) as s:
                await collect(s)
        await infer_double(client, distinct(10), timeout=10)


@pytest.mark.parametrize("ending", ["completed", "failed", "abandoned"])
async def test_stream_leaves_no_unclosed_channels(manager: ReferenceManager, ending: str) -> None:
    """A finished, failed or abandoned stream closes its memory object streams: nothing is left
    for the garbage collector to warn about (`ResourceWarning: Unclosed <MemoryObject...>`)."""
    gc.collect()  # earlier tests' garbage is not this test's business
    model = "fail" if ending == "failed" else "stream"
    inputs = stream_inputs("a", "b", delay_ms=50 if ending == "abandoned" else 0)
    expect: contextlib.AbstractContextManager[Any] = (
        pytest.raises(anytcm.InferenceFailed) if ending == "failed" else contextlib.nullcontext()
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with anytcm.connect(manager.ws_url, pool_size=1) as client:
            with expect:
                async with client.infer_stream(model, inputs, target=REF) as s:
                    async for event in s:
                        if ending == "abandoned" and event.status == "ONGOING":
                            break
            await infer_double(client, distinct(11), timeout=10)  # lets the late frames land
            del s
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []
