"""What the Eval screen draws from an evaluation report: the metrics table with deltas (and the
latency and prompt cost as ratios), the forgetting verdict, the error categories counted, one
held-out example, a blind A/B pair and the running win rate.

Every judgement is written out in words or signs as well as colour (better/worse, pass/FAIL),
so the screen reads the same with NO_COLOR.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from engine.evaluation.errors import CATEGORIES
from engine.evaluation.report import (
    LOWER_IS_BETTER,
    METRICS,
    RATIO_KINDS,
    SIDE_LABELS,
    format_ratio,
    format_value,
    judge_win_rate_line,
    preference_line,
    present,
)

# The report's quality metrics as sections, in this order (the judge's only when it ran). The cost group
# has a table of its own, below the forgetting verdict, so that the verdict stays in sight at 80x24.
SECTIONS = (("correctness", "correctness"), ("format", "format (apart from correctness)"),
            ("fit", "fit to the references"), ("judge", "LLM judge"))
OPTIONAL_SECTIONS = ("judge", "cost")
SECTION_STYLE = {"better": "bold green", "worse": "bold red", "same": "dim"}
LABEL_STYLE = "bold"


def fmt_delta(base, tuned, kind: str) -> tuple[str, str]:
    """(delta text, better/worse/same); '-' and '' when either side was not measured. Costs compare as
    the ratio tuned/baseline; a count (generated tokens) is neither better nor worse."""
    if base is None or tuned is None:
        return "-", ""
    if kind in RATIO_KINDS:
        if not base:
            return "-", ""
        ratio = tuned / base
        if kind == "count" or abs(ratio - 1) < 1e-9:
            return format_ratio(ratio), "same" if abs(ratio - 1) < 1e-9 else ""
        return format_ratio(ratio), "better" if (ratio < 1) == (kind in LOWER_IS_BETTER) else "worse"
    delta = tuned - base
    if kind == "rate":
        text = f"{delta * 100:+.1f} pts"
    elif kind in ("score", "lower") and abs(delta) < 100:
        text = f"{delta:+.3f}"
    else:
        text = f"{delta:+.2f}"
    if abs(delta) < 1e-9:
        return text, "same"
    better = delta < 0 if kind in LOWER_IS_BETTER else delta > 0
    return text, "better" if better else "worse"


def metrics_table(report: dict, sections=SECTIONS) -> Table:
    """Baseline (and a reference model) against tuned, by section: correctness, then format compliance
    apart from it, then loss and perplexity, the judge's score; or latency and prompt cost. A section
    with an empty title has no title row."""
    tuned = report.get("tuned") or {}
    base = report.get("baseline")
    reference = report.get("reference_model")
    table = Table(box=None, pad_edge=False, padding=(0, 1), show_edge=False, expand=False,
                  header_style="bold")
    table.add_column("metric", no_wrap=True, min_width=18)
    table.add_column("baseline", justify="right", no_wrap=True)
    if reference is not None:
        table.add_column("ref", justify="right", no_wrap=True)  # "ref model" would crowd 80 columns
    table.add_column("tuned", justify="right", no_wrap=True)
    table.add_column("delta", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    task_name = report.get("task_metric")
    measured = set(present(report, ["baseline", "reference_model", "tuned"]))
    for group, title in sections:
        # correctness, format and fit are always shown (a '-' says what was not measured); the others when measured
        rows = [m for m in METRICS if m.group == group and (group not in OPTIONAL_SECTIONS or m in measured)]
        if not rows:
            continue
        if title:
            table.add_row(Text(title, style="italic dim"))
        for m in rows:
            label = f"task: {task_name}" if m.key == "task_metric" and task_name else m.label
            b = None if base is None else base.get(m.key)
            t = tuned.get(m.key)
            delta, verdict = fmt_delta(b, t, m.kind)
            values = [format_value(b, m.kind)]
            if reference is not None:
                values.append(format_value(reference.get(m.key), m.kind))
            table.add_row(f"  {label}", *values, Text(format_value(t, m.kind), style="bold"),
                          delta, Text(verdict, style=SECTION_STYLE.get(verdict, "")))
    return table


def metrics_view(report: dict, run_id: str) -> Group:
    """The quality metrics table with what it compares."""
    head = Text()
    head.append("Held-out metrics", LABEL_STYLE)
    data = report.get("data")
    head.append(f" · {report.get('examples', '?')} examples")
    if data:
        head.append(f" of {str(data).rsplit('/', 1)[-1]}")
    parts = [head, metrics_table(report)]
    shots = (report.get("baseline") or {}).get("shots")
    if shots is not None:
        parts.append(Text(f"baseline: the prompted base model with {shots} examples in the prompt", style="dim"))
    reference = report.get("reference_model")
    if reference is not None:
        parts.append(Text(f"ref: {reference.get('model')}, prompted like the baseline", style="dim"))
    if report.get("against"):
        parts.append(Text(f"baseline: {report['baseline'].get('model')}, asked the prompts as they are", style="dim"))
    if report.get("preference"):
        parts.append(Text(preference_line(report["preference"])))
    if report.get("judge_win_rate"):
        parts.append(Text(judge_win_rate_line(report["judge_win_rate"])))
    if report.get("baseline") is None:
        parts.append(Text(f"No baseline measured: tunedeck eval {run_id} --baseline adds the prompted "
                          "base model.", style="italic"))
    return Group(*parts)


def cost_view(report: dict) -> Group | Text:
    """Latency and prompt cost per example, each side's mean; the delta is the ratio tuned/baseline."""
    if "prompt_tokens" not in (report.get("tuned") or {}):
        return Text("")  # a report from before these were measured
    head = Text("Latency and prompt cost", LABEL_STYLE)
    head.append(" · means per example; delta = tuned/baseline", "dim")
    note = Text(f"seconds: each batch of {report.get('batch_size', '?')} timed and split evenly among its "
                "examples (--batch-size 1 times each alone)", style="dim")
    return Group(head, metrics_table(report, (("cost", ""),)), note)


def errors_view(tally: dict) -> Text:
    """The error categories counted: what a person named in the example browser (c), and the tuned
    failures still without one."""
    text = Text()
    text.append("Error categories", LABEL_STYLE)
    text.append(" · " + " · ".join(f"{c} {tally[c]}" for c in CATEGORIES))
    text.append(f"\n{tally['uncategorised']} of {tally['failures']} tuned failures without one "
                "(e to browse, f filters, c names)", "dim")
    return text


def forgetting_view(forgetting: dict | None) -> Text:
    """The verdict, the regressed probes named first, then every probe as pass/FAIL before and after."""
    text = Text()
    text.append("Forgetting check", LABEL_STYLE)
    if not forgetting:
        text.append("\nnot run for this report.", "italic")
        return text
    probes = forgetting.get("probes") or []
    regressed = forgetting.get("regressed") or []
    verdict = forgetting.get("verdict") or (f"{len(regressed)} of {len(probes)} probes regressed"
                                            + (": " + ", ".join(regressed) if regressed else ""))
    text.append(" · ")
    text.append(verdict, "bold red" if regressed else "bold green")
    ppl = forgetting.get("perplexity") or {}
    if (ppl.get("base") is not None or ppl.get("tuned") is not None) and "perplexity" not in verdict:
        text.append("\nperplexity on general text: ")
        text.append(f"{format_value(ppl.get('base'), 'ppl')} base → {format_value(ppl.get('tuned'), 'ppl')} tuned")
        if ppl.get("base") and ppl.get("tuned") is not None:
            text.append(f" ({(ppl['tuned'] / ppl['base'] - 1) * 100:+.0f}%)")
    improved = set(forgetting.get("improved") or [])
    order = sorted(probes, key=lambda p: (p.get("name") not in regressed, p.get("name") not in improved))
    for probe in order:
        name = probe.get("name", "?")
        mark = "REGRESSED" if name in regressed else "improved" if name in improved else ""
        text.append("\n  ")
        text.append(f"{_pass(probe.get('base_pass')):>4} → {_pass(probe.get('tuned_pass')):<4}",
                    "bold red" if name in regressed else "")
        text.append(f"  {name}")
        if probe.get("category"):
            text.append(f" ({probe['category']})", "dim")
        if mark:
            text.append(f"  {mark}", "bold red" if name in regressed else "green")
    return text


def _pass(value) -> str:
    return "-" if value is None else "pass" if value else "FAIL"


def _section(text: Text, title: str, body: str | None, note: str = "") -> None:
    text.append(f"▌{title}", "bold")
    if note:
        text.append(f"  {note}", "dim")
    text.append("\n")
    if body is None:
        text.append("(not run)\n", "italic dim")
    else:
        text.append((body if body.strip() else "(empty)") + "\n", "" if body.strip() else "italic dim")


def _verdict(exact, fmt) -> str:
    parts = []
    if exact is not None:
        parts.append("exact" if exact else "not exact")
    if fmt is not None:
        parts.append("format ok" if fmt else "format BAD")
    return ", ".join(parts)


def _cost(row: dict, side: str) -> str:
    if row.get(f"{side}_generated_tokens") is None and row.get(f"{side}_prompt_tokens") is None:
        return ""
    prompt, generated, seconds = (row.get(f"{side}_{k}") for k in ("prompt_tokens", "generated_tokens", "seconds"))
    return (f"{'-' if prompt is None else prompt} prompt + {'-' if generated is None else generated} tokens, "
            f"{'-' if seconds is None else f'{seconds:.2f}'} s")


def example_view(row: dict, index: int, total: int, category: str | None = None, shown: str = "") -> Text:
    """One held-out example: prompt, reference, the baseline's, the reference model's and the tuned answer,
    each with its verdict and cost; the error category named for it; `shown` says which filter is on."""
    text = Text()
    text.append(f"Example {index + 1} of {total}", LABEL_STYLE)
    if row.get("line") is not None:
        text.append(f" · line {row['line']}", "dim")
    if shown:
        text.append(f" · {shown}", "dim")
    text.append("\n")
    text.append("error category: ")
    text.append(category or "none", "bold" if category else "dim")
    text.append("  (c names one)\n\n", "dim")
    _section(text, "PROMPT", row.get("prompt"))
    _section(text, "REFERENCE", row.get("reference"))
    sides = ["baseline"] + (["reference_model"] if row.get("reference_model") is not None else []) + ["tuned"]
    for side in sides:
        note = "  ".join(part for part in (_verdict(row.get(f"{side}_exact"), row.get(f"{side}_format")),
                                           _cost(row, side)) if part)
        _section(text, SIDE_LABELS[side].upper(), row.get(side), note)
    return text


def win_rate_line(summary: dict) -> Text:
    """Progress and the tuned model's win rate with its 95% interval, in one line."""
    text = Text()
    text.append(f"{summary['judged']}/{summary['total']} judged", "bold")
    text.append(f" · {summary['remaining']} left · ")
    text.append(f"tuned {summary['wins']}W {summary['losses']}L {summary['ties']}T")
    if summary.get("skipped"):
        text.append(f" {summary['skipped']} skipped")
    text.append(" · win rate ")
    if summary["win_rate"] is None:
        text.append("-")
    else:
        text.append(f"{summary['win_rate'] * 100:.0f}%", "bold")
        text.append(f" (95% CI {summary['ci_low'] * 100:.0f}–{summary['ci_high'] * 100:.0f}%)")
    return text


def answer_text(answer: str) -> Text:
    return Text(answer if answer.strip() else "(empty)", style="" if answer.strip() else "italic dim")
