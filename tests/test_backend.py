"""The one backend probe and the one clock (`anytcm._backend`), on asyncio and trio.

Every backend-specific path asks `current_backend()`, and every deadline is a time on `clock()`;
both must agree with what anyio itself sees, and the package must not lean on sniffio, which a
plain install does not bring.
"""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import anyio
import pytest

import anytcm
from anytcm._backend import clock, current_backend


def test_outside_any_loop() -> None:
    assert current_backend() == "other"
    assert clock() is anyio.current_time  # works later, inside whichever loop calls it


@pytest.mark.anyio
async def test_inside_the_loop(anyio_backend_name: str) -> None:
    assert current_backend() == anyio_backend_name
    now = clock()
    before = anyio.current_time()
    ours = now()
    after = anyio.current_time()
    assert before <= ours <= after  # the very clock anyio reads, not another one


@pytest.mark.anyio
async def test_a_worker_thread_runs_no_loop() -> None:
    seen: list[str] = []
    await anyio.to_thread.run_sync(lambda: seen.append(current_backend()))
    assert seen == ["other"]


def test_trio_imported_but_not_running_in_this_thread() -> None:
    import trio

    seen: list[str] = []

    async def main() -> None:
        seen.append(current_backend())
        seen.append(await trio.to_thread.run_sync(current_backend))

    thread = threading.Thread(target=trio.run, args=(main,))
    thread.start()
    thread.join()
    assert seen == ["trio", "other"]
    assert current_backend() == "other"  # this thread runs no trio, though trio is imported


def test_no_module_imports_sniffio() -> None:
    offenders = []
    for path in sorted(Path(anytcm.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [f"{path}:{node.lineno}" for n in names if n.split(".")[0] == "sniffio"]
    assert offenders == []
