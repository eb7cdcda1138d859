"""The evaluation report: where a run keeps it and reading it back, the metrics it lists, its Markdown form,
and the `tunedeck eval --json` summary."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.runs.protocol import Run, RunError


@dataclass(frozen=True)
class Metric:
    key: str  # in report["tuned"] and report["baseline"]
    label: str
    kind: str  # rate (0..1, higher is better), score (higher is better), lower (loss), ppl (perplexity)
    group: str  # correctness | format | fit | judge: the Eval screen's sections


# Every metric a report may hold, in the order every view lists them (Markdown, `tunedeck eval`, the Eval screen).
METRICS = (
    Metric("exact_match", "exact match", "rate", "correctness"),
    Metric("normalised_match", "normalised match", "rate", "correctness"),
    Metric("task_metric", "task metric", "score", "correctness"),
    Metric("format_compliance", "format compliance", "rate", "format"),
    Metric("loss", "loss", "lower", "fit"),
    Metric("perplexity", "perplexity", "ppl", "fit"),
    Metric("judge_score", "judge score (1-5)", "score", "judge"),
)


def report_path(run: Run) -> Path:
    return run.path / "eval" / "report.json"


def read_report(run: Run) -> dict:
    """The run's report; a damaged one is a RunError that says how to rewrite it."""
    path = report_path(run)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RunError(f"{path} is not valid JSON ({error}); run `tunedeck eval {run.id}` again "
                       "to rewrite it.") from None
    if not isinstance(report, dict) or not isinstance(report.get("tuned"), dict):
        raise RunError(f"{path} has no tuned metrics; run `tunedeck eval {run.id}` again to rewrite it.")
    return report


def format_value(value, kind: str) -> str:
    """A metric as a person reads it: rates in percent, scores and losses to three places; '-' when absent."""
    if value is None:
        return "-"
    if kind == "rate":
        return f"{value * 100:.1f}%"
    if kind == "score" or (kind == "lower" and abs(value) < 100):
        return f"{value:.3f}"
    return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"


def present(report: dict, sides: list[str]) -> list[Metric]:
    """The metrics measured on at least one of the sides."""
    return [m for m in METRICS if any(m.key in (report.get(s) or {}) for s in sides)]


def markdown_report(report: dict) -> str:
    sides = ["baseline", "tuned"] if "baseline" in report else ["tuned"]
    lines = [f"# Evaluation of run {report['run_id']}", "",
             f"{report['examples']} held-out examples from `{report['data']}`; task metric: "
             f"{report['task_metric']}.", "", "| metric | " + " | ".join(sides) + " |",
             "|---|" + "---|" * len(sides)]
    for m in present(report, sides):
        lines.append(f"| {m.label} | " + " | ".join(format_value(report[s].get(m.key), m.kind) for s in sides) + " |")
    f = report["forgetting"]
    lines += ["", "## Forgetting check", "", f["verdict"], "", "| probe | category | base | tuned |",
              "|---|---|---|---|"]
    lines += [f"| {p['name']} | {p['category']} | {'pass' if p['base_pass'] else 'fail'} | "
              f"{'pass' if p['tuned_pass'] else 'fail'} |" for p in f["probes"]]
    lines += ["", "## Examples", ""]
    for row in report["rows"][:10]:
        lines += [f"**line {row['line']}** prompt: {row['prompt'][:300]!r}", f"- reference: `{row['reference'][:200]}`"]
        if "baseline" in row:
            lines.append(f"- baseline: `{row['baseline'][:200]}`")
        lines += [f"- tuned: `{row['tuned'][:200]}`", ""]
    return "\n".join(lines) + "\n"


def summary(report: dict) -> dict:
    """The `tunedeck eval --json` object."""
    out = {"tuned": report["tuned"], "forgetting": {k: report["forgetting"][k] for k in
                                                   ("probes", "regressed", "improved", "perplexity", "verdict")},
           "report": report.get("report_path"), "examples": report["examples"], "data": report["data"],
           "task_metric": report["task_metric"]}
    if "baseline" in report:
        out["baseline"] = report["baseline"]
    return out
