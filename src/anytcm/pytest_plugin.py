"""pytest fixtures for testing an application against anytcm's reference manager.

Installed with anytcm as a `pytest11` plugin, so there is nothing to import or register: a test
asks for a fixture by name.

* `tcm_manager`: the session's `anytcm.testing.ReferenceManager`, running, with no fault
  switch set. One process serves the whole session; it is started the first time a test asks
  for it, never otherwise.
* `tcm_url`: its WebSocket URL (`ws://127.0.0.1:<port>/ws`).
* `tcm_client`: an `anytcm.AsyncClient` connected to it, closed after the test. An async fixture:
  the test must be an anyio test (`@pytest.mark.anyio`), and runs on every backend the
  `anyio_backend` fixture names (asyncio and trio when trio is installed).
* `tcm_session_manager`: the same manager for your own session- or module-scoped fixtures; it
  is handed over as it is (faults are reset by `tcm_manager`, per test).
* `tcm_manager_options` (session) and `tcm_client_options` (per test): the keyword arguments of
  `ReferenceManager` and of `anytcm.connect`; override them to configure. The ini options
  `anytcm_manager_args` and `anytcm_manager_token` feed the default `tcm_manager_options`.

The reference manager needs anytcm's `testing` extra. See docs/testing.md.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

# Only pytest at import time: the plugin is loaded into every pytest run of an environment where
# anytcm is installed, most of which never use it. The client and the reference manager (httpx,
# numpy, msgspec...) are imported by the fixtures that need them.
if TYPE_CHECKING:
    from anytcm.client import AsyncClient
    from anytcm.options import ConnectOptions
    from anytcm.testing import ReferenceManager


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "anytcm_manager_args",
        type="args",
        default=[],
        help="anytcm: extra options of the reference manager (`anytcm serve-dev --help`), "
        "e.g. --max-request-payload-mb 1",
    )
    parser.addini(
        "anytcm_manager_token",
        type="string",
        default="",
        help="anytcm: the token the reference manager requires in auth (none when empty)",
    )


@pytest.fixture(scope="session")
def tcm_manager_options(pytestconfig: pytest.Config) -> dict[str, Any]:
    """Keyword arguments of the session's `ReferenceManager`.

    From the ini options `anytcm_manager_args` and `anytcm_manager_token` by default; override
    this fixture (session-scoped) in a conftest.py for anything else, e.g. TLS.
    """
    options: dict[str, Any] = {}
    args: list[str] = pytestconfig.getini("anytcm_manager_args")
    if args:
        options["extra_args"] = list(args)
    token: str = pytestconfig.getini("anytcm_manager_token")
    if token:
        options["token"] = token
    return options


@pytest.fixture(scope="session")
def tcm_session_manager(tcm_manager_options: dict[str, Any]) -> Iterator[ReferenceManager]:
    """The session's reference manager (a separate process), started on first use.

    Handed over as it is: a test's faults, or a test that killed it, are not undone here. Tests
    ask for `tcm_manager`, which is; this one is for fixtures of a wider scope than a test.
    """
    from anytcm.testing import ReferenceManager

    with ReferenceManager(**tcm_manager_options) as manager:
        yield manager


@pytest.fixture
def tcm_manager(tcm_session_manager: ReferenceManager) -> ReferenceManager:
    """The session's reference manager, running and with no fault switch set.

    Whatever the previous test did to it is undone first: its faults are reset, a paused
    process is resumed, and a killed or terminated one is started again, on the same port.
    """
    manager = tcm_session_manager
    if manager.running:
        # SIGCONT: a no-op unless a test left the process paused (SIGSTOP), in which case
        # nothing, not even the reset below, would be answered.
        manager.resume()
    else:
        manager.start()  # same port as before: URLs handed out earlier stay valid
    manager.reset_faults()
    return manager


@pytest.fixture
def tcm_url(tcm_manager: ReferenceManager) -> str:
    """The reference manager's WebSocket URL, e.g. `ws://127.0.0.1:38123/ws`."""
    return tcm_manager.ws_url


@pytest.fixture
def tcm_client_options() -> ConnectOptions:
    """Keyword arguments of `anytcm.connect` for `tcm_client` (none by default; see
    `anytcm.ConnectOptions`).

    Override it in a conftest.py or a module, or per test with
    `@pytest.mark.parametrize("tcm_client_options", [{"pool_size": 1}])`. The manager's token,
    and for a TLS manager with a `ca_file` an SSL context trusting it, are passed unless given.
    """
    return {}


@pytest.fixture
async def tcm_client(
    tcm_manager: ReferenceManager,
    tcm_client_options: ConnectOptions,
    request: pytest.FixtureRequest,
    anyio_backend: object,
) -> AsyncIterator[AsyncClient]:
    """An `anytcm.AsyncClient` connected to `tcm_manager`, closed after the test.

    Requesting `anyio_backend` is what hands this fixture to anyio's pytest plugin, which runs
    it in the test's event loop, on asyncio and trio alike.
    """
    if not _is_async_test(request):
        pytest.fail(
            f"{request.node.nodeid}: tcm_client is an async client; use it from an async test "
            "marked @pytest.mark.anyio (or use tcm_url with anytcm.SyncClient)",
            pytrace=False,
        )
    import anytcm

    options: ConnectOptions = {**tcm_client_options}
    options.setdefault("token", tcm_manager.token)
    if tcm_manager.tls is not None and tcm_manager.ca_file is not None:
        import ssl

        options.setdefault("ssl_context", ssl.create_default_context(cafile=tcm_manager.ca_file))
    async with anytcm.connect(tcm_manager.ws_url, **options) as client:
        yield client


def _is_async_test(request: pytest.FixtureRequest) -> bool:
    function = request.function
    # Hypothesis wraps an async test in a sync one; anyio runs the inner test.
    hypothesis = getattr(function, "hypothesis", None)
    inner = getattr(hypothesis, "inner_test", function)
    return inspect.iscoroutinefunction(inner)
