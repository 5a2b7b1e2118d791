"""How the `anytcm` command line turns failures into one line on stderr and an exit code.

A command line tool's contract is its exit code: scripts and CI branch on it, and a traceback
for a refused connection or a typo in a file name only hides the one sentence the user needs.
So every *expected* failure (anytcm's own `TcmError` tree, OS errors, bad arguments, bad
input files) becomes a `describe()` line and one of the codes below. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Final

from ..errors import ConnectError, InvalidInput, NotReady, TcmError, UnknownCarrier

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

EXIT_OK: Final = 0
#: The command ran and failed: a request was refused or failed, a check failed, not ready.
EXIT_FAILURE: Final = 1
#: Fix the command: bad arguments or input files, an unknown carrier, no manager to talk to.
EXIT_USAGE: Final = 2
#: Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED: Final = 130
#: SIGTERM (128 + SIGTERM), as shells report a process it ended.
EXIT_TERMINATED: Final = 143

EXIT_CODES_HELP: Final = (
    "exit codes: 0 success; 1 the command ran and failed (a request refused or failed, a check "
    "failed, the manager not ready); 2 bad arguments or input files, or the manager could not "
    "be reached; 130 interrupted (Ctrl-C, SIGINT); 143 terminated (SIGTERM)"
)


class CliError(Exception):
    """A failure the command line reports as one line, with the exit code it deserves."""

    def __init__(self, message: str, *, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM ended the command (after its cleanup ran); exit code 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class UsageError(CliError):
    """The command line or an input file is wrong: exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=EXIT_USAGE)


EXPECTED_ERRORS: Final = (CliError, TcmError, OSError)
"""What the command line reports without a traceback (ConnectionError is an OSError too)."""


def exit_code_for(error: BaseException) -> int:
    """The exit code of an expected error (see `EXIT_CODES_HELP`)."""
    if isinstance(error, CliError):
        return error.exit_code
    if isinstance(error, NotReady) or isinstance(error.__cause__, NotReady):
        # Reachable, but not ready (also when the connect deadline ran out waiting for it):
        # the answer `anytcm ready` gives.
        return EXIT_FAILURE
    if isinstance(error, (ConnectError, UnknownCarrier, InvalidInput)):
        return EXIT_USAGE
    if isinstance(error, ConnectionError) and not isinstance(error, TcmError):
        return EXIT_USAGE  # refused, reset before anything was asked: nothing to talk to
    return EXIT_FAILURE


def describe(error: BaseException) -> str:
    """One line: the error's class (when it tells something) and its message, newlines folded.

    anytcm's messages already say what to do next; the class name lets a reader search the
    docs (`PayloadTooLarge`), and folding keeps the promise of a single line.
    """
    text = " ".join(str(error).split()) or "no details"
    if isinstance(error, CliError):
        return text
    return f"{type(error).__name__}: {text}"


def report(message: str) -> None:
    """Print one `anytcm: ...` line on stderr (the only place failures are explained)."""
    print(f"anytcm: {message}", file=sys.stderr, flush=True)


def contains_interrupt(error: BaseException) -> bool:
    """True for Ctrl-C, also when it arrives wrapped in an exception group (trio nurseries)."""
    if isinstance(error, KeyboardInterrupt):
        return True
    if isinstance(error, BaseExceptionGroup):
        return any(contains_interrupt(inner) for inner in error.exceptions)
    return False
