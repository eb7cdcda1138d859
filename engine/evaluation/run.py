"""Evaluate a run against the prompted base model: `python -m engine.evaluation.run --run-dir DIR [--baseline]`.

On a held-out file: greedy batched generation, metrics from engine.evaluation.metrics, loss
and perplexity of the references, and what each answer cost (prompt and generated tokens,
seconds); the baseline is the base model prompted with a system prompt and k few-shot
examples from the training data, and a reference model (--reference: a larger local model
or an OpenAI-compatible endpoint) is prompted the same way; the forgetting probes run on
the base and the tuned model. Results go to `<run>/eval/report.json` and `report.md`.
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


def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int,
             batch_size: int = 8) -> tuple[list[str], list[dict]]:
    """Greedy answers, in batches, and what each cost: {prompt_tokens (its own, without padding),
    generated_tokens (up to and including the end-of-sequence token), seconds}. A batch is timed from chat
    template to decoded text and its seconds split evenly among its examples: their mean is the measured
    time per example, and batch_size 1 times each example alone (a single request's latency)."""
    import torch

    tokenizer.padding_side = "left"  # generation continues from the right edge
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
    outputs, costs = [], []
    for i in range(0, len(prompts), batch_size):
        started = time.perf_counter()
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                 for p in prompts[i:i + batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[:, batch["input_ids"].shape[1]:].cpu()  # waits for the device: the batch is done
        outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
        seconds = (time.perf_counter() - started) / len(texts)
        for ids, prompt_tokens in zip(new.tolist(), batch["attention_mask"].sum(dim=1).tolist()):
            ends = [j for j, token in enumerate(ids) if token in eos]
            costs.append({"prompt_tokens": int(prompt_tokens), "generated_tokens": ends[0] + 1 if ends else len(ids),
                          "seconds": round(seconds, 6)})
    return outputs, costs


def served_answers(endpoint: str, model: str, prompts: list[list[dict]],
                   max_new_tokens: int) -> tuple[list[str], list[dict]]:
    """The answers of a model behind an OpenAI-compatible endpoint, one request per example, each timed;
    token counts are the server's own (its `usage`)."""
    from engine.evaluation.endpoint import chat_completion

    outputs, costs = [], []
    for prompt in prompts:
        started = time.perf_counter()
        reply = chat_completion(endpoint, model, prompt, max_new_tokens, "the reference model",
                                "--reference and --reference-model")
        costs.append({"prompt_tokens": reply["prompt_tokens"], "generated_tokens": reply["completion_tokens"],
                      "seconds": round(time.perf_counter() - started, 6)})
        outputs.append(reply["content"].strip())
    return outputs, costs


def record_answers(rows: list[dict], side: str, answers: list[str], costs: list[dict]) -> None:
    for row, answer, cost in zip(rows, answers, costs):
        row[side] = answer
        row.update({f"{side}_{key}": value for key, value in cost.items()})


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
    4 bit for QLoRA); with an adapter they share one copy of the base weights. `weights`: a checkpoint
    directory (an adapter or the whole model, with its tokenizer) instead of the final adapter/ or model/,
    or with `export`, what `tunedeck export` wrote (an adapter or merged directory, or a GGUF file: a
    whole model is then held as a server holds it, purpose `serve`)."""

    def __init__(self, run_dir: Path, cfg: RunConfig, weights: Path | None = None, export: bool = False):
        import torch

        from engine.models.find import ModelRef, resolve_model
        from engine.models.load import load_model, load_tokenizer

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        adapter, full = (weights, weights) if weights else (run_dir / "adapter", run_dir / "model")
        with_adapter = (adapter / "adapter_config.json").is_file()
        if not with_adapter and weights is None and not full.is_dir():
            raise FileNotFoundError(f"{run_dir} has no adapter/ or model/: the run has not finished training")
        tuned = ModelRef(str(adapter)) if with_adapter else resolve_model(str(full))  # a GGUF export too
        self.tokenizer = load_tokenizer(tuned, cfg.trust_remote_code)
        base = load_model(resolve_model(cfg.model), "evaluate", cfg, device)
        if with_adapter:
            from peft import PeftModel

            self.tuned = PeftModel.from_pretrained(base, str(adapter)).eval()
            self.base = None  # the same model with its adapter disabled
        else:
            self.tuned, self.base = load_model(tuned, "serve" if export else "evaluate", cfg, device), base

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


def served(spec: str) -> bool:
    """A --reference that is an endpoint's base URL rather than a model to load."""
    return spec.startswith(("http://", "https://"))


def reference_side(spec: str, served_name: str, run_cfg: RunConfig, prompts: list[list[dict]],
                   conversations: list[list[dict]], max_new_tokens: int, batch_size: int) -> tuple[list, list, dict]:
    """The reference model's answers and costs and its fit: `spec` is an OpenAI-compatible base URL (asked
    for `served_name`; no loss or perplexity from there) or a model engine.models finds (a directory, GGUF
    file or cached repo id), loaded the way the run's base is and freed when done."""
    if served(spec):
        answers, costs = served_answers(spec, served_name, prompts, max_new_tokens)
        return answers, costs, {"model": f"{served_name} at {spec}", "loss": None, "perplexity": None}
    import torch

    from engine.models.find import resolve_model
    from engine.models.load import load_model, load_tokenizer

    ref = resolve_model(spec)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(ref, run_cfg.trust_remote_code)
    model = load_model(ref, "evaluate", run_cfg, device)
    answers, costs = generate(model, tokenizer, prompts, max_new_tokens, batch_size)
    loss = reference_loss(model, tokenizer, [p + [c[-1]] for p, c in zip(prompts, conversations)])
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return answers, costs, {"model": ref.label, "loss": loss, "perplexity": math.exp(loss) if loss is not None else None}


def evaluate_run(run_dir: Path, data: str | None = None, baseline: bool = False, limit: int | None = None,
                 shots: int = 3, probes_file: str | None = None, task: str | None = None, fmt=None,
                 max_new_tokens: int = 96, judge: tuple[str, str] | None = None,
                 reference: tuple[str, str] | None = None, batch_size: int = 8) -> dict:
    from engine.core.files import ensure_private_dir
    from engine.data.load import load_examples
    from engine.evaluation.metrics import cost_metrics, score_rows
    from engine.evaluation.probes import (
        BUILTIN_PROBES,
        GENERAL_TEXT,
        load_user_probes,
        verdict,
    )
    from engine.evaluation.report import ratios, sides
    from engine.runs.protocol import Run
    from engine.training.config import parse_config

    if batch_size < 1:
        raise ValueError(f"--batch-size must be 1 or more, not {batch_size}")
    if reference and not served(reference[0]):
        from engine.models.find import resolve_model

        resolve_model(reference[0])  # a wrong path fails now, not after the other sides have generated
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
    run_cfg = parse_config(cfg, base_dir=run.path, check_paths=False)
    models = Models(run.path, run_cfg)
    tok, system = models.tokenizer, cfg.get("system_prompt")
    with_system = lambda msgs: ([{"role": "system", "content": system}] if system else []) + msgs
    conversations = [with_system([m for m in ex.messages if m["role"] != "system"]) for ex in examples]
    started = time.time()
    rows = [{"line": ex.line, "prompt": ex.messages[-2]["content"], "reference": ex.messages[-1]["content"]}
            for ex in examples]
    record_answers(rows, "tuned", *generate(models.tuned, tok, [c[:-1] for c in conversations], max_new_tokens,
                                            batch_size))
    report = {"run_id": run.id, "data": str(data), "examples": len(rows), "created": time.time(),
              "batch_size": batch_size}
    report["tuned"], report["task_metric"] = score_rows(rows, "tuned", task or cfg.get("task"), fmt)
    loss = reference_loss(models.tuned, tok, conversations)
    report["tuned"].update(loss=loss, perplexity=math.exp(loss) if loss is not None else None)
    if baseline or reference:  # both are prompted with the same k examples from the training data
        train = load_examples(cfg["data"]).examples
        held_out = {json.dumps(ex.messages) for ex in examples}
        pool = [ex.messages for ex in train if json.dumps(ex.messages) not in held_out]
        shot_examples = random.Random(cfg.get("seed", 42)).sample(pool, min(shots, len(pool)))
        prompts = [few_shot_prompt(c, shot_examples, system) for c in conversations]
    if baseline:
        with models.base_context():
            record_answers(rows, "baseline", *generate(models.as_base(), tok, prompts, max_new_tokens, batch_size))
            loss = reference_loss(models.as_base(), tok, [p + [c[-1]] for p, c in zip(prompts, conversations)])
        report["baseline"], _ = score_rows(rows, "baseline", task or cfg.get("task"), fmt)
        report["baseline"].update(loss=loss, perplexity=math.exp(loss) if loss is not None else None,
                                  shots=len(shot_examples))
    if reference:
        answers, costs, fit = reference_side(*reference, run_cfg, prompts, conversations, max_new_tokens, batch_size)
        record_answers(rows, "reference_model", answers, costs)
        report["reference_model"], _ = score_rows(rows, "reference_model", task or cfg.get("task"), fmt)
        report["reference_model"].update(fit, shots=len(shot_examples))
    for side in sides(report):
        report[side].update(cost_metrics(rows, side))
    report["ratios"] = ratios(report)
    if judge:  # optional rubric scores from the user's own OpenAI-compatible endpoint
        from engine.evaluation.judge import judge_rows

        for side in sides(report):
            report[side]["judge_score"] = judge_rows(rows, side, *judge)
    probes = BUILTIN_PROBES + (load_user_probes(probes_file) if probes_file else [])
    probe_prompts = [[{"role": "user", "content": p.prompt}] for p in probes]
    tuned_probe, _ = generate(models.tuned, tok, probe_prompts, 64, batch_size)
    tuned_ppl = text_perplexity(models.tuned, tok, GENERAL_TEXT)
    with models.base_context():
        base_probe, _ = generate(models.as_base(), tok, probe_prompts, 64, batch_size)
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
    parser.add_argument("--reference", help="a reference model prompted like the baseline: a model directory, "
                                            "GGUF file or cached repo id, or an OpenAI-compatible base URL")
    parser.add_argument("--reference-model", default="default", help="model name a --reference URL serves")
    parser.add_argument("--batch-size", type=int, default=8, help="examples generated together (1: each timed alone)")
    args = parser.parse_args(argv)
    from engine.core.files import PRIVATE_UMASK

    os.umask(PRIVATE_UMASK)  # the report and everything else written under the run: owner-only
    try:
        report = evaluate_run(args.run_dir, args.data, args.baseline, args.limit, args.shots, args.probes,
                              args.task, args.format, args.max_new_tokens,
                              (args.judge_endpoint, args.judge_model) if args.judge_endpoint else None,
                              (args.reference, args.reference_model) if args.reference else None, args.batch_size)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report["report_path"] = str(args.run_dir / "eval" / "report.md")
    print(json.dumps(summary(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
