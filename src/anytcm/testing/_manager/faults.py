"""Fault switches: how tests make the reference manager slow, silent, flaky or dead on purpose.

Switches are set at start (`--fault KEY=VALUE`) or at run time (`GET /_admin/faults?KEY=VALUE`);
both go through `FaultSwitches.apply`, so the two ways cannot drift apart.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


class FaultSwitchError(ValueError):
    """An unknown switch or a value of the wrong form."""


@dataclass
class FaultSwitches:
    """The live set of faults. Read by the server on every request it handles."""

    latency_ms: dict[str, float] = field(default_factory=dict)
    errors: dict[str, tuple[str, int]] = field(default_factory=dict)  # model -> (code, left; -1 ∞)
    hang_fraction: float = 0.0
    drop_after_frames: int = 0
    ready_503_until: float = 0.0
    stall: bool = False
    exit_code: int | None = None
    _random: random.Random = field(default_factory=lambda: random.Random(0))

    def apply(self, items: Iterable[tuple[str, str]]) -> None:
        """Apply `key=value` settings; raises FaultSwitchError naming the bad one."""
        for key, value in items:
            try:
                self._apply_one(key, value)
            except ValueError as exc:
                raise FaultSwitchError(f"fault {key}={value!r}: {exc}") from None

    def _apply_one(self, key: str, value: str) -> None:
        if key.startswith("latency."):
            self.latency_ms[key.removeprefix("latency.")] = float(value)
        elif key.startswith("error."):
            code, _, times = value.partition(":")
            if code:
                self.errors[key.removeprefix("error.")] = (code, int(times) if times else -1)
            else:
                self.errors.pop(key.removeprefix("error."), None)
        elif key == "hang_fraction":
            fraction = float(value)
            if not 0.0 <= fraction <= 1.0:
                raise ValueError("must be between 0 and 1")
            self.hang_fraction = fraction
        elif key == "hang_seed":
            self._random.seed(int(value))
        elif key == "drop_after_frames":
            self.drop_after_frames = int(value)
        elif key == "ready_503_seconds":
            self.ready_503_until = time.monotonic() + float(value)
        elif key == "stall":
            self.stall = value.lower() in ("1", "true", "yes", "on")
        elif key == "exit":
            self.exit_code = int(value)
        elif key == "reset":
            self.reset()
        else:
            raise ValueError("unknown fault switch (see docs/reference-manager.md)")

    def reset(self) -> None:
        self.latency_ms.clear()
        self.errors.clear()
        self.hang_fraction = 0.0
        self.drop_after_frames = 0
        self.ready_503_until = 0.0
        self.stall = False

    def should_hang(self) -> bool:
        return self.hang_fraction > 0 and self._random.random() < self.hang_fraction

    def take_error(self, model: str) -> str | None:
        """The code to fail this request of `model` with, consuming one of a limited count."""
        entry = self.errors.get(model)
        if entry is None:
            return None
        code, left = entry
        if left == 0:
            return None
        if left > 0:
            self.errors[model] = (code, left - 1)
        return code

    def not_ready(self) -> bool:
        return time.monotonic() < self.ready_503_until

    def snapshot(self) -> dict[str, Any]:
        return {
            "latency_ms": dict(self.latency_ms),
            "errors": {m: {"code": c, "left": n} for m, (c, n) in self.errors.items()},
            "hang_fraction": self.hang_fraction,
            "drop_after_frames": self.drop_after_frames,
            "ready_503_remaining_s": max(0.0, self.ready_503_until - time.monotonic()),
            "stall": self.stall,
        }


def parse_assignment(text: str) -> tuple[str, str]:
    """`KEY=VALUE` -> (key, value)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise FaultSwitchError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()
