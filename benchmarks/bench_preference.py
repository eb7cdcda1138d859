"""Preference tuning on the CPU: DPO (or ORPO, KTO) teaches the demo model an answer format it does not follow,
measured before and after.

    nice python benchmarks/bench_preference.py [--objective dpo] [--steps 40] [--lr 5e-5] [--out DIR]

The model is SmolLM2-135M-Instruct (`tunedeck demo`'s), an instruction-tuned model: the SFT starting point. The
task is the demo's extraction (engine.demo): asked for "JSON only", it gets the facts roughly right but wraps
them in prose or a fenced block. The pairs prefer the bare JSON object (chosen) to the same facts in the two
styles the model itself uses (rejected: a sentence, or JSON fenced after a preface), so the preference is one
it does not yet follow. The preference rate is the share of the 40 held-out prompts whose greedy answer is
exactly a JSON object with the keys name, age and city (the whole answer parses), before (the base, no adapter)
and after (the tuned run), both answering the bare prompt. The run's own reward accuracy and margin on its
held-out pairs come from its last eval event. Not a test: BENCHMARKS.md keeps what was measured.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from engine.demo import demo_rows, prepare_demo_model  # noqa: E402

KEYS = {"name", "age", "city"}


def rejected_answer(person: dict, rng: random.Random) -> str:
    """The same facts in a style the instruct model uses on its own."""
    if rng.random() < 0.5:
        return f"The person's name is {person['name']}, they are {person['age']} years old and live in {person['city']}."
    return f"Here is the extracted information in JSON format:\n\n```json\n{json.dumps(person, indent=2)}\n```"


def write_pairs(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for row in demo_rows(n, seed):
            prompt, answer = row["messages"]
            person = json.loads(answer["content"])
            f.write(json.dumps({"prompt": [prompt], "chosen": [answer],
                                "rejected": [{"role": "assistant", "content": rejected_answer(person, rng)}]}) + "\n")
    return path


def follows(answer: str) -> bool:
    try:
        value = json.loads(answer.strip())
    except ValueError:
        return False
    return isinstance(value, dict) and set(value) == KEYS


def preference_rates(run, prompts: list[list[dict]]) -> dict:
    from engine.evaluation.run import Models, generate
    from engine.training.config import parse_config

    models = Models(run.path, parse_config(run.config(), base_dir=run.path, check_paths=False))
    out = {}
    for side in ("base", "tuned"):
        with models.base_context() if side == "base" else _nothing():
            model = models.as_base() if side == "base" else models.tuned
            answers = generate(model, models.tokenizer, prompts, 64, batch_size=8)[0]
        out[side] = {"rate": sum(map(follows, answers)) / len(answers), "example": answers[0]}
    return out


def _nothing():
    from contextlib import nullcontext

    return nullcontext()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objective", default="dpo", choices=("dpo", "orpo", "kto"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--out", type=Path, help="keep the run here (default: a temporary directory)")
    args = parser.parse_args()
    model = prepare_demo_model()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        train = write_pairs(out / "pairs.jsonl", 200, seed=1)
        held_out = write_pairs(out / "held-out.jsonl", 40, seed=3)
        cfg = {"name": f"bench-{args.objective}", "model": str(model), "data": str(train), "eval_data": str(held_out),
               "objective": args.objective, "method": "lora", "max_steps": args.steps, "learning_rate": args.lr,
               "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8, "max_seq_length": 256,
               "eval_steps": args.steps, "save_steps": args.steps, "logging_steps": 5, "sample_prompts": 0,
               "early_stopping_patience": None, "warmup_steps": 0.1}
        (out / "cfg.yaml").write_text(json.dumps(cfg))
        from engine_runs import dump, start, wait_final

        started = time.perf_counter()
        run, proc = start(out / "cfg.yaml", out / "ws")
        final = wait_final(run, proc, timeout=3600)
        seconds = time.perf_counter() - started
        assert final["state"] == "completed", dump(run)
        evals = [json.loads(line) for line in run.events_path.read_text().splitlines() if '"type": "eval"' in line]
        last = evals[-1] if evals else {}
        prompts = [[json.loads(line)["prompt"][0]] for line in held_out.read_text().splitlines()]
        rates = preference_rates(run, prompts)
        print(f"{args.objective} LoRA on SmolLM2-135M-Instruct: {args.steps} steps at lr {args.lr:g}, batch 4, "
              f"{seconds:.0f} s with loading (2 CPU cores)")
        print("| | preference rate (bare JSON with the three keys) | first held-out answer |\n| --- | --- | --- |")
        for side, label in (("base", "before (the instruct model)"), ("tuned", f"after ({args.objective})")):
            print(f"| {label} | {rates[side]['rate']:.0%} of {len(prompts)} | {json.dumps(rates[side]['example'])[:70]} |")
        for key in ("eval_rewards/accuracies", "eval_rewards/margins", "eval_loss"):
            if key in last:
                print(f"{key}: {last[key]:.3f}")


if __name__ == "__main__":
    main()
