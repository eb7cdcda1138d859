"""Comparing runs side by side: who each run is, its loss and eval-loss curves, the configuration keys
whose values differ, its best evaluation, and its held-out metrics and forgetting check.

Reads only the run directories (config.yaml, status.json, events.jsonl, eval/report.json), so it is
light, and a piece that is missing or damaged becomes a plain note on that run, never an exception.
`compare_runs` builds the object `tunedeck compare --json` prints; `table_sections` turns it into the
rows that the command's text and the Compare screen both show.
"""

from __future__ import annotations

import math
from pathlib import Path

from engine.evaluation.report import METRICS, format_value, read_report, report_path, summary
from engine.runs.events import EventReader
from engine.runs.protocol import Run, RunError, is_number

CURVES = {"loss": "log", "eval_loss": "eval"}  # curve -> the event type that carries it
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # each run's column and plot marker: readable without colour
_ABSENT = object()  # a key one run's config does not have


def compare_runs(runs: list[Run]) -> dict:
    """The comparison of two or more runs, as JSON-ready data (curves are [step, value] pairs)."""
    if len(runs) > len(LETTERS):
        raise RunError(f"{len(runs)} runs is more than one comparison shows; compare at most {len(LETTERS)} at a time")
    entries, configs = [], []
    for letter, run in zip(LETTERS, runs):
        entry, config = _run_entry(run)
        entries.append({"letter": letter, **entry})
        configs.append(config)
    return {"runs": entries, "config_diff": config_diff(configs), "metrics": metric_rows(entries)}


def _run_entry(run: Run) -> tuple[dict, dict | None]:
    notes: list[str] = []
    status, config = run.status(), run.config()
    if not config:
        notes.append("config.yaml is missing" if not run.config_path.is_file() else "config.yaml is damaged or empty")
    if status.get("state") in ("crashed", "failed", "unknown") and status.get("error"):
        notes.append(f"{status['state']}: {status['error']}")
    curves, last_step = _curves(run, notes)
    evals = curves["eval_loss"]
    best = min(evals, key=lambda point: point[1]) if evals else None  # the earliest of equal bests
    data = config.get("data")
    entry = {
        "run_id": run.id, "run_dir": str(run.path),
        "name": config.get("name") or (Path(str(data)).stem if data else None),
        "state": status.get("state"), "model": config.get("model") or status.get("model"),
        "method": config.get("method") or status.get("method"),
        "step": status.get("step", last_step), "max_steps": status.get("max_steps"),
        "curves": curves, "best_eval": {"eval_loss": best[1], "step": best[0]} if best else None,
        "config_read": bool(config), "eval": _eval_summary(run, notes),
        "eval_report": str(report_path(run)) if report_path(run).is_file() else None, "notes": notes,
    }
    return entry, config or None


def _curves(run: Run, notes: list[str]) -> tuple[dict[str, list[list[float]]], int | None]:
    """step -> value for each curve; a step logged again after a resume takes its newer value."""
    if not run.events_path.is_file():
        notes.append("events.jsonl is missing: no curves")
        return {name: [] for name in CURVES}, None
    reader = EventReader(run.events_path)
    points: dict[str, dict[int, float]] = {name: {} for name in CURVES}
    nonfinite = dict.fromkeys(CURVES, 0)
    last_step = None
    for event in _all_events(reader):
        step = event.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        for name, kind in CURVES.items():
            value = event.get(name)
            if event.get("type") != kind or not is_number(value):
                continue
            if math.isfinite(value):
                points[name][step] = float(value)
                last_step = max(step, last_step or 0)
            else:
                nonfinite[name] += 1
    if reader.skipped:
        notes.append(f"events.jsonl: {reader.skipped} damaged line{'s' if reader.skipped != 1 else ''} skipped")
    for name, count in nonfinite.items():
        if count:
            notes.append(f"{count} NaN/Inf {name.replace('_', ' ')} value{'s' if count != 1 else ''} left out")
    return {name: [[step, value] for step, value in sorted(p.items())] for name, p in points.items()}, last_step


def _all_events(reader: EventReader):
    """Every whole event, read a megabyte at a time so a long run's file is never held whole."""
    while batch := reader.read_new(1 << 20):
        yield from batch


def _eval_summary(run: Run, notes: list[str]) -> dict | None:
    if not report_path(run).is_file():
        notes.append(f"no evaluation report: `tunedeck eval {run.id} --baseline` writes one")
        return None
    try:
        return summary(read_report(run))
    except RunError as error:
        notes.append(str(error))
    except OSError as error:
        notes.append(f"{report_path(run)} cannot be read ({error.strerror or error})")
    except (KeyError, TypeError, AttributeError) as error:
        notes.append(f"{report_path(run)} is incomplete ({type(error).__name__}: {error}); "
                     f"run `tunedeck eval {run.id}` again to rewrite it")
    return None



# ---- configuration -----------------------------------------------------------

def _flat(config: dict, prefix: str = "") -> dict:
    """Nested mappings as dotted keys, so a difference deep inside one shows as its own key."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_diff(configs: list[dict | None]) -> list[dict]:
    """The keys whose values differ between the runs whose config.yaml was read, with every run's value
    (null where a run lacks the key or its config could not be read)."""
    flat = [None if c is None else _flat(c) for c in configs]
    read = [c for c in flat if c is not None]
    keys = list(dict.fromkeys(k for c in read for k in c))
    rows = []
    for key in keys:
        values = [c.get(key, _ABSENT) for c in read]
        if any(v != values[0] or type(v) is not type(values[0]) for v in values[1:]):
            rows.append({"key": key, "values": [None if c is None else c.get(key) for c in flat],
                         "absent": [c is not None and key not in c for c in flat]})
    return rows


# ---- held-out metrics --------------------------------------------------------

def metric_rows(entries: list[dict]) -> list[dict]:
    """The tuned model's metrics, one row per metric of METRICS that some run's report measured."""
    tuned = [((e["eval"] or {}).get("tuned") or {}) for e in entries]
    rows = []
    for m in METRICS:
        values = [t.get(m.key) if is_number(t.get(m.key)) else None for t in tuned]
        if any(v is not None for v in values):
            rows.append({"key": m.key, "label": m.label, "kind": m.kind, "values": values})
    return rows


# ---- the rows both faces show ---------------------------------------------------

def table_sections(comparison: dict) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """(section title, [(row label, one cell per run)]): run facts, configuration differences,
    held-out metrics and the forgetting check, every cell already in words."""
    entries = comparison["runs"]
    run_rows = [
        ("name", [e["name"] or "-" for e in entries]),
        ("state", [e["state"] or "-" for e in entries]),
        ("model", [Path(str(e["model"])).name if e["model"] else "-" for e in entries]),
        ("method", [e["method"] or "-" for e in entries]),
        ("steps", [f"{e['step'] if e['step'] is not None else '-'}/{e['max_steps'] or '?'}" for e in entries]),
        ("last loss", [format_value(_last(e["curves"]["loss"]), "lower") for e in entries]),
        ("best eval loss", [f"{format_value(b['eval_loss'], 'lower')} @{b['step']}" if (b := e["best_eval"]) else "-"
                            for e in entries]),
    ]
    sections = [("run", run_rows)]
    diff = comparison["config_diff"]
    config_rows = [(row["key"], [_config_cell(value, absent, e)
                                  for value, absent, e in zip(row["values"], row["absent"], entries)]) for row in diff]
    sections.append(("configuration: keys that differ" if diff else "configuration: no key differs", config_rows))
    summaries = [e["eval"] for e in entries]
    if any(summaries):
        sections.append(("held-out metrics (tuned model)", _metric_table(comparison["metrics"], summaries, entries)))
        sections.append(("forgetting check", _forgetting_rows(summaries)))
    else:
        sections.append(("held-out metrics: no run has a readable evaluation report (see the notes)", []))
    return sections


def _last(points: list) -> float | None:
    return points[-1][1] if points else None


def _config_cell(value, absent: bool, entry: dict) -> str:
    if not entry["config_read"]:
        return "?"
    if absent:
        return "(not set)"
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "[]"
    return "null" if value is None else str(value)


def _metric_table(metrics: list[dict], summaries: list[dict | None],
                  entries: list[dict]) -> list[tuple[str, list[str]]]:
    names = {s.get("task_metric") for s in summaries if s}
    rows = [("examples", [str(s.get("examples", "?")) if s else "unreadable" if e["eval_report"] else "no report"
                          for s, e in zip(summaries, entries)])]
    for m in metrics:
        label = f"task: {next(iter(names))}" if m["key"] == "task_metric" and len(names) == 1 else m["label"]
        cells = [format_value(v, m["kind"]) if s else "" for v, s in zip(m["values"], summaries)]
        if m["key"] == "task_metric" and len(names) > 1:  # different tasks: each cell says which
            cells = [f"{c} {s.get('task_metric')}" if s else c for c, s in zip(cells, summaries)]
        rows.append((label, cells))
    return rows


def _forgetting_rows(summaries: list[dict | None]) -> list[tuple[str, list[str]]]:
    columns = [_forgetting_cells((s or {}).get("forgetting")) if s else ("",) * 4 for s in summaries]
    labels = ("probes regressed", "which regressed", "tuned passes", "general-text ppl")
    return [(label, [c[i] for c in columns]) for i, label in enumerate(labels)]


def _forgetting_cells(forgetting) -> tuple[str, str, str, str]:
    """One run's forgetting check as (regressed, their names, tuned passes, general-text perplexity)."""
    f = forgetting if isinstance(forgetting, dict) else {}
    probes = [p for p in f.get("probes") or [] if isinstance(p, dict)] if isinstance(f.get("probes"), list) else []
    lost = f.get("regressed") if isinstance(f.get("regressed"), list) else []
    perplexity = f.get("perplexity") if isinstance(f.get("perplexity"), dict) else {}
    base, tuned = perplexity.get("base"), perplexity.get("tuned")
    ppl = "-"
    if is_number(tuned):
        ppl = format_value(tuned, "ppl") + (f" ({(tuned / base - 1) * 100:+.0f}%)" if is_number(base) and base else "")
    if not probes:
        return "-", "-", "-", ppl
    return (f"{len(lost)} of {len(probes)}", ", ".join(str(n) for n in lost) or "none",
            f"{sum(bool(p.get('tuned_pass')) for p in probes)} of {len(probes)}", ppl)


def fit(text: str, width: int) -> str:
    """`text` in at most `width` cells: a path keeps its end (the file name), anything else its start."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    return "…" + text[-(width - 1):] if "/" in text else text[: width - 1] + "…"
