"""Evaluate a run against the prompted base model: `python -m engine.evaluation.run --run-dir DIR [--baseline]`.

On a held-out file: greedy batched generation, metrics from engine.evaluation.metrics, loss
and perplexity of the references; the baseline is the base model prompted with a
system prompt and k few-shot examples from the training data; the forgetting
probes run on both. Results go to `<run>/eval/report.json` and `report.md`.
Heavy (imports torch): runs in its own process, never in the UI.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from engine.evaluation.report import markdown_report, summary

if TYPE_CHECKING:
    from engine.training.config import RunConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BASELINE_SYSTEM = "Follow the instruction exactly. Answer in the same format as the examples, with nothing else."


def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 8) -> list[str]:
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
        outputs += [t.strip() for t in
                    tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)]
    return outputs


def reference_loss(model, tokenizer, conversations: list[list[dict]], max_length: int = 2048) -> float | None:
    """Mean loss per answer token on the references (teacher forcing)."""
    import torch

    from engine.training.labels import IGNORE_INDEX, encode_examples

    features, _ = encode_examples(tokenizer, conversations, max_length)
    total, count = 0.0, 0
    with torch.no_grad():
        for f in features:
            labels = torch.tensor([f["labels"]], device=model.device)
            out = model(input_ids=torch.tensor([f["input_ids"]], device=model.device), labels=labels,
                        use_cache=False)
            n = int((labels[0, 1:] != IGNORE_INDEX).sum())
            total, count = total + float(out.loss) * n, count + n
    return total / count if count else None


def text_perplexity(model, tokenizer, text: str) -> float:
    import torch

    ids = tokenizer(text, return_tensors="pt")["input_ids"].to(model.device)
    with torch.no_grad():
        return math.exp(float(model(input_ids=ids, labels=ids, use_cache=False).loss))


class Models:
    """The base and the tuned model, loaded as the run was trained (engine.models.load: its precision, and
    4 bit for QLoRA); with an adapter they share one copy of the base weights."""

    def __init__(self, run_dir: Path, cfg: RunConfig):
        import torch

        from engine.models.find import ModelRef, resolve_model
        from engine.models.load import load_model, load_tokenizer

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        adapter, full = run_dir / "adapter", run_dir / "model"
        self.tokenizer = load_tokenizer(ModelRef(str(adapter if adapter.is_dir() else full)), cfg.trust_remote_code)
        base = load_model(resolve_model(cfg.model), "evaluate", cfg, device)
        if adapter.is_dir():
            from peft import PeftModel

            self.tuned = PeftModel.from_pretrained(base, str(adapter)).eval()
            self.base = None  # the same model with its adapter disabled
        elif full.is_dir():
            self.tuned, self.base = load_model(ModelRef(str(full)), "evaluate", cfg, device), base
        else:
            raise FileNotFoundError(f"{run_dir} has no adapter/ or model/: the run has not finished training")

    def base_context(self):
        from contextlib import nullcontext

        return self.tuned.disable_adapter() if self.base is None else nullcontext()

    def as_base(self):
        return self.tuned if self.base is None else self.base


def few_shot_prompt(messages: list[dict], shots: list[list[dict]], system: str | None) -> list[dict]:
    prompt = [{"role": "system", "content": system or BASELINE_SYSTEM}]
    for shot in shots:
        prompt += [m for m in shot if m["role"] != "system"]
    return prompt + [m for m in messages[:-1] if m["role"] != "system"]


def evaluate_run(run_dir: Path, data: str | None = None, baseline: bool = False, limit: int | None = None,
                 shots: int = 3, probes_file: str | None = None, task: str | None = None, fmt=None,
                 max_new_tokens: int = 96, judge: tuple[str, str] | None = None) -> dict:
    from engine.core.files import ensure_private_dir
    from engine.data.load import load_examples
    from engine.evaluation.metrics import score_rows
    from engine.evaluation.probes import (
        BUILTIN_PROBES,
        GENERAL_TEXT,
        load_user_probes,
        verdict,
    )
    from engine.runs.protocol import Run
    from engine.training.config import parse_config

    run = Run(run_dir)
    cfg = run.config()
    data = data or cfg.get("test_data") or cfg.get("eval_data")
    if not data:
        raise ValueError(f"run {run.id} has no test_data or eval_data: pass --data FILE with held-out examples")
    examples = load_examples(data).examples[:limit]
    if not examples:
        raise ValueError(f"no usable examples in {data}")
    # Answers are scored as text against the last turn: a tool call or a tool schema the prompt does not
    # show would be scored wrongly, and a wrong number is worse than none.
    with_tools = sum(1 for ex in examples if ex.tools or any(m["role"] == "tool" or m.get("tool_calls")
                                                             for m in ex.messages))
    if with_tools:
        raise ValueError(f"{with_tools} of the {len(examples)} held-out examples in {data} use tools; evaluation "
                         "scores text answers only: pass --data FILE with examples without tool calls")
    models = Models(run.path, parse_config(cfg, base_dir=run.path, check_paths=False))
    tok, system = models.tokenizer, cfg.get("system_prompt")
    with_system = lambda msgs: ([{"role": "system", "content": system}] if system else []) + msgs
    conversations = [with_system([m for m in ex.messages if m["role"] != "system"]) for ex in examples]
    started = time.time()
    tuned_answers = generate(models.tuned, tok, [c[:-1] for c in conversations], max_new_tokens)
    rows = [{"line": ex.line, "prompt": ex.messages[-2]["content"], "reference": ex.messages[-1]["content"],
             "tuned": answer} for ex, answer in zip(examples, tuned_answers)]
    report = {"run_id": run.id, "data": str(data), "examples": len(rows), "created": time.time()}
    report["tuned"], report["task_metric"] = score_rows(rows, "tuned", task or cfg.get("task"), fmt)
    loss = reference_loss(models.tuned, tok, conversations)
    report["tuned"].update(loss=loss, perplexity=math.exp(loss) if loss is not None else None)
    if baseline:
        train = load_examples(cfg["data"]).examples
        held_out = {json.dumps(ex.messages) for ex in examples}
        pool = [ex.messages for ex in train if json.dumps(ex.messages) not in held_out]
        shot_examples = random.Random(cfg.get("seed", 42)).sample(pool, min(shots, len(pool)))
        prompts = [few_shot_prompt(c, shot_examples, system) for c in conversations]
        with models.base_context():
            base_answers = generate(models.as_base(), tok, prompts, max_new_tokens)
            loss = reference_loss(models.as_base(), tok, [p + [c[-1]] for p, c in zip(prompts, conversations)])
        for row, answer in zip(rows, base_answers):
            row["baseline"] = answer
        report["baseline"], _ = score_rows(rows, "baseline", task or cfg.get("task"), fmt)
        report["baseline"].update(loss=loss, perplexity=math.exp(loss) if loss is not None else None,
                                  shots=len(shot_examples))
    if judge:  # optional rubric scores from the user's own OpenAI-compatible endpoint
        from engine.evaluation.judge import judge_rows

        for side in ("tuned", "baseline") if baseline else ("tuned",):
            report[side]["judge_score"] = judge_rows(rows, side, *judge)
    probes = BUILTIN_PROBES + (load_user_probes(probes_file) if probes_file else [])
    probe_prompts = [[{"role": "user", "content": p.prompt}] for p in probes]
    tuned_probe = generate(models.tuned, tok, probe_prompts, 64)
    tuned_ppl = text_perplexity(models.tuned, tok, GENERAL_TEXT)
    with models.base_context():
        base_probe = generate(models.as_base(), tok, probe_prompts, 64)
        base_ppl = text_perplexity(models.as_base(), tok, GENERAL_TEXT)
    report["forgetting"] = verdict(probes, base_probe, tuned_probe, base_ppl, tuned_ppl)
    report["seconds"] = round(time.time() - started, 1)
    report["rows"] = rows
    out = ensure_private_dir(run.path / "eval")
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown_report(report))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.evaluation.run")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--data")
    parser.add_argument("--baseline", action="store_true")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--probes", help="JSONL of your own probes: {name, prompt, expect|regex}")
    parser.add_argument("--task", help="picks the task metric (see engine.evaluation.metrics)")
    parser.add_argument("--format", help="json, or regex:PATTERN; default: JSON when every reference is JSON")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--judge-endpoint", help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    parser.add_argument("--judge-model", default="default", help="model name the judge endpoint serves")
    args = parser.parse_args(argv)
    from engine.core.files import PRIVATE_UMASK

    os.umask(PRIVATE_UMASK)  # the report and everything else written under the run: owner-only
    try:
        report = evaluate_run(args.run_dir, args.data, args.baseline, args.limit, args.shots, args.probes,
                              args.task, args.format, args.max_new_tokens,
                              (args.judge_endpoint, args.judge_model) if args.judge_endpoint else None)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report["report_path"] = str(args.run_dir / "eval" / "report.md")
    print(json.dumps(summary(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
