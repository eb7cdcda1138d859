"""Answers to held-out prompts at each evaluation (config key sample_prompts): written by the real engine on a
tiny model, harmless to training, and shown by the monitor beside the answers of the evaluation before."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from engine_runs import dump, events, start, wait_final
from tui_fixtures import SIZE, assert_snapshot, make_app, make_run, screen_text, wait_for

from engine.data.load import Example
from engine.runs.events import EventWriter
from engine.runs.protocol import Run
from engine.testing import learnable_rows, write_jsonl
from engine.training.samples import sample_conversations
from tui.screens.monitor import MonitorScreen

EVAL_ROWS = learnable_rows(12, seed=1)
# Evaluations at steps 5, 10, 15, 20; a high rate so the tiny model's answers move between them.
SAMPLED = {"method": "lora", "max_steps": 20, "eval_steps": 5, "save_steps": 20, "learning_rate": 1e-2,
           "per_device_train_batch_size": 4, "max_seq_length": 128, "system_prompt": "Join the two words.",
           "gradient_checkpointing": True, "sample_prompts": 3}


def finished_run(tiny_project, root, **config) -> Run:
    eval_path = write_jsonl(root / "eval.jsonl", EVAL_ROWS)
    cfg = {"model": str(tiny_project / "tiny-model"), "data": str(tiny_project / "train.jsonl"),
           "eval_data": str(eval_path), **config}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if v is not None}))
    run, proc = start(path, root / "ws")
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    return run


@pytest.fixture(scope="module")
def sampled_run(tiny_project, tmp_path_factory) -> Run:
    return finished_run(tiny_project, tmp_path_factory.mktemp("sampled"), **SAMPLED)


def of_type(run: Run, kind: str) -> list[dict]:
    return [e for e in events(run) if e["type"] == kind]


def test_each_evaluation_writes_the_answers_to_the_first_held_out_prompts(sampled_run):
    samples = of_type(sampled_run, "sample")
    assert [e["step"] for e in samples] == [e["step"] for e in of_type(sampled_run, "eval")] == [5, 10, 15, 20]
    expected = [{"index": i, "prompt": row["messages"][0]["content"], "reference": row["messages"][1]["content"]}
                for i, row in enumerate(EVAL_ROWS[:3])]
    for event in samples:
        assert [{k: s[k] for k in ("index", "prompt", "reference")} for s in event["samples"]] == expected
        assert all(isinstance(s["answer"], str) for s in event["samples"])
    # Generated, not copied: the untrained-at-first model does not answer alike at every evaluation.
    assert len({tuple(s["answer"] for s in e["samples"]) for e in samples}) > 1


def test_attach_plain_prints_each_answer(sampled_run):
    result = subprocess.run([sys.executable, "-m", "tui.cli", "attach", str(sampled_run.path), "--plain"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    last = of_type(sampled_run, "sample")[-1]["samples"]
    for i, sample in enumerate(last, 1):
        assert (f"step 20: answer {i}: {json.dumps(sample['answer'], ensure_ascii=False)[:100]} "
                f"(reference {json.dumps(sample['reference'], ensure_ascii=False)[:100]})") in result.stdout


def test_sampling_leaves_training_as_it_was_and_zero_turns_it_off(sampled_run, tiny_project, tmp_path):
    """Same seed without samples: every loss is the same, so generation changed no weight, no random number,
    no dropout mode and no padding side of the training batches."""
    plain = finished_run(tiny_project, tmp_path, **{**SAMPLED, "sample_prompts": 0})
    assert of_type(plain, "sample") == []
    assert [e["loss"] for e in of_type(plain, "log")] == [e["loss"] for e in of_type(sampled_run, "log")]
    assert [e["eval_loss"] for e in of_type(plain, "eval")] == [e["eval_loss"] for e in of_type(sampled_run, "eval")]


@pytest.mark.parametrize("method", ["full", "qlora"])
def test_full_and_qlora_runs_write_samples_from_the_validation_split(method, tiny_project, tmp_path):
    run = finished_run(tiny_project, tmp_path, method=method, max_steps=4, eval_steps=2, save_steps=4,
                       max_seq_length=128, sample_prompts=2, eval_data=None)
    assert [(e["step"], len(e["samples"])) for e in of_type(run, "sample")] == [(2, 2), (4, 2)]


def test_no_held_out_data_means_no_samples(tiny_project, tmp_path):
    cfg = {"model": str(tiny_project / "tiny-model"), "data": str(tiny_project / "train.jsonl"),
           "max_steps": 2, "max_seq_length": 128, "validation_split": 0}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    run, proc = start(tmp_path / "config.yaml", tmp_path / "ws")
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    assert of_type(run, "eval") == [] and of_type(run, "sample") == []


def test_only_conversations_ending_in_a_text_answer_are_sampled():
    def ex(*messages, tools=None):
        return Example(list(messages), "f", 1, tools=tools)

    user, answer = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
    call = {"role": "assistant", "content": "", "tool_calls": [{"id": "1", "type": "function",
                                                                "function": {"name": "f", "arguments": "{}"}}]}
    examples = [ex(user, call), ex(user, answer, tools=[{"type": "function"}]), ex(user), ex(answer),
                ex(user, call, {"role": "tool", "content": "r", "tool_call_id": "1"}, answer),
                ex(user, answer), ex({"role": "system", "content": "s"}, user, answer), ex(user, answer)]
    assert sample_conversations(examples, 2) == [examples[5].messages, examples[6].messages]


@pytest.mark.asyncio
async def test_monitor_shows_the_answers_and_what_changed_since_the_evaluation_before(sampled_run, monkeypatch):
    monkeypatch.setattr(MonitorScreen, "POLL_SECONDS", 0.05)
    before, newest = [e["samples"] for e in of_type(sampled_run, "sample")[-2:]]
    changed = sum(a["answer"] != b["answer"] for a, b in zip(newest, before))
    app = make_app(sampled_run.path.parent.parent, attach=sampled_run.id)
    async with app.run_test(size=SIZE) as pilot:
        mon = app.screen
        await wait_for(pilot, lambda: mon.view is not None and mon.view.samples and not mon.view.replaying)
        await pilot.pause()
        assert f"◆ step 20 answers: {changed}/3 changed (a)" in screen_text(app)
        await pilot.press("a")
        await pilot.pause()
        text = screen_text(app)
        assert f"answers at step 20 · {changed} of 3 changed since step 15" in text
        assert "╭─ loss" not in text and "╭─ events" not in text  # the answers take the screen
        blocks = text.split("╮", 1)[1].split("╰", 1)[0]
        for new, old in zip(newest, before):
            assert f"{new['index'] + 1} {new['prompt']}" in blocks and f"ref {new['reference']}" in blocks
            shown = new["answer"].strip().replace("\n", " ⏎ ")
            assert f"→ {shown[:40] or '(empty)'}" in blocks
        assert blocks.count("= unchanged since step 15") == 3 - changed
        assert blocks.count("Δ since step 15: ") == changed
        assert changed == 0 or "[-" in blocks or "{+" in blocks
        await pilot.press("a")
        await pilot.pause()
        assert "╭─ loss" in screen_text(app)


@pytest.mark.asyncio
async def test_answers_snapshot(monkeypatch):
    """Long prompts keep both ends; an unchanged, a changed and an empty answer, at 80x24."""
    monkeypatch.setattr(MonitorScreen, "POLL_SECONDS", 0.05)
    workspace = Path("/tmp/tunedeck-snapshots-samples")  # a fixed path: the same screen on every machine
    shutil.rmtree(workspace, ignore_errors=True)
    run = make_run(workspace, run_id="20250101-090000-live-0001", steps=30, warnings=False)
    prompts = [("Extract the name, age and city as JSON.\n\nAt 38, Diego Brown moved to Perth for work.",
                '{"name": "Diego Brown", "age": 38, "city": "Perth"}'),
               ("join cat and dog", "cat-dog"), ("join sun and tree", "sun-tree")]
    writer = EventWriter(run.events_path)
    for step, answers in ((20, ['JSON:\n{"name": "Diego", "age": 38}', "cat-dog", "sun-sun"]),
                          (30, ['{"name": "Diego Brown", "age": 38, "city": "Perth"}', "cat-dog", ""])):
        writer.write("sample", step, samples=[{"index": i, "prompt": p, "reference": r, "answer": a}
                                              for i, ((p, r), a) in enumerate(zip(prompts, answers))])
    writer.close()
    try:
        app = make_app(workspace, attach=run.id)
        async with app.run_test(size=SIZE) as pilot:
            mon = app.screen
            await wait_for(pilot, lambda: mon.view is not None and mon.view.samples and not mon.view.replaying)
            await pilot.press("a")
            await pilot.pause()
            assert_snapshot(app, "monitor_answers")
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
