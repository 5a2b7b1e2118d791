"""Every Python example of README.md, docs/*.md and the plugins' READMEs runs, as written.

Sybil finds the examples: each ```python fence (and `{code-block} python` directive) of a page,
in MyST and plain Markdown alike. Other fences (`console`, `text`, `json`, `toml`) are not
Python and are not run. A page's examples run in order in one namespace, as a reader runs them
one after the other; one test per page, so a later example may use what an earlier one defined.

What the pages assume, the harness provides:

* **A manager at the documented address.** One reference manager (offering `zstd`, as the zstd
  pages say it must) serves every page. Examples name `ws://127.0.0.1:8000/ws` (or the
  placeholder `ws://manager:8000/ws`), which users copy as is; the harness substitutes the
  manager's real address, picked free, rather than claim port 8000 on a shared CI machine. Any
  other `ws://` address in an example fails the test, so none can try to reach a real host.
* **The names a fragment continues from**: `url`, `x` (a 2x3 FP32 array for `double`),
  `target` (also `t`) and a connected client `tcm` (also `client`), with `np` and `anytcm`.
  Fragments that `await` at the top level run on an event loop of their own (an anyio
  blocking portal), where that client lives. Full programs (`anyio.run(main)`) run as scripts.
* **Files**: a block whose first line is `# conftest.py` or `# test_<name>.py` is written to a
  directory of its own, and a test module is then run with pytest in a subprocess, the way a
  user who copies both files runs them.

`% skip: next "why"` (MyST) or `<!-- skip: next "why" -->` (plain Markdown) above a block skips
it; the reason is reported as a skip. Every example must finish within `EXAMPLE_SECONDS`.
"""

from __future__ import annotations

import ast
import inspect
import io
import re
import subprocess
import sys
import tokenize
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from unittest import SkipTest

import anyio
import numpy as np
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from sybil import Example, Sybil
from sybil.parsers.myst import CodeBlockParser, SkipParser

import anytcm
from anytcm.plugins import carrier_names, unregister_carrier
from anytcm.testing import ReferenceManager

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted(
    str(path.relative_to(ROOT))
    for path in [
        ROOT / "README.md",
        *ROOT.glob("plugins/*/README.md"),
        *ROOT.glob("docs/*.md"),
    ]
)
# The addresses the pages use for "your manager"; anything else in an example is a mistake.
DOCUMENTED_URLS = ("ws://127.0.0.1:8000/ws", "ws://manager:8000/ws")
_URL = re.compile(r"""wss?://[^"'\s]+""")
_FILE_BLOCK = re.compile(r"\A# (?P<name>(conftest|test_\w+)\.py)\n")
# A hang guard for an awaited example, not a speed limit (CI machines are slow and noisy): an
# example is a few requests, so one still waiting after this long is hanging.
EXAMPLE_SECONDS = 30.0
# A page of test files (docs/testing.md) runs a user's test session, server start included.
TEST_FILE_SECONDS = 60.0


@pytest.fixture(scope="module")
def docs_manager() -> Iterator[ReferenceManager]:
    with ReferenceManager(extra_args=["--capability", "zstd"]) as manager:
        yield manager


class _Runner:
    """Runs one page's examples: substitutes the address, awaits top-level awaits, times."""

    def __init__(self, url: str, portal: BlockingPortal, workdir: Path) -> None:
        self.url = url
        self.portal = portal
        self.workdir = workdir

    def localise(self, source: str, where: str) -> str:
        for documented in DOCUMENTED_URLS:
            source = source.replace(documented, self.url)
        strays = [url for url in _string_urls(source) if url != self.url]
        if strays:
            pytest.fail(f"{where}: example names {strays}; use one of {DOCUMENTED_URLS}")
        return source

    def __call__(self, example: Example) -> None:
        __tracebackhide__ = True
        where = f"{Path(example.path).relative_to(ROOT)}:{example.line}"
        source = self.localise(str(example.parsed), where)
        file_block = _FILE_BLOCK.match(source)
        if file_block is not None:
            self.write_and_test(file_block["name"], source, where)
        else:
            # Line numbers in tracebacks are the page's own.
            padded = "\n" * (example.line + example.parsed.line_offset) + source
            code = compile(
                padded,
                example.path,
                "exec",
                flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                dont_inherit=True,
            )
            if code.co_flags & inspect.CO_COROUTINE:
                # eval() of top-level-await code returns a coroutine: create and await it on
                # the portal's loop, where the namespace's client lives.
                self.portal.call(
                    _await_within, EXAMPLE_SECONDS, lambda: eval(code, example.namespace)
                )
            else:
                exec(code, example.namespace)  # noqa: S102 - running the page's code is the test

    def write_and_test(self, name: str, source: str, where: str) -> None:
        (self.workdir / name).write_text(source, encoding="utf-8")
        if name == "conftest.py":
            return
        # The user's own pytest run: no ini file of this repository, warnings as errors so a
        # leaked resource or an unawaited coroutine in the example shows.
        (self.workdir / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"]
        done = subprocess.run(
            [*command, name],
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=TEST_FILE_SECONDS,
            check=False,
        )
        assert done.returncode == 0, f"{where}: pytest {name} failed:\n{done.stdout}{done.stderr}"


def _string_urls(source: str) -> list[str]:
    """The WebSocket URLs in the source's string literals: those an example may connect to (in a
    comment, a URL is only text)."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return [
        url
        for token in tokens
        if token.type == tokenize.STRING
        for url in _URL.findall(token.string)
    ]


def _forget_registered_carriers() -> None:
    for name in carrier_names():
        unregister_carrier(name)


async def _await_within(seconds: float, make: Callable[[], Awaitable[object]]) -> None:
    """A hanging example fails in `seconds`, not at pytest-timeout's limit for the whole page."""
    with anyio.fail_after(seconds):
        await make()


@pytest.mark.parametrize("page", DOCUMENTS)
def test_examples(page: str, docs_manager: ReferenceManager, tmp_path: Path) -> None:
    docs_manager.reset_faults()
    skipped: list[str] = []
    with ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal())
        client = stack.enter_context(
            portal.wrap_async_context_manager(anytcm.connect(docs_manager.ws_url, pool_size=2))
        )
        # Registrations a page makes (`register_carrier(...)`) must not outlive it.
        stack.callback(_forget_registered_carriers)
        target = anytcm.Target("127.0.0.1", "ref-0")
        namespace = {
            "url": docs_manager.ws_url,
            "x": np.arange(6, dtype=np.float32).reshape(2, 3),
            "target": target,
            "t": target,
            "tcm": client,
            "client": client,
            "np": np,
            "anytcm": anytcm,
        }
        runner = _Runner(docs_manager.ws_url, portal, tmp_path)
        sybil = Sybil(parsers=[CodeBlockParser("python", runner), SkipParser()])
        document = sybil.parse(ROOT / page)
        document.namespace.update(namespace)
        for example in document.examples():
            try:
                example.evaluate()
            except SkipTest as skip:
                skipped.append(f"line {example.line}: {skip}")
            # `async with anytcm.connect(...) as tcm: ...` leaves `tcm` naming the client that
            # block closed; the page's next fragment is read as running inside such a block.
            for name in ("tcm", "client"):
                if isinstance(document.namespace.get(name), anytcm.AsyncClient):
                    document.namespace[name] = client
    if skipped:
        print(f"{page}: skipped", *skipped, sep="\n  ")
