"""A new user's first minutes: the readiness gate, a wrong URL, and what gets logged.

Over real loopback sockets, on both backends: the reference manager for the well-behaved
cases, `tests/_hostile.py`'s server where the test needs to see or script the HTTP side.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import anyio
import pytest

import anytcm
from _hostile import HostileServer, Peer, serve_well
from anytcm.testing import ReferenceManager

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

pytestmark = pytest.mark.anyio


def single(exc: BaseException) -> None:
    assert not isinstance(exc, BaseExceptionGroup), f"an ExceptionGroup escaped: {exc!r}"


# -- a wrong URL fails at once -----------------------------------------------------------------


@pytest.mark.parametrize("ready_check", [True, False])
async def test_a_wrong_url_path_fails_at_once(manager: ReferenceManager, ready_check: bool) -> None:
    """404 on /ready (gate on) or on the upgrade (gate off): no waiting out connect_timeout."""
    url = manager.ws_url.replace("/ws", "/wrong")
    started = anyio.current_time()
    with pytest.raises(
        anytcm.HandshakeRejected, match="wrong URL path, or not a TCM manager"
    ) as caught:
        async with anytcm.connect(url, ready_check=ready_check, connect_timeout=30, pool_size=3):
            pass
    assert anyio.current_time() - started < 10  # at once, not after the 30 s connect_timeout
    assert caught.value.status_code == 404
    assert caught.value.permanent
    assert "not answering /health" not in str(caught.value)
    single(caught.value)


async def test_a_503_is_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    """The one not-ready answer worth waiting for; logged once per change, not per poll."""
    started = time.monotonic()

    def ready_after_a_while(path: str) -> tuple[int, bytes]:  # runs in the server's thread
        if path.endswith("/ready") and time.monotonic() - started < 1.5:
            return 503, b'{"status":"not_ready","reason":"warming_up"}'
        return 200, b'{"status":"ready"}'

    caplog.set_level(logging.INFO, logger="anytcm")
    with HostileServer(serve_well, http=ready_after_a_while) as server:
        async with anytcm.connect(server.url, pool_size=4, connect_timeout=10) as tcm:
            stats = await tcm.info.queue_stats()
            assert stats.total_users == 1
    not_ready = [r for r in caplog.records if "not ready" in r.getMessage()]
    assert len(not_ready) == 1, [r.getMessage() for r in not_ready]
    assert "warming_up" in not_ready[0].getMessage()
    assert sum("ready again" in r.getMessage() for r in caplog.records) == 1


async def test_an_auth_refusal_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    def refuse(peer: Peer) -> None:
        peer.recv_frame()
        peer.send({"type": "error", "payload": {"message": "Invalid token: nope"}}, close=1008)

    caplog.set_level(logging.INFO, logger="anytcm")
    server = HostileServer(refuse, authenticate=False)
    with server, pytest.raises(anytcm.AuthError):
        async with anytcm.connect(server.url, pool_size=4, ready_check=False):
            pass
    refusals = [r for r in caplog.records if "authentication refused" in r.getMessage()]
    assert len(refusals) == 1


# -- the gate reaches the manager the way the WebSocket does ----------------------------------


async def test_the_gate_sends_the_headers_and_ignores_proxy_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy nobody listens on: honoured by the gate alone, it made connect fail.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with HostileServer(serve_well) as server:
        async with anytcm.connect(
            server.url, headers={"X-Tenant": "blue"}, pool_size=2, connect_timeout=10
        ) as tcm:
            await tcm.info.queue_stats()
    ready = [r for r in server.requests if r.path.endswith("/ready")]
    upgrades = [r for r in server.requests if r.path.endswith("/ws")]
    assert ready, "the gate asked /ready"
    assert all(r.headers.get("X-Tenant") == "blue" for r in ready + upgrades)


# -- a configuration error is one error --------------------------------------------------------


async def test_a_transport_for_the_wrong_event_loop_is_one_clear_error(
    manager: ReferenceManager,
    monkeypatch: pytest.MonkeyPatch,
    anyio_backend: tuple[str, dict[str, object]],
) -> None:
    if anyio_backend[0] != "asyncio":
        pytest.skip("trio-websocket is the right transport on trio")
    monkeypatch.setenv("ANYTCM_TRANSPORT", "trio-websocket")
    started = anyio.current_time()
    with pytest.raises(RuntimeError, match="runs on trio only") as caught:
        async with anytcm.connect(manager.ws_url, pool_size=4, connect_timeout=30):
            pass
    single(caught.value)  # before: an ExceptionGroup with one copy per connection of the pool
    assert anyio.current_time() - started < 10  # no retrying until connect_timeout


def test_the_library_logs_nothing_until_the_application_configures_logging() -> None:
    """A NullHandler on `anytcm`: Python's last-resort handler does not print its warnings."""
    code = (
        "import logging, anytcm\n"
        "logging.getLogger('anytcm.readiness').warning('manager not ready: 503')\n"
        "logging.getLogger('other').warning('an application warning')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "manager not ready" not in done.stderr
    assert "an application warning" in done.stderr  # the application's own still show
