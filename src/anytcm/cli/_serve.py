"""`anytcm serve-dev --replicas N`: N reference managers, as TCM is deployed (contract §14).

Each replica is a process of its own (`anytcm.testing.ReferenceCluster`), with its own port and
its own state: a server created through one is unknown to the others, exactly as with real
replicas. This process only launches them, prints where they listen, and waits: SIGINT stops
every replica at once (Ctrl-C in a terminal reaches them too, being in our process group),
SIGTERM drains every one (SYSTEM_SHUTDOWN, contract §7) and waits for the drains, then exits 0,
as one `serve-dev` does. Whatever is still running afterwards is SIGKILLed, and each replica
also exits by itself when this process dies (`--exit-with-parent`), so none outlives it.

A replica that dies on its own (a `--fault exit=...`, or a `kill -9` to see a client fail over)
is reported on stderr with its last output line; the others go on serving. When none is left
there is nothing to serve: exit 1.

The replicas get every serve-dev option this command got, rebuilt from the parsed values (see
`replica_arguments`), except `--host` and `--port`, which `ReferenceManager` sets itself per
replica. TLS is refused: the launcher's own readiness check of each replica would have to trust
the certificate, which it can only do for a certificate that verifies itself.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Final

from ._context import InstalledSignals
from ._errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, report

if TYPE_CHECKING:
    from ..testing import ReferenceManager

#: Options `ReferenceManager` sets itself (per replica), or that only make sense to this process.
_NOT_PASSED: Final = frozenset({"help", "host", "port", "exit_with_parent", "replicas"})
#: How often the launcher looks at its replicas and at its parent.
_POLL_SECONDS: Final = 0.2
#: Beyond the replicas' own drain deadline, what their exit may take before they are killed.
_EXIT_GRACE_SECONDS: Final = 5.0


def replica_arguments(args: argparse.Namespace) -> list[str]:
    """The serve-dev options of `args` as command-line arguments for one replica.

    Rebuilt from the serve-dev parser's own actions, so an option added to the reference
    manager reaches the replicas without this module knowing it; only options that differ
    from their default are written, each as `--option=value` (a value starting with `-` then
    stays a value).
    """
    from ..testing._manager.main import build_parser

    arguments: list[str] = []
    for action in build_parser(argparse.ArgumentParser(add_help=False))._actions:
        if not action.option_strings or action.dest in _NOT_PASSED:
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        option = max(action.option_strings, key=len)  # the long form
        if isinstance(action, argparse._AppendAction):
            arguments += [f"{option}={item}" for item in value]
        elif action.nargs == 0:  # store_true, store_false, store_const: the flag says it all
            arguments.append(option)
        elif isinstance(action, argparse._StoreAction) and action.nargs is None:
            arguments.append(f"{option}={value}")
        else:  # a new kind of option: fail loudly rather than drop it on the way
            raise AssertionError(f"serve-dev --replicas cannot pass on {option} ({action!r})")
    return arguments


def _ports(first: int, count: int) -> list[int]:
    """--port P: P for the first replica, the following ports for the others (predictable
    URLs, as a fixed port gives one manager); --port 0: a free port each."""
    if not 0 <= first <= 65535:
        raise ValueError(f"--port: a port is 0..65535 (0 picks a free one), got {first}")
    if first == 0:
        return [0] * count
    last = first + count - 1
    if last > 65535:
        raise ValueError(
            f"--port {first} with --replicas {count} needs ports up to {last}, past 65535; "
            "choose a lower --port, or --port 0 for free ones"
        )
    return list(range(first, last + 1))


class _Signals(InstalledSignals):
    """SIGINT/SIGTERM recorded, never raised: this process is only waiting, and everything it
    started must be stopped by the code after the wait, not torn down half-way."""

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is None:  # a second Ctrl-C while stopping: already on our way out
            self.received = signum
        self.event.set()


def run_replicas(args: argparse.Namespace) -> int:
    """Run `args.replicas` reference managers until SIGINT/SIGTERM; returns the exit code."""
    from ..testing import ReferenceCluster, ReferenceManagerError
    from ..testing._manager.config import ConfigError, config_from_arguments

    if args.certfile or args.keyfile:
        report(
            "serve-dev --replicas does not serve TLS (--certfile, --keyfile); run one "
            "`anytcm serve-dev --certfile ...` per port instead"
        )
        return EXIT_USAGE
    try:
        config_from_arguments(args)  # a bad option fails once, here, not in every replica
        ports = _ports(args.port, args.replicas)
    except (ConfigError, ValueError) as exc:
        report(" ".join(str(exc).split()))
        return EXIT_USAGE
    cluster = ReferenceCluster(args.replicas, host=args.host, extra_args=replica_arguments(args))
    for manager, port in zip(cluster, ports, strict=True):
        manager.port = port  # a cluster picks free ports; --port asks for these
    signals = _Signals()
    if threading.current_thread() is threading.main_thread():
        signals.install()
    try:
        try:
            cluster.start()
        except (ReferenceManagerError, OSError) as exc:
            if signals.received is not None:
                return EXIT_OK  # stopped while starting: the failure is ours, not news
            report(f"a replica did not start: {_last_line(str(exc))}")
            return EXIT_USAGE  # as one serve-dev: a port in use, a host it cannot listen on
        if signals.received is None:
            _announce(cluster.managers)
        return _serve(cluster.managers, signals, args)
    finally:
        cluster.stop()  # SIGKILL what is still running, and reap it
        signals.uninstall()


def _announce(managers: Sequence[ReferenceManager]) -> None:
    count = len(managers)
    for number, manager in enumerate(managers, 1):
        print(
            f"anytcm reference manager {number}/{count} listening on {manager.ws_url} "
            f"(pid {manager.pid})",
            flush=True,
        )
    # Ready to paste into a shell: the command line and the client read this list.
    print(f"export ANYTCM_URL={','.join(m.ws_url for m in managers)}", flush=True)


def _serve(
    managers: Sequence[ReferenceManager], signals: _Signals, args: argparse.Namespace
) -> int:
    """Wait for a signal, the end of every replica, or of our parent; then stop them all."""
    parent = args.exit_with_parent
    alive = {id(m) for m in managers}
    while signals.received is None:
        for number, manager in enumerate(managers, 1):
            if id(manager) in alive and not manager.running:
                alive.discard(id(manager))
                report(
                    f"replica {number} ({manager.ws_url}) {_how_it_ended(manager)}"
                    + ("; the others keep serving" if alive else "")
                )
        if not alive:
            return EXIT_FAILURE
        if parent is not None and os.getppid() != parent:
            break  # as one serve-dev does under a test runner that died
        signals.event.wait(_POLL_SECONDS)
    if signals.received == signal.SIGTERM:
        print(f"SIGTERM: draining {len(alive)} replica(s)", file=sys.stderr, flush=True)
        _stop_all(managers, signal.SIGTERM, args.drain_seconds + _EXIT_GRACE_SECONDS)
    elif signals.received == signal.SIGINT:
        print(f"SIGINT: stopping {len(alive)} replica(s)", file=sys.stderr, flush=True)
        _stop_all(managers, signal.SIGINT, _EXIT_GRACE_SECONDS)
    return EXIT_OK


def _stop_all(managers: Sequence[ReferenceManager], signum: int, timeout: float) -> None:
    """Pass the signal on to every replica, then wait for them until `timeout`; one still
    running then is left to the caller's SIGKILL. SIGTERM goes to all before any is waited
    for, so that the drains overlap; SIGINT stops a replica at once, one after the other."""
    from ..testing import ReferenceManagerError

    deadline = time.monotonic() + timeout
    for manager in managers:
        if not manager.running:
            continue
        # ReferenceManagerError: it exited meanwhile (a terminal's Ctrl-C reaches every replica
        # too); TimeoutExpired: it ignores SIGINT, and gets the SIGKILL.
        with suppress(ReferenceManagerError, subprocess.TimeoutExpired):
            if signum == signal.SIGTERM:
                manager.terminate(wait=False)
            else:
                manager.interrupt()
    for manager in managers:
        if manager.pid is None:
            continue
        with suppress(subprocess.TimeoutExpired):
            manager.wait(max(0.0, deadline - time.monotonic()))


def _how_it_ended(manager: ReferenceManager) -> str:
    """ "exited with status 3: <its last words>", or "was killed (SIGKILL)"."""
    status = manager.wait(1)
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed ({name})"
    said = _last_line(manager.output())
    # Its announcement is all a replica printed when it had nothing to say on its way out.
    last_words = "" if "listening on" in said else f": {said}"
    return f"exited with status {status}{last_words}"


def _last_line(text: str) -> str:
    """The last line of a replica's output, without its own `anytcm: ` prefix (ours comes
    first): what it said before dying, e.g. `cannot listen on ...: Address already in use`."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "no output"
    return lines[-1].removeprefix("anytcm: ")
