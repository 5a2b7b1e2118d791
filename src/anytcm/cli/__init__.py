"""The `anytcm` command line (also `python -m anytcm`): the argparse front.

Each command lives in its own module of this package (`_infer`, `_ready`...) as a function of
a `CliContext` (the global options) returning an exit code; this module only parses,
dispatches, and turns expected failures into one line on stderr and the exit code `_errors`
assigns. Modules are
imported when their command runs, so `anytcm --help` stays fast and the reference manager's
dependencies are needed only by `demo` and `serve-dev`.

The global options (`--url`, `--token`, `--json`, `--timeout`, `--backend`, `--verbose`) are
accepted before or after the command: `anytcm --json ready` and `anytcm ready --json` agree.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from .. import __version__
from .._core.managers import distinct_urls
from ._context import BACKENDS, DEFAULT_TIMEOUT, DEFAULT_URL, SIGNALS, CliContext
from ._errors import (
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXPECTED_ERRORS,
    Interrupted,
    UsageError,
    contains_interrupt,
    describe,
    exit_code_for,
    report,
)

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

URL_VARIABLE = "ANYTCM_URL"
TOKEN_VARIABLE = "ANYTCM_TOKEN"


def _ws_url(text: str) -> str:
    if not text.startswith(("ws://", "wss://")):
        raise argparse.ArgumentTypeError(
            f"not a WebSocket URL: {text!r} (expected ws://HOST:PORT/ws or wss://...)"
        )
    return text


def _ws_urls(text: str) -> list[str]:
    """One `--url` value, or `$ANYTCM_URL`: one URL or several separated by commas (a TCM URL
    has none of its own), each checked; blanks around them and empty items are ignored, so a
    list built by a script with a trailing comma still reads."""
    urls = [_ws_url(item) for item in (part.strip() for part in text.split(",")) if item]
    if not urls:
        raise argparse.ArgumentTypeError(f"no URL in {text!r}")
    return urls


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535 (0 picks a free one), got {text}")
    return value


def _add_global_options(parser: argparse.ArgumentParser, *, with_defaults: bool) -> None:
    """The global options; on subcommands their default is SUPPRESS, so that a value given
    before the command is not overwritten by the subcommand's default."""

    def default(value: Any) -> Any:
        return value if with_defaults else argparse.SUPPRESS

    group = parser.add_argument_group("global options")
    # --url and --token default to None and are resolved from the environment after parsing,
    # so that no parser (nor the generated CLI reference) ever holds the caller's token.
    # A subcommand parses into a namespace of its own, which then overwrites the root's: URLs
    # given after the command go to another attribute, so that `--url A ready --url B` keeps A.
    group.add_argument(
        "--url",
        type=_ws_urls,
        action="extend",
        dest="url" if with_defaults else "urls_after_command",
        metavar="URL",
        default=default(None),
        help="a manager's WebSocket URL; repeat it (or separate URLs with commas) for several "
        "managers, which the client treats as one service (default: "
        f"${URL_VARIABLE}, comma-separated likewise, else {DEFAULT_URL})",
    )
    token = group.add_mutually_exclusive_group()
    token.add_argument(
        "--token",
        default=default(None),
        help=f"the manager's auth token (default: ${TOKEN_VARIABLE}); never printed. On a "
        "shared machine prefer --token-file or the variable: a command line shows in `ps`",
    )
    token.add_argument(
        "--token-file",
        metavar="PATH",
        default=default(None),
        help="read the auth token from this file (its first line; `-` for stdin), which keeps "
        "it out of the process list and the shell history",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="machine-readable output: one JSON document on stdout",
    )
    group.add_argument(
        "--timeout",
        type=_positive_float,
        default=default(DEFAULT_TIMEOUT),
        metavar="SECONDS",
        help=f"deadline of connecting and of each call (default {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        default=default("asyncio"),
        help="the async library to run on (default asyncio; trio needs anytcm[trio])",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="log what the client does (connections, retries) on stderr",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anytcm",
        description="Tools for the Triton Client Manager (TCM) WebSocket API.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"anytcm {__version__}")
    _add_global_options(parser, with_defaults=True)
    shared = argparse.ArgumentParser(add_help=False)
    _add_global_options(shared, with_defaults=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=summary, description=description, epilog=EXIT_CODES_HELP, parents=[shared]
        )

    demo = command(
        "demo",
        "start a local reference manager and run every carrier, a stream and queue_stats",
        "Start the reference manager (shared memory on; zstd when anytcm-zstd is installed), "
        "run the 'double' model through every carrier at 4 KiB and 1 MiB (json must refuse "
        "1 MiB: over the 64 KiB frame cap), a stream and a queue_stats call, then a failover "
        "(one client over that manager and a second one, the second SIGKILLed between "
        "inferences, which must all succeed), print a table and stop the managers. Exit 0 "
        "when every check passes, 1 otherwise. Ignores --url and --token: it talks to the "
        "managers it starts.",
    )
    demo.add_argument(
        "--rounds",
        type=_positive_int,
        default=5,
        help="timed calls per row; the table shows their median (default 5)",
    )
    demo.add_argument(
        "--port", type=_port, default=0, help="port of the reference manager (default: a free one)"
    )
    demo.add_argument(
        "--carrier",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this carrier (json, shm, zstd); repeatable (default: every one installed)",
    )

    ready = command(
        "ready",
        "ask the managers' readiness probe (GET /ready)",
        "GET /ready of the manager behind --url. Exit 0 ready, 1 not ready (it answered, e.g. "
        "503 while starting or draining), 2 unreachable or bad usage. With several managers "
        "(--url repeated): one line (one JSON entry) per manager, asked at once; exit 0 when "
        "every one is ready (with --any: at least one), else 1, or 2 when none answered.",
    )
    ready.add_argument(
        "--any",
        action="store_true",
        help="with several managers: exit 0 when at least one is ready (the client can serve "
        "through it) rather than when all are",
    )

    stats = command(
        "queue-stats",
        "print the manager's queue statistics, or load it with --repeat",
        "One info queue_stats call, printed. With --repeat N: N calls, --concurrency at a "
        "time, a progress bar, then latency percentiles (p50/p95/p99) and requests/s.",
    )
    stats.add_argument("--repeat", type=_positive_int, metavar="N", help="load mode: N calls")
    stats.add_argument(
        "--concurrency",
        type=_positive_int,
        metavar="C",
        help="load mode: calls in flight at once (default 1; needs --repeat)",
    )
    stats.add_argument(
        "--pool-size",
        type=_positive_int,
        metavar="P",
        help="load mode: connections to open (default: min(concurrency, 8))",
    )

    infer = command(
        "infer",
        "run one inference from .npy/.npz/.json inputs",
        "Run MODEL on the target server (--vm-ip, --container-id) with inputs read from "
        "files; print the outputs, or save them with --save.",
    )
    from ._inputs import INPUT_HELP

    infer.add_argument("model", help="the model name")
    infer.add_argument("--vm-ip", required=True, help="the target Triton server's VM address")
    infer.add_argument("--container-id", required=True, help="the target server's container id")
    infer.add_argument(
        "--input", action="append", default=[], required=True, metavar="INPUT", help=INPUT_HELP
    )
    infer.add_argument(
        "--carrier",
        default="auto",
        help="how inputs travel: auto (json when it fits 64 KiB, else shm), json, shm, a "
        "plugin's name, or a preference list such as zstd,auto (see `anytcm carriers list`)",
    )
    infer.add_argument(
        "--output-dtype",
        action="append",
        default=[],
        metavar="NAME=DATATYPE",
        help="decode output NAME as this Triton datatype (e.g. OUTPUT0=FP32); repeatable. "
        "Without it, integers decode as INT64 and floats as FP64 (outputs carry no datatype)",
    )
    infer.add_argument(
        "--save",
        metavar="FILE.npz",
        help="save the outputs to an .npz archive (BYTES as fixed-width bytes, no pickle)",
    )
    infer.add_argument(
        "--allow-transient",
        action="store_true",
        help="let the manager reach a server it has not registered (request.allow_transient)",
    )

    carriers = commands.add_parser(
        "carriers",
        help="list carrier (and transport) plugins",
        description="Carrier plugins (how tensors travel) and transports.",
    )
    carrier_commands = carriers.add_subparsers(dest="carriers_command", required=True)
    carrier_commands.add_parser(
        "list",
        help="every carrier and transport with its distribution and version",
        description="Every registered carrier (entry points 'anytcm.carriers') and transport "
        "('anytcm.transports'), with the distribution and version providing it. Imports none.",
        parents=[shared],
    )

    serve = commands.add_parser(
        "serve-dev",
        help="run the reference manager (a local TCM server) in the foreground",
        description="Run the anytcm reference manager: an independent implementation of the "
        "TCM server with a numpy model zoo and fault switches. SIGTERM drains, Ctrl-C stops.",
    )
    from ..testing._manager.main import build_parser as build_serve_parser

    build_serve_parser(serve)
    serve.add_argument(
        "--replicas",
        type=_positive_int,
        default=1,
        metavar="N",
        help="run N reference managers, each its own process with its own state, as TCM "
        "replicas are; prints their URLs and the ANYTCM_URL to use, and stops them all on "
        "Ctrl-C (SIGTERM drains them). With --port P they listen on P, P+1, ... P+N-1; with "
        "--port 0 each on a free port. Not with --certfile (default 1: one manager, in this "
        "process)",
    )
    return parser


def _context(args: argparse.Namespace) -> CliContext:
    urls = _urls(args)
    return CliContext(
        url=urls[0],
        urls=urls,
        token=_token(args),
        json=args.json,
        timeout=args.timeout,
        backend=args.backend,
    )


def _urls(args: argparse.Namespace) -> tuple[str, ...]:
    """--url (every one, before and after the command), else $ANYTCM_URL, else the default."""
    given = [*(args.url or ()), *getattr(args, "urls_after_command", ())]
    source = "--url"
    if not given:
        source = f"${URL_VARIABLE}"
        try:
            given = _ws_urls(os.environ.get(URL_VARIABLE) or DEFAULT_URL)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"{source}: {exc}") from None
    try:
        return distinct_urls(given)
    except ValueError as exc:
        raise UsageError(f"{source}: {exc}") from None


def _token(args: argparse.Namespace) -> str | None:
    """--token, else --token-file, else $ANYTCM_TOKEN (an empty one counts as none)."""
    if args.token is not None:
        return str(args.token)
    path = getattr(args, "token_file", None)
    if path is None:
        return os.environ.get(TOKEN_VARIABLE) or None
    try:
        if path == "-":
            text = sys.stdin.readline()
        else:
            with open(path, encoding="utf-8") as file:
                text = file.readline()
    except OSError as exc:
        raise UsageError(f"--token-file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        # Never quote the content: it is meant to be a secret.
        raise UsageError(f"--token-file {path}: not UTF-8 text") from None
    token = text.strip()
    if not token:
        raise UsageError(f"--token-file {path}: the file is empty; put the token on its first line")
    return token


def _dispatch(args: argparse.Namespace, context: CliContext) -> int:
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(context, rounds=args.rounds, port=args.port, only=args.carrier)
    if args.command == "ready":
        from ._ready import run_ready

        return run_ready(context, any_ready=args.any)
    if args.command == "queue-stats":
        from ._queue_stats import LoadOptions, run_queue_stats

        if args.repeat is None:
            if args.concurrency is not None or args.pool_size is not None:
                raise UsageError("--concurrency and --pool-size need --repeat N (load mode)")
            return run_queue_stats(context, None)
        concurrency = min(args.concurrency or 1, args.repeat)
        pool_size = args.pool_size or min(concurrency, 8)
        return run_queue_stats(context, LoadOptions(args.repeat, concurrency, pool_size))
    if args.command == "infer":
        from ..results import Target
        from ._infer import InferOptions, check_save_path, run_infer
        from ._inputs import parse_output_dtypes, read_inputs

        carriers = tuple(name.strip() for name in args.carrier.split(",") if name.strip())
        options = InferOptions(
            model=args.model,
            target=Target(args.vm_ip, args.container_id),
            inputs=read_inputs(args.input),
            carrier=carriers or ("auto",),
            output_dtypes=parse_output_dtypes(args.output_dtype),
            save=check_save_path(args.save),
            allow_transient=args.allow_transient,
        )
        return run_infer(context, options)
    if args.command == "carriers":
        from ._carriers import run_carriers_list

        return run_carriers_list(context)
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse allows no other


def _configure_logging(verbose: bool) -> None:
    """-v: the client's log on stderr. Otherwise none: failures arrive as one line each, and
    Python's last-resort handler would print the client's warnings a second time."""
    if verbose:
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    else:
        library = logging.getLogger("anytcm")
        if not any(isinstance(h, logging.NullHandler) for h in library.handlers):
            library.addHandler(logging.NullHandler())


def run(argv: Sequence[str] | None = None, *, keep_signal_handlers: bool = False) -> int:
    """Parse and run one command; returns its exit code (argparse exits 2 by itself).

    SIGINT/SIGTERM handlers (`SIGNALS`) are installed for the run and restored after it,
    unless `keep_signal_handlers` (the `anytcm` process itself: a second Ctrl-C while it
    exits must not turn into a KeyboardInterrupt traceback)."""
    args = build_parser().parse_args(argv)
    if args.command == "serve-dev":
        if args.replicas > 1:
            from ._serve import run_replicas

            return run_replicas(args)
        from ..testing._manager.main import serve_from_arguments

        serve_from_arguments(args)
        return EXIT_OK
    SIGNALS.install()
    try:
        return _run_command(args)
    except Interrupted as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if not keep_signal_handlers:
            SIGNALS.uninstall()


def _run_command(args: argparse.Namespace) -> int:
    _configure_logging(args.verbose)
    try:
        context = _context(args)
    except UsageError as exc:
        report(describe(exc))
        return exc.exit_code
    try:
        return _dispatch(args, context)
    except KeyboardInterrupt:
        raise
    except BrokenPipeError:
        raise  # stdout's reader went away (`| head`): nothing to tell it; see main()
    except EXPECTED_ERRORS as exc:
        code = exit_code_for(exc)
        report(describe(exc))
        if context.json:
            from ._output import print_json

            print_json(
                {"error": {"type": type(exc).__name__, "message": str(exc), "exit_code": code}}
            )
        return code
    except BaseExceptionGroup as group:
        if contains_interrupt(group):
            return EXIT_INTERRUPTED
        raise


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The `anytcm` entry point: run the command and exit with its code.

    A closed stdout (`anytcm --json ... | head -c 10`) ends the run quietly with exit code 1,
    as Python's documentation recommends (stdout is pointed at /dev/null so that the final
    flush cannot fail again).
    """
    try:
        code = run(argv, keep_signal_handlers=True)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_FAILURE)
    if code >= 128:  # a signal: one more arriving while the interpreter shuts down is moot
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        _exit_despite_threads(code)
    sys.exit(code)


def _exit_despite_threads(code: int, grace: float = 2.0) -> None:
    """After a signal, a non-daemon thread (a library's worker) must not keep us alive."""
    deadline = time.monotonic() + grace
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        thread.join(max(deadline - time.monotonic(), 0))
        if thread.is_alive():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
