"""Held-out evaluation by generation: `python -m engine.evaluate --model M [--adapter DIR] --data FILE --out F`.

Greedy, batched generation on the prompts of a held-out file; exact match (after
whitespace normalisation) against the reference answer and JSON validity, kept
apart: a well-formed wrong answer and a right answer wrapped in prose are
different failures. Heavy (imports torch): runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def normalise(text: str) -> str:
    return " ".join(text.split())


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def score(prediction: str, reference: str) -> dict:
    return {"exact": normalise(prediction) == normalise(reference), "valid_json": is_json(prediction.strip())}


def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int) -> list[str]:
    import torch

    tokenizer.padding_side = "left"  # generation continues from the right edge
    outputs = []
    for i in range(0, len(prompts), batch_size):
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                 for p in prompts[i:i + batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        outputs += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return outputs


def evaluate(model_spec: str, data: str, adapter: str | None = None, max_new_tokens: int = 64,
             batch_size: int = 8, limit: int | None = None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.data import load_examples
    from engine.models import resolve_model

    ref = resolve_model(model_spec)
    tokenizer = AutoTokenizer.from_pretrained(adapter or ref.path, gguf_file=None if adapter else ref.gguf_file)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(ref.path, gguf_file=ref.gguf_file, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    examples = load_examples(data).examples[:limit]
    started = time.time()
    predictions = generate(model, tokenizer, [ex.messages[:-1] for ex in examples], max_new_tokens, batch_size)
    rows = []
    for ex, prediction in zip(examples, predictions):
        reference = ex.messages[-1]["content"]
        rows.append({"line": ex.line, "prompt": ex.messages[-2]["content"], "reference": reference,
                     "prediction": prediction, **score(prediction, reference)})
    n = len(rows) or 1
    return {
        "model": model_spec, "adapter": adapter, "data": data, "examples": len(rows),
        "exact_match": sum(r["exact"] for r in rows) / n,
        "valid_json": sum(r["valid_json"] for r in rows) / n,
        "seconds": round(time.time() - started, 1),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.evaluate")
    parser.add_argument("--model", required=True)
    parser.add_argument("--adapter")
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--limit", type=int)
    args = parser.parse_args(argv)
    result = evaluate(args.model, args.data, args.adapter, args.max_new_tokens, limit=args.limit)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
