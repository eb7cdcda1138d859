"""Mixing general data against forgetting: the demo task trained with and without `general_data`.

    nice python benchmarks/bench_mixing.py [--ratio 0.3] [--steps 30] [--out DIR] [--arm both|plain|mix]

Both runs are the demo's LoRA on SmolLM2-135M (engine.demo: same data, seed, steps); the second also
samples general examples into its training split. Each run is then evaluated as `tunedeck eval` does
(engine.evaluation.run.evaluate_run): the task metric on the 40 held-out demo examples, and the forgetting
probes (engine.evaluation.probes) against the base model. The general file is real instruction data from
../shared/data (GPTeacher role-play and GSM8K, read only) without any row that holds all the telling words
of a probe's question, so that no probe can pass because it was trained on (asserted). Takes about 15
minutes on 2 CPU cores.
Not a test: see BENCHMARKS.md for what was measured.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
SOURCES = (SHARED / "gpteacher_roleplay.json", SHARED / "gsm8k_train.json")


STOP = {"what", "is", "the", "of", "a", "an", "which", "as", "if", "and", "that", "does", "in", "with", "nothing",
        "else", "give", "write", "reply", "single", "word", "letters", "returns", "return", "known", "than", "who"}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+|\d+|[+*]", text.lower()))


def probe_keys() -> list[set[str]]:
    """Each built-in probe's question (its first sentence) as its telling words."""
    from engine.evaluation.probes import BUILTIN_PROBES

    return [_words(re.split(r"(?<=[?.])\s", p.prompt)[0]) - STOP for p in BUILTIN_PROBES]


def overlaps_probes(example, keys: list[set[str]]) -> bool:
    """The row holds every telling word of a probe's question (conservative: 'capital' and 'france'
    anywhere in a row is enough)."""
    words = _words(" ".join(m["content"] for m in example.messages))
    return any(key <= words for key in keys)


def write_general(path: Path, per_source: int, seed: int) -> dict:
    """A sample of each source without rows that hold a probe's question; the check is asserted."""
    from engine.data.export import file_row, write_examples
    from engine.data.load import load_examples

    questions = probe_keys()
    rng = random.Random(seed)
    chosen, removed = [], 0
    for source in SOURCES:
        examples = load_examples(source).examples
        kept = [ex for ex in examples if not overlaps_probes(ex, questions)]
        removed += len(examples) - len(kept)
        chosen += rng.sample(kept, per_source)
    assert not any(overlaps_probes(ex, questions) for ex in chosen), "a general row overlaps a probe"
    write_examples([file_row(ex) for ex in chosen], path)
    written = load_examples(path).examples
    assert len(written) == len(chosen) and not any(overlaps_probes(ex, questions) for ex in written)
    return {"examples": len(written), "removed_for_probes": removed}


def train(cfg: dict, workspace: Path):
    """A completed run of this name in the workspace (from an earlier, interrupted benchmark), or a new one."""
    from engine.runs.launch import create_from_config, spawn
    from engine.runs.protocol import Run
    from engine.training.config import parse_config

    for path in sorted((workspace / "runs").glob(f"*-{cfg['name']}-*")):
        if Run(path).status().get("state") == "completed":
            return Run(path)
    run = create_from_config(parse_config(cfg), workspace, argv=["bench_mixing"])
    spawn(run, detach=False).wait()
    status = Run(run.path).status()
    if status.get("state") != "completed":
        raise SystemExit(f"{run.id} ended {status.get('state')}: {status.get('error')}\n"
                         + "\n".join(run.log_tail(30)))
    return run


def data_ready(run) -> dict:
    from engine.runs.events import EventReader

    return next(e for e in EventReader(run.events_path).read_new() if e.get("state") == "data_ready")


def evaluate(run, limit: int | None) -> dict:
    """`tunedeck eval RUN` in its own process, as the CLI runs it (the report lands in the run directory)."""
    subprocess.run([sys.executable, "-m", "engine.evaluation.run", "--run-dir", str(run.path)]
                   + (["--limit", str(limit)] if limit else []), check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads((run.path / "eval" / "report.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--per-source", type=int, default=150, help="general rows sampled from each source")
    parser.add_argument("--out", type=Path, help="keep the workspace here (default: a temporary directory); a "
                        "completed run of an arm found there is evaluated again, not retrained")
    parser.add_argument("--arm", choices=("both", "plain", "mix"), default="both",
                        help="one arm only (two processes can share the cores); the table needs both in --out")
    parser.add_argument("--eval-limit", type=int, help="held-out examples to generate for (default: all 40)")
    args = parser.parse_args()
    from engine.demo import clean_copy, demo_config, prepare_demo_model, write_demo_data

    root = args.out or Path(tempfile.mkdtemp(prefix="bench-mixing-"))
    model_dir = prepare_demo_model()
    data = write_demo_data(root / "demo")
    data["train"], _ = clean_copy(data["train"])
    general = root / "general.jsonl"
    general_info = write_general(general, args.per_source, seed=0)
    print(f"general file: {general_info['examples']} rows; {general_info['removed_for_probes']} source rows "
          f"shared a probe question's words and were left out", flush=True)
    base_cfg = demo_config(model_dir, data, args.steps)
    arms = {"plain": {}, "mix": {"general_data": str(general), "general_ratio": args.ratio}}
    for name in arms if args.arm == "both" else [args.arm]:
        run = train({**base_cfg, **arms[name], "name": name}, root)
        ready = data_ready(run)
        report = evaluate(run, args.eval_limit)
        forgetting = report["forgetting"]
        result = {
            "train_examples": ready["train"]["examples"], "train_tokens": ready["train"]["tokens"],
            "general": ready.get("general"), "task_metric": report["task_metric"], "tuned": report["tuned"],
            "regressed": forgetting["regressed"], "base_passes": sum(p["base_pass"] for p in forgetting["probes"]),
            "tuned_passes": sum(p["tuned_pass"] for p in forgetting["probes"]),
            "perplexity": forgetting["perplexity"], "verdict": forgetting["verdict"], "run": str(run.path)}
        (root / f"results-{name}.json").write_text(json.dumps(result, indent=1))
        print(f"{name}: {json.dumps(result)}", flush=True)
    if not all((root / f"results-{name}.json").exists() for name in arms):
        return 0
    plain, mixed = (json.loads((root / f"results-{name}.json").read_text()) for name in arms)
    print(f"\n| | task only | mixed, general_ratio {args.ratio:g} |\n| --- | --- | --- |")
    rows = [("training examples (tokens)", lambda r: f"{r['train_examples']} ({r['train_tokens']:,})"),
            (f"{plain['task_metric']}, {args.eval_limit or 40} held-out", lambda r: f"{r['tuned']['task_metric']:.1%}"),
            ("exact match", lambda r: f"{r['tuned']['exact_match']:.1%}"),
            ("probes regressed", lambda r: f"{len(r['regressed'])} of 10 ({', '.join(r['regressed']) or '-'})"),
            ("probe passes base -> tuned", lambda r: f"{r['base_passes']} -> {r['tuned_passes']}"),
            ("general-text perplexity base -> tuned",
             lambda r: f"{r['perplexity']['base']:.1f} -> {r['perplexity']['tuned']:.1f}")]
    for name, cell in rows:
        print(f"| {name} | {cell(plain)} | {cell(mixed)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
