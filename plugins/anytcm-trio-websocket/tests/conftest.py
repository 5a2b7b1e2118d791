"""Test configuration: the transport is trio-only, so every async test runs on trio alone.

The refusal on asyncio is asserted by its own (synchronous) tests in test_transport.py.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    """trio only (anyio's default would be asyncio)."""
    return ("trio", {})
