"""One WebSocket connection as the server sees it, and the checks every inbound frame passes.

The envelope rules and their exact messages follow the real server (ws.py:183-213): a client
tells a validation failure from anything else by these strings alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection

VALID_TYPES = ["auth", "info", "management", "inference"]
# Answered on the read path, never queued: the real server serves them outside the job queues.
FAST_PATH_ACTIONS = ("queue", "queue_stats")
CLOSE_POLICY = 1008
CLOSE_RESTART = 1012


class Reject(Exception):
    """Send an error frame, then close with `code` (or keep the socket open when code is None)."""

    def __init__(self, message: str, code: int | None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.frame = {"type": "error", "payload": {**(extra or {}), "message": message}}
        self.code = code


class Dropped(Exception):
    """Drop the socket without a close frame."""


@dataclass(eq=False)  # identity semantics: clients live in sets
class Client:
    """State of one WebSocket connection."""

    ws: ServerConnection
    uuid: str | None = None
    roles: list[str] = field(default_factory=list)
    capability: list[str] = field(default_factory=list)
    frames: int = 0
    stalled: bool = False

    @property
    def tenant(self) -> str:
        return "unknown"  # simple and static-token modes carry no tenant claim

    def auth_context(self) -> dict[str, Any]:
        return {"sub": None, "tenant_id": None, "roles": self.roles, "capability": self.capability}


def parse_envelope(text: str, close: int | None) -> dict[str, Any]:
    """JSON and envelope validation (ws.py:183-213); `close` is the code to close with."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise Reject("Invalid JSON format", close) from None
    if not isinstance(message, dict):
        raise Reject("Invalid JSON format", close)
    for name in ("uuid", "type", "payload"):
        if name not in message:
            raise Reject(f"Missing required field: '{name}'", close)
    for name in ("uuid", "type"):
        if not isinstance(message[name], str):
            raise Reject(f"Field '{name}' must be a string", close)
    if not isinstance(message["payload"], dict):
        raise Reject("Field 'payload' must be a dictionary", close)
    if message["type"] not in VALID_TYPES:
        raise Reject(f"Invalid type '{message['type']}'. Must be one of: {VALID_TYPES}", close)
    return message


def info_action(payload: dict[str, Any]) -> str:
    return str(payload.get("action") or payload.get("request_type") or "unknown")
