"""Test support: the reference manager, an independent implementation of the TCM server.

`ReferenceManager` runs it as a separate process. The server itself (`anytcm serve-dev`) needs
the `testing` extra: `pip install "anytcm[testing]"`.

Nothing in this package imports the client's wire, protocol or carrier code, so the reference
manager can catch the client's mistakes instead of sharing them.
"""

from __future__ import annotations

from ._process import ReferenceManager as ReferenceManager
from ._process import ReferenceManagerError as ReferenceManagerError

__all__ = ("ReferenceManager", "ReferenceManagerError")
