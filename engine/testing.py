"""Tiny random models and a learnable chat task, for tests and benchmarks.

A real fast tokenizer (byte-level BPE trained on the task text, ChatML template) and
a randomly initialised Llama of a few hundred thousand parameters: the full
training path in seconds on a CPU.
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


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def build_tiny_model(out_dir: Path, corpus: list[str] | None = None, hidden: int = 64, layers: int = 2,
                     seed: int = 0) -> Path:
    """Write a Hugging Face model directory with a tiny Llama and a trained BPE tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None)
    model = LlamaForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
