"""The parser the CLI reference (`cli.md`) is generated from.

It is `anytcm.cli.build_parser()`, so the reference cannot drift from the command, with one
change: every command also accepts the global options (`--url`, `--token`, ...) and repeats
the exit codes, and showing them again under each command would bury what the command itself
takes. They are documented once, on `anytcm`, and left out of each command here.
"""

from __future__ import annotations

import argparse

from anytcm.cli import build_parser

GLOBAL_OPTIONS = "global options"  # the title of the group `anytcm.cli` adds to every parser


def parser() -> argparse.ArgumentParser:
    root = build_parser()
    for command in _commands(root):
        _drop_global_options(command)
        if command.epilog == root.epilog:
            command.epilog = None
    return root


def _commands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every command and nested command under `parser` (not `parser` itself)."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in dict.fromkeys(action.choices.values()):  # aliases share a parser
                found += [command, *_commands(command)]
    return found


def _drop_global_options(parser: argparse.ArgumentParser) -> None:
    for group in [g for g in parser._action_groups if g.title == GLOBAL_OPTIONS]:
        parser._action_groups.remove(group)
        for action in group._group_actions:
            if action in parser._actions:
                parser._actions.remove(action)
