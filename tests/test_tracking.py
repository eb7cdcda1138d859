"""report_to through the real engine with the trackers installed (the `tracking` extra): TensorBoard's event
files and wandb's offline run land inside the run directory, wandb never goes online, nothing in $HOME."""

from __future__ import annotations

import os

import pytest
from engine_runs import dump, events, log_steps, start, wait_final

pytest.importorskip("tensorboard", reason="the tracking extra: pip install -e '.[tracking]'")
pytest.importorskip("wandb", reason="the tracking extra: pip install -e '.[tracking]'")


def test_tensorboard_and_wandb_write_inside_the_run_and_wandb_stays_offline(write_config, workspace, tmp_path,
                                                                            monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # the engine inherits it: where wandb would keep settings and cache
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_MODE", "online")  # a user's setting: tunedeck runs wandb offline whatever it says
    run, proc = start(write_config(max_steps=6, save_steps=3, eval_steps=3, report_to=["tensorboard", "wandb"]),
                      workspace)
    assert wait_final(run, proc)["state"] == "completed", dump(run)

    board = EventAccumulator(str(run.path / "tensorboard"))
    board.Reload()
    assert [e.step for e in board.Scalars("train/loss")] == log_steps(run)
    logged = {e["step"]: e["loss"] for e in events(run) if e["type"] == "log"}
    assert all(abs(e.value - logged[e.step]) < 1e-4 for e in board.Scalars("train/loss"))
    assert [e.step for e in board.Scalars("eval/loss")] == [3, 6]

    offline = list((run.path / "wandb").glob("offline-run-*"))  # online, it would be run-*
    assert len(offline) == 1, list((run.path / "wandb").iterdir())
    [log] = offline[0].glob("run-*.wandb")
    record = log.read_bytes()
    assert record.startswith(b":W&B") and run.id.encode() in record  # named after the run
    assert b"train/loss" in record and b"eval/loss" in record
    assert not list(home.rglob("*")), list(home.rglob("*"))
