"""Sample answers for preference pairs from a finished run: `python -m engine.evaluation.sample_pairs --run-dir DIR
--prompts FILE --folder DIR [--n 2] [--temperature 0.8] [--seed 0] [--max-new-tokens 128]`.

The run's model (its base with the adapter, as evaluation loads it) answers each prompt `n` times with plain
temperature sampling (no top-k, no top-p). Each prompt's random generator is seeded from the seed and the
prompt's place in the file, so a rerun, or a prompt generated after a kill, gives the same answers whatever
came before it. Each pair is appended to `samples.jsonl` as one whole line, then the blind A/B store is filled
(engine.evaluation.pairs). Prints one JSON line: what was generated and where. Heavy (imports torch): runs in
its own process, never in the UI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from engine.evaluation.pairs import SAMPLES, SETTINGS, check_settings, open_review, read_prompts, read_samples

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def prompt_seed(seed: int, index: int) -> int:
    """The random seed of one prompt's answers: from the run's seed and the prompt's place, independent of the rest."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=7).digest(), "big")


def sample_answers(model, tokenizer, prompt: list[dict], n: int, temperature: float, seed: int,
                   max_new_tokens: int) -> list[str]:
    """`n` sampled answers to one prompt, all from one seeded generator."""
    import torch

    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    batch = tokenizer([text], return_tensors="pt", add_special_tokens=False).to(model.device)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                             num_return_sequences=n, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id)
    new = out[:, batch["input_ids"].shape[1]:].cpu()
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


def generate_pairs(run_dir: Path, prompts_file: str, folder: Path, n: int = 2, temperature: float = 0.8,
                   seed: int = 0, max_new_tokens: int = 128, limit: int | None = None) -> dict:
    from engine.core.files import ensure_private_dir, write_atomic
    from engine.runs.protocol import Run
    from engine.training.config import parse_config

    check_settings(n, temperature)
    run = Run(run_dir)
    if not ((run.path / "adapter" / "adapter_config.json").is_file() or (run.path / "model").is_dir()):
        raise FileNotFoundError(f"run {run.id} has no adapter/ or model/: it has not finished training; pairs are "
                                "sampled from a finished SFT run")
    cfg = run.config()
    prompts = read_prompts(prompts_file, cfg.get("system_prompt"))[:limit]
    ensure_private_dir(folder.parent)  # <run>/pairs/: owner-only, as everything under a run
    ensure_private_dir(folder)
    settings = {"run_id": run.id, "prompts": str(Path(prompts_file).resolve()), "n": n, "temperature": temperature,
                "seed": seed, "max_new_tokens": max_new_tokens}
    write_atomic(folder / SETTINGS, json.dumps(settings, indent=1))
    samples = read_samples(folder)
    done = {s["id"] for s in samples}
    todo = [(i, p) for i, p in enumerate(prompts) if f"p{i}-{n // 2 - 1}" not in done]
    started = time.time()
    if todo:
        from engine.evaluation.run import Models

        models = Models(run.path, parse_config(cfg, base_dir=run.path, check_paths=False))
        path = folder / SAMPLES
        if path.exists():  # the whole lines only: one a kill cut short goes
            write_atomic(path, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
        with open(path, "a", encoding="utf-8") as f:
            for i, prompt in todo:
                answers = sample_answers(models.tuned, models.tokenizer, prompt, n, temperature, prompt_seed(seed, i),
                                         max_new_tokens)
                lines = [json.dumps({"id": f"p{i}-{k}", "prompt": prompt, "answers": answers[2 * k:2 * k + 2]},
                                    ensure_ascii=False) + "\n" for k in range(n // 2) if f"p{i}-{k}" not in done]
                f.write("".join(lines))
                f.flush()
    with open_review(folder, seed) as store:
        summary = store.summary()
    return {"folder": str(folder), "prompts": len(prompts), "generated": len(todo), "pairs": summary["total"],
            "judged": summary["judged"], "seconds": round(time.time() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.evaluation.sample_pairs")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--folder", required=True, type=Path)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--limit", type=int)
    args = parser.parse_args(argv)
    from engine.core.files import PRIVATE_UMASK

    os.umask(PRIVATE_UMASK)
    try:
        result = generate_pairs(args.run_dir, args.prompts, args.folder, args.n, args.temperature, args.seed,
                                args.max_new_tokens, args.limit)
    except (ValueError, OSError, RuntimeError) as exc:  # DataError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
