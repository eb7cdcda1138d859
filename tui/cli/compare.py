"""`tunedeck compare RUN RUN...`: two or more runs side by side, as text that fits 80 columns or as JSON."""

from __future__ import annotations

import textwrap

from engine.runs.compare import compare_runs, fit, table_sections
from engine.runs.protocol import Run
from engine.runs.workspace import resolve_run
from tui.cli.common import CliError, print_json
from tui.widgets.textplot import sparkline

WIDTH = 80
LABEL = 22  # the row labels' column, indent included
SPARK = 30  # cells of each curve's sparkline


def resolve_runs(refs: list[str], workspace) -> list[Run]:
    if len(refs) < 2:
        raise CliError("compare needs two or more runs, e.g. `tunedeck compare RUN_A RUN_B` (ids from `tunedeck runs`)")
    runs = [resolve_run(ref, workspace) for ref in refs]
    seen: dict = {}
    for ref, run in zip(refs, runs):
        if run.path in seen:
            raise CliError(f"{ref!r} and {seen[run.path]!r} are the same run ({run.id}); name each run once")
        seen[run.path] = ref
    return runs


def format_comparison(comparison: dict, width: int = WIDTH) -> str:
    entries = comparison["runs"]
    cell = max(10, (width - LABEL) // len(entries) - 1)
    lines = [f"{e['letter']}  {fit(e['run_id'], width - 3)}" for e in entries]
    lines.append("")
    lines.append(" " * LABEL + " ".join(e["letter"].ljust(cell) for e in entries).rstrip())
    for title, rows in table_sections(comparison):
        lines.append(title)
        for label, cells in rows:
            row = f"  {fit(label, LABEL - 3):<{LABEL - 2}}" + " ".join(f"{fit(c, cell):<{cell}}" for c in cells)
            lines.append(row.rstrip())
    for name, title in (("loss", "loss curves (first -> last)"), ("eval_loss", "eval loss curves (first -> last)")):
        lines += ["", title, *_curve_lines(entries, name, width)]
    notes = [(e["letter"], note) for e in entries for note in e["notes"]]
    if notes:
        lines += ["", "notes"]
        for letter, note in notes:
            lines += textwrap.wrap(note, width, initial_indent=f"  {letter}  ", subsequent_indent="     ")
    return "\n".join(lines)


def _curve_lines(entries: list[dict], name: str, width: int) -> list[str]:
    """One sparkline per run on shared axes (steps across, values up), so runs compare cell by cell."""
    points = [p for e in entries for p in e["curves"][name]]
    if not points:
        return ["  (no run logged one)"]
    x0, x1 = min(x for x, _ in points), max(x for x, _ in points)
    lo, hi = min(y for _, y in points), max(y for _, y in points)
    cells = min(SPARK, len({x for x, _ in points}))  # no wider than the steps there are: no empty cells
    lines = []
    for e in entries:
        curve = e["curves"][name]
        if not curve:
            lines.append(f"  {e['letter']}  (none)")
            continue
        spark = sparkline(_on_axis(curve, x0, x1, cells), cells, lo, hi)
        text = (f"  {e['letter']}  {spark:<{SPARK}}  {curve[0][1]:.3f} -> {curve[-1][1]:.3f}  "
                f"steps {curve[0][0]}-{curve[-1][0]}")
        lines.append(fit(text, width))
    return lines


def _on_axis(curve: list, x0: float, x1: float, width: int) -> list[float | None]:
    """The curve's mean value in each of `width` equal step ranges of [x0, x1]: a gap inside the curve
    holds the value before it, and the cells before its first step or after its last stay empty (None)."""
    sums, counts = [0.0] * width, [0] * width
    for x, y in curve:
        i = 0 if x1 == x0 else min(width - 1, int((x - x0) / (x1 - x0) * width))
        sums[i] += y
        counts[i] += 1
    means = [s / n if n else None for s, n in zip(sums, counts)]
    last = max(i for i, n in enumerate(counts) if n)
    for i in range(1, last):
        if means[i] is None:
            means[i] = means[i - 1]
    return means


def cmd_compare(args) -> int:
    comparison = compare_runs(resolve_runs(args.runs, args.workspace))
    if args.json:
        print_json(comparison)
    else:
        print(format_comparison(comparison))
    return 0


def add_parsers(sub, common) -> None:
    p = sub.add_parser("compare", parents=[common],
                       help="runs side by side: curves, differing config, best eval, held-out metrics, forgetting")
    p.add_argument("runs", nargs="*", metavar="RUN", help="two or more run ids or run directories")
    p.set_defaults(func=cmd_compare)
