"""anytcm: the async (asyncio and trio) client for the Triton Client Manager WebSocket API."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ("__version__",)
