"""Shared helpers of the `anytcm` command-line tests (tests/test_cli*.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from anytcm.cli import main
from anytcm.cli._context import SIGNALS

BACKENDS = ["asyncio", "trio"]


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> Outcome:
    """`anytcm ARGS...` in this process; main() always exits, as the installed script does."""
    try:
        with pytest.raises(SystemExit) as exited:
            main(list(args))
    finally:
        SIGNALS.uninstall()  # main() keeps its SIGINT/SIGTERM handlers, as a process should
    captured = capsys.readouterr()
    code = exited.value.code
    assert isinstance(code, int)
    return Outcome(code, captured.out, captured.err)


def run_anytcm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m anytcm ARGS...` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "anytcm", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    """Expected failures: exactly one `anytcm: ...` line on stderr, no traceback."""
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("anytcm: ")
    for fragment in fragments:
        assert fragment in lines[0], stderr
