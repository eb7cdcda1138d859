"""The Plan screen and `tunedeck plan` are two faces of one recommendation: for the same model, data
file, task, numbers and GPUs they give the same decision, method and hyperparameters."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tui_fixtures import HOST, SIZE, make_app, wait_for

from engine.data.load import Example, load_examples
from engine.data.stats import TokenEstimate, estimate_tokens
from engine.testing import write_jsonl
from tui.screens.plan import PlanScreen

GPU = {"name": "NVIDIA A10G", "memory_total_mib": 24 * 1024, "memory_used_mib": 0}


def a10g_snapshot(workspace) -> dict:
    return {"time": 0, "gpus": [dict(GPU)], "host": dict(HOST)}


def varied_rows(n: int) -> list[dict]:
    """Questions of many lengths, up to about 280 tokens: max_seq_length follows their 99th percentile."""
    return [{"messages": [{"role": "user", "content": "how many apples are left? " * (1 + i % 40)},
                          {"role": "assistant", "content": f"{i} apples"}]} for i in range(n)]


def decision(plan: dict) -> dict:
    return {"decision": plan["decision"], "method": plan["method"],
            "hyperparameters": {h["key"]: h["value"] for h in plan["hyperparameters"]}}


def cli_plan(data, task: str, baseline: float, target: float, price: float) -> dict:
    result = subprocess.run([sys.executable, "-m", "tui.cli", "plan", "--json", "--model", "demo",
                             "--data", str(data), "--task", task, "--baseline", str(baseline),
                             "--target", str(target), "--price", str(price), "--gpu-memory", "24",
                             "--gpu-name", GPU["name"]], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_token_estimate_is_four_characters_a_token_plus_the_template():
    examples = [Example([{"role": "user", "content": "abcd" * i}, {"role": "assistant", "content": "ok!!"}], "t", i)
                for i in range(100)]  # i + 1 tokens of text each
    assert estimate_tokens(examples) == TokenEstimate(examples=100, mean=66, p99=116)  # 16 for the template
    assert estimate_tokens(examples[:1] * 99 + examples[-1:]).p99 == 116  # the longest 1% sets it
    assert estimate_tokens([]) == TokenEstimate(0, None, None)


@pytest.mark.asyncio
@pytest.mark.usefixtures("demo_model")
async def test_the_screen_and_the_command_line_recommend_the_same(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", varied_rows(400))
    measured = estimate_tokens(load_examples(data).examples)
    cli = cli_plan(data, "extraction", 0.1, 0.9, 1.5)

    app = make_app(tmp_path / "ws", mode="plan", sampler=a10g_snapshot)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, PlanScreen)
        for field, value in (("data", str(data)), ("baseline", "0.1"), ("target", "0.9"), ("price", "1.5")):
            screen.query_one(f"#plan-{field}").value = value
        screen.query_one("#plan-task").value = "extraction"
        await wait_for(pilot, lambda: screen.result is not None and screen.result.inputs.data == str(data)
                       and screen.result.inputs.numbers["price"] == 1.5 and screen.result.inputs.task == "extraction"
                       and not any(w.is_running for w in screen.workers), timeout=30)
        shown = json.loads(json.dumps(screen.result.plan.to_dict(), default=str))

    on_screen, on_cli = decision(shown), decision(cli)
    differences = {key: (on_screen["hyperparameters"].get(key), on_cli["hyperparameters"].get(key))
                   for key in on_screen["hyperparameters"].keys() | on_cli["hyperparameters"].keys()
                   if on_screen["hyperparameters"].get(key) != on_cli["hyperparameters"].get(key)}
    assert on_screen == on_cli, f"(screen, command line) differ: {differences}"
    assert on_cli["decision"] == "fine_tune"
    seq = on_cli["hyperparameters"]["max_seq_length"]
    assert seq == 1 << (measured.p99 - 1).bit_length() < 1024  # from the data on both sides, not the default
    assert shown == cli  # and the rest too: reasons, memory per method, time and cost
