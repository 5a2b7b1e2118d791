"""Test configuration of the anytcm-zstd tests.

Every async test runs on asyncio **and** trio, as in anytcm's own suite. anyio's default
`anyio_backend` fixture only covers the backends that happen to be installed, so a missing trio
would silently halve the suite; importing trio here makes that an import error instead.
"""

from __future__ import annotations

import pytest
import trio  # noqa: F401  - must be importable: the trio runs may not silently disappear


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
