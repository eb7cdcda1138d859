"""The chat engine against a plain transformers `generate` loop: time to first token and tokens per second,
same model, same prompt, greedy, in one run.

    python benchmarks/bench_chat.py [--tokens 64] [--repeats 3] [--tiny]

The model is the demo's SmolLM2-135M-Instruct (engine.demo.prepare_demo_model) with a LoRA adapter as a run
leaves it (rank 16 on all linear layers; its B matrices are zero, so it answers as the base does), or with
--tiny the tests' tiny random model. Both sides load it with engine.evaluation.run.Models, the chat's own
loader: the engine in its subprocess (engine.chat.server, spoken to through its pipe, each token streamed
back as a JSON line), the plain loop in this process calling `model.generate` with no streamer. They take
turns, never at the same time; best of each over the repeats. Definitions as the engine reports them: time
to first token from the request (chat template included) to the first new token; tokens per second over
the tokens after the first (the plain loop notes token times with a streamer that only reads the clock).
Not a test: figures depend on the machine; BENCHMARKS.md has ours.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = [{"role": "user", "content": "Write a short paragraph about why the sea is salty."}]


def make_run(tmp: Path, tiny: bool):
    """A finished LoRA run directory around the model: config, run.json, adapter/."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.runs.workspace import create_run

    if tiny:
        from engine.testing import build_tiny_model

        model_dir = build_tiny_model(tmp / "tiny-model")
    else:
        from engine.demo import prepare_demo_model

        model_dir = prepare_demo_model()
    run = create_run(tmp / "ws", {"model": str(model_dir), "data": "unused.jsonl", "method": "lora"}, name="bench")
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                          LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    peft.save_pretrained(run.path / "adapter")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(run.path / "adapter")
    return run, Path(model_dir)


def plain(models, tokens: int) -> dict:
    """What a person writes: chat template, tokenizer, `generate`. Its only addition is a streamer that notes the
    time of each new token (no decoding, no output), so that the first token is timed within the same call."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self):
            self.times: list[float] = []

        def put(self, value):
            self.times.append(time.perf_counter())  # the first call is the prompt

        def end(self):
            pass

    tok, model, clock = models.tokenizer, models.tuned, Clock()
    started = time.perf_counter()
    text = tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    batch = tok(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                             streamer=clock)
    generated = out.shape[1] - batch["input_ids"].shape[1]
    first, last = clock.times[1], clock.times[-1]
    return {"first_token_seconds": first - started, "tokens": generated,
            "tokens_per_second": (generated - 1) / (last - first), "seconds": time.perf_counter() - started}


def engine_side(engine, tokens: int) -> dict:
    started = time.perf_counter()
    done = engine.answer(PROMPT, "tuned", max_new_tokens=tokens)
    return {"first_token_seconds": done["first_token_seconds"], "tokens": done["tokens"],
            "tokens_per_second": done["tokens_per_second"], "seconds": done["seconds"],
            "client_seconds": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny random model instead of the demo's")
    args = parser.parse_args()

    from engine.chat.client import ChatEngine
    from engine.evaluation.run import Models
    from engine.training.config import parse_config

    with tempfile.TemporaryDirectory() as tmp:
        run, model_dir = make_run(Path(tmp), args.tiny)
        models = Models(run.path, parse_config(run.config(), base_dir=run.path, check_paths=False))
        engine = ChatEngine(run)
        engine.start()
        ready = engine.wait_ready()
        engine.answer(PROMPT, "tuned", max_new_tokens=4)  # warm-up, both sides
        plain(models, 4)
        results = {"plain": [], "engine": []}
        try:
            for _ in range(args.repeats):  # interleaved: a busy moment of the machine hits both
                results["plain"].append(plain(models, args.tokens))
                results["engine"].append(engine_side(engine, args.tokens))
        finally:
            engine.close()
    print(f"model {model_dir.name} + LoRA r16 adapter, {ready['device']}, greedy, {args.tokens} new tokens, "
          f"best of {args.repeats}")
    best = {}
    for side, rows in results.items():
        best[side] = {"first_token_seconds": min(r["first_token_seconds"] for r in rows),
                      "tokens_per_second": max(r["tokens_per_second"] for r in rows)}
        runs = " / ".join(f"{r['tokens_per_second']:.1f}" for r in rows)
        print(f"{side:7} time to first token {best[side]['first_token_seconds'] * 1000:7.1f} ms   "
              f"tokens/s {best[side]['tokens_per_second']:7.1f} (runs {runs}; {rows[0]['tokens']} tokens)")
    ratio = best["engine"]["tokens_per_second"] / best["plain"]["tokens_per_second"]
    print(f"ratio   tokens/s engine/plain {ratio:.3f} (target >= 0.95); time to first token engine/plain "
          f"{best['engine']['first_token_seconds'] / best['plain']['first_token_seconds']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
