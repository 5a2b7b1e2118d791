"""Task runner: `nox -s tests`, `nox -s vendor_sdk`, `nox -s lint`, `nox -s typecheck`,
`nox -s docs`.

Each session builds its own virtualenv from `pyproject.toml`, so a run on a fresh machine
needs nothing but Python and nox.
"""

from __future__ import annotations

import nox

nox.needs_version = ">=2024.10"
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

PROJECT = nox.project.load_toml("pyproject.toml")
# The plugins ship as their own distributions (as a third party's would) and are tested here.
PLUGINS = ("plugins/anytcm-zstd", "plugins/anytcm-trio-websocket")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite (every async test on asyncio and on trio), plugins included."""
    editable = [arg for path in PLUGINS for arg in ("-e", path)]
    session.install("-e", ".", *editable, *nox.project.dependency_groups(PROJECT, "test"))
    session.run("pytest", *session.posargs)
    # Part of the suite, in a venv of its own (see vendor_sdk): `nox -s tests` runs it too.
    session.notify("vendor_sdk")


@nox.session
def vendor_sdk(session: nox.Session) -> None:
    """The vendor SDK (tcm-client 2.0.0) against the reference manager, in a venv of its own.

    tcm-client pins websockets<17; in the `tests` session it would drag the whole suite down to
    websockets 16, so tests/test_vendor_sdk.py is skipped there and runs here.
    """
    session.install("-e", ".", *nox.project.dependency_groups(PROJECT, "vendor-sdk"))
    session.run("pytest", "tests/test_vendor_sdk.py", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install(*nox.project.dependency_groups(PROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation into docs/_build/html; any Sphinx warning fails the build.

    `-E` reads every page again: Sphinx otherwise skips unchanged pages, and with them the
    warnings they raised last time, so a second run would pass on the same broken page.
    """
    # anytcm-zstd is documented as the worked example of a carrier plugin.
    zstd = "plugins/anytcm-zstd"
    session.install("-e", ".", "-e", zstd, *nox.project.dependency_groups(PROJECT, "docs"))
    session.run(
        "sphinx-build", "-E", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html",
        *session.posargs,
    )  # fmt: skip


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, the tests and this file."""
    editable = [arg for path in PLUGINS for arg in ("-e", path)]
    session.install("-e", ".", *editable, *nox.project.dependency_groups(PROJECT, "typecheck"))
    session.run("mypy")
    # Each plugin's tests on their own: every tests/ folder has a conftest module of that name.
    for path in PLUGINS:
        session.run("mypy", f"{path}/tests")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Every benchmark in one go (~10 minutes on 2 cores): benchmarks/results/report.md + .png.

    Not a default session: it measures, it checks nothing. Arguments go to
    benchmarks/report.py: `nox -s bench -- --render-only` redraws from the saved figures,
    `-- --quick` is a short run. The vendor SDK gets its own venv (benchmarks/.venv-vendor,
    from PyPI) on the first run.
    """
    editable = [arg for path in PLUGINS for arg in ("-e", path)]
    session.install("-e", ".", *editable, *nox.project.dependency_groups(PROJECT, "bench"))
    session.run("python", "benchmarks/report.py", *session.posargs)
