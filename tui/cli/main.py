"""`tunedeck` on the command line: every action headless, `--json` for scripts.

One module per command group; each adds its subcommands with `add_parsers`. The command
line stays light: it calls engine modules that do not import torch, runs heavy ones as
subprocesses, and imports the Textual app only when it opens a screen.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.core.paths import default_workspace
from tui.cli import chat, compare, data, demo, diagnosis, evaluation, hardware, nodes, pairs, plan, runs
from tui.cli.common import CliError
from tui.errors import EXPLAINED_ERRORS


def cmd_app(args) -> int:
    from tui.app import run_app

    run_app(args.workspace)
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: an option given before the subcommand is not overwritten by the subcommand's default.
    common.add_argument("--workspace", type=Path, default=argparse.SUPPRESS,
                        help="where runs live (default: $TUNEDECK_WORKSPACE or ~/tunedeck)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print machine-readable JSON")
    parser = argparse.ArgumentParser(prog="tunedeck", parents=[common],
                                     description="Fine-tune language models from the terminal.")
    sub = parser.add_subparsers(dest="command")
    for group in (runs, nodes, compare, hardware, demo, evaluation, pairs, chat, diagnosis, plan, data):  # the order of `tunedeck --help`
        group.add_parsers(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.workspace = (getattr(args, "workspace", None) or default_workspace()).expanduser().resolve()
    except RuntimeError as exc:  # ~user of a user that does not exist, a loop of symbolic links
        given = getattr(args, "workspace", None) or os.environ.get("TUNEDECK_WORKSPACE", "~/tunedeck")
        print(f"tunedeck: error: cannot use the workspace {str(given)!r}: {exc}", file=sys.stderr)
        return 2
    args.json = getattr(args, "json", False)
    func = getattr(args, "func", cmd_app)
    try:
        return func(args)
    except (*EXPLAINED_ERRORS, CliError) as exc:
        print(f"tunedeck: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tunedeck data lint F --json | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141  # what a shell reports for a command ended by a closed pipe
