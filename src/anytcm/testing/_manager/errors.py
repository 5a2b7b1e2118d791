"""The two failure shapes of an inference job (contract §4.3 "FAILED data", §6.2, §6.3)."""

from __future__ import annotations

from typing import Any

# Codes whose error class is retriable in terr.py; everything else is fatal.
RETRIABLE_CODES = frozenset(
    {
        "TRITON_NETWORK",
        "TRITON_TIMEOUT",
        "TRITON_OVERLOADED",
        "TRITON_CIRCUIT_OPEN",
        "TRITON_SERVER_NOT_READY",
        "TRITON_MODEL_NOT_READY",
        "TRITON_CONFIG_DOWNLOAD_FAILED",
    }
)


class TritonError(Exception):
    """A typed Triton-facing error: FAILED with an object `data`."""

    def __init__(
        self,
        code: str,
        model: str,
        reason: str,
        *,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.model = model
        self.reason = reason
        self.retriable = code in RETRIABLE_CODES
        self.retry_after_seconds = retry_after_seconds

    def to_data(self) -> dict[str, Any]:
        """The FAILED payload `data` object, message formatted as terr.py:22-42 does."""
        data: dict[str, Any] = {
            "code": self.code,
            "message": (
                f"[TritonThread] {self.code}: model='{self.model}' "
                f"retriable={self.retriable} reason={self.reason}"
            ),
            "retriable": self.retriable,
        }
        if self.retry_after_seconds is not None:
            data["retry_after_seconds"] = self.retry_after_seconds
        return data


class ValidationFailure(Exception):
    """A request-validation problem: FAILED with a plain string `data` and `model_name: null`."""
