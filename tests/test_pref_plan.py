"""Memory and hyperparameters for preference objectives (DPO, ORPO, KTO), against what TRL 1.16's trainers
hold: two completions per pair, the reference's forward, a frozen copy only for full fine-tuning."""

from __future__ import annotations

from dataclasses import replace

import pytest
from model_configs import GEMMA_2_2B, LLAMA_7B, MIXTRAL_8X7B, PYTHIA_6_9B

from engine.models.facts import facts_from_config
from engine.plan.memory import FUSED_HEAD_TILE, LOGITS_BYTES, Assumptions, estimate
from engine.training.config import METHODS, ConfigError

FAMILIES = {"llama": LLAMA_7B, "gpt_neox": PYTHIA_6_9B, "mixtral": MIXTRAL_8X7B, "gemma2": GEMMA_2_2B}
# long enough that activations, not gradients, set every peak (where the two phases would switch)
BASE = Assumptions(seq_len=2048, batch_size=8, gradient_checkpointing=False)


@pytest.fixture(scope="module", params=list(FAMILIES))
def facts(request):
    return facts_from_config(FAMILIES[request.param], request.param)


def fused_head(facts, tokens: int) -> float:
    """What TRL's fused log-prob head holds: the hidden states, one bf16 tile of logits, an fp32 hidden gradient."""
    rows, columns = FUSED_HEAD_TILE
    return min(tokens, rows) * min(facts.vocab, columns) * 2 + tokens * facts.hidden * (2 + 4)


@pytest.mark.parametrize("method", METHODS)
def test_pairs_hold_twice_the_activations_and_kto_once(facts, method):
    sft = estimate(facts, method, BASE)
    dpo = estimate(facts, method, replace(BASE, objective="dpo"))
    orpo = estimate(facts, method, replace(BASE, objective="orpo"))
    kto = estimate(facts, method, replace(BASE, objective="kto"))
    tokens = BASE.seq_len * BASE.batch_size
    # chosen and rejected in one concatenated batch: an SFT step of twice the batch
    assert dpo.parts["activations"] == pytest.approx(2 * sft.parts["activations"])
    assert dpo.parts["activations"] == pytest.approx(
        estimate(facts, method, replace(BASE, batch_size=2 * BASE.batch_size)).parts["activations"])
    assert orpo.parts["activations"] == pytest.approx(2 * sft.parts["activations"])
    assert kto.parts["activations"] == pytest.approx(sft.parts["activations"])
    # logits: ORPO materialises them for both completions; DPO and KTO score through the fused head
    assert sft.parts["logits"] == tokens * facts.vocab * LOGITS_BYTES
    assert orpo.parts["logits"] == 2 * sft.parts["logits"]
    assert dpo.parts["logits"] == fused_head(facts, 2 * tokens)
    assert kto.parts["logits"] == fused_head(facts, tokens)
    # the trained weights and their optimizer state do not depend on the objective
    for e in (dpo, orpo, kto):
        assert e.parts["weights"] == sft.parts["weights"] and e.parts["optimizer"] == sft.parts["optimizer"]
        assert e.trainable_parameters == sft.trainable_parameters
    assert dpo.total > sft.total and orpo.total > sft.total


@pytest.mark.parametrize("method", METHODS)
def test_the_reference_costs_a_copy_only_in_full_fine_tuning(facts, method):
    full_layer = facts.activations["full"]  # what one layer saves per 16-bit token: the no-grad forward's bound
    tokens = BASE.seq_len * BASE.batch_size
    for objective, sequences in (("dpo", 2), ("kto", 1)):
        e = estimate(facts, method, replace(BASE, objective=objective))
        assert e.parts["reference_forward"] == pytest.approx(sequences * tokens * full_layer)
        assert e.parts["reference_forward"] < e.parts["activations"] / 4  # a forward without kept activations
        if method == "full":
            assert e.parts["reference_weights"] == facts.parameters * 2  # a frozen bf16 copy
            assert any("frozen 16-bit copy" in note for note in e.notes)
        else:
            assert "reference_weights" not in e.parts
            assert any("adapter disabled" in note for note in e.notes)
        pre = estimate(facts, method, replace(BASE, objective=objective, precompute_ref_log_probs=True))
        assert "reference_weights" not in pre.parts and "reference_forward" not in pre.parts
        assert pre.total < e.total
    orpo = estimate(facts, method, replace(BASE, objective="orpo"))
    assert not {"reference_weights", "reference_forward"} & set(orpo.parts)


def test_fused_head_spares_a_large_vocabulary():
    """Gemma-2's 256k vocabulary: SFT's logits dwarf DPO's fused head, so DPO costs less than twice SFT there."""
    gemma = facts_from_config(GEMMA_2_2B, "gemma2")
    sft = estimate(gemma, "lora", BASE)
    dpo = estimate(gemma, "lora", replace(BASE, objective="dpo"))
    assert sft.parts["logits"] > 10 * dpo.parts["logits"]
    assert any("logits alone" in note for note in sft.notes)
    assert not any("logits alone" in note for note in dpo.notes)


def test_kto_needs_two_completions_per_device_batch():
    llama = facts_from_config(LLAMA_7B)
    one = estimate(llama, "lora", replace(BASE, objective="kto", batch_size=1))
    assert any("per_device_train_batch_size 2 or more" in note for note in one.notes)
    assert not any("2 or more" in note for note in estimate(llama, "lora", replace(BASE, objective="kto")).notes)


def test_unknown_objective_is_one_clear_error():
    with pytest.raises(ConfigError, match="unknown objective 'ppo'; use one of sft, dpo, orpo, kto"):
        Assumptions(objective="ppo")


def test_advice_for_full_dpo_offers_precomputing_the_reference():
    from engine.plan.memory import GiB, advice_to_fit

    llama = facts_from_config(LLAMA_7B)
    advice = advice_to_fit(llama, "full", replace(BASE, objective="dpo"), 80 * GiB)
    assert any(line.startswith("precompute_ref_log_probs: true") for line in advice)
    assert not any("precompute" in line for line in advice_to_fit(llama, "full", BASE, 80 * GiB))


# ---- hyperparameters and where to start ---------------------------------------------

def preference_plan(objective: str, **situation):
    from engine.plan.recommend import Situation, plan

    s = Situation(task="style", clean_examples=2000, baseline_score=0.3, target_score=0.8, objective=objective,
                  **situation)
    return plan(facts_from_config(LLAMA_7B), s, BASE)


@pytest.mark.parametrize("objective", ["dpo", "orpo", "kto"])
def test_preference_hyperparameters_follow_the_published_recipes(objective):
    from engine.training.config import DEFAULT_PREFERENCE_LEARNING_RATES

    sft, pref = preference_plan("sft"), preference_plan(objective)
    hp = {h.key: h for h in pref.hyperparameters}
    assert hp["objective"].value == objective and hp["beta"].value == 0.1
    assert "paper" in hp["beta"].reason
    assert hp["learning_rate"].value == DEFAULT_PREFERENCE_LEARNING_RATES[pref.method]
    sft_lr = next(h.value for h in sft.hyperparameters if h.key == "learning_rate")
    assert hp["learning_rate"].value <= sft_lr / 10  # an order of magnitude below SFT's
    assert 1 <= hp["num_train_epochs"].value <= 3 and hp["warmup_steps"].value == 0.1
    assert all(h.reason for h in pref.hyperparameters)
    assert "beta" not in {h.key for h in sft.hyperparameters}
    # the estimate and the time are the objective's
    assert pref.memory["lora"]["total_bytes"] == int(
        estimate(facts_from_config(LLAMA_7B), "lora", replace(BASE, objective=objective)).total)
    assert pref.time_hours > sft.time_hours
    config = pref.config("model-dir", "pairs.jsonl")
    assert config["objective"] == objective and config["beta"] == 0.1 and "objective" not in sft.config("m", "d")


def test_dpo_suggests_sft_first_when_the_workspace_has_none(workspace):
    from tui_fixtures import make_run

    from engine.plan.recommend import sft_runs

    assert sft_runs(workspace) == []
    [advice] = preference_plan("dpo", sft_runs=sft_runs(workspace)).objective_advice
    assert advice.startswith("no finished SFT run in this workspace: train SFT first")
    assert "cannot teach a format or task" in advice  # the reason
    make_run(workspace, name="unfinished", state="running").path.joinpath("adapter").mkdir()
    done = make_run(workspace, name="sft", state="completed")
    assert sft_runs(workspace) == []  # finished but no weights
    (done.path / "adapter").mkdir()
    assert sft_runs(workspace) == [done.id]
    [advice] = preference_plan("kto", sft_runs=sft_runs(workspace)).objective_advice
    assert f"tunedeck export {done.id} --merge --out DIR" in advice
    [orpo] = preference_plan("orpo", sft_runs=[]).objective_advice
    assert "no SFT run needed" in orpo
    assert preference_plan("sft", sft_runs=[]).objective_advice == []


def test_kto_weights_balance_the_labels_and_the_batch_holds_two():
    plan = preference_plan("kto", desirable=100, undesirable=300)
    hp = {h.key: h.value for h in plan.hyperparameters}
    assert hp["desirable_weight"] * 100 / (hp["undesirable_weight"] * 300) == pytest.approx(1, abs=0.01)
    hp = {h.key: h.value for h in preference_plan("kto", desirable=900, undesirable=100).hyperparameters}
    assert 1 <= hp["desirable_weight"] * 900 / (hp["undesirable_weight"] * 100) <= 4 / 3 + 0.01
    from engine.plan.recommend import Situation, plan as make_plan

    one = make_plan(facts_from_config(LLAMA_7B), Situation(objective="kto", baseline_score=0.1, clean_examples=900),
                    replace(BASE, batch_size=1))
    assert next(h.value for h in one.hyperparameters if h.key == "per_device_train_batch_size") == 2


def test_a_real_dpo_step_saves_twice_an_sft_step(tmp_path):
    """TRL's own DPO loss on a tiny LoRA model: the policy's concatenated forward of chosen and rejected plus the
    reference's forward (adapter disabled) keep twice what an SFT forward of the chosen sequences keeps for the
    backward pass: the reference keeps nothing, as the estimate assumes (measured: 1.96x)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from engine.testing import build_tiny_model

    build_tiny_model(tmp_path / "tiny")
    rows = [{"prompt": [{"role": "user", "content": "join red and blue " * 4}],
             "chosen": [{"role": "assistant", "content": "red-blue " * 8}],
             "rejected": [{"role": "assistant", "content": "blue red " * 8}]}] * 4
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tmp_path / "tiny"),
                         args=DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4,
                                        report_to=[], max_length=256, use_cpu=True),
                         train_dataset=Dataset.from_list(rows),
                         processing_class=AutoTokenizer.from_pretrained(tmp_path / "tiny"),
                         peft_config=LoraConfig(r=8, target_modules="all-linear"))
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 8  # 4 pairs: chosen then rejected, one batch
    params = {p.untyped_storage().data_ptr() for p in trainer.model.parameters()}

    def saved(step) -> int:
        kept = {}

        def pack(t):
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step()
        return sum(size for ptr, size in kept.items() if ptr not in params)

    trainer.model.train()
    chosen = {k: batch[k][:4] for k in ("input_ids", "attention_mask")}
    dpo = saved(lambda: trainer.compute_loss(trainer.model, batch))
    sft = saved(lambda: trainer.model(**chosen, labels=chosen["input_ids"], use_cache=False))
    assert 1.8 < dpo / sft < 2.2, (dpo, sft)
