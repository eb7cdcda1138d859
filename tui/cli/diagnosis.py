"""`tunedeck diagnose RUN`: the practice's debugging tree on the run's evidence, and the next run's config."""

from __future__ import annotations

import textwrap
from pathlib import Path

from engine.evaluation.diagnosis import diagnose, write_next_config
from engine.runs.workspace import resolve_run
from tui.cli.common import print_json


def format_diagnosis(result: dict, width: int = 80) -> str:
    wrap = lambda text, indent: textwrap.fill(text, width, initial_indent=indent, subsequent_indent=" " * len(indent))
    lines = [f"diagnosis of {result['run_id']} ({result['state']})"]
    for f in result["findings"]:
        lines += [wrap(f["evidence"], f"{f['id']}: "), wrap(f["advice"], "  try: ")]
        if f["config"]:
            lines.append(wrap(", ".join(f"{k}: {v}" for k, v in f["config"].items()), "  config: "))
        for ex in (f.get("details") or {}).get("examples", []):
            lines.append(wrap(ex.get("error") or f"line {ex['line']}, {ex['trained']} of {ex['tokens']} tokens "
                                                   f"trained: {ex['text'][:300]!r}", "  example: "))
        for s in (f.get("details") or {}).get("similar", [])[:5]:
            near = "; ".join(f"line {t['line']} ({t['similarity']:.2f})" for t in s["training"])
            lines.append(wrap(f"held-out line {s['line']} {s['output'][:60]!r} is most like training {near}",
                              "  similar: "))
    lines += [wrap(c, "checked: ") for c in result["checked"]]
    lines += [wrap(c, "not checked: ") for c in result["not_checked"]]
    return "\n".join(lines)


def cmd_diagnose(args) -> int:
    run = resolve_run(args.run, args.workspace)
    result = diagnose(run, general_data=str(args.general_data.resolve()) if args.general_data else None)
    if args.write_config:
        result["next_config"] = str(args.write_config.resolve())
        result["changes"] = write_next_config(run, result, args.write_config.resolve())
    if args.json:
        print_json(result)
        return 0
    print(format_diagnosis(result))
    if args.write_config:
        print(f"wrote {result['next_config']} ({len(result['changes'])} changes); start it with "
              f"`tunedeck train {result['next_config']}`")
    return 0


def add_parsers(sub, common) -> None:
    p = sub.add_parser("diagnose", parents=[common],
                       help="read a run's curves and evaluation: what went wrong and what to change")
    p.add_argument("run")
    p.add_argument("--write-config", type=Path, metavar="PATH", help="write the next run's configuration here")
    p.add_argument("--general-data", type=Path, metavar="FILE",
                   help="a local file of general examples to mix in if the run forgot general abilities")
    p.set_defaults(func=cmd_diagnose)
