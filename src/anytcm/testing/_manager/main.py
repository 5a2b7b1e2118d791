"""Command line of the reference manager (also reached as `anytcm serve-dev`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from .config import ConfigError, add_server_arguments, config_from_arguments
from .faults import FaultSwitchError

#: Bad options, a port in use, a host that does not resolve: fix the command line.
EXIT_USAGE = 2


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="python -m anytcm.testing",
        description="Run the anytcm reference manager (a TCM server for tests and development).",
    )
    add_server_arguments(parser)
    return parser


def _fail(message: str) -> NoReturn:
    """One `anytcm: ...` line on stderr and exit 2, never a traceback."""
    print(f"anytcm: {' '.join(message.split())}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USAGE)


def serve_from_arguments(args: argparse.Namespace) -> None:
    """Start the server; a missing `testing` extra becomes an install hint, not a traceback,
    and so do bad options and a port or host it cannot listen on (one line, exit 2)."""
    try:
        config = config_from_arguments(args)
    except ConfigError as exc:
        _fail(str(exc))
    try:
        from .server import run
    except ImportError as exc:
        _fail(
            f"the reference manager needs the 'testing' extra ({exc.name} is missing): "
            'pip install "anytcm[testing]"'
        )
    try:
        run(config)
    except FaultSwitchError as exc:
        _fail(f"--fault: {exc}")
    except OSError as exc:  # EADDRINUSE, a host that does not resolve or is not ours
        reason = exc.strerror or str(exc)
        _fail(f"cannot listen on {config.host}:{config.port}: {reason}")


def main(argv: Sequence[str] | None = None) -> None:
    serve_from_arguments(build_parser().parse_args(argv))
