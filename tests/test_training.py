"""The real engine subprocess on a tiny real model: methods, resume, stop, signals, warnings, DDP."""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from engine_runs import dump, events, kill, kill_after_first_checkpoint, log_steps, start, wait_final, wait_for

from engine.runs.protocol import COMPLETE_MARKER, Run


def losses(run: Run) -> list[float]:
    return [e["loss"] for e in events(run) if e["type"] == "log"]


def assert_learned(run: Run) -> None:
    values = losses(run)
    assert len(values) >= 20, dump(run)
    first, last = statistics.fmean(values[:5]), statistics.fmean(values[-5:])
    assert last < first - 0.3, f"loss did not fall: first {first:.3f}, last {last:.3f}"


def test_contract_config_via_cli_detach_json(write_config, workspace):
    """The issue's config as written, through `tunedeck train --detach --json`."""
    result = subprocess.run([sys.executable, "-m", "tui.cli", "train", str(write_config()),
                             "--workspace", str(workspace), "--detach", "--json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    run = Run(Path(out["run_dir"]))
    assert run.id == out["run_id"]
    status = wait_final(run)
    assert status["state"] == "completed", dump(run)
    assert status["step"] == 40
    assert_learned(run)
    assert (run.path / "adapter" / "adapter_config.json").is_file()
    assert [step for step, _, ok in run.checkpoints() if ok] == [20, 30, 40]  # save_total_limit 3
    kinds = {e["type"] for e in events(run)}
    assert {"log", "eval", "checkpoint", "state"} <= kinds
    log = next(e for e in events(run) if e["type"] == "log" and e["tokens_per_second"])
    assert log["tokens_per_second"] > 0 and log["tokens_seen"] > 0 and log["grad_norm"] is not None


@pytest.mark.parametrize("method,lr", [("full", 1e-3), ("qlora", 3e-3)])
def test_full_and_qlora_lower_the_loss(write_config, workspace, method, lr):
    run, proc = start(write_config(method=method, learning_rate=lr, max_steps=40), workspace)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    assert proc.returncode == 0
    assert_learned(run)
    loaded = next(e for e in events(run) if e.get("state") == "model_loaded")
    if method == "full":
        assert (run.path / "model" / "config.json").is_file()
        assert loaded["trainable_parameters"] == loaded["total_parameters"]
    else:
        assert (run.path / "adapter" / "adapter_config.json").is_file()
        assert loaded["gradient_checkpointing"] is True  # on by default for QLoRA
        assert loaded["load_in_4bit"] is True


def test_kill9_then_resume_continues_from_checkpoint(write_config, workspace):
    run, proc = start(write_config(max_steps=400, save_steps=20, eval_steps=1000, learning_rate=1e-3), workspace)
    checkpoint, resumed_at, skipped = kill_after_first_checkpoint(run, proc)
    steps_before = log_steps(run)
    seq_before = events(run)[-1]["seq"]

    run, proc = start(None, workspace, resume_run=run)
    status = wait_final(run, proc)
    assert status["state"] == "completed" and status["step"] == 400, dump(run)
    after = events(run)
    new_steps = [e["step"] for e in after if e["type"] == "log" and e["seq"] > seq_before]
    assert new_steps[0] == resumed_at + 1, (resumed_at, new_steps[:3])  # not from zero
    assert max(steps_before) >= resumed_at
    seqs = [e["seq"] for e in after]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))  # one readable history
    running = [e for e in after if e.get("state") == "running"]
    assert running[-1]["resumed_from"].endswith(checkpoint.name)


def test_resume_skips_checkpoint_without_complete(write_config, workspace):
    run, proc = start(write_config(max_steps=20, save_steps=10, eval_steps=1000), workspace)
    wait_final(run, proc)
    # A checkpoint interrupted mid-write: newer, but without its marker.
    newest = max(p for _, p, _ in run.checkpoints())
    torn = newest.with_name("checkpoint-25")
    torn.mkdir()
    (torn / "adapter_model.safetensors").write_bytes(b"half a file")
    checkpoint, skipped = run.resume_checkpoint()
    assert checkpoint == newest and skipped and "checkpoint-25" in skipped[0]
    # Completed runs are not resumed; make it look stopped, as after a crash.
    status = json.loads(run.status_path.read_text())
    run.status_path.write_text(json.dumps({**status, "state": "stopped"}))
    cfg = run.config()
    cfg["max_steps"] = 30
    run.config_path.write_text(yaml.safe_dump(cfg))
    run, proc = start(None, workspace, resume_run=run)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    skipped_events = [e for e in events(run) if e.get("code") == "checkpoint_skipped"]
    assert skipped_events and "checkpoint-25" in skipped_events[0]["message"]
    resumed = [e for e in events(run) if e.get("state") == "running"][-1]
    assert resumed["resumed_from"].endswith("checkpoint-20")
    assert log_steps(run)[-1] == 30
    assert (run.checkpoints_dir / "checkpoint-25").exists()  # left for the user to inspect


def test_sigterm_leaves_complete_checkpoint_and_stopped(write_config, workspace):
    run, proc = start(write_config(max_steps=5000, save_steps=10000, eval_steps=10000), workspace)
    wait_for(lambda: len(log_steps(run)) >= 5, what="training to start")
    kill(proc, signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    status = run.status()
    assert status["state"] == "stopped", dump(run)
    complete = [(step, p) for step, p, ok in run.checkpoints() if ok]
    assert complete and complete[-1][0] == status["step"]
    assert (complete[-1][1] / COMPLETE_MARKER).is_file()
    assert (complete[-1][1] / "optimizer.pt").is_file()
    assert status["step"] < 5000


def test_second_signal_stops_at_once(write_config, workspace):
    run, proc = start(write_config(max_steps=5000, save_steps=10000, eval_steps=10000), workspace)
    wait_for(lambda: len(log_steps(run)) >= 3, what="training to start")
    run.send_command("pause")  # hold it between steps so both signals land before a checkpoint
    wait_for(lambda: run.status()["state"] == "paused", what="pause")
    kill(proc, signal.SIGTERM)
    kill(proc, signal.SIGINT)
    proc.wait(timeout=30)
    assert run.status()["state"] == "stopped", dump(run)
    assert not [p for _, p, ok in run.checkpoints() if ok]


def test_control_commands_are_acknowledged(write_config, workspace):
    run, proc = start(write_config(max_steps=5000, save_steps=10000, eval_steps=10000), workspace)
    wait_for(lambda: len(log_steps(run)) >= 3, what="training to start")
    run.send_command("pause")
    wait_for(lambda: run.status()["state"] == "paused", what="paused state")
    step = run.status()["step"]
    hb = run.status()["heartbeat"]
    wait_for(lambda: run.status()["heartbeat"] > hb + 1, what="heartbeat while paused")
    assert run.status()["step"] == step  # paused means no steps
    run.send_command("checkpoint")
    run.send_command("resume")
    wait_for(lambda: any(ok for _, _, ok in run.checkpoints()), what="checkpoint on command")
    run.send_command("eval")
    wait_for(lambda: any(e["type"] == "eval" for e in events(run)), what="eval on command")
    run.send_command("stop")
    assert proc.wait(timeout=60) == 0
    acks = [e["command"] for e in events(run) if e["type"] == "command_ack"]
    assert acks == ["pause", "checkpoint", "resume", "eval", "stop"]
    assert run.status()["state"] == "stopped"
    assert not list(run.control_dir.glob("cmd-*.json"))  # all moved to control/done
    assert len(list((run.control_dir / "done").glob("cmd-*.json"))) == 5


def test_second_engine_on_same_run_is_refused(write_config, workspace):
    run, proc = start(write_config(max_steps=5000, save_steps=10000, eval_steps=10000), workspace)
    wait_for(lambda: len(log_steps(run)) >= 2, what="training to start")
    second = subprocess.run([sys.executable, "-m", "engine.training.worker", "--run-dir", str(run.path)],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 2
    assert "already being trained" in second.stderr
    assert run.status()["state"] == "running"  # the first is untouched
    run.send_command("stop_now")
    proc.wait(timeout=30)


def test_bad_rows_are_reported_and_skipped(tiny_project, write_config, workspace, tmp_path):
    data = tmp_path / "mixed.jsonl"
    good = (tiny_project / "train.jsonl").read_text().splitlines()[:60]
    data.write_text("\n".join(good[:30] + ["{broken", '{"messages": [{"role": "user", "content": "hi"}]}']
                              + good[30:]) + "\n")
    run, proc = start(write_config(data=str(data), max_steps=5, eval_steps=1000, save_steps=1000), workspace)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    messages = [e["message"] for e in events(run) if e.get("code") == "bad_row"]
    assert any(":31: broken JSON" in m for m in messages), messages
    assert any(":32: conversation does not end with an assistant message" in m for m in messages)


def test_two_process_torchrun_has_one_writer(write_config, workspace):
    run, proc = start(write_config(nproc_per_node=2, max_steps=10, save_steps=5, eval_steps=5), workspace)
    status = wait_final(run, proc, timeout=240)
    assert status["state"] == "completed", dump(run)
    assert proc.returncode == 0
    evs = events(run)
    assert next(e for e in evs if e.get("state") == "starting")["world_size"] == 2
    # One writer: every seq once, and each step logged once (two writers would duplicate them).
    assert len({e["seq"] for e in evs}) == len(evs)
    steps = log_steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == 10
    assert [s for s, _, ok in run.checkpoints() if ok] == [5, 10]


def test_out_of_memory_is_explained():
    import torch

    from engine.training.worker import describe_failure

    message, advice = describe_failure(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert message.startswith("OutOfMemoryError: CUDA out of memory")
    assert "gradient_accumulation_steps" in advice and "qlora" in advice and "max_seq_length" in advice
    message, advice = describe_failure(OSError(28, "No space left on device"))
    assert "disk full" in message and "resume" in advice


def test_failure_is_recorded_not_a_bare_traceback(tiny_project, write_config, workspace, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for f in (tiny_project / "tiny-model").iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    run, proc = start(write_config(model=str(broken)), workspace)
    assert proc.wait(timeout=120) == 1
    status = run.status()
    assert status["state"] == "failed" and status["error"]
    errors = [e for e in events(run) if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["advice"]
    assert "Traceback" in run.log_path.read_text()  # the traceback goes to engine.log for humans


def test_best_evaluation_survives_resume(write_config, workspace):
    run, proc = start(write_config(max_steps=20, save_steps=10, eval_steps=10, early_stopping_patience=1),
                      workspace)
    wait_final(run, proc)
    best = run.checkpoints_dir / "checkpoint-20"
    # Pretend step 20 held an unbeatable evaluation and the run stopped there.
    status = json.loads(run.status_path.read_text())
    run.status_path.write_text(json.dumps({**status, "state": "stopped", "best_metric": 0.0, "best_step": 20,
                                           "best_checkpoint": str(best)}))
    cfg = run.config()
    cfg["max_steps"] = 40
    run.config_path.write_text(yaml.safe_dump(cfg))
    run, proc = start(None, workspace, resume_run=run)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    evs = events(run)
    stopped = [e for e in evs if e.get("state") == "early_stopping"]
    assert stopped and stopped[0]["step"] == 30  # one evaluation worse than the carried best: patience 1
    assert [e["checkpoint"] for e in evs if e.get("state") == "best_loaded"] == [str(best)]
    assert best.is_dir()  # rotation kept the best checkpoint


def test_sigterm_during_start_up_stops_the_run(write_config, workspace):
    """A signal sent the moment the engine is spawned, before Python has armed any handler: spawn starts
    the worker with stop signals blocked, so it is delivered once the handler is armed, not lost."""
    run, proc = start(write_config(), workspace)
    kill(proc, signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    status = run.status()
    assert status["state"] == "stopped", dump(run)
    assert not log_steps(run)  # nothing trained


def test_config_the_worker_cannot_parse_leaves_the_run_failed(write_config, workspace):
    from engine.runs.launch import create_from_config
    from engine.training.config import load_config

    run = create_from_config(load_config(write_config()), workspace)
    run.config_path.write_text(yaml.safe_dump({**run.config(), "learning_rate": -1}))  # damaged after creation
    worker = subprocess.run([sys.executable, "-m", "engine.training.worker", "--run-dir", str(run.path)],
                            capture_output=True, text=True, timeout=60)
    assert worker.returncode == 2 and "config key 'learning_rate'" in worker.stderr
    status = run.status()
    assert status["state"] == "failed" and status["error"].startswith("config: config key 'learning_rate'")


def test_a_run_on_tool_calling_data_trains_the_calls(write_config, workspace, tmp_path):
    """Every row of the real shapes (tool calls, glaive, weights, parts, media) reaches the Trainer through the
    engine; the tiny model's ChatML template shows no tools, so the fallback renders them."""
    from test_data_formats import ALL_ROWS

    from engine.testing import write_jsonl

    data = write_jsonl(tmp_path / "tools.jsonl", ALL_ROWS * 2)
    run, proc = start(write_config(data=str(data), max_steps=2, validation_split=0, max_seq_length=1024), workspace)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    ready = next(e for e in events(run) if e.get("state") == "data_ready")["train"]
    assert ready["examples"] == ready["kept"] == 2 * len(ALL_ROWS) and ready["dropped_no_target"] == 0
    assert not [e for e in events(run) if e.get("code") == "bad_row"]
