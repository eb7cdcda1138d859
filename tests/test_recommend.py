"""The decision, the method and the hyperparameters, with reasons; and the config it writes."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest
import yaml
from model_configs import LLAMA_7B

from engine.models.facts import facts_from_config
from engine.plan.recommend import Situation, decide, plan
from engine.training.config import load_config

H100 = {"name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559, "memory_used_mib": 0}
T4 = {"name": "Tesla T4", "memory_total_mib": 15360, "memory_used_mib": 0}


def test_decision_follows_practice():
    assert decide(Situation(fresh_knowledge=True))[0] == "rag"
    assert decide(Situation(task_stable=False, baseline_score=0.1))[0] == "prompt"
    assert decide(Situation())[0] == "measure_baseline"
    assert decide(Situation(baseline_score=0.9, target_score=0.85))[0] == "prompt"
    assert decide(Situation(task="domain", baseline_score=0.3, target_score=0.8, clean_examples=800))[0] == \
        "collect_data"
    decision, reasons = decide(Situation(task="extraction", baseline_score=0.1, target_score=0.9,
                                         clean_examples=300))
    assert decision == "fine_tune" and "10% prompted vs target 90%" in reasons[0]


def test_method_follows_memory():
    model = facts_from_config(LLAMA_7B)
    s = Situation(task="extraction", baseline_score=0.2, target_score=0.9, clean_examples=2000)
    assert plan(model, Situation(**{**s.__dict__, "gpus": [H100]})).method == "lora"
    small = plan(model, Situation(**{**s.__dict__, "gpus": [T4]}))
    assert small.method == "qlora" and small.memory["lora"]["fits"] is False
    assert small.memory["qlora"]["fits"] is True
    hps = {h.key: h for h in small.hyperparameters}
    assert hps["learning_rate"].value == 2e-4 and "QLoRA paper" in hps["learning_rate"].reason
    assert hps["lora_alpha"].value == 2 * hps["lora_r"].value
    assert small.cost_usd is not None and small.time_hours > 0


def test_plan_writes_a_config_that_trains(tiny_project, tmp_path):
    out = tmp_path / "plan.yaml"
    result = subprocess.run([sys.executable, "-m", "tui.cli", "plan", "--model", str(tiny_project / "tiny-model"),
                             "--data", str(tiny_project / "train.jsonl"), "--task", "extraction",
                             "--baseline", "0.1", "--target", "0.9", "--write-config", str(out)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "decision: fine tune" in result.stdout
    cfg = load_config(out)  # the validator accepts every key the plan writes
    assert cfg.method == "lora" and cfg.learning_rate == 2e-4
    assert yaml.safe_load(out.read_text())["data"] == str(tiny_project / "train.jsonl")


@pytest.mark.parametrize("examples,epochs,rank", [(300, 3, 8), (5000, 2, 16), (50000, 1, 32)])
def test_epochs_and_rank_by_data_size(examples, epochs, rank):
    model = facts_from_config(LLAMA_7B)
    hps = {h.key: h.value for h in plan(model, Situation(task="extraction", baseline_score=0.1, target_score=0.9,
                                                         clean_examples=examples, gpus=[H100])).hyperparameters}
    assert hps["num_train_epochs"] == epochs and hps["lora_r"] == rank


@pytest.mark.parametrize("method,billions,lr", [("lora", 7, 2e-4), ("lora", 70, 1e-4), ("full", 1, 2e-5),
                                                ("full", 13, 1e-5)])
def test_learning_rate_by_method_and_size(method, billions, lr):
    from engine.plan.memory import Assumptions
    from engine.plan.recommend import hyperparameters

    model = facts_from_config(LLAMA_7B)
    model.parameters = int(billions * 1e9)
    hps = {h.key: h.value for h in hyperparameters(model, method, Situation(clean_examples=2000), Assumptions())}
    assert hps["learning_rate"] == lr
    assert ("lora_r" in hps) == (method != "full")


@pytest.mark.parametrize("batch,gpus,examples,accumulation", [(4, 1, 2000, 4), (8, 1, 20000, 4), (4, 4, 20000, 2),
                                                               (16, 2, 2000, 1)])
def test_effective_batch_through_accumulation(batch, gpus, examples, accumulation):
    from engine.plan.memory import Assumptions
    from engine.plan.recommend import hyperparameters

    hps = {h.key: h.value for h in hyperparameters(facts_from_config(LLAMA_7B), "lora",
                                                   Situation(clean_examples=examples),
                                                   Assumptions(batch_size=batch, gpus=gpus))}
    assert hps["gradient_accumulation_steps"] == accumulation
    effective = batch * gpus * accumulation
    assert 16 <= effective <= 64 or accumulation == 1


def test_sequence_length_and_eval_cadence_follow_the_data():
    hps = {h.key: h.value for h in plan(facts_from_config(LLAMA_7B), Situation(
        task="extraction", baseline_score=0.1, target_score=0.9, clean_examples=3200, tokens_p99=300,
        gpus=[H100])).hyperparameters}
    assert hps["max_seq_length"] == 512  # next power of two above the 99th percentile
    steps = 3200 * hps["num_train_epochs"] // (hps["per_device_train_batch_size"]
                                              * hps["gradient_accumulation_steps"])
    assert hps["eval_steps"] == hps["save_steps"] == steps // 10
    assert hps["weight_decay"] == 0.0


# ---- sharding over several GPUs ------------------------------------------------------------------------

def fine_tune(**changes) -> Situation:
    return Situation(**{**dict(task="extraction", baseline_score=0.2, target_score=0.9, clean_examples=2000),
                        **changes})


def test_sharding_is_recommended_when_one_gpu_cannot_hold_the_run_and_the_gpus_can():
    """LLaMA-7B LoRA on two 15 GiB T4s: the 16-bit base alone nearly fills one, so DDP cannot run it; two
    full_shard halves can, and LoRA (without QLoRA's quality cost) is planned with fsdp full_shard. The
    config it writes names the mode and one process per GPU, and the validator takes it."""
    from engine.plan.memory import Assumptions, estimate
    from engine.training.config import parse_config

    model = facts_from_config(LLAMA_7B)
    a = Assumptions(seq_len=512, batch_size=1)
    free = T4["memory_total_mib"] * 2**20
    assert estimate(model, "lora", a).required > free  # one GPU cannot hold LoRA
    result = plan(model, fine_tune(gpus=[T4, T4]), a)
    assert (result.method, result.fsdp, result.gpus, result.nodes) == ("lora", "full_shard", 2, 1)
    assert result.fsdp_reason.startswith("one GPU cannot hold lora") and "on 2 GPUs" in result.fsdp_reason
    lora = result.memory["lora"]
    assert lora["fits"] and lora["fsdp"] == "full_shard" and lora["world_size"] == 2
    assert lora["required_bytes"] == int(estimate(model, "lora", Assumptions(seq_len=512, batch_size=1, gpus=2,
                                                                            fsdp="full_shard")).required)
    assert lora["required_bytes"] < free < estimate(model, "lora", a).required
    hps = {h.key: h for h in result.hyperparameters}
    assert hps["fsdp"].value == "full_shard" and "Zhao et al. 2023" in hps["fsdp"].reason
    assert hps["nproc_per_node"].value == 2
    config = parse_config(result.config("/models/llama", "/data/train.jsonl"), check_paths=False)
    assert (config.fsdp, config.nproc_per_node, config.method) == ("full_shard", 2, "lora")
    # shard_grad_op gathers the whole 16-bit base to compute: it cannot help LoRA, so it was passed over.
    assert estimate(model, "lora", Assumptions(seq_len=512, batch_size=1, gpus=2, fsdp="shard_grad_op")).required \
        > free


def test_sharding_modes_in_order_and_a_mode_asked_for_is_kept():
    from engine.plan.memory import Assumptions
    from engine.training.config import ConfigError, parse_config

    model = facts_from_config(LLAMA_7B)
    a = Assumptions(seq_len=512, batch_size=1)
    # Across nodes, hybrid_shard first: its all-gathers stay within a node.
    across = plan(model, fine_tune(gpus=[T4, T4]), replace(a, nodes=2))
    assert across.fsdp == "hybrid_shard" and across.memory["lora"]["world_size"] == 4
    assert "nnodes: 2" in next(h.reason for h in across.hyperparameters if h.key == "nproc_per_node")
    written = across.config("/models/llama", "/data/train.jsonl")
    assert (written["fsdp"], written["fsdp_version"]) == ("hybrid_shard", 1)  # transformers: FSDP1 only
    # Offload asked for: the config carries it, and the validator takes it.
    offloaded = plan(model, fine_tune(gpus=[T4, T4]), replace(a, fsdp="full_shard", fsdp_offload=True))
    config = parse_config(offloaded.config("/models/llama", "/data/train.jsonl"), check_paths=False)
    assert (config.fsdp, config.fsdp_offload, config.nproc_per_node) == ("full_shard", True, 2)
    # Where it fits whole on each GPU: DDP, nothing sharded, nothing to say.
    roomy = plan(model, fine_tune(gpus=[H100, H100]), a)
    assert roomy.fsdp is None and roomy.fsdp_reason == "" and roomy.memory["lora"]["fsdp"] is None
    assert "fsdp" not in {h.key for h in roomy.hyperparameters}
    # A mode asked for stays, with why that mode, though DDP would fit.
    asked = plan(model, fine_tune(gpus=[H100, H100]), replace(a, fsdp="shard_grad_op"))
    assert asked.fsdp == "shard_grad_op" and asked.fsdp_reason == ""
    assert "least communication" in next(h.reason for h in asked.hyperparameters if h.key == "fsdp")
    # One GPU cannot shard: no mode, and QLoRA where LoRA does not fit.
    single = plan(model, fine_tune(gpus=[T4]), a)
    assert single.fsdp is None and single.method == "qlora" and single.memory["lora"]["fits"] is False
    with pytest.raises(ConfigError, match="shards across GPUs: plan for 2 or more"):
        plan(model, fine_tune(gpus=[T4]), replace(a, fsdp="full_shard"))


def test_plan_cli_per_gpu_with_gpus_and_mode(tiny_project):
    out = subprocess.run([sys.executable, "-m", "tui.cli", "plan", "--model", str(tiny_project / "tiny-model"),
                          "--task", "extraction", "--baseline", "0.1", "--target", "0.9", "--examples", "500",
                          "--gpu-memory", "24", "--gpus", "4", "--fsdp", "full_shard"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "memory per GPU of 4 GPUs, fsdp full_shard:" in out.stdout
    assert "nproc_per_node = 4" in out.stdout and "fsdp = full_shard" in out.stdout
