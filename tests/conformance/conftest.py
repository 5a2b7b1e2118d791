"""Fixtures of the conformance suite.

By default every server is the reference manager (`anytcm.testing.ReferenceManager`), run as a
subprocess. With `ANYTCM_CONFORMANCE_URL=ws://host:port/ws` the suite targets that server instead
and skips the tests marked `reference_only`.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

import pytest

from ._client import Manager, Spawn, http_base

if TYPE_CHECKING:
    from collections.abc import Iterator

ENV_URL = "ANYTCM_CONFORMANCE_URL"


def _external_url() -> str | None:
    url = os.environ.get(ENV_URL, "").strip()
    return url or None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    url = _external_url()
    if url is None:
        return
    skip = pytest.mark.skip(reason=f"reference_only: {ENV_URL}={url} is not the reference manager")
    for item in items:
        if item.get_closest_marker("reference_only") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def reference() -> Iterator[Manager | None]:
    """The shared reference manager, or None when an external server is targeted."""
    if _external_url() is not None:
        yield None
        return
    from anytcm.testing import ReferenceManager

    with ReferenceManager() as manager:
        yield manager


@pytest.fixture(scope="session")
def ws_url(reference: Manager | None) -> str:
    """The WebSocket URL of the server under test."""
    url = _external_url()
    if url is not None:
        return url
    assert reference is not None
    return reference.ws_url


@pytest.fixture(scope="session")
def http_url(ws_url: str) -> str:
    """The HTTP base URL of the server under test (derived from the WebSocket URL)."""
    return http_base(ws_url)


@pytest.fixture
def manager(reference: Manager | None) -> Manager:
    """The shared reference manager itself (for its fault switches / admin endpoints)."""
    if reference is None:
        pytest.skip("needs the reference manager")
    return reference


@pytest.fixture(scope="module")
def spawn() -> Iterator[Spawn]:
    """Start extra reference managers with options; all are stopped when the module ends."""
    if _external_url() is not None:
        pytest.skip("starting servers with options needs the reference manager")
    from anytcm.testing import ReferenceManager

    with contextlib.ExitStack() as stack:

        def start(*args: str, token: str | None = None) -> Manager:
            manager = ReferenceManager(token=token, extra_args=list(args))
            return stack.enter_context(manager)

        yield start
