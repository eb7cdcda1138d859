"""`tunedeck gpu`: the GPUs, their processes and the host."""

from __future__ import annotations

from tui.cli.common import print_json


def cmd_gpu(args) -> int:
    from engine.hardware import format_snapshot, snapshot

    snap = snapshot(args.workspace)
    if args.json:
        print_json(snap)
    else:
        print(format_snapshot(snap))
    return 0


def add_parsers(sub, common) -> None:
    p = sub.add_parser("gpu", parents=[common], help="GPUs, their processes, and the host")
    p.set_defaults(func=cmd_gpu)
