"""The `anytcm` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anytcm", description="Tools for the Triton Client Manager (TCM) WebSocket API."
    )
    parser.add_argument("--version", action="version", version=f"anytcm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve-dev",
        help="run the reference manager (a local TCM server) in the foreground",
        description="Run the anytcm reference manager: an independent implementation of the "
        "TCM server with a numpy model zoo and fault switches. SIGTERM drains, Ctrl-C stops.",
    )
    from .testing._main import build_parser as build_serve_parser

    build_serve_parser(serve)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "serve-dev":
        from .testing._main import serve_from_arguments

        serve_from_arguments(args)
