"""FSDP through the Trainer: the config keys, the settings the Trainer and accelerate get from them, and the run
protocol under several ranks.

On a CPU accelerate never enables its FSDP plugin (only GPU ranks get DistributedType.FSDP; the Trainer would
train plain DDP), so the engine refuses fsdp there, which the real engine shows below; the sharded runs
themselves need GPUs (README: which modes were measured where). What every rank writes into a checkpoint is
the same protocol under DDP, which two gloo ranks exercise here.
"""

from __future__ import annotations

import signal

import pytest
import torch
import yaml
from engine_runs import dump, events, kill, log_steps, start, wait_final, wait_for

from engine.runs.protocol import COMPLETE_MARKER
from engine.training.config import ConfigError, parse_config

BASE = {"model": "m", "data": "d.jsonl"}


def config(**keys):
    return parse_config({**BASE, **keys}, check_paths=False)


@pytest.mark.parametrize("keys,needle", [
    ({"fsdp_offload": True}, "'fsdp_offload' is an FSDP option: set fsdp"),
    ({"fsdp_version": 1}, "'fsdp_version' is an FSDP option"),
    ({"fsdp_activation_checkpointing": True, "nproc_per_node": 2}, "is an FSDP option"),
    ({"fsdp": "full_shard"}, "the run has one process"),
    ({"fsdp": "full_shard", "fsdp_offload": True}, "set nproc_per_node to 2 or more"),
    ({"fsdp": "full_shard", "nproc_per_node": 2, "fsdp_version": 3}, "must be 1 (FSDP1) or 2 (FSDP2), got 3"),
    ({"fsdp": "full_shard", "nproc_per_node": 2, "fsdp_version": True}, "'fsdp_version': expected int"),
    ({"fsdp": "hybrid_shard", "nproc_per_node": 2}, "hybrid_shard runs on FSDP1 only"),
    ({"fsdp": "full_shard", "nproc_per_node": 2, "fsdp_activation_checkpointing": True,
      "gradient_checkpointing": True}, "both checkpoint activations"),
])
def test_fsdp_keys_that_can_never_work_are_refused(keys, needle):
    with pytest.raises(ConfigError) as err:
        config(**keys)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_fsdp_keys_that_can_work_parse():
    cfg = config(fsdp="hybrid_shard", fsdp_version=1, nproc_per_node=2, fsdp_offload=True,
                 fsdp_activation_checkpointing=True, gradient_checkpointing=False)
    assert (cfg.fsdp, cfg.fsdp_version, cfg.fsdp_offload, cfg.fsdp_activation_checkpointing) == \
        ("hybrid_shard", 1, True, True)
    assert config(fsdp="shard_grad_op", nnodes=2, network_interface="eth0").fsdp_version == 2  # 2 nodes x 1


@pytest.fixture(scope="module")
def lora_model(tiny_project):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_project / "tiny-model")
    return get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))


@pytest.mark.parametrize("keys,plugin", [
    ({"fsdp": "full_shard"}, {"fsdp_version": 2, "reshard_after_forward": True}),
    ({"fsdp": "shard_grad_op", "fsdp_offload": True, "fsdp_activation_checkpointing": True},
     {"fsdp_version": 2, "reshard_after_forward": False, "cpu_offload": True, "activation_checkpointing": True}),
    ({"fsdp": "hybrid_shard", "fsdp_version": 1}, {"fsdp_version": 1, "reshard_after_forward": "hybrid_shard"}),
])
def test_fsdp_keys_reach_accelerates_plugin(lora_model, tmp_path, keys, plugin):
    """The recipe's FSDP arguments as transformers turns them into accelerate's plugin: the strategy, the
    model's own decoder layer wrapped (through peft), checkpoints as shards."""
    from transformers import TrainingArguments

    from engine.training.recipes.base import Recipe

    recipe = Recipe(config(nproc_per_node=2, **keys), plumbing=None)
    recipe.model = lora_model
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **recipe._fsdp_arguments())
    expected = {"auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "transformer_cls_names_to_wrap": "LlamaDecoderLayer",
                "state_dict_type": "SHARDED_STATE_DICT", "activation_checkpointing": False, **plugin}
    assert {k: args.fsdp_plugin_args.get(k) for k in expected} == expected
    if plugin["fsdp_version"] == 2:  # FSDP1's plugin refuses parameters on a CPU (sync_module_states)
        from accelerate.utils import FullyShardedDataParallelPlugin

        made = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
        assert "SHARDED_STATE_DICT" in str(made.state_dict_type) and made.reshard_after_forward == plugin[
            "reshard_after_forward"]
    assert Recipe(config(), plumbing=None)._fsdp_arguments() == {}  # no fsdp: DDP as before


def test_qlora_under_fsdp_stores_4bit_weights_in_the_compute_dtype():
    from engine.models.load import _precision

    cpu = torch.device("cpu")
    qlora = {"method": "qlora", "precision": "bf16"}
    sharded = config(fsdp="full_shard", nproc_per_node=2, **qlora)
    assert _precision("train", sharded, cpu)["quantization_config"].bnb_4bit_quant_storage == torch.bfloat16
    # one rank, and any evaluation: the packed bytes as bitsandbytes keeps them by default
    assert _precision("train", config(**qlora), cpu)["quantization_config"].bnb_4bit_quant_storage == torch.uint8
    assert _precision("evaluate", sharded, cpu)["quantization_config"].bnb_4bit_quant_storage == torch.uint8


def test_fsdp_on_a_machine_without_gpus_fails_every_rank_with_one_clear_error(write_config, workspace):
    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs: fsdp runs")
    run, proc = start(write_config(nproc_per_node=2, fsdp="full_shard", max_steps=4), workspace)
    status = wait_final(run, proc, timeout=240)
    assert status["state"] == "failed", dump(run)
    assert "fsdp: full_shard needs GPUs" in status["error"] and "leave fsdp out" in status["error"]
    assert proc.returncode != 0
    assert not log_steps(run) and not run.checkpoints()  # refused before the model loaded
    assert run.log_path.read_text().count("fsdp: full_shard needs GPUs") >= 2  # each rank said it


def test_two_ranks_stop_on_sigterm_with_every_ranks_part_and_resume(write_config, workspace):
    """SIGTERM reaches both ranks; the checkpoint they save together holds each rank's part (its RNG state, and
    under fsdp its shards) before COMPLETE appears; the resume continues from it with its optimizer state."""
    run, proc = start(write_config(nproc_per_node=2, max_steps=5000, save_steps=10000, eval_steps=10000), workspace)
    wait_for(lambda: len(log_steps(run)) >= 3 or run.status().get("state") == "failed", timeout=240,
             what="training to start")
    kill(proc, signal.SIGTERM)
    proc.wait(timeout=120)
    status = run.status()
    assert status["state"] == "stopped", dump(run)
    step = status["step"]
    complete = [(s, p) for s, p, ok in run.checkpoints() if ok]
    assert complete and complete[-1][0] == step, dump(run)
    parts = {p.name for p in complete[-1][1].iterdir()}
    assert {COMPLETE_MARKER, "optimizer.pt", "rng_state_0.pth", "rng_state_1.pth"} <= parts
    assert not (run.path / ".staging").exists()

    cfg = run.config()
    cfg["max_steps"] = step + 3
    run.config_path.write_text(yaml.safe_dump(cfg))
    run, proc = start(None, workspace, resume_run=run)
    assert wait_final(run, proc, timeout=240)["state"] == "completed", dump(run)
    resumed = [e for e in events(run) if e.get("state") == "running"][-1]
    assert resumed["resumed_from"].endswith(f"checkpoint-{step}")
    steps = log_steps(run)
    assert steps[-3:] == [step + 1, step + 2, step + 3] and len(steps) == len(set(steps))  # one writer
    assert (run.path / "adapter" / "adapter_model.safetensors").is_file()


def test_chat_refuses_a_sharded_checkpoint_with_what_to_do(tmp_path):
    """An FSDP checkpoint holds .distcp shards, not an adapter or model: chat says so instead of failing to load."""
    from engine.chat.session import ChatWeights, chat_weights
    from engine.runs.protocol import RunError
    from engine.runs.workspace import create_run

    run = create_run(tmp_path, {"model": "m", "data": "d.jsonl"})
    sharded = run.checkpoints_dir / "checkpoint-4"
    (sharded / "pytorch_model_fsdp_0").mkdir(parents=True)
    (sharded / "pytorch_model_fsdp_0" / "__0_0.distcp").write_bytes(b"")
    (sharded / COMPLETE_MARKER).write_text("{}")
    with pytest.raises(RunError, match="checkpoint 4 of run .* holds FSDP shards.*chat with the final weights"):
        chat_weights(run, ChatWeights(4))
    (sharded / "adapter_config.json").write_text("{}")  # gathered beside the shards: that one loads
    assert chat_weights(run, ChatWeights(4)) == sharded
