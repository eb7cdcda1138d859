"""Each architecture family of engine.testing.TINY_FAMILIES through the real engine subprocess: a LoRA run
killed (SIGKILL) after its first complete checkpoint, resumed from it and run to the end, the loss falling
over the whole history; and a QLoRA run on the 4-bit base (bitsandbytes NF4, on the CPU too)."""

from __future__ import annotations

import json
import statistics

import pytest
import yaml
from engine_runs import dump, events, kill_after_first_checkpoint, start, wait_final

from engine.runs.protocol import Run
from engine.testing import TINY_FAMILIES, build_tiny_model

FAMILIES = list(TINY_FAMILIES)
# A constant learning rate high enough that a tiny random model learns the task in a few dozen steps.
FAST = dict(learning_rate=3e-3, warmup_steps=0, eval_steps=1000)


@pytest.fixture(scope="module")
def family_model(tmp_path_factory):
    """The tiny model of a family, built once per module (well under a second each)."""
    root, built = tmp_path_factory.mktemp("families"), {}

    def get(family: str):
        if family not in built:
            built[family] = build_tiny_model(root / family, family=family)
        return built[family]
    return get


def losses(run: Run) -> list[float]:
    return [e["loss"] for e in events(run) if e["type"] == "log"]


def assert_learned(values: list[float], at_least: int = 20) -> None:
    assert len(values) >= at_least, values
    first, last = statistics.fmean(values[:5]), statistics.fmean(values[-5:])
    assert last < first - 0.3, f"loss did not fall: first {first:.3f}, last {last:.3f}"


def test_every_family_is_what_it_says(family_model):
    """The table builds the architecture it names, with the shared tokenizer's ids and tied embeddings."""
    ids = None
    for family in FAMILIES:
        cfg = json.loads((family_model(family) / "config.json").read_text())
        assert cfg["model_type"] == family
        assert cfg["tie_word_embeddings"] is True and cfg.get("bos_token_id") is None
        assert (cfg["hidden_size"] if "hidden_size" in cfg else cfg["n_embd"]) == 64
        assert (cfg["num_hidden_layers"] if "num_hidden_layers" in cfg else cfg["n_layer"]) == 2
        tokens = (cfg["vocab_size"], cfg["eos_token_id"], cfg["pad_token_id"])
        assert ids in (None, tokens), (family, tokens, ids)
        ids = tokens
    moe = {f: json.loads((family_model(f) / "config.json").read_text()) for f in ("qwen3_moe", "mixtral")}
    assert all(c["num_local_experts"] == 4 and c["num_experts_per_tok"] == 2 for c in moe.values())
    for family, factor in (("phi", 0.5), ("gpt_neox", 0.25)):  # partial rotary
        cfg = json.loads((family_model(family) / "config.json").read_text())
        assert cfg["rope_parameters"]["partial_rotary_factor"] == factor


@pytest.mark.parametrize("family", FAMILIES)
def test_model_facts_are_the_built_models(family, family_model):
    """What the estimate counts is what the engine loads: all parameters (tied once), and the parameters
    peft trains for all-linear, on the model loaded from disk."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.models.facts import model_facts
    from engine.plan.memory import Assumptions, estimate

    facts = model_facts(str(family_model(family)))
    model = AutoModelForCausalLM.from_pretrained(family_model(family), dtype=torch.float32)
    assert facts.parameters == sum(p.numel() for p in model.parameters())
    moe = family in ("qwen3_moe", "mixtral")
    assert facts.lora["wraps_experts"] is moe and facts.lora["dropout"] == (0.0 if moe else 0.05)
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear",
                                                  lora_dropout=facts.lora["dropout"]))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert estimate(facts, "lora", Assumptions(lora_r=8)).trainable_parameters == trainable


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_learns_and_resumes_after_kill(family, family_model, write_config, workspace):
    # Far more steps than it reaches: the kill after the first checkpoint cannot come after the end.
    run, proc = start(write_config(model=str(family_model(family)), method="lora", max_steps=1000, save_steps=10,
                                   **FAST), workspace)
    checkpoint, resumed_at, _ = kill_after_first_checkpoint(run, proc, timeout=180)
    before = losses(run)
    seq_before = events(run)[-1]["seq"]
    cfg = run.config()
    cfg["max_steps"] = resumed_at + 20  # the end, now twenty steps on
    run.config_path.write_text(yaml.safe_dump(cfg))

    run, proc = start(None, workspace, resume_run=run)
    status = wait_final(run, proc)
    assert status["state"] == "completed" and status["step"] == resumed_at + 20, dump(run)
    after = [e for e in events(run) if e["seq"] > seq_before]
    new_logs = [e for e in after if e["type"] == "log"]
    assert new_logs[0]["step"] == resumed_at + 1, (resumed_at, [e["step"] for e in new_logs[:3]])
    assert [e for e in after if e.get("state") == "running"][-1]["resumed_from"].endswith(checkpoint.name)
    # The adapter came back with the checkpoint: the first step after it is as good as where the run was.
    assert new_logs[0]["loss"] < statistics.fmean(before[:5]) - 0.2, (before[:5], new_logs[0]["loss"])
    assert_learned(before + [e["loss"] for e in new_logs])
    assert (run.path / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize("family", FAMILIES)
def test_qlora_learns_on_a_4bit_base(family, family_model, write_config, workspace):
    run, proc = start(write_config(model=str(family_model(family)), method="qlora", max_steps=30, save_steps=1000,
                                   **FAST), workspace)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    assert proc.returncode == 0
    loaded = next(e for e in events(run) if e.get("state") == "model_loaded")
    assert loaded["load_in_4bit"] is True and loaded["trainable_parameters"] > 0
    assert_learned(losses(run))
    assert (run.path / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize("family, overrides, needle", [
    ("gpt_neox", dict(lora_target_modules=["q_proj", "v_proj"]), "query_key_value"),
    ("mixtral", dict(lora_dropout=0.1), "lora_dropout"),
])
def test_adapters_the_model_cannot_take_fail_in_one_line(family, overrides, needle, family_model, write_config,
                                                         workspace):
    """Llama's target names on GPT-NeoX, and dropout on the experts peft wraps: the run fails at load with
    the model's own module names or the key to change, not a library traceback."""
    run, proc = start(write_config(model=str(family_model(family)), method="lora", max_steps=5, **overrides),
                      workspace)
    assert proc.wait(timeout=120) == 1
    status = run.status()
    assert status["state"] == "failed" and needle in status["error"] and "\n" not in status["error"], dump(run)


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_qlora_weights_in_memory_are_the_estimates(family, family_model, write_config, workspace):
    """The bytes of every parameter the engine holds once the 4-bit base and adapters are loaded (bf16
    compute, as on a GPU) against the estimate's weights: NF4 linear layers, norms in fp32, and the rest,
    MoE experts included, in 16 bit rather than the fp32 peft's preparation would leave."""
    from engine.models.facts import model_facts
    from engine.plan.memory import Assumptions, estimate

    run, proc = start(write_config(model=str(family_model(family)), method="qlora", precision="bf16",
                                   max_steps=2, save_steps=1000, **FAST), workspace)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    loaded = next(e for e in events(run) if e.get("state") == "model_loaded")
    facts = model_facts(str(family_model(family)))
    estimated = estimate(facts, "qlora", Assumptions(lora_r=16)).parts["weights"]
    assert abs(estimated / loaded["weight_bytes"] - 1) < 0.05, (estimated, loaded["weight_bytes"])


def test_train_refuses_targets_the_model_lacks_before_making_a_run(family_model, write_config, workspace):
    import subprocess
    import sys

    config = write_config(model=str(family_model("gpt_neox")), method="lora",
                          lora_target_modules=["q_proj", "v_proj"])
    out = subprocess.run([sys.executable, "-m", "tui.cli", "train", str(config), "--workspace", str(workspace)],
                         capture_output=True, text=True, timeout=120)
    errors = [line for line in out.stderr.splitlines() if line.startswith("tunedeck")]
    assert out.returncode != 0 and len(errors) == 1 and "query_key_value" in errors[0], out.stderr
    assert not (workspace / "runs").exists() or not any((workspace / "runs").iterdir())
