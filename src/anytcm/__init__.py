"""anytcm: the async (asyncio and trio) client for the Triton Client Manager WebSocket API.

```python
async with anytcm.connect("ws://127.0.0.1:8000/ws", pool_size=4) as tcm:
    result = await tcm.infer("double", {"INPUT0": x}, target=anytcm.Target("127.0.0.1", "ref-0"))
    y = result.as_numpy("OUTPUT0")
```

Names are imported lazily: `import anytcm` stays cheap, and the reference manager
(`anytcm.testing`) can run without loading any client code.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

# A library's loggers stay silent until the application configures logging (without this,
# Python's last-resort handler prints anytcm's warnings to stderr on its own).
logging.getLogger(__name__).addHandler(logging.NullHandler())

_EXPORTS = {
    "connect": "client",
    "AsyncClient": "client",
    "InferStream": "client",
    "ConnectOptions": "options",
    "ManagerStatus": "_core.managers",
    "SelectionPolicy": "_core.managers",
    "RoundRobin": "_core.managers",
    "LeastBusy": "_core.managers",
    "Target": "results",
    "Tensor": "results",
    "TensorSpec": "results",
    "ModelSpec": "results",
    "InferResult": "results",
    "StreamEvent": "results",
    "QueueStats": "results",
    "SHMReference": "wire",
    "RetryPolicy": "retry",
    "Retry": "retry",
    "TcmError": "errors",
    "ConnectError": "errors",
    "NoManagerAvailable": "errors",
    "NotReady": "errors",
    "HandshakeRejected": "errors",
    "AuthError": "errors",
    "ConnectionLost": "errors",
    "ServerShutdown": "errors",
    "ProtocolError": "errors",
    "RequestError": "errors",
    "InferenceFailed": "errors",
    "ContractError": "errors",
    "Forbidden": "errors",
    "Backpressure": "errors",
    "PayloadTooLarge": "errors",
    "InvalidInput": "errors",
    "ManagementFailed": "errors",
    "RequestTimeout": "errors",
    "CarrierError": "errors",
    "UnknownCarrier": "errors",
    "CarrierUnavailable": "errors",
    "ClientClosed": "errors",
    "SyncClient": "sync_client",
}

__all__ = (
    "AsyncClient",
    "AuthError",
    "Backpressure",
    "CarrierError",
    "CarrierUnavailable",
    "ClientClosed",
    "ConnectError",
    "ConnectOptions",
    "ConnectionLost",
    "ContractError",
    "Forbidden",
    "HandshakeRejected",
    "InferResult",
    "InferStream",
    "InferenceFailed",
    "InvalidInput",
    "LeastBusy",
    "ManagementFailed",
    "ManagerStatus",
    "ModelSpec",
    "NoManagerAvailable",
    "NotReady",
    "PayloadTooLarge",
    "ProtocolError",
    "QueueStats",
    "RequestError",
    "RequestTimeout",
    "Retry",
    "RetryPolicy",
    "RoundRobin",
    "SHMReference",
    "SelectionPolicy",
    "ServerShutdown",
    "StreamEvent",
    "SyncClient",
    "Target",
    "TcmError",
    "Tensor",
    "TensorSpec",
    "UnknownCarrier",
    "__version__",
    "connect",
)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'anytcm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"anytcm.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from ._core.managers import LeastBusy as LeastBusy
    from ._core.managers import ManagerStatus as ManagerStatus
    from ._core.managers import RoundRobin as RoundRobin
    from ._core.managers import SelectionPolicy as SelectionPolicy
    from .client import AsyncClient as AsyncClient
    from .client import InferStream as InferStream
    from .client import connect as connect
    from .errors import AuthError as AuthError
    from .errors import Backpressure as Backpressure
    from .errors import CarrierError as CarrierError
    from .errors import CarrierUnavailable as CarrierUnavailable
    from .errors import ClientClosed as ClientClosed
    from .errors import ConnectError as ConnectError
    from .errors import ConnectionLost as ConnectionLost
    from .errors import ContractError as ContractError
    from .errors import Forbidden as Forbidden
    from .errors import HandshakeRejected as HandshakeRejected
    from .errors import InferenceFailed as InferenceFailed
    from .errors import InvalidInput as InvalidInput
    from .errors import ManagementFailed as ManagementFailed
    from .errors import NoManagerAvailable as NoManagerAvailable
    from .errors import NotReady as NotReady
    from .errors import PayloadTooLarge as PayloadTooLarge
    from .errors import ProtocolError as ProtocolError
    from .errors import RequestError as RequestError
    from .errors import RequestTimeout as RequestTimeout
    from .errors import ServerShutdown as ServerShutdown
    from .errors import TcmError as TcmError
    from .errors import UnknownCarrier as UnknownCarrier
    from .options import ConnectOptions as ConnectOptions
    from .results import InferResult as InferResult
    from .results import ModelSpec as ModelSpec
    from .results import QueueStats as QueueStats
    from .results import StreamEvent as StreamEvent
    from .results import Target as Target
    from .results import Tensor as Tensor
    from .results import TensorSpec as TensorSpec
    from .retry import Retry as Retry
    from .retry import RetryPolicy as RetryPolicy
    from .sync_client import SyncClient as SyncClient
    from .wire import SHMReference as SHMReference
