"""Does what was exported answer like the run? A few held-out prompts re-run on the written files and on
the run's own adapter model (its base in fp32 with the adapter unmerged; a full run's model/):

    next_token_agreement  share of positions of each reference conversation (prompt and answer, teacher
                          forced) where the exported model's argmax is the run's
    greedy                the greedy answer to each prompt, the same text or not

A difference beyond what the export's precision explains is a warning that says what differed. Heavy
(torch): runs inside the export's engine process.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PROMPTS = 3  # held-out conversations re-run
MAX_NEW_TOKENS = 32
# Below this agreement an export is reported as a mismatch: adapter and merge are exact up to float
# rounding, f16 rounds every weight, q8_0 and q4_k_m lose more. The greedy answers must match for the
# exact kinds; for the quantised ones a different answer is reported, not warned about.
EXPECTED_AGREEMENT = {"adapter": 0.999, "merged": 0.99, "f16": 0.97, "q8_0": 0.9, "q4_k_m": 0.75}
EXACT = ("adapter", "merged", "f16")


def held_out(cfg) -> tuple[str, list[list[dict]]]:
    """The first few held-out conversations of the run's test_data, else eval_data, else its training data,
    chosen as the training samples are (engine.training.samples: a text answer, no tools), with the run's
    system prompt as training saw it."""
    from engine.data.load import load_examples
    from engine.training.samples import sample_conversations

    source = cfg.test_data or cfg.eval_data or cfg.data
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    conversations = [system + [m for m in messages if m["role"] != "system"]
                     for messages in sample_conversations(load_examples(source).examples, PROMPTS)]
    if not conversations:
        raise ValueError(f"no example in {source} ends in a text answer to verify the export on")
    return str(source), conversations


def reference_model(run_dir: Path, cfg):
    """The run's model as it answers before any export: fp32 base plus the unmerged adapter, or model/."""
    from engine.models.find import ModelRef, resolve_model
    from engine.models.load import load_model

    adapter = run_dir / "adapter"
    if not adapter.is_dir():
        return load_model(ModelRef(str(run_dir / "model")), "export", cfg).eval()
    from peft import PeftModel

    return PeftModel.from_pretrained(load_model(resolve_model(cfg.model), "export", cfg), str(adapter)).eval()


class TorchSide:
    """A transformers model: its logits and greedy answers."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def argmax(self, ids: list[int]) -> list[int]:
        import torch

        with torch.no_grad():
            return self.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].argmax(-1).tolist()

    def answers(self, prompts: list[list[dict]]) -> list[str]:
        from engine.evaluation.run import generate

        return generate(self.model, self.tokenizer, prompts, MAX_NEW_TOKENS, batch_size=1)[0]


class LlamaCppSide:
    """A GGUF file run by llama.cpp's Python bindings, fed the run tokenizer's token ids."""

    def __init__(self, gguf: Path, tokenizer):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), logits_all=True, n_ctx=2048, verbose=False)
        self.tokenizer = tokenizer

    def argmax(self, ids: list[int]) -> list[int]:
        self.llm.reset()
        self.llm.eval(ids)
        return self.llm.scores[:len(ids)].argmax(-1).tolist()

    def answers(self, prompts: list[list[dict]]) -> list[str]:
        out = []
        for prompt in prompts:
            ids = _ids(self.tokenizer, prompt, generation=True)
            self.llm.reset()
            new = []
            for token in self.llm.generate(ids, temp=0.0, top_k=1, reset=True):
                if token == self.llm.token_eos() or len(new) == MAX_NEW_TOKENS:
                    break
                new.append(token)
            out.append(self.tokenizer.decode(new, skip_special_tokens=True).strip())
        return out


def _ids(tokenizer, messages: list[dict], generation: bool = False) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def compare(reference: TorchSide, exported, conversations: list[list[dict]], kind: str, label: str,
            reference_answers: list[str] | None = None) -> dict:
    """How `exported` agrees with `reference` on the conversations (see the module doc)."""
    tok = reference.tokenizer
    positions = agree = 0
    for conv in conversations:
        ids = _ids(tok, conv)
        a, b = reference.argmax(ids), exported.argmax(ids)
        positions, agree = positions + len(ids), agree + sum(x == y for x, y in zip(a, b))
    prompts = [c[:-1] for c in conversations]
    ref_answers = reference_answers if reference_answers is not None else reference.answers(prompts)
    exp_answers = exported.answers(prompts)
    rows = [{"prompt": p[-1]["content"], "run": r, "export": e, "same": r == e}
            for p, r, e in zip(prompts, ref_answers, exp_answers)]
    result = {"model": label, "positions": positions, "next_token_agreement": round(agree / positions, 4),
              "expected_agreement": EXPECTED_AGREEMENT[kind], "greedy_same": sum(r["same"] for r in rows),
              "greedy_total": len(rows), "answers": rows}
    result["warning"] = mismatch(result, kind)
    return result


def mismatch(result: dict, kind: str) -> str | None:
    problems = []
    if result["next_token_agreement"] < result["expected_agreement"]:
        problems.append(f"the next token agrees on {result['next_token_agreement']:.1%} of {result['positions']} "
                        f"positions (expected {result['expected_agreement']:.0%} or more for {kind})")
    differ = [r for r in result["answers"] if not r["same"]]
    if differ and kind in EXACT:
        first = differ[0]
        problems.append(f"the greedy answer differs on {len(differ)} of {len(result['answers'])} prompts (first: "
                        f"{first['prompt'][:60]!r}: run {first['run'][:60]!r}, export {first['export'][:60]!r})")
    return f"{result['model']}: " + "; ".join(problems) if problems else None


def verify(run_dir: Path, cfg, kind: str, out: Path, gguf: Path | None = None) -> dict:
    """Compare what was written at `out` (an adapter, a merged model directory, or the `gguf` file) with
    the run; `kind` is adapter, merged, or the GGUF's quantisation."""
    from engine.models.find import ModelRef, resolve_model
    from engine.models.load import load_model, load_tokenizer

    source, conversations = held_out(cfg)
    adapter = run_dir / "adapter"
    tok = load_tokenizer(ModelRef(str(adapter if adapter.is_dir() else run_dir / "model")), cfg.trust_remote_code)
    reference = TorchSide(reference_model(run_dir, cfg), tok)
    report = {"data": source, "prompts": len(conversations), "kind": kind, "checks": [], "notes": []}
    ref_answers = reference.answers([c[:-1] for c in conversations])
    if kind == "adapter":
        from peft import PeftModel

        base = load_model(resolve_model(cfg.model), "export", cfg)
        loaded = PeftModel.from_pretrained(base, str(out)).eval()
        report["checks"].append(compare(reference, TorchSide(loaded, tok), conversations, kind,
                                        "adapter (peft)", ref_answers))
    elif kind == "merged":
        loaded = load_model(ModelRef(str(out)), "export", cfg).eval()
        report["checks"].append(compare(reference, TorchSide(loaded, load_tokenizer(ModelRef(str(out)))),
                                        conversations, kind, "merged (transformers)", ref_answers))
    else:
        ref = ModelRef(str(gguf.parent), gguf.name)
        gguf_tok = load_tokenizer(ref)
        report["chat_template_in_gguf"] = bool(_gguf_chat_template(gguf))
        same_ids = all(_ids(gguf_tok, c) == _ids(tok, c) for c in conversations)
        report["tokenizer_matches"] = same_ids
        if not same_ids:
            report["notes"].append("the GGUF's tokenizer encodes the reference conversations differently from "
                                   "the run's")
        report["checks"].append(compare(reference, TorchSide(load_model(ref, "export").eval(), tok), conversations,
                                        kind, f"gguf {kind} (transformers)", ref_answers))
        if importlib.util.find_spec("llama_cpp") is None:
            report["notes"].append("llama.cpp itself not checked: its Python bindings are not installed "
                                   "(pip install llama-cpp-python)")
        else:
            report["checks"].append(compare(reference, LlamaCppSide(gguf, tok), conversations, kind,
                                            f"gguf {kind} (llama.cpp)", ref_answers))
    report["warnings"] = [c["warning"] for c in report["checks"] if c["warning"]]
    if kind not in ("adapter", "merged") and not report["chat_template_in_gguf"]:
        report["warnings"].append("the GGUF file has no chat template in its metadata")
    return report


def _gguf_chat_template(path: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("tokenizer.chat_template")
    return bytes(field.parts[field.data[0]]).decode() if field else None

