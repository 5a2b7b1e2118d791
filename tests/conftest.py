"""Test configuration shared by every test module.

Every async test runs on asyncio **and** trio. anyio's default `anyio_backend` fixture only
covers the backends that happen to be installed, so a missing trio would silently halve the
suite; importing trio here makes that an import error instead.

The reference manager most tests talk to is one process for the whole run (`manager` below):
starting one per module cost most of a second each. Tests that kill, stall or restart a manager
(marker `fault`), and tests that need a manager started with other options, start their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio  # noqa: F401  - must be importable: the trio runs may not silently disappear

if TYPE_CHECKING:
    from anytcm.testing import ReferenceManager


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"debug": True}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    """Both backends for every async test (asyncio in debug mode, to catch slow callbacks)."""
    backend: tuple[str, dict[str, object]] = request.param
    return backend


@pytest.fixture(scope="module")
def manager(tcm_session_manager: ReferenceManager) -> ReferenceManager:
    """The session's reference manager, default options, handed to one module at a time.

    The process is `tcm_session_manager` (anytcm's pytest plugin): started on first use, shared
    with the plugin's own fixtures. Each module gets it as its own manager would have been, minus
    a fresh process: running (restarted on its port if a test killed it, resumed if one paused
    it) and with no fault switch set. What it does not reset, since it cannot: counters (compare
    a metric before and after, never to an absolute value), registered servers, uuid tables and
    rate windows. A test needing those fresh, or a manager it may kill, starts its own.
    """
    shared = tcm_session_manager
    if shared.running:
        shared.resume()  # SIGCONT: a no-op unless a test left the process paused
    else:
        shared.start()  # the same port: URLs computed earlier stay valid
    shared.reset_faults()
    return shared
