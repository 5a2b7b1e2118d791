"""Task runner: `nox -s tests`, `nox -s lint`, `nox -s typecheck`.

Each session builds its own virtualenv from `pyproject.toml`, so a run on a fresh machine
needs nothing but Python and nox.
"""

from __future__ import annotations

import nox

nox.needs_version = ">=2024.10"
nox.options.sessions = ["tests", "lint", "typecheck"]
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


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install(*nox.project.dependency_groups(PROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, the tests and this file."""
    editable = [arg for path in PLUGINS for arg in ("-e", path)]
    session.install("-e", ".", *editable, *nox.project.dependency_groups(PROJECT, "typecheck"))
    session.run("mypy")
    # Each plugin's tests on their own: every tests/ folder has a conftest module of that name.
    for path in PLUGINS:
        session.run("mypy", f"{path}/tests")
