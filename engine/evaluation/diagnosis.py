"""The diagnosis of a run: the practice's debugging tree (seeds 003) read on the run's own evidence.

Evidence comes from what the run directory already holds: the `log`, `eval`, `warning`, `error` and
`data_ready` events, the status, config.yaml, and the evaluation report when `tunedeck eval` has run.
Each finding says what was seen (numbers and steps of this run), what to try, and the change as
config keys, so that the next run's configuration can be written from it:

    {"findings": [{"id", "evidence", "advice", "config", "details"?}], "checked": [...], "not_checked": [...]}

Findings come in the tree's order (the run failed, the learning rate is too high, the model is not
learning, it overfits, the format is wrong, it copies its training answers, it forgot general
abilities); where two change the same key, the earlier one decides it. Light: no torch, no UI.
"""

from __future__ import annotations

from pathlib import Path

from engine.evaluation.findings import (
    MIN_LOGS,
    Evidence,
    failed,
    forgetting,
    format_finding,
    healthy,
    lr_too_high,
    memorization,
    not_learning,
    overfitting,
    plural,
)
from engine.runs.protocol import Run


def diagnose(run: Run, general_data: str | None = None, evidence: Evidence | None = None) -> dict:
    """The findings for a run, what was checked and what could not be (no evaluation yet, too few steps).
    `general_data`: a local file of general examples to name in the forgetting finding's config; `evidence`:
    the run's, when the caller has read it already."""
    ev = evidence or Evidence.read(run)
    checked, not_checked = [], []
    findings = [f for f in (failed(ev), lr_too_high(ev)) if f]
    learning = not_learning(ev) if not any(f.id == "lr_too_high" for f in findings) else None
    findings += [f for f in (learning, overfitting(ev)) if f]
    checked.append(f"training curves ({plural(len(ev.logs), 'logged step')}, {plural(len(ev.evals), 'evaluation')})")
    if len(ev.logs) < MIN_LOGS:
        not_checked.append(f"the loss trend: only {len(ev.logs)} logged steps (need {MIN_LOGS})")
    if len(ev.evals) < 3:
        not_checked.append(f"overfitting: {plural(len(ev.evals), 'evaluation')} (need 3; give eval_data or "
                           "validation_split, and eval_steps)")
    if ev.report is None:
        not_checked.append(f"format, memorization and forgetting: no evaluation yet (`tunedeck eval {run.id} "
                           "--baseline`)")
    else:
        findings += [f for f in (format_finding(ev, ev.training), memorization(ev, ev.training),
                                 forgetting(ev, general_data)) if f]
        checked.append(f"held-out evaluation ({ev.report.get('examples')} examples), forgetting probes")
        if (ev.report.get("tuned") or {}).get("format_compliance") is None:
            not_checked.append("format compliance: the references have no common format (pass --format to eval)")
    if not findings:
        findings = [healthy(ev)]
    return {"run_id": run.id, "state": ev.status.get("state"), "findings": [f.to_dict() for f in findings],
            "checked": checked, "not_checked": not_checked}


def next_config(run: Run, result: dict) -> tuple[dict, list[str]]:
    """The run's configuration with the findings' changes (the first finding to set a key decides it),
    and one line per change."""
    config = dict(run.config())
    changes, decided = [], set()
    for f in result["findings"]:
        for key, value in f["config"].items():
            if key in decided:
                continue
            decided.add(key)
            changes.append(f"{key}: {config.get(key)!r} -> {value!r} ({f['id']})")
            config[key] = value
    config["name"] = f"{config.get('name') or 'run'}-next"
    return config, changes


def write_next_config(run: Run, result: dict, path: Path) -> list[str]:
    """Write the next run's configuration, validated as `tunedeck train` will read it; the changes made."""
    import yaml

    from engine.core.files import ensure_private_dir, write_atomic
    from engine.training.config import parse_config

    config, changes = next_config(run, result)
    parse_config(config, base_dir=run.path)  # refuse to write what train would refuse
    header = [f"# next run after the diagnosis of {run.id}"] + [f"#   {c}" for c in changes or ["no change"]]
    ensure_private_dir(path.parent, tighten=False)  # an existing folder of the user's keeps its mode
    write_atomic(path, "\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False))
    return changes
