"""The model card every export carries (`README.md`, Hugging Face convention: YAML front matter, then
markdown): base model, data with fingerprints and row counts, the full config, held-out metrics against
the baseline, forgetting, the diagnosis, the verification of the export, how to run it, and the
production checklist of the practice (seeds 003) with what tunedeck checked and what it did not.
Light: no torch.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from engine.data.load import DataError, fingerprint, load_examples
from engine.evaluation.diagnosis import diagnose
from engine.evaluation.findings import Evidence
from engine.evaluation.report import markdown_report
from engine.runs.protocol import Run


def data_rows(config: dict) -> list[dict]:
    """Each data file of the run: its fingerprint (engine.data.load), rows read, rows that could not be used."""
    rows = []
    for key in ("data", "eval_data", "test_data"):
        path = config.get(key)
        if not path:
            continue
        try:
            loaded = load_examples(path)
            rows.append({"key": key, "path": str(path), "fingerprint": fingerprint(path),
                         "rows": len(loaded.examples), "unusable": len(loaded.problems)})
        except (DataError, OSError) as exc:
            rows.append({"key": key, "path": str(path), "fingerprint": None, "rows": None, "error": str(exc)})
    return rows


def checklist(report: dict | None, diagnosis: dict, verification: dict) -> list[tuple[str, bool, str]]:
    """The practice's production checklist: (item, checked, how or why not)."""
    compared = bool(report and "baseline" in report)
    compliance = (report or {}).get("tuned", {}).get("format_compliance")
    return [
        ("Evaluated on held-out test set", bool(report),
         f"`tunedeck eval` on {report['examples']} examples of {report['data']}" if report
         else "not yet: run `tunedeck eval RUN --baseline`"),
        ("Tested for catastrophic forgetting", bool(report and report.get("forgetting")),
         report["forgetting"]["verdict"] if report and report.get("forgetting") else "not yet: `tunedeck eval`"),
        ("Compared to base model performance", compared,
         "the prompted base model (few-shot) on the same examples" if compared
         else "not yet: `tunedeck eval RUN --baseline`"),
        ("Tested edge cases and failure modes", False,
         "not checked by tunedeck: write probes for your edge cases (`engine.evaluation.run --probes FILE`) "
         "and read the failing rows of the evaluation report"),
        ("Verified format compliance", compliance is not None,
         f"{compliance:.1%} of held-out answers in the expected format" if compliance is not None
         else "not yet: `tunedeck eval`"),
        ("Checked for harmful/biased outputs", False,
         "not checked by tunedeck: red-team the model and run a safety classifier before serving it"),
        ("Documented training data and parameters", True, "this card: data files with fingerprints, full config"),
        ("Export verified against the run", not verification.get("warnings"),
         "; ".join(verification.get("warnings") or []) or "next-token agreement and greedy answers above"),
    ]


def model_card(run_dir: Path, kind: str, verification: dict, files: dict, commands: str) -> str:
    run = Run(run_dir)
    evidence = Evidence.read(run)  # the config, the report and the events, read once for the card and diagnosis
    config, report = evidence.config, evidence.report
    diagnosis = diagnose(run, evidence=evidence)
    method, gguf = config.get("method", "lora"), kind not in ("adapter", "merged")
    front = {"base_model": str(config.get("model")),
             "library_name": "gguf" if gguf else "peft" if kind == "adapter" else "transformers",
             "tags": ["tunedeck", method, *(["gguf"] if gguf else [])]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {run.id}", "",
             f"Fine-tuned from `{config.get('model')}` with tunedeck ({method}); this export: {kind}.", "",
             "## Files", ""]
    lines += [f"- `{name}`: {what}" for name, what in files.items()]
    lines += ["", "## Run it", "", "```", commands, "```", "", "## Data", "",
              "| key | file | fingerprint | rows | unusable rows |", "|---|---|---|---|---|"]
    for d in data_rows(config):
        rows = d["rows"] if d["rows"] is not None else "-"
        lines.append(f"| {d['key']} | `{d['path']}` | {d['fingerprint'] or '-'} | {rows} "
                     f"| {d.get('unusable', d.get('error', '-'))} |")
    ready = (evidence.data_ready or {}).get("train")
    if ready:
        lines += ["", f"After tokenising: {ready.get('kept')} of {ready.get('examples')} training examples kept "
                      f"({ready.get('truncated', 0)} truncated, {ready.get('dropped_too_long', 0)} dropped as too "
                      f"long, {ready.get('dropped_no_target', 0)} with nothing to train on)."]
    lines += ["", "## Configuration", "", "```yaml", yaml.safe_dump(config, sort_keys=False).strip(), "```", ""]
    lines += ["## Held-out evaluation", ""]
    if report:
        body = markdown_report(report).split("\n## Examples")[0].splitlines()[1:]  # without its title and rows
        lines += [line.replace("## ", "### ", 1) if line.startswith("## ") else line for line in body]
    else:
        lines.append("Not evaluated yet: `tunedeck eval RUN --baseline` writes the metrics and forgetting check.")
    lines += ["", "## Diagnosis", ""]
    for f in diagnosis["findings"]:
        lines.append(f"- **{f['id']}**: {f['evidence'].rstrip('.')}. Try: {f['advice']}")
    lines += [f"- checked: {c}" for c in diagnosis["checked"]]
    lines += [f"- not checked: {c}" for c in diagnosis["not_checked"]]
    lines += ["", "## Verification of this export", "",
              f"{verification['prompts']} prompts of `{verification['data']}` re-run on the exported files and on "
              "the run's model (base in fp32 plus the unmerged adapter).", "",
              "| checked on | next-token agreement | positions | greedy answers same |", "|---|---|---|---|"]
    lines += [f"| {c['model']} | {c['next_token_agreement']:.1%} | {c['positions']} | "
              f"{c['greedy_same']}/{c['greedy_total']} |" for c in verification["checks"]]
    lines += [""] + [f"- warning: {w}" for w in verification.get("warnings", [])]
    lines += [f"- note: {n}" for n in verification.get("notes", [])]
    lines += ["", "## Production checklist", ""]
    lines += [f"- [{'x' if done else ' '}] {item}: {how}" for item, done, how in checklist(report, diagnosis,
                                                                                          verification)]
    return "\n".join(lines) + "\n"


