"""A run on several machines, simulated on loopback: node 0 starts it (`tunedeck train`, here spawn), node 1
joins it (`tunedeck join RUN --node-rank 1`), two torchrun agents with one gloo rank each. Real engine, tiny
model, few steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from engine.runs.launch import DDP_DIR, LAUNCH_TOKEN, loopback_interface
from engine.runs.protocol import RunError, pid_alive
from engine_runs import dump, events, log_steps, start, wait_final, wait_for


def two_nodes(write_config, **overrides):
    return write_config(nnodes=2, nproc_per_node=1, network_interface=loopback_interface(), **overrides)


def tunedeck(*argv: str, workspace) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tui.cli", "--workspace", str(workspace), *argv],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def join(run, workspace) -> int:
    """`tunedeck join RUN --node-rank 1 --detach --json`; the pid of node 1's torchrun agent."""
    result = tunedeck("join", str(run.path), "--node-rank", "1", "--detach", "--json", workspace=workspace)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["pid"]


def gone(pid: int, timeout: float = 60) -> None:
    wait_for(lambda: not pid_alive(pid), timeout=timeout, what=f"process {pid} to exit")


def node_log(run) -> str:
    return (run.path / "engine-node1.log").read_text(errors="replace")


def test_two_nodes_train_with_one_writer(write_config, workspace):
    run, node0 = start(two_nodes(write_config, max_steps=8, save_steps=4, eval_steps=4, learning_rate=3e-3),
                       workspace)
    node1 = join(run, workspace)
    status = wait_final(run, node0, timeout=300)
    assert status["state"] == "completed", dump(run) + node_log(run)
    assert node0.returncode == 0
    gone(node1)
    assert run.info()["world_size"] == 2 and status["world_size"] == 2
    evs = events(run)
    seqs = [e["seq"] for e in evs]
    assert seqs == sorted(set(seqs))  # one writer: a strictly rising sequence
    assert next(e for e in evs if e.get("state") == "starting")["world_size"] == 2
    steps = log_steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == 8
    losses = [e["loss"] for e in evs if e["type"] == "log"]
    assert losses[-1] < losses[0], losses
    assert [s for s, _, ok in run.checkpoints() if ok] == [4, 8]


@pytest.mark.parametrize("node", [0, 1])
def test_sigterm_on_either_node_stops_both_with_a_checkpoint(write_config, workspace, node):
    run, node0 = start(two_nodes(write_config, max_steps=400, save_steps=1000, eval_steps=1000), workspace)
    node1 = join(run, workspace)
    wait_for(lambda: len(log_steps(run)) >= 2 or run.status()["state"] == "failed", timeout=240,
             what="both nodes to train")
    os.kill(node1 if node else node0.pid, signal.SIGTERM)
    status = wait_final(run, node0, timeout=120)
    assert status["state"] == "stopped", dump(run) + node_log(run)
    gone(node1)
    step = status["step"]
    assert 0 < step < 400 and [s for s, _, ok in run.checkpoints() if ok] == [step]
    assert (run.checkpoints_dir / f"checkpoint-{step}" / "COMPLETE").is_file()


def test_a_rank_killed_on_node_1_fails_the_run_and_names_it(write_config, workspace):
    run, node0 = start(two_nodes(write_config, max_steps=400, save_steps=1000, eval_steps=1000), workspace)
    node1 = join(run, workspace)
    wait_for(lambda: len(log_steps(run)) >= 2 or run.status()["state"] == "failed", timeout=240,
             what="both nodes to train")
    worker = psutil.Process(node1).children()[0]
    worker.kill()
    status = wait_final(run, node0, timeout=120)
    assert status["state"] == "failed", dump(run) + node_log(run)
    assert node0.returncode != 0
    gone(node1)
    assert "node 1" in status["error"] and "SIGKILL" in status["error"], status["error"]
    error = next(e for e in events(run) if e["type"] == "error")
    assert any("SIGKILL" in line for line in error["log_tail"])
