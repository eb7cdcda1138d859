"""The evaluation report: where a run keeps it and reading it back, the sides it compares, the metrics it
lists, its Markdown form, and the `tunedeck eval --json` summary."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.runs.protocol import Run, RunError

# The answering sides a report may hold, in the order every view lists them: the prompted base model,
# a reference model (--reference: a larger local model or a served one, prompted the same way), the tuned model.
SIDES = ("baseline", "reference_model", "tuned")
SIDE_LABELS = {"baseline": "baseline", "reference_model": "ref model", "tuned": "tuned"}


@dataclass(frozen=True)
class Metric:
    key: str  # in report[side] for each side of SIDES
    label: str
    kind: str  # rate (0..1, higher is better), score (higher is better), lower (loss), ppl (perplexity);
    #            cost and seconds (lower is better), count (no better or worse), speed (higher is better):
    #            these compare as ratios
    group: str  # correctness | format | fit | judge | cost: the Eval screen's sections


# Every metric a report may hold, in the order every view lists them (Markdown, `tunedeck eval`, the Eval screen).
METRICS = (
    Metric("exact_match", "exact match", "rate", "correctness"),
    Metric("normalised_match", "normalised match", "rate", "correctness"),
    Metric("task_metric", "task metric", "score", "correctness"),
    Metric("format_compliance", "format compliance", "rate", "format"),
    Metric("loss", "loss", "lower", "fit"),
    Metric("perplexity", "perplexity", "ppl", "fit"),
    Metric("judge_score", "judge score (1-5)", "score", "judge"),
    Metric("prompt_tokens", "prompt tokens", "cost", "cost"),
    Metric("generated_tokens", "generated tokens", "count", "cost"),
    Metric("seconds_per_example", "seconds/example", "seconds", "cost"),
    Metric("tokens_per_second", "tokens/s", "speed", "cost"),
)
RATIO_KINDS = ("cost", "seconds", "count", "speed")
LOWER_IS_BETTER = ("lower", "ppl", "cost", "seconds")


def sides(report: dict) -> list[str]:
    """The sides this report measured, in SIDES order."""
    return [s for s in SIDES if isinstance(report.get(s), dict)]


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
    if kind == "seconds":
        return f"{value:.3f}"
    if kind in RATIO_KINDS:  # token counts and rates
        return f"{value:.1f}" if abs(value) < 10000 else f"{value:.0f}"
    if kind == "score" or (kind == "lower" and abs(value) < 100):
        return f"{value:.3f}"
    return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"


def format_ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def present(report: dict, sides: list[str]) -> list[Metric]:
    """The metrics measured on at least one of the sides."""
    return [m for m in METRICS if any(m.key in (report.get(s) or {}) for s in sides)]


def ratios(report: dict) -> dict:
    """Latency and prompt cost of the tuned model as a multiple of each other side's: {side: {key: tuned / side}},
    None where either figure is missing or the other side's is zero."""
    tuned = report.get("tuned") or {}
    out = {}
    for side in sides(report):
        if side != "tuned":
            other = report[side]
            out[side] = {m.key: (round(tuned[m.key] / other[m.key], 4)
                                 if tuned.get(m.key) is not None and other.get(m.key) else None)
                         for m in METRICS if m.kind in RATIO_KINDS}
    return out


def markdown_report(report: dict) -> str:
    shown = sides(report)
    lines = [f"# Evaluation of run {report['run_id']}", "",
             f"{report['examples']} held-out examples from `{report['data']}`; task metric: "
             f"{report['task_metric']}."]
    if "reference_model" in report:
        lines.append(f"Reference model: `{report['reference_model'].get('model')}`, prompted like the baseline.")
    if report.get("against"):
        lines.append(f"Baseline side: {report['baseline'].get('model')}, asked the prompts as they are (no shots).")
    lines += ["", "| metric | " + " | ".join(SIDE_LABELS[s] for s in shown) + " |", "|---|" + "---|" * len(shown)]
    for m in present(report, shown):
        if m.group != "cost":
            lines.append(f"| {m.label} | " + " | ".join(format_value(report[s].get(m.key), m.kind) for s in shown)
                         + " |")
    cost = [m for m in present(report, shown) if m.group == "cost"]
    if cost:
        against = list(report.get("ratios") or {})
        lines += ["", "## Latency and prompt cost", "", LATENCY_NOTE.format(batch=report.get("batch_size", "?")), "",
                  "| per example | " + " | ".join(SIDE_LABELS[s] for s in shown)
                  + "".join(f" | tuned / {SIDE_LABELS[s]}" for s in against) + " |",
                  "|---|" + "---|" * (len(shown) + len(against))]
        for m in cost:
            lines.append(f"| {m.label} | " + " | ".join(format_value(report[s].get(m.key), m.kind) for s in shown)
                         + "".join(f" | {format_ratio(report['ratios'][s].get(m.key))}" for s in against) + " |")
    if report.get("preference"):
        lines += ["", *preference_markdown(report["preference"])]
    if report.get("judge_win_rate"):
        lines += ["", "## Judge win rate", "", judge_win_rate_line(report["judge_win_rate"]) + "."]
    f = report["forgetting"]
    lines += ["", "## Forgetting check", "", f["verdict"], "", "| probe | category | base | tuned |",
              "|---|---|---|---|"]
    lines += [f"| {p['name']} | {p['category']} | {'pass' if p['base_pass'] else 'fail'} | "
              f"{'pass' if p['tuned_pass'] else 'fail'} |" for p in f["probes"]]
    lines += ["", "## Examples", ""]
    for row in report["rows"][:10]:
        lines += [f"**line {row['line']}** prompt: {row['prompt'][:300]!r}", f"- reference: `{row['reference'][:200]}`"]
        for side in shown:
            if row.get(side) is not None:
                lines.append(f"- {SIDE_LABELS[side]}: `{row[side][:200]}`")
        lines.append("")
    return "\n".join(lines) + "\n"


# The `preference` object's figures (engine.evaluation.preference), in the order every view lists them.
PREFERENCE_FIGURES = (("reward_accuracy", "reward accuracy", "rate"), ("reward_margin", "reward margin", "margin"),
                      ("chosen_reward", "chosen reward", "margin"), ("rejected_reward", "rejected reward", "margin"),
                      ("chosen_logp", "chosen log-prob (tuned)", "logp"),
                      ("rejected_logp", "rejected log-prob (tuned)", "logp"))


def judge_win_rate_line(w: dict) -> str:
    """The judge's pairwise verdicts on tuned against the baseline side, as one line."""
    rate = "-" if w["win_rate"] is None else f"{w['win_rate'] * 100:.1f}% (95% CI {w['ci_low'] * 100:.0f}-" \
                                             f"{w['ci_high'] * 100:.0f}%)"
    return (f"judge win rate of tuned over the baseline side: {rate}; {w['wins']} wins, {w['losses']} losses, "
            f"{w['ties']} ties (each pair judged in both orders; ties count half) by {w['judge']}")


def preference_line(p: dict) -> str:
    """One line for `tunedeck eval` and the Eval screen."""
    return (f"preference pairs: {p['pairs']}, reward accuracy {p['reward_accuracy'] * 100:.1f}%, margin "
            f"{p['reward_margin']:+.4f} (chosen {p['chosen_reward']:+.4f}, rejected {p['rejected_reward']:+.4f}; "
            f"beta {p['beta']:g})")


def preference_markdown(p: dict) -> list[str]:
    lines = ["## Preference pairs", "",
             f"{p['pairs']} held-out pairs. A completion's reward is beta ({p['beta']:g}) times its log-probability "
             "under the tuned model minus under the model the run started from (the adapter disabled), summed "
             "over the completion's tokens, as DPO defines it; accuracy: pairs whose chosen completion earns "
             "the higher reward." + (f" {p['truncated']} sequences were cut to max_seq_length." if p["truncated"]
                                     else ""), "", "| figure | value |", "|---|---|"]
    for key, label, kind in PREFERENCE_FIGURES:
        value = p[key]
        lines.append(f"| {label} | " + (f"{value * 100:.1f}%" if kind == "rate" else
                                          f"{value:+.4f}" if kind == "margin" else f"{value:.2f}") + " |")
    return lines


# How the per-example seconds were measured, for the Markdown report.
LATENCY_NOTE = ("Local models generate in batches of {batch} (the same for every side): an example's seconds "
                "are its batch's wall time (chat template to decoded text) split evenly among the batch, so "
                "the mean is the measured time per example; `--batch-size 1` times each example alone. "
                "Prompt tokens are the example's own, without padding; generated tokens count up to the end "
                "of the answer. A served reference model is timed per request, its tokens from the server's "
                "usage. tokens/s: generated tokens over generation seconds.")


def summary(report: dict) -> dict:
    """The `tunedeck eval --json` object."""
    out = {"tuned": report["tuned"], "forgetting": {k: report["forgetting"][k] for k in
                                                   ("probes", "regressed", "improved", "perplexity", "verdict")},
           "report": report.get("report_path"), "examples": report["examples"], "data": report["data"],
           "task_metric": report["task_metric"]}
    for side in sides(report):
        out[side] = report[side]
    if report.get("ratios"):
        out["ratios"] = report["ratios"]
    for key in ("preference", "against", "judge_win_rate"):
        if report.get(key):
            out[key] = report[key]
    return out
