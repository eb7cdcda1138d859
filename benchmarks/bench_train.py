"""Training throughput: the tunedeck worker against a plain Trainer script, and packing
against padding, on real data (GSM8K from ../shared/data).

    python benchmarks/bench_train.py [--steps 30] [--rows 600]

Prints tokens per second and ratios measured in this one run. Not a test: figures
depend on the machine; see BENCHMARKS.md for what we measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k_train.json"

# The baseline: what a person writes by hand with the Trainer and PEFT, on the same features.
PLAIN_TRAINER = textwrap.dedent("""
    import json, sys, torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorWithFlattening, Trainer, TrainingArguments
    from engine.data.load import load_examples
    from engine.training.labels import encode_examples
    model_dir, data, steps, batch, seq, out = sys.argv[1:7]
    tok = AutoTokenizer.from_pretrained(model_dir)
    convs = [ex.messages for ex in load_examples(data).examples]
    features, _ = encode_examples(tok, convs, int(seq))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=out, max_steps=int(steps), per_device_train_batch_size=int(batch),
                             learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.03, logging_steps=1,
                             save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, seed=42,
                             remove_unused_columns=False, include_num_input_tokens_seen="non_padding")
    trainer = Trainer(model=model, args=args, train_dataset=features, processing_class=tok,
                      data_collator=DataCollatorWithFlattening(return_position_ids=True, separator_id=-100))
    metrics = trainer.train().metrics
    print(json.dumps({"tokens": trainer.state.num_input_tokens_seen, "runtime": metrics["train_runtime"]}))
""")


def prepare(tmp: Path, rows: int, model: str) -> tuple[Path, Path]:
    data = json.loads(GSM8K.read_text())[:rows]
    data_path = tmp / "gsm8k.json"
    data_path.write_text(json.dumps(data))
    if model == "demo":
        from engine.demo import prepare_demo_model

        return prepare_demo_model(), data_path
    from engine.testing import build_tiny_model

    corpus = [f"{r['instruction']} {r['output']}" for r in data]
    # Big enough that compute, not per-step bookkeeping, dominates.
    return build_tiny_model(tmp / "model", corpus=corpus, hidden=256, layers=4), data_path


def worker_run(tmp: Path, model_dir: Path, data: Path, steps: int, batch: int, seq: int, **overrides) -> dict:
    from engine.runs.events import EventReader
    from engine.runs.launch import create_from_config
    from engine.training.config import parse_config

    cfg = parse_config({"model": str(model_dir), "data": str(data), "method": "lora", "max_steps": steps,
                        "per_device_train_batch_size": batch, "max_seq_length": seq, "validation_split": 0,
                        "save_steps": 10 ** 6, "learning_rate": 2e-4, "lora_dropout": 0.05, **overrides})
    run = create_from_config(cfg, tmp / "ws")
    subprocess.run([sys.executable, "-m", "engine.training.worker", "--run-dir", str(run.path)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    final = [e for e in EventReader(run.events_path).read_new() if e.get("state") == "completed"][-1]
    return {"tokens_per_second": final["train_tokens_per_second"], "runtime": final["train_runtime"]}


def plain_run(tmp: Path, model_dir: Path, data: Path, steps: int, batch: int, seq: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PLAIN_TRAINER, str(model_dir), str(data), str(steps), str(batch),
                          str(seq), str(tmp / "plain")], check=True, capture_output=True, text=True, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"tokens_per_second": result["tokens"] / result["runtime"], "runtime": result["runtime"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", choices=["tiny", "demo"], default="tiny",
                        help="tiny: a random Llama (hidden 256, 4 layers); demo: SmolLM2-135M-Instruct")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model_dir, data = prepare(tmp, args.rows, args.model)
        common = (tmp, model_dir, data, args.steps, args.batch, args.seq)
        print(f"GSM8K first {args.rows} rows, model {args.model}, LoRA r16 all-linear, "
              f"{args.steps} steps of batch {args.batch}, CPU")

        # Interleave the two so drift in machine load hits both alike; keep the best of each.
        plain, worker = [], []
        for _ in range(args.repeats):
            plain.append(plain_run(*common)["tokens_per_second"])
            worker.append(worker_run(*common, packing=True)["tokens_per_second"])
        p, w = max(plain), max(worker)
        print("\n1. loop overhead (packed batches in both)")
        print(f"   plain Trainer script : {p:8.1f} tokens/s   (runs: {', '.join(f'{x:.0f}' for x in plain)})")
        print(f"   tunedeck worker      : {w:8.1f} tokens/s   (runs: {', '.join(f'{x:.0f}' for x in worker)})")
        print(f"   ratio worker/plain   : {w / p:8.3f}   (target >= 0.97)")

        print("\n2. real (non-padding) tokens/s by batching strategy")
        padded = worker_run(*common, packing=False, group_by_length=False)["tokens_per_second"]
        grouped = worker_run(*common, packing=False, group_by_length=True)["tokens_per_second"]
        print(f"   padded, random order      : {padded:8.1f} tokens/s   1.00x")
        print(f"   padded, grouped by length : {grouped:8.1f} tokens/s   {grouped / padded:.2f}x  (default without flash attention)")
        print(f"   packed, SDPA block mask   : {w:8.1f} tokens/s   {w / padded:.2f}x  (default with flash attention)")


if __name__ == "__main__":
    main()
