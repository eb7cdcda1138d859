"""A run on several machines, simulated on loopback: node 0 starts it (`tunedeck train`, here spawn), node 1
joins it (`tunedeck join RUN --node-rank 1`), two torchrun agents with one gloo rank each. Real engine, tiny
model, few steps."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from engine.runs.launch import DDP_DIR, LAUNCH_TOKEN, loopback_interface
from engine.runs.protocol import RunError, pid_alive
from engine_runs import dump, events, log_steps, start, wait_final, wait_for
from test_security import LOOPBACK, listening


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


def test_two_nodes_meet_through_a_tcp_rendezvous_on_node_0(write_config, workspace):
    with socket.socket() as s:  # a free port for node 0's c10d store
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run, node0 = start(two_nodes(write_config, max_steps=2, save_steps=2, eval_steps=2,
                                 rdzv_endpoint=f"127.0.0.1:{port}"), workspace)
    # In the foreground, as on a node's terminal: it follows the run and ends with it.
    joined = subprocess.run([sys.executable, "-m", "tui.cli", "--workspace", str(workspace), "join", run.id,
                             "--node-rank", "1", "--json"], stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=300)
    assert wait_final(run, node0, timeout=300)["state"] == "completed", dump(run) + node_log(run)
    assert joined.returncode == 0 and json.loads(joined.stdout)["state"] == "completed", joined.stderr
    assert not (run.path / DDP_DIR / "rendezvous" / "store").exists()  # they met on node 0's TCP store instead


@pytest.mark.parametrize("node", [0, 1])
def test_sigterm_on_either_node_stops_both_with_a_checkpoint(write_config, workspace, node):
    run, node0 = start(two_nodes(write_config, max_steps=400, save_steps=1000, eval_steps=1000), workspace)
    node1 = join(run, workspace)
    wait_for(lambda: len(log_steps(run)) >= 2 or run.status()["state"] == "failed", timeout=240,
             what="both nodes to train")
    # The file-store rendezvous opens no port; gloo listens on the named interface (here loopback) alone.
    sockets = listening(node0.pid) + listening(node1)
    assert sockets and not [s for s in sockets if "torch.distributed.run" in s[1]], sockets
    assert [s for s in sockets if s[2] not in LOOPBACK] == [], sockets
    # The one writer, global rank 0, is node 0's worker: ranks are numbered by node, not by torchrun's order.
    assert run.status()["pid"] in [c.pid for c in psutil.Process(node0.pid).children()]
    os.kill(node1 if node else node0.pid, signal.SIGTERM)
    status = wait_final(run, node0, timeout=120)
    assert status["state"] == "stopped", dump(run) + node_log(run)
    gone(node1)
    step = status["step"]
    assert 0 < step < 400 and [s for s, _, ok in run.checkpoints() if ok] == [step]
    assert (run.checkpoints_dir / f"checkpoint-{step}" / "COMPLETE").is_file()


def test_node_1_agent_killed_fails_the_run_and_names_it(write_config, workspace):
    """torch gives its workers no parent-death signal; tunedeck's die with their agent, so the run fails at once
    instead of training on with a node no one can stop."""
    run, node0 = start(two_nodes(write_config, max_steps=400, save_steps=1000, eval_steps=1000), workspace)
    node1 = join(run, workspace)
    wait_for(lambda: len(log_steps(run)) >= 2 or run.status()["state"] == "failed", timeout=240,
             what="both nodes to train")
    worker = psutil.Process(node1).children()[0]
    os.kill(node1, signal.SIGKILL)
    status = wait_final(run, node0, timeout=120)
    assert status["state"] == "failed", dump(run) + node_log(run)
    assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
    assert "node 1's torchrun is gone" in status["error"], status["error"]


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
    shown = tunedeck("status", run.id, workspace=workspace).stdout
    assert "its node's log tail:" in shown and "Signal 9 (SIGKILL)" in shown, shown


def test_stop_from_control_reaches_both_and_resume_continues(write_config, workspace):
    run, node0 = start(two_nodes(write_config, max_steps=400, save_steps=1000, eval_steps=1000), workspace)
    node1 = join(run, workspace)
    wait_for(lambda: len(log_steps(run)) >= 2 or run.status()["state"] == "failed", timeout=240,
             what="both nodes to train")
    assert tunedeck("stop", run.id, workspace=workspace).returncode == 0  # a command file, read by rank 0
    status = wait_final(run, node0, timeout=120)
    assert status["state"] == "stopped", dump(run) + node_log(run)
    gone(node1)
    stopped_at = status["step"]
    assert [s for s, _, ok in run.checkpoints() if ok] == [stopped_at]
    cfg = yaml.safe_load(run.config_path.read_text())
    run.config_path.write_text(yaml.safe_dump({**cfg, "max_steps": stopped_at + 3}))
    before = len(events(run))
    run, node0 = start(None, workspace, resume_run=run)
    node1 = join(run, workspace)
    status = wait_final(run, node0, timeout=300)
    assert status["state"] == "completed", dump(run) + node_log(run)
    gone(node1)
    evs = events(run)[before:]
    assert next(e for e in evs if e.get("state") == "running")["resumed_from"].endswith(f"checkpoint-{stopped_at}")
    assert [e["step"] for e in evs if e["type"] == "log"] == [stopped_at + 1, stopped_at + 2, stopped_at + 3]


def test_stop_while_node_0_waits_for_the_others_stops_it_at_once(write_config, workspace):
    """Before node 1 joins no engine runs to read a stop command: `tunedeck stop` ends node 0's torchrun and the run
    is stopped (not crashed), resumable, and a late join is refused."""
    run, node0 = start(two_nodes(write_config, max_steps=4), workspace)
    time.sleep(2)  # torchrun is in its rendezvous, waiting for node 1
    result = tunedeck("stop", run.id, workspace=workspace)
    assert result.returncode == 0 and "while node 0 waited for the other nodes" in result.stdout, result.stderr
    node0.wait(timeout=30)
    assert run.status()["state"] == "stopped" and not list((run.path / "control").glob("*.json"))
    late = tunedeck("join", str(run.path), "--node-rank", "1", workspace=workspace)
    assert late.returncode != 0 and f"tunedeck resume {run.id}" in late.stderr


# ---- join refusals, without an engine ---------------------------------------------------------

@pytest.fixture
def waiting_run(write_config, workspace):
    """A two-node run whose node 0 has launched (token written, status `starting` with a live pid) and waits."""
    from engine.runs.launch import create_from_config, prepare_launch
    from engine.training.config import load_config

    run = create_from_config(load_config(two_nodes(write_config)), workspace)
    prepare_launch(run, run.config(), resume=False)
    set_status(run, state="starting")
    return run


def set_status(run, **fields) -> None:
    run.status_path.write_text(json.dumps({"run_id": run.id, "pid": os.getpid(), "host": os.uname().nodename,
                                           "heartbeat": time.time(), **fields}))


def refusal(run, node_rank: int = 1) -> str:
    from engine.runs.nodes import check_join

    with pytest.raises(RunError) as err:
        check_join(run, node_rank)
    return str(err.value)


def test_join_checks_pass_for_a_waiting_node_0(waiting_run):
    from engine.runs.nodes import check_join

    cfg, token = check_join(waiting_run, 1)
    assert cfg["nnodes"] == 2 and token["run_id"] == waiting_run.id and token["resume"] is False


def test_join_refuses_a_run_directory_without_the_launch_token(waiting_run):
    (waiting_run.path / DDP_DIR / LAUNCH_TOKEN).unlink()
    assert "not on storage all nodes see" in refusal(waiting_run)


def test_join_refuses_a_node_rank_out_of_range(waiting_run):
    assert "join as 1 to 1" in refusal(waiting_run, 0)
    assert "join as 1 to 1" in refusal(waiting_run, 2)


def test_join_refuses_a_run_node_0_is_not_waiting_for(waiting_run):
    set_status(waiting_run, state="stopped")
    assert f"tunedeck resume {waiting_run.id}" in refusal(waiting_run)
    set_status(waiting_run, state="running")
    assert "already running on all its 2 nodes" in refusal(waiting_run)
    set_status(waiting_run, state="starting")
    token = waiting_run.path / DDP_DIR / LAUNCH_TOKEN
    token.write_text(json.dumps({**json.loads(token.read_text()), "created": time.time() - 3600}))
    assert "waits 600 s for the other nodes" in refusal(waiting_run)


def test_join_refuses_a_second_join_of_the_same_node(waiting_run):
    from engine.runs.nodes import hold_node

    held = hold_node(waiting_run, 1)
    held.write("pid 1 on elsewhere")
    held.flush()
    try:
        with pytest.raises(RunError, match="node rank 1 of run .* has joined already \\(pid 1 on elsewhere\\)"):
            hold_node(waiting_run, 1)
    finally:
        held.close()
    hold_node(waiting_run, 1).close()  # free again once the first one is gone


def test_join_and_train_refuse_an_interface_this_machine_lacks(write_config, workspace, waiting_run):
    cfg = yaml.safe_load(waiting_run.config_path.read_text())
    waiting_run.config_path.write_text(yaml.safe_dump({**cfg, "network_interface": "nosuch9"}))
    assert "network_interface 'nosuch9' is not an interface of" in refusal(waiting_run)
    config = write_config(nnodes=2, nproc_per_node=1, network_interface="nosuch9")
    result = tunedeck("train", str(config), "--detach", workspace=workspace)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "network_interface 'nosuch9' is not an interface of" in result.stderr
    assert len(list((workspace / "runs").iterdir())) == 1  # no run was made for it


def test_join_refuses_a_one_machine_run(write_config, workspace):
    from engine.runs.launch import create_from_config
    from engine.training.config import load_config

    run = create_from_config(load_config(write_config()), workspace)
    result = tunedeck("join", run.id, "--node-rank", "1", workspace=workspace)
    assert result.returncode == 2 and "is for one machine (nnodes: 1)" in result.stderr


# ---- Slurm ------------------------------------------------------------------------------------

FAKE_SRUN = """#!/bin/bash
# srun for a test: the command once per node, SLURM_NODEID 0..N-1, all at once
nodes=1
while [ "${1#--}" != "$1" ]; do case "$1" in --nodes=*) nodes=${1#--nodes=};; esac; shift; done
for ((i = 0; i < nodes; i++)); do SLURM_NODEID=$i "$@" & done
wait
"""


def slurm_run(write_config, workspace, tmp_path, **overrides):
    script = tmp_path / "train.sbatch"
    result = tunedeck("slurm", str(two_nodes(write_config, **overrides)), "--out", str(script), "--json",
                      workspace=workspace)
    assert result.returncode == 0, result.stderr
    from engine.runs.protocol import Run

    return Run(Path(json.loads(result.stdout)["run_dir"])), script


def test_slurm_script_is_bash_with_the_torchrun_line_of_join(write_config, workspace, tmp_path):
    from engine.runs.launch import worker_command

    run, script = slurm_run(write_config, workspace, tmp_path)
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=1"):
        assert line in text.splitlines()
    # The line each node runs, as bash expands it on node 1, is the line `tunedeck join --node-rank 1` starts.
    line = next(ln.strip() for ln in text.splitlines() if ln.strip().startswith("exec "))
    words = line[len("exec "):].rsplit(" >>", 1)[0]
    expanded = subprocess.run(["bash", "-c", f"SLURM_NODEID=1 LOCAL_ADDR=127.0.0.1 LAUNCH_ID=L; "
                                             f"printf '%s\\n' {words}"], capture_output=True, text=True).stdout
    assert expanded.splitlines() == worker_command(run, False, 1, 2, 1, "127.0.0.1", "L", None)


def test_slurm_script_trains_the_run_on_its_nodes(write_config, workspace, tmp_path):
    """The script itself, with an srun that starts node_step once per node on this machine."""
    run, script = slurm_run(write_config, workspace, tmp_path, max_steps=4, save_steps=4, eval_steps=4)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["bash", str(script)], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr + dump(run) + node_log(run)
    status = run.status()
    assert status["state"] == "completed" and status["world_size"] == 2, dump(run)
    assert [s for s, _, ok in run.checkpoints() if ok] == [4]
    assert "train_runtime" in node_log(run)  # node 1 trained, its output in its own log
