"""Task runner: `nox -s tests`, `nox -s fast`, `nox -s vendor_sdk`, `nox -s lint`,
`nox -s typecheck`, `nox -s docs` (the test tiers: CONTRIBUTING.md).

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


# Run a second time with every fast path off (ANYTCM_NO_FAST_PATHS=1), so the general paths the
# fast paths shortcut stay correct: frame and tensor decoding and encoding (wire, tensors, the
# json carrier's inline path), the socket streams under the transport, and the client end to end.
# Chosen to cover each fast path for about a minute of the suite's ten: fault tests are left
# out (they exercise reconnection, not decoding), and so are the client modules that would only
# cover the same paths again.
GENERAL_PATH_TESTS = (
    "tests/test_wire.py",
    "tests/test_wire_cut.py",
    "tests/test_tensors.py",
    "tests/test_protocol.py",
    "tests/test_json_carrier.py",
    "tests/test_carrier_interface.py",
    "tests/test_ws_transport.py",
    "tests/test_client_infer.py",
    "tests/test_client_stream.py",
)


def _install_tests(session: nox.Session) -> None:
    editable = [arg for path in PLUGINS for arg in ("-e", path)]
    session.install("-e", ".", *editable, *nox.project.dependency_groups(PROJECT, "test"))


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite (every async test on asyncio and on trio), plugins included,
    then the wire, tensor and client tests again with every fast path off.

    Arguments go to pytest (`nox -s tests -- tests/test_cli.py -x`); given any, only that one
    pytest run happens.
    """
    _install_tests(session)
    session.run("pytest", *session.posargs)
    if not session.posargs:
        session.run(
            "pytest", "-m", "not fault", *GENERAL_PATH_TESTS, env={"ANYTCM_NO_FAST_PATHS": "1"}
        )
    # Part of the suite, in a venv of its own (see vendor_sdk): `nox -s tests` runs it too.
    session.notify("vendor_sdk")


@nox.session(default=False)
def fast(session: nox.Session) -> None:
    """The developer's loop: everything but the fault tests (managers killed, stalled,
    restarted) and the client suite re-run over a plugin transport. Arguments go to pytest."""
    _install_tests(session)
    session.run("pytest", "-m", "not fault and not client_suite", *session.posargs)


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
