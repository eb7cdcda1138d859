"""Pilot tests of the Plan screen: fill the form by keys, watch the decision change, write a config."""

from __future__ import annotations

from pathlib import Path

import pytest
from tui_fixtures import SIZE, assert_snapshot, make_app, one_gpu_snapshot, screen_text, wait_for

from engine.models.facts import model_facts
from engine.testing import build_tiny_model, learnable_rows, write_jsonl
from engine.training.config import load_config
from tui.screens.error import ErrorScreen
from tui.screens.plan import PlanScreen
from tui.screens.prompt import PathPrompt

pytestmark = [pytest.mark.asyncio, pytest.mark.usefixtures("demo_model")]


def plan_screen(app) -> PlanScreen:
    assert isinstance(app.screen, PlanScreen), type(app.screen)
    return app.screen


async def settled(pilot, app, decision: str | None = None) -> None:
    """Wait until the worker has shown a plan (with this decision, when given)."""
    await wait_for(pilot, lambda: isinstance(app.screen, PlanScreen) and app.screen.result is not None
                   and not any(w.is_running for w in app.screen.workers)
                   and (decision is None or app.screen.result.plan.decision == decision))


async def type_into(pilot, app, field: str, text: str, submit: bool = False) -> None:
    widget = app.screen.query_one(f"#plan-{field}")
    widget.focus()
    await pilot.pause()
    await pilot.press("ctrl+u", *text)  # ctrl+u: clear what is before the cursor
    if submit:
        await pilot.press("enter")


async def test_decision_follows_the_form(tmp_path):
    app = make_app(tmp_path, mode="plan")
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot, app, "measure_baseline")
        assert "[MEASURE BASELINE]" in screen_text(app)
        assert "no GPU here" in screen_text(app)

        await type_into(pilot, app, "baseline", "0.1")
        await type_into(pilot, app, "target", "0.9")
        await settled(pilot, app, "collect_data")  # no data, no example count
        await type_into(pilot, app, "examples", "300")
        app.screen.query_one("#plan-task").value = "extraction"
        await settled(pilot, app, "fine_tune")
        result = plan_screen(app).result.plan
        assert result.method == "lora" and result.time_hours > 0
        await pilot.press("escape")
        text = screen_text(app)
        assert "[FINE-TUNE]" in text and "▸lora" in text and "300 clean examples for extraction" in text

        # Fresh knowledge wins over everything: retrieval, not fine-tuning.
        app.screen.query_one("#plan-fresh").focus()
        await pilot.press("space")
        await settled(pilot, app, "rag")
        assert "[RAG]" in screen_text(app)
        await pilot.press("space")
        await settled(pilot, app, "fine_tune")

        # A baseline already at the target: keep prompting.
        await type_into(pilot, app, "baseline", "0.95")
        await settled(pilot, app, "prompt")

        # A value that is not a number says so in place, without a modal.
        await type_into(pilot, app, "target", "abc")
        await wait_for(pilot, lambda: "is not a number" in screen_text(app))
        assert not isinstance(app.screen, ErrorScreen)


async def test_write_config_the_engine_accepts(tmp_path):
    model = build_tiny_model(tmp_path / "tiny-model") or tmp_path / "tiny-model"
    model_facts(str(model))  # built once here (seconds, engine.models.anatomy), then read from the cache
    data = write_jsonl(tmp_path / "train.jsonl", learnable_rows(50))
    app = make_app(tmp_path / "ws", mode="plan", sampler=one_gpu_snapshot)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot, app)
        await pilot.press("w")  # no data file yet: says so, writes nothing
        await pilot.pause()
        assert not isinstance(app.screen, PathPrompt)
        assert not (tmp_path / "ws" / "configs").exists()

        await type_into(pilot, app, "model", str(model), submit=True)
        await type_into(pilot, app, "data", str(data), submit=True)
        await settled(pilot, app)
        await wait_for(pilot, lambda: app.screen.result.counted == 50)
        assert app.screen.result.facts.parameters < 10_000_000
        await pilot.press("escape")
        text = screen_text(app)
        assert "data: 50 examples" in text, text
        assert "fits" in text

        await pilot.press("ctrl+s")  # works from inside the form
        await wait_for(pilot, lambda: isinstance(app.screen, PathPrompt))
        await pilot.press("enter")  # the default path under the workspace
        await wait_for(pilot, lambda: getattr(plan_screen(app), "written", None) is not None)
        path = app.screen.written
        assert path.parent == tmp_path / "ws" / "configs" and path.name.startswith("plan-")
        config = load_config(path)
        assert config.method == "lora" and Path(config.data) == data.resolve()
        assert Path(config.model) == model and config.general_data is None

        # A general file: the forgetting line shows the keys and the written config carries them.
        general = write_jsonl(tmp_path / "general.jsonl", learnable_rows(5, seed=1))
        await type_into(pilot, app, "general", str(general), submit=True)
        await wait_for(pilot, lambda: app.screen.result.plan.mixing)
        await pilot.press("escape")
        plan_screen(app).action_scroll(100)
        await pilot.pause()
        assert "general_ratio = 0.3" in screen_text(app) and "lora forgets less" in screen_text(app)
        plan_screen(app).write_config(plan_screen(app).result, tmp_path / "mixed.yaml")
        config = load_config(tmp_path / "mixed.yaml")
        assert config.general_data == str(general) and config.general_ratio == 0.3


async def test_missing_model_goes_to_the_error_modal(tmp_path):
    app = make_app(tmp_path, mode="plan")
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot, app)
        await type_into(pilot, app, "model", str(tmp_path / "nope"), submit=True)
        await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen))
        text = screen_text(app)
        assert "Plan failed" in text and "not found" in text and "Model" in text, text
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, PlanScreen)  # one modal, not two


async def test_plan_snapshots(tmp_path):
    app = make_app(tmp_path, mode="plan")
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot, app)
        assert_snapshot(app, "plan_default")
        await type_into(pilot, app, "baseline", "0.1")
        await type_into(pilot, app, "target", "0.9")
        await type_into(pilot, app, "examples", "300")
        await settled(pilot, app, "fine_tune")
        await pilot.press("escape")
        await pilot.pause()
        assert_snapshot(app, "plan_fine_tune")


async def test_preference_objective_suggests_sft_first(tmp_path):
    """DPO in a workspace without a finished SFT run: the plan says to train SFT first and why, its
    hyperparameters are the preference recipe's, and the written config carries the objective."""
    from tui_fixtures import make_run

    model = build_tiny_model(tmp_path / "tiny-model") or tmp_path / "tiny-model"
    model_facts(str(model))
    data = write_jsonl(tmp_path / "train.jsonl", learnable_rows(50))
    app = make_app(tmp_path / "ws", mode="plan")
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot, app)
        sft_memory = plan_screen(app).result.plan.memory["lora"]["total_bytes"]
        app.screen.query_one("#plan-objective").value = "dpo"
        await wait_for(pilot, lambda: plan_screen(app).result.plan.objective == "dpo")
        await settled(pilot, app)
        result = plan_screen(app).result.plan
        assert result.memory["lora"]["total_bytes"] > sft_memory  # both completions of each pair
        assert result.objective_advice[0].startswith("no finished SFT run in this workspace: train SFT first")
        await pilot.press("escape")
        await pilot.pause()
        text = screen_text(app)
        assert "Objective DPO" in text and "train SFT first" in text
        assert_snapshot(app, "plan_dpo_no_sft")
        shown = plan_screen(app).render_plan().plain  # the whole pane, below the fold too
        assert "beta = 0.1  the DPO paper" in shown and "learning_rate = 5e-06  an order of magnitude" in shown

        # A finished SFT run in the workspace: the advice names it instead.
        done = make_run(tmp_path / "ws", name="sft", state="completed")
        (done.path / "adapter").mkdir()
        await pilot.press("r")
        await wait_for(pilot, lambda: "tunedeck export" in plan_screen(app).result.plan.objective_advice[0])
        assert done.id in plan_screen(app).result.plan.objective_advice[0]

        await type_into(pilot, app, "model", str(model), submit=True)
        await type_into(pilot, app, "data", str(data), submit=True)
        await wait_for(pilot, lambda: plan_screen(app).result.counted == 50)
        await settled(pilot, app)
        plan_screen(app).write_config(plan_screen(app).result, tmp_path / "dpo.yaml")
        import yaml

        written = yaml.safe_load((tmp_path / "dpo.yaml").read_text())
        assert written["objective"] == "dpo" and written["beta"] == 0.1 and written["learning_rate"] == 5e-6


def two_t4_snapshot(workspace) -> dict:
    from tui_fixtures import HOST

    gpu = {"index": 0, "name": "Tesla T4", "memory_total_mib": 15360, "memory_used_mib": 0}
    return {"time": 0, "gpus": [gpu, {**gpu, "index": 1}], "host": dict(HOST)}


async def test_sharding_fields_and_memory_per_gpu(tmp_path):
    """LLaMA-7B LoRA on this machine's two T4s: one cannot hold it, so the plan shards it (full_shard) and says
    why; memory reads per GPU of the GPUs planned, under the mode; more nodes or a mode asked for follow."""
    import json

    from model_configs import LLAMA_7B

    config = tmp_path / "llama-7b" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps(LLAMA_7B))
    app = make_app(tmp_path / "ws", mode="plan", sampler=two_t4_snapshot)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot, app)
        await type_into(pilot, app, "model", str(config), submit=True)
        await type_into(pilot, app, "seq-len", "512")
        await type_into(pilot, app, "batch", "1")
        await type_into(pilot, app, "baseline", "0.1")
        await type_into(pilot, app, "target", "0.9")
        await type_into(pilot, app, "examples", "2000")
        await wait_for(pilot, lambda: plan_screen(app).result.facts.layers == 32
                       and plan_screen(app).result.inputs.numbers["examples"] == 2000, timeout=60)
        await settled(pilot, app, "fine_tune")
        result = plan_screen(app).result.plan
        assert (result.method, result.fsdp, result.gpus) == ("lora", "full_shard", 2)
        await pilot.press("escape")
        plan_screen(app).action_scroll(4)
        await pilot.pause()
        text = screen_text(app)
        assert "per GPU of 2 GPUs, fsdp full_shard" in text and "sharded: one GPU cannot hold lora" in text, text
        assert_snapshot(app, "plan_sharded")

        # Two nodes of two: hybrid_shard keeps the gathers within a node.
        await type_into(pilot, app, "nodes", "2")
        await wait_for(pilot, lambda: plan_screen(app).result.plan.nodes == 2)
        await settled(pilot, app)
        assert plan_screen(app).result.plan.fsdp == "hybrid_shard"
        assert "per GPU of 2 nodes x 2 GPUs, fsdp hybrid_shard" in plan_screen(app).render_plan().plain

        # A mode asked for, on four GPUs a node, by keys: the select opens, down to shard_grad_op, enter.
        await type_into(pilot, app, "gpus", "4")
        app.screen.query_one("#plan-fsdp").focus()
        await pilot.press("enter", "down", "down", "enter")
        await wait_for(pilot, lambda: plan_screen(app).result.inputs.fsdp == "shard_grad_op"
                       and plan_screen(app).result.plan.gpus == 4)
        await settled(pilot, app)
        shown = plan_screen(app).render_plan().plain
        assert "per GPU of 2 nodes x 4 GPUs, fsdp shard_grad_op" in shown and "sharded:" not in shown
        assert plan_screen(app).result.plan.memory["lora"]["world_size"] == 8

        # CPU offload: the shards leave the GPU, and the plan's config carries the key.
        on_gpu = plan_screen(app).result.plan.memory["lora"]["required_bytes"]
        app.screen.query_one("#plan-offload").focus()
        await pilot.press("space")
        await wait_for(pilot, lambda: plan_screen(app).result.inputs.offload)
        await settled(pilot, app)
        result = plan_screen(app).result.plan
        assert result.memory["lora"]["required_bytes"] < on_gpu and result.memory["lora"]["host"]["weights"] > 0
        assert {h.key: h.value for h in result.hyperparameters}["fsdp_offload"] is True

        await type_into(pilot, app, "gpus", "0")  # said in place, at the top of the plan
        await wait_for(pilot, lambda: "! gpus/node must be at least 1" in plan_screen(app).render_plan().plain)
        await type_into(pilot, app, "gpus", "1")
        await type_into(pilot, app, "nodes", "1")  # a mode on one GPU: nothing to shard across, said in place
        await wait_for(pilot, lambda: "! fsdp shard_grad_op shards across GPUs: plan for 2 or more"
                       in plan_screen(app).render_plan().plain)
        assert not isinstance(app.screen, ErrorScreen)
