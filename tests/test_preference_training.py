"""Preference tuning (DPO, ORPO, KTO) through the real engine subprocess on a tiny model: runs finish, the DPO
reward margin rises on pairs it can learn, resume and SIGTERM keep the run protocol, QLoRA runs on the CPU; the
config and data checks; the health warnings on synthetic series; the monitor's reward curves."""

from __future__ import annotations

import random
import re
import signal
import statistics

import pytest
from engine_runs import dump, events, kill, kill_after_first_checkpoint, log_steps, start, wait_final, wait_for

from engine.data.load import Example
from engine.runs.protocol import COMPLETE_MARKER
from engine.testing import PREFERRED_MARKER, WORDS, learnable_pairs, write_jsonl
from engine.training.config import LOSS_TYPES, ConfigError, parse_config
from engine.training.health import HealthMonitor

def kto_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": f"join {a} and {b}", "completion": f"{a}-{b} {PREFERRED_MARKER}" if good else f"{a}-{b}",
             "label": good}
            for a, b, good in ((rng.choice(WORDS), rng.choice(WORDS), i % 2 == 0) for i in range(n))]


@pytest.fixture(scope="module")
def pairs(tiny_project):
    return write_jsonl(tiny_project / "pairs.jsonl", learnable_pairs(120))


@pytest.fixture(scope="module")
def unpaired(tiny_project):
    return write_jsonl(tiny_project / "kto.jsonl", kto_rows(120))


def preference_config(write_config, data, **overrides):
    return write_config(**{"data": str(data), "objective": "dpo", "max_steps": 30, "eval_steps": 10,
                           "save_steps": 10, "learning_rate": 5e-3, **overrides})


def logs(run) -> list[dict]:
    return [e for e in events(run) if e["type"] == "log"]


# ---- config ---------------------------------------------------------------------------------------------

def test_loss_types_are_those_the_installed_trl_accepts():
    from trl import DPOConfig, KTOConfig
    from trl.experimental.orpo import ORPOConfig

    dpo_help = DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    listed = dpo_help.split("Possible values are:")[1].split("If multiple")[0]
    assert set(LOSS_TYPES["dpo"]) == set(re.findall(r"'(\w+)'", listed))
    assert set(LOSS_TYPES["kto"]) == set(KTOConfig.__dataclass_fields__["loss_type"].metadata["choices"])
    assert "loss_type" not in ORPOConfig.__dataclass_fields__ and "orpo" not in LOSS_TYPES
    assert "rpo_alpha" not in DPOConfig.__dataclass_fields__  # hence loss_type: [sigmoid, sft] for an SFT term


@pytest.mark.parametrize("overrides,words", [
    ({"objective": "dpo", "loss_type": "kto"}, ["'loss_type'", "not a dpo loss", "sigmoid", "sigmoid_norm"]),
    ({"objective": "kto", "loss_type": "sigmoid"}, ["'loss_type'", "not a kto loss", "apo_zero_unpaired"]),
    ({"objective": "kto", "loss_type": ["kto"]}, ["'loss_type'", "only dpo combines"]),
    ({"objective": "orpo", "loss_type": "sigmoid"}, ["'loss_type'", "orpo has no loss types"]),
    ({"loss_type": "sigmoid"}, ["'loss_type'", "sft has no loss types"]),
    ({"objective": "kto", "per_device_train_batch_size": 1}, ["'per_device_train_batch_size'", "at least 2"]),
    ({"objective": "dpo", "general_data": "./g.jsonl"}, ["'general_data'", "dpo does not take it"]),
    ({"objective": "orpo", "packing": True}, ["'packing'", "orpo does not take it"]),
    ({"objective": "kto", "train_on": "all"}, ["'train_on'", "kto does not take it"]),
])
def test_config_refuses_what_an_objective_cannot_take(overrides, words):
    with pytest.raises(ConfigError) as err:
        parse_config({"model": "m", "data": "d.jsonl", **overrides}, check_paths=False)
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_config_takes_each_objective_and_a_dpo_loss_list():
    for objective in ("dpo", "orpo", "kto"):
        assert parse_config({"model": "m", "data": "d", "objective": objective}, check_paths=False).objective == objective
    cfg = parse_config({"model": "m", "data": "d", "objective": "dpo", "loss_type": ["sigmoid", "sft"]},
                       check_paths=False)
    assert cfg.loss_type == ["sigmoid", "sft"] and cfg.resolved_learning_rate() == 5e-6


# ---- data -------------------------------------------------------------------------------------------------

def example(prompt: str, kind: str, line: int = 1) -> Example:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": "yes"}]
    return Example(messages, "f.jsonl", line, rejected=[{"role": "assistant", "content": "no"}] if kind == "pair"
                   else None, desirable=True if kind == "unpaired" else None)


def test_data_of_the_wrong_kind_is_refused_by_count():
    from engine.training.recipes.preference import preference_examples

    mixed = [example("a", "pair")] * 3 + [example("b", "sft")] * 2
    with pytest.raises(ValueError, match=r"holds 3 preference pairs and 2 demonstrations: dpo learns from "
                                         r"preference pairs only; train demonstrations with objective: sft"):
        preference_examples(mixed, "dpo", "f.jsonl")
    with pytest.raises(ValueError, match=r"holds 4 unpaired \(KTO\) rows: orpo learns from preference pairs only; "
                                         r"train unpaired rows with objective: kto"):
        preference_examples([example("u", "unpaired")] * 4, "orpo", "f.jsonl")
    both = [example("a", "pair"), example("u", "unpaired")]
    assert preference_examples(both, "kto", "f.jsonl") == both  # KTO learns from pairs too, one row a side


def test_held_out_split_keeps_each_prompt_on_one_side():
    from engine.training.recipes.preference import split_by_prompt

    rows = [example(f"prompt {i % 25}", "pair", line=i) for i in range(100)]  # four pairs a prompt
    train, held = split_by_prompt(rows, 0.1, seed=7)
    assert len(train) + len(held) == 100 and 8 <= len(held) <= 16
    prompt = lambda ex: ex.messages[0]["content"]
    assert not {prompt(ex) for ex in train} & {prompt(ex) for ex in held}
    assert split_by_prompt(rows, 0.1, seed=7)[1] == held  # seeded: the same split on resume


def test_dpo_on_demonstrations_fails_in_one_line(write_config, workspace, tiny_project):
    run, proc = start(preference_config(write_config, tiny_project / "train.jsonl"), workspace)
    status = wait_final(run, proc)
    assert status["state"] == "failed", dump(run)
    assert "holds 200 demonstrations: dpo learns from preference pairs only" in status["error"]


# ---- runs -------------------------------------------------------------------------------------------------

def test_dpo_learns_the_preference_and_reports_rewards(write_config, workspace, pairs):
    run, proc = start(preference_config(write_config, pairs), workspace)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    entries = logs(run)
    margins = [e["rewards/margins"] for e in entries]
    assert len(margins) == 30 and margins[0] == 0  # the policy starts as its reference
    assert statistics.fmean(margins[-5:]) > statistics.fmean(margins[:5]) + 0.3, margins
    assert statistics.fmean(e["rewards/accuracies"] for e in entries[-5:]) >= 0.9
    assert {"rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"} <= set(entries[-1])
    evals = [e for e in events(run) if e["type"] == "eval"]
    assert len(evals) == 3 and evals[-1]["eval_rewards/margins"] > evals[0]["eval_rewards/margins"]
    assert evals[-1]["eval_rewards/accuracies"] == 1.0
    assert [e["step"] for e in events(run) if e["type"] == "sample"] == [10, 20, 30]
    ready = next(e for e in events(run) if e.get("state") == "data_ready")
    assert ready["kinds"] == {"pair": ready["train"]["examples"]} and ready["eval"]["examples"] >= 12
    # The reference is the base with the adapter disabled: no second model, no second adapter saved.
    assert not any(e.get("state") == "reference_loaded" for e in events(run))
    adapter = run.path / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "ref").exists()


def test_overlong_pairs_are_counted_and_dropped(write_config, workspace, tmp_path):
    long_prompt, long_answer = learnable_pairs(2, seed=1)
    long_prompt["prompt"][0]["content"] = "join " + " and ".join(WORDS * 10)  # the prompt alone fills 64 tokens
    long_answer["chosen"][0]["content"] = "-".join(WORDS * 10)
    data = write_jsonl(tmp_path / "long.jsonl", learnable_pairs(30) + [long_prompt, long_answer])
    run, proc = start(preference_config(write_config, data, max_steps=2, max_seq_length=64, overlong="drop",
                                        validation_split=0), workspace)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    train = next(e for e in events(run) if e.get("state") == "data_ready")["train"]
    assert (train["examples"], train["kept"], train["dropped_too_long"], train["dropped_no_target"]) == (32, 30, 1, 1)
    warning = next(e for e in events(run) if e.get("code") == "overlong")
    assert "1 dropped as too long and 1 dropped whose prompt alone fills max_seq_length 64" in warning["message"]


@pytest.mark.parametrize("objective", ["orpo", "kto"])
def test_orpo_and_kto_runs_finish(write_config, workspace, pairs, unpaired, objective):
    data = pairs if objective == "orpo" else unpaired
    run, proc = start(preference_config(write_config, data, objective=objective, max_steps=20), workspace)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    entries = logs(run)
    # KTO logs no margin for a batch that is all desirable or all undesirable (one in eight of them here)
    assert len(entries) == 20 and sum("rewards/margins" in e for e in entries) >= 10
    assert entries[-1]["tokens_seen"] > 0  # ORPO's batches have no input_ids: counted by the recipe
    if objective == "orpo":
        assert "nll_loss" in entries[-1] and "rewards/accuracies" in entries[-1]
    else:
        assert "kl" in entries[-1]
        ready = next(e for e in events(run) if e.get("state") == "data_ready")
        assert ready["kinds"] == {"unpaired": ready["train"]["examples"]}
    assert (run.path / "adapter" / "adapter_config.json").is_file()


def test_kto_trains_on_pairs_one_row_a_side(write_config, workspace, pairs):
    run, proc = start(preference_config(write_config, pairs, objective="kto", max_steps=5, validation_split=0),
                      workspace)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    ready = next(e for e in events(run) if e.get("state") == "data_ready")
    assert ready["kinds"] == {"pair": 120} and ready["train"]["examples"] == 240


def test_dpo_kill9_then_resume_continues_from_checkpoint(write_config, workspace, pairs):
    run, proc = start(preference_config(write_config, pairs, max_steps=40, save_steps=10, eval_steps=1000),
                      workspace)
    checkpoint, resumed_at, _ = kill_after_first_checkpoint(run, proc)
    seq_before = events(run)[-1]["seq"]
    run, proc = start(None, workspace, resume_run=run)
    status = wait_final(run, proc)
    assert status["state"] == "completed" and status["step"] == 40, dump(run)
    new_steps = [e["step"] for e in events(run) if e["type"] == "log" and e["seq"] > seq_before]
    assert new_steps[0] == resumed_at + 1, (resumed_at, new_steps[:3])
    resumed = [e for e in events(run) if e.get("state") == "running"][-1]
    assert resumed["resumed_from"].endswith(checkpoint.name)
    assert not (run.path / "adapter" / "ref").exists()


def test_dpo_under_two_process_torchrun_has_one_writer(write_config, workspace, pairs):
    """DDP as for SFT (tests/test_training.py): TRL's trainer under torchrun, one writer of the run directory."""
    run, proc = start(preference_config(write_config, pairs, nproc_per_node=2, max_steps=10, save_steps=5,
                                        eval_steps=5), workspace)
    assert wait_final(run, proc, timeout=600)["state"] == "completed", dump(run)
    evs = events(run)
    assert next(e for e in evs if e.get("state") == "starting")["world_size"] == 2
    assert len({e["seq"] for e in evs}) == len(evs)
    steps = log_steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == 10
    assert all("rewards/margins" in e for e in logs(run))
    assert [s for s, _, ok in run.checkpoints() if ok] == [5, 10]


def test_dpo_sigterm_leaves_a_complete_checkpoint(write_config, workspace, pairs):
    run, proc = start(preference_config(write_config, pairs, max_steps=5000, save_steps=10000, eval_steps=10000),
                      workspace)
    wait_for(lambda: len(log_steps(run)) >= 3, what="training to start")
    kill(proc, signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    status = run.status()
    assert status["state"] == "stopped", dump(run)
    complete = [(step, p) for step, p, ok in run.checkpoints() if ok]
    assert complete and complete[-1][0] == status["step"] < 5000
    assert (complete[-1][1] / COMPLETE_MARKER).is_file() and (complete[-1][1] / "optimizer.pt").is_file()


def test_qlora_dpo_runs_on_the_cpu(write_config, workspace, pairs):
    run, proc = start(preference_config(write_config, pairs, method="qlora", max_steps=10), workspace)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    loaded = next(e for e in events(run) if e.get("state") == "model_loaded")
    assert loaded["load_in_4bit"] is True
    assert statistics.fmean(e["rewards/margins"] for e in logs(run)[-3:]) > 0
    from safetensors import safe_open

    with safe_open(run.path / "adapter" / "adapter_model.safetensors", "pt") as f:  # fp32, not TRL's bf16
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float32"}


def test_full_dpo_loads_a_frozen_reference(write_config, workspace, pairs):
    run, proc = start(preference_config(write_config, pairs, method="full", learning_rate=1e-3, max_steps=5),
                      workspace)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    assert any(e.get("state") == "reference_loaded" for e in events(run))
    assert (run.path / "model" / "config.json").is_file()


# ---- health -----------------------------------------------------------------------------------------------

def feed(health: HealthMonitor, series) -> list[tuple[int, str]]:
    return [(i, code) for i, (margin, accuracy, chosen) in enumerate(series)
            for code, _ in health.on_rewards(margin, accuracy, chosen)]


def test_margin_collapse_is_warned_once_after_the_margin_rose():
    rising = [(0.05 * i, min(1.0, 0.5 + 0.05 * i), -20.0) for i in range(20)]  # margin to 0.95, accuracy 1
    collapsed = [(0.01, 0.5, -20.0)] * 10
    health = HealthMonitor()
    warned = feed(health, rising + collapsed)
    assert [code for _, code in warned] == ["margin_collapse"] and warned[0][0] >= 20
    message = health.active["margin_collapse"]
    assert "lower the learning rate or raise beta" in message and "\n" not in message
    assert feed(HealthMonitor(), [(0.0, 0.5, -20.0)] * 30) == []  # never rose: nothing collapsed
    assert feed(HealthMonitor(), rising) == []  # healthy
    kto = HealthMonitor()  # KTO logs no accuracy: the margin alone
    assert [c for _, c in feed(kto, [(m, None, c) for m, _, c in rising + collapsed])] == ["margin_collapse"]


def test_likelihood_displacement_is_warned_when_chosen_falls_as_the_margin_rises():
    displaced = [(0.05 * i, 1.0, -20.0 - 0.5 * i) for i in range(30)]  # chosen -20 -> -34.5
    health = HealthMonitor()
    assert [code for _, code in feed(health, displaced)] == ["likelihood_displacement"]
    message = health.active["likelihood_displacement"]
    assert "Razin" in message and "loss_type: [sigmoid, sft]" in message and "\n" not in message
    both_rise = [(0.05 * i, 1.0, -20.0 + 0.1 * i) for i in range(30)]
    assert feed(HealthMonitor(), both_rise) == []
    recovered = HealthMonitor()
    feed(recovered, displaced)
    feed(recovered, [(1.5, 1.0, -20.0)] * 5)
    assert "likelihood_displacement" not in recovered.active


# ---- monitor ----------------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_monitor_shows_reward_curves_of_a_finished_dpo_run(write_config, workspace, pairs):
    from tui_fixtures import SIZE, make_app, screen_text, wait_for as ui_wait

    from tui.screens.monitor import MonitorScreen

    run, proc = start(preference_config(write_config, pairs, max_steps=20), workspace)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    app = make_app(workspace, attach=run.id)
    async with app.run_test(size=SIZE) as pilot:
        mon = app.screen
        assert isinstance(mon, MonitorScreen)
        await ui_wait(pilot, lambda: mon.view and len(mon.view.series["rewards/margins"]) and not mon.view.replaying,
                      timeout=20)
        await pilot.pause()
        text = screen_text(app)
        assert "─ margin " in text and "─ accuracy 100% ●100% (m) ─" in text, text  # the pairs are learnt
        title = mon.query_one("#plot-lr").border_title
        assert title.startswith("margin ") and " ●" in title and title.endswith(" (m)"), title
        await pilot.press("m")
        await pilot.pause()
        text = screen_text(app)
        assert "─ lr " in text and "─ grad norm " in text and "─ margin " not in text, text
        await pilot.press("m")
        await pilot.pause()
        assert "─ margin " in screen_text(app)

