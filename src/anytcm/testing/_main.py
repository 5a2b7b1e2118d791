"""Command line of the reference manager (also reached as `anytcm serve-dev`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ._config import add_server_arguments, config_from_arguments


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="python -m anytcm.testing",
        description="Run the anytcm reference manager (a TCM server for tests and development).",
    )
    add_server_arguments(parser)
    return parser


def serve_from_arguments(args: argparse.Namespace) -> None:
    """Start the server; a missing `testing` extra becomes an install hint, not a traceback."""
    config = config_from_arguments(args)
    try:
        from ._server import run
    except ImportError as exc:
        raise SystemExit(
            f"the reference manager needs the 'testing' extra ({exc.name} is missing): "
            'pip install "anytcm[testing]"'
        ) from None
    run(config)


def main(argv: Sequence[str] | None = None) -> None:
    serve_from_arguments(build_parser().parse_args(argv))
