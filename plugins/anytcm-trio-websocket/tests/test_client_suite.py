"""anytcm's client test suite, on trio, with this transport.

`anytcm.connect` picks its transport from `$ANYTCM_TRANSPORT` when none is given, so the suite
in the anytcm checkout (`tests/test_client_*.py`) runs unchanged over trio-websocket: pool,
supervisor, sessions, faults, TLS, cancellation. It runs in a subprocess, with anytcm's own
pytest configuration, restricted to its trio runs (`-k trio`): this transport refuses asyncio.

The same command by hand, from the anytcm checkout:

    ANYTCM_TRANSPORT=trio-websocket pytest tests/test_client_*.py -k trio -q -p no:cacheprovider

Skipped when the plugin is tested outside an anytcm checkout (set ANYTCM_CHECKOUT to point at
one). Deselect with `-m "not client_suite"`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SUITE_TIMEOUT = 300  # seconds; ~25 s expected


def _checkout() -> Path:
    configured = os.environ.get("ANYTCM_CHECKOUT")
    # plugins/anytcm-trio-websocket/tests/this file -> the checkout holding plugins/
    return Path(configured) if configured else Path(__file__).resolve().parents[3]


@pytest.mark.client_suite
@pytest.mark.timeout(SUITE_TIMEOUT + 30)
def test_client_suite_passes_on_trio_with_this_transport() -> None:
    root = _checkout()
    files = sorted((root / "tests").glob("test_client_*.py"))
    if not files:
        pytest.skip(f"no anytcm client tests under {root / 'tests'} (set ANYTCM_CHECKOUT)")
    env = {
        **os.environ,
        "ANYTCM_TRANSPORT": "trio-websocket",
        "ANYTCM_DISABLE_PLUGIN_AUTOLOAD": "",  # the plugin is found through its entry point
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    command = [
        sys.executable, "-m", "pytest", *map(str, files),
        "-k", "trio", "-q", "-p", "no:cacheprovider", "--no-header",
    ]  # fmt: skip
    completed = subprocess.run(
        command,
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT,
        check=False,
    )
    output = completed.stdout + completed.stderr
    summary = re.findall(r"^=*\s*(\d+ passed.*|\d+ failed.*|no tests ran.*)$", output, re.MULTILINE)
    tail = "\n".join(output.splitlines()[-60:])
    assert completed.returncode == 0, f"client suite failed ({summary}):\n{tail}"
    passed = re.search(r"(\d+) passed", output)
    assert passed is not None, tail
    assert int(passed.group(1)) > 0, tail
    print(f"client suite with ANYTCM_TRANSPORT=trio-websocket: {summary[-1] if summary else ''}")
