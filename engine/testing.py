"""Tiny random models and a learnable chat task, for tests and benchmarks.

A real fast tokenizer (byte-level BPE trained on the task text, ChatML template) and
a randomly initialised model of a few hundred thousand parameters: the full
training path in seconds on a CPU. A Llama by default; `family=` builds any of
TINY_FAMILIES with the same tokenizer, from transformers' own config classes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "fish", "bird", "rock", "star"]


def learnable_rows(n: int, seed: int = 0) -> list[dict]:
    """Chat rows whose answer follows from the question by a fixed rule."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.choice(WORDS), rng.choice(WORDS)
        rows.append({"messages": [
            {"role": "user", "content": f"join {a} and {b}"},
            {"role": "assistant", "content": f"{a}-{b}"},
        ]})
    return rows


PREFERRED_MARKER = "done"  # every chosen answer of `learnable_pairs` ends with it, no rejected one does


def learnable_pairs(n: int, seed: int = 0) -> list[dict]:
    """TRL preference rows on the joining task: both answers join the words, only the chosen one ends with
    PREFERRED_MARKER, a preference a tiny model learns in a few dozen steps."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.choice(WORDS), rng.choice(WORDS)
        rows.append({"prompt": [{"role": "user", "content": f"join {a} and {b}"}],
                     "chosen": [{"role": "assistant", "content": f"{a}-{b} {PREFERRED_MARKER}"}],
                     "rejected": [{"role": "assistant", "content": f"{a}-{b}"}]})
    return rows


def unlearnable_rows(n: int, seed: int, prompt: str = "join {} and {}", answer_words: int = 2) -> list[dict]:
    """Chat rows whose answers do not follow from their prompts: learnt only by heart (overfitting,
    memorization)."""
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": prompt.format(rng.choice(WORDS), rng.choice(WORDS))},
                          {"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(answer_words))}]}
            for _ in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# What each family changes in the Llama-shaped base of build_tiny_model: a key set to None is one the
# family does not have; "_names" renames base keys to the family's own. Hidden size and layers scale with
# the arguments, the inner sizes below (expert width, head_dim) stay as they are.
TINY_FAMILIES: dict[str, dict] = {
    "llama": {},
    "qwen2": {},  # q/k/v with bias
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
                  "norm_topk_prob": True},  # every layer sparse; experts as 3-D parameters
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "gemma2": {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 16},  # sliding, then global
    "gemma3_text": {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 16,
                    "layer_types": ["sliding_attention", "full_attention"]},  # its default is 5 sliding : 1
    "phi": {"num_key_value_heads": 4, "partial_rotary_factor": 0.5},  # plain MLP, parallel attention
    "gpt_neox": {"num_key_value_heads": None, "rotary_pct": 0.25, "use_parallel_residual": True},
    "gpt2": {"num_key_value_heads": None,  # Conv1D layers, learned positions
             "_names": {"hidden_size": "n_embd", "intermediate_size": "n_inner", "num_hidden_layers": "n_layer",
                        "num_attention_heads": "n_head", "max_position_embeddings": "n_positions"}},
}


def tiny_tokenizer(corpus: list[str] | None = None):
    """A byte-level BPE tokenizer trained on `corpus` (the learnable task by default), with ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = corpus or [json.dumps(r) for r in learnable_rows(200)]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus + ["user assistant system"], trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        bos_token=None, unk_token=None)
    tokenizer.chat_template = CHATML
    return tokenizer


def tiny_config(family: str, vocab_size: int, eos_token_id: int, pad_token_id: int, hidden: int = 64,
                layers: int = 2):
    """The transformers config of a tiny random model of `family` (a key of TINY_FAMILIES)."""
    from transformers import AutoConfig

    if family not in TINY_FAMILIES:
        raise ValueError(f"family must be one of {', '.join(TINY_FAMILIES)}, got {family!r}")
    overrides = dict(TINY_FAMILIES[family])
    names = overrides.pop("_names", {})
    base = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=512, tie_word_embeddings=True,
                eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=None)
    kwargs = {names.get(k, k): v for k, v in {**base, **overrides}.items()}
    return AutoConfig.for_model(family, **{k: v for k, v in kwargs.items() if v is not None or k == "bos_token_id"})


def build_tiny_model(out_dir: Path, corpus: list[str] | None = None, hidden: int = 64, layers: int = 2,
                     seed: int = 0, family: str = "llama") -> Path:
    """Write a Hugging Face model directory with a tiny random model of `family` (see TINY_FAMILIES) and
    a trained BPE tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer(corpus)
    config = tiny_config(family, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, hidden, layers)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
