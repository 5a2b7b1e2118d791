"""Test support: the reference manager, an independent implementation of the TCM server.

`ReferenceManager` runs it as a separate process; `ReferenceCluster(n)` runs n of them, each
with its own state, as TCM replicas are. The server itself (`anytcm serve-dev`) needs
the `testing` extra: `pip install "anytcm[testing]"`.

The server itself lives in `_manager/`, which imports nothing of the client (only the standard
library, third-party packages and itself; a test enforces it), so the reference manager can
catch the client's mistakes instead of sharing them. `ReferenceManager` (here) only launches it
as a process. `anytcm.testing.carriers` is the other side: client-side test support, a
conformance suite for carrier plugins, which drives the client's carriers.
"""

from __future__ import annotations

from ._cluster import ReferenceCluster as ReferenceCluster
from ._process import ReferenceManager as ReferenceManager
from ._process import ReferenceManagerError as ReferenceManagerError

__all__ = ("ReferenceCluster", "ReferenceManager", "ReferenceManagerError")
