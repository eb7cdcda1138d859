"""An evaluation report in exactly the shape engine.evaluation.run writes to `<run>/eval/report.json`."""

from __future__ import annotations

import json
from pathlib import Path

from engine.core.files import write_atomic
from engine.evaluation.metrics import cost_metrics
from engine.evaluation.report import ratios
from engine.runs.protocol import Run

PEOPLE = (("Maria", 34, "Lisbon"), ("Kenji", 27, "Osaka"), ("Amara", 45, "Lagos"), ("Lukas", 19, "Graz"),
          ("Sofia", 62, "Porto"), ("Omar", 31, "Cairo"))
PROBES = (("capital-france", "facts"), ("arithmetic-17x3", "arithmetic"), ("next-weekday", "reasoning"),
          ("list-three-json", "format"), ("reverse-string-py", "code"), ("largest-planet", "facts"),
          ("sum-of-evens", "arithmetic"), ("odd-one-out", "reasoning"))


def report_rows(with_reference: bool = False) -> list[dict]:
    """Six extraction rows; the tuned answer is wrong on the fifth. Each side's cost as generate()
    records it: the baseline's 3-shot prompt is long, the tuned model's short."""
    rows = []
    for i, (name, age, city) in enumerate(PEOPLE):
        reference = json.dumps({"name": name, "age": age, "city": city})
        tuned = reference if i != 4 else json.dumps({"name": name, "age": age, "city": "Lisbon"})
        baseline = (f"Sure! Here is the JSON:\n{reference}" if i % 2 else
                    f"The person is {name}, aged {age}, from {city}.")
        rows.append({"line": i + 3, "prompt": f"Extract name, age and city as JSON: {name} is {age} and lives in {city}.",
                     "reference": reference, "tuned": tuned, "baseline": baseline,
                     "tuned_exact": i != 4, "baseline_exact": False, "tuned_format": True,
                     "baseline_format": False, "tuned_task": 1.0 if i != 4 else 0.667,
                     "baseline_task": 1.0 if i % 2 else 0.0,
                     "tuned_prompt_tokens": 52 + i, "tuned_generated_tokens": 18, "tuned_seconds": 0.12,
                     "baseline_prompt_tokens": 410 + i, "baseline_generated_tokens": 30 + i % 2 * 6,
                     "baseline_seconds": 0.41})
        if with_reference:  # a larger served model: right but for the city of the last row
            rows[-1].update({"reference_model": reference.replace('"Cairo"', '"Giza"'),
                             "reference_model_exact": i != 5, "reference_model_format": True,
                             "reference_model_task": 1.0 if i != 5 else 0.667,
                             "reference_model_prompt_tokens": 402 + i, "reference_model_generated_tokens": 19,
                             "reference_model_seconds": 0.9})
    return rows



def make_report(*, baseline: bool = True, task_metric: str = "json_field_f1", reference: bool = False) -> dict:
    probes = [{"name": name, "category": category, "prompt": f"probe {name}", "base_output": "ok",
               "tuned_output": "ok" if name != "capital-france" else "Lyon",
               "base_pass": True, "tuned_pass": name != "capital-france"} for name, category in PROBES]
    report = {
        "data": "/data/people/test.jsonl", "examples": 40, "created": 1795240000.0, "task_metric": task_metric,
        "tuned": {"exact_match": 0.95, "normalised_match": 0.95, "task_metric": 0.97, "format_compliance": 1.0,
                  "loss": 0.01, "perplexity": 1.01},
        "baseline": {"exact_match": 0.10, "normalised_match": 0.12, "task_metric": 0.60, "format_compliance": 0.10,
                     "loss": None, "perplexity": None},
        "forgetting": {"probes": probes, "regressed": ["capital-france"], "improved": [],
                       "perplexity": {"base": 20.1, "tuned": 21.3},
                       "verdict": "1 of 8 probes regressed: capital-france"},
        "rows": report_rows(reference), "batch_size": 8,
    }
    if reference:
        report["reference_model"] = {"exact_match": 0.85, "normalised_match": 0.85, "task_metric": 0.93,
                                     "format_compliance": 1.0, "loss": None, "perplexity": None, "shots": 3,
                                     "model": "qwen2.5-7b-instruct at http://localhost:8000/v1"}
    for side in ("tuned", "baseline", "reference_model"):
        if side in report:
            report[side].update(cost_metrics(report["rows"], side))
    report["ratios"] = ratios(report)
    if not baseline:
        del report["baseline"]
        report["ratios"] = ratios(report)
        for row in report["rows"]:
            row["baseline"] = row["baseline_exact"] = row["baseline_format"] = None
            for key in ("task", "prompt_tokens", "generated_tokens", "seconds"):
                del row[f"baseline_{key}"]
    return report


def write_report(run: Run, report: dict | None = None) -> Path:
    """`<run>/eval/report.json` and `report.md`, as the engine leaves them."""
    report = make_report() if report is None else report
    eval_dir = run.path / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(eval_dir / "report.json", json.dumps(report))
    write_atomic(eval_dir / "report.md", f"# Evaluation of {run.id}\n\nexact match 95.0% (baseline 10.0%)\n")
    return eval_dir / "report.json"
