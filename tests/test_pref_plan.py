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
