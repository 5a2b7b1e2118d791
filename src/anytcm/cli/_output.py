"""Rendering for the `anytcm` command line: JSON for machines, rich tables for people.

`--json` output is one JSON document per command on stdout, written with orjson (already a
dependency), so scripts never need `rich`. Tables and progress bars use `rich`, an optional
extra (`anytcm[cli]`, also pulled in by `anytcm[testing]`): it is imported only when a table
is drawn, and its absence is a one-line install hint, not an ImportError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson

from ._errors import EXIT_USAGE, CliError

if TYPE_CHECKING:
    from rich.console import Console

Justify = Literal["left", "right", "center"]

RICH_HINT: Final = (
    'tables and progress bars need the rich package: pip install "anytcm[cli]" '
    "(or pass --json for machine-readable output, which does not need it)"
)


def print_json(document: Any) -> None:
    """One JSON document on stdout. NaN and ±Inf become null (orjson), numpy values are plain."""
    text = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    print(text.decode(), flush=True)


def console(*, stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr, for progress that must not mix with results)."""
    try:
        from rich.console import Console
    except ImportError:
        raise CliError(RICH_HINT, exit_code=EXIT_USAGE) from None
    return Console(stderr=stderr, highlight=False)


def marks(out: Console) -> tuple[str, str]:
    """✓ and ✗, or OK and FAIL on a terminal whose encoding cannot show them."""
    try:
        "✓✗".encode(out.encoding)
    except (UnicodeEncodeError, LookupError):
        return "OK", "FAIL"
    return "✓", "✗"


def print_table(
    title: str | None,
    columns: Sequence[tuple[str, Justify]],
    rows: Sequence[Sequence[str]],
    *,
    out: Console | None = None,
) -> None:
    """A table; `columns` are (header, justify) with justify "left", "right" or "center"."""
    from rich import box
    from rich.table import Table

    out = out or console()
    if title:
        out.print(title)  # above, not in, the table: a title wider than the table would wrap
    table = Table(
        show_header=any(header for header, _ in columns),
        box=box.SIMPLE_HEAD,  # no vertical rules: notes keep their width in 80 columns
        pad_edge=False,
    )
    for header, justify in columns:
        table.add_column(header, justify=justify)
    for row in rows:
        table.add_row(*row)
    out.print(table)


@contextmanager
def progress_bar(total: int, description: str, *, enabled: bool) -> Iterator[Callable[[], None]]:
    """Yields `advance()`, to call once per finished unit of work; a bar on stderr if enabled.

    The bar is transient (it disappears when done) and lives on stderr, so the summary printed
    after it on stdout is all that remains in a pipe or a log.
    """
    err = console(stderr=True) if enabled else None
    if err is None or not err.is_terminal:  # a log or a pipe gets the summary only
        yield lambda: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)


def format_ms(seconds: float | None) -> str:
    """A latency for a table: "1.23 ms", or "—" when there is none."""
    if seconds is None:
        return "—"
    milliseconds = seconds * 1000
    return f"{milliseconds:.2f} ms" if milliseconds < 100 else f"{milliseconds:.0f} ms"


def format_bytes(count: int) -> str:
    """A size for people: 4 KiB, 1 MiB, 1.5 MiB."""
    value, unit = float(count), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    text = f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{text} {unit}"
