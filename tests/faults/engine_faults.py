"""Faults against the real engine subprocess on a tiny real model: SIGKILL and stop
signals at random moments, a full disk during a checkpoint, damaged run directories,
two engines and two followers on one run.

Every run here has the same schedule (60 steps, a checkpoint every 10, an evaluation
every 20), so an uninterrupted reference run gives the learning rate and loss every
resumed run must continue with.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from engine_runs import wait_for

from engine.core.files import write_atomic
from engine.runs.events import EventReader
from engine.runs.launch import create_from_config, spawn, worker_command
from engine.runs.protocol import COMPLETE_MARKER, FINAL_STATES, Run, RunError
from engine.training.config import load_config
from faults import Env, Outcome, fault

MAX_STEPS = 60
SAVE_STEPS = 10
EVAL_STEPS = 20
TIMEOUT = 120
ROOT = Path(__file__).resolve().parents[2]


class TrialFailed(Exception):
    """A check of a trial did not hold; the message says which."""


def check(condition, message: str) -> None:
    if not condition:
        raise TrialFailed(message)


def until(predicate, timeout: float = TIMEOUT, what: str = "a condition"):
    """Poll every 2 ms: a checkpoint write lasts tens of milliseconds and the kill must land in it."""
    return wait_for(predicate, timeout, interval=0.002, what=what)


# ---- runs -------------------------------------------------------------------------

def eval_data(env: Env) -> Path:
    """A held-out set large enough that an evaluation takes a few tenths of a second to hit."""
    path = env.project / "eval.jsonl"
    if not path.exists():
        from engine.testing import learnable_rows, write_jsonl

        write_jsonl(path, learnable_rows(600, seed=7))
    return path


def new_run(env: Env, tmp: Path, **overrides) -> Run:
    cfg = {"model": str(env.project / "tiny-model"), "data": str(env.project / "train.jsonl"),
           "eval_data": str(eval_data(env)), "method": "lora", "max_steps": MAX_STEPS,
           "save_steps": SAVE_STEPS, "eval_steps": EVAL_STEPS, "learning_rate": 1.0e-3,
           "per_device_train_batch_size": 4, "max_seq_length": 128, "save_total_limit": None,
           "early_stopping_patience": None, **overrides}
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return create_from_config(load_config(path), tmp / "ws")


def finish(run: Run, proc: subprocess.Popen) -> dict:
    try:
        proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise TrialFailed(f"engine did not finish in {TIMEOUT}s") from None
    return run.status()


def all_events(run: Run) -> list[dict]:
    return EventReader(run.events_path).read_new()


def logs_by_step(events: list[dict]) -> dict[int, dict]:
    return {e["step"]: e for e in events if e["type"] == "log"}


def reference(env: Env) -> dict[int, dict]:
    """Step -> log event of an uninterrupted run with the trials' schedule."""
    def build():
        tmp = env.root / "reference"
        tmp.mkdir(exist_ok=True)
        run = new_run(env, tmp)
        status = finish(run, spawn(run))
        check(status["state"] == "completed", f"reference run ended {status['state']}")
        return logs_by_step(all_events(run))
    return env.cached("reference", build)


def complete_steps(run: Run) -> set[int]:
    return {step for step, _, ok in run.checkpoints() if ok}


def announced_checkpoints(events: list[dict]) -> set[int]:
    return {e["step"] for e in events if e["type"] == "checkpoint"}


def check_history(run: Run, kills: int) -> None:
    """One readable sequence: seq strictly rising; at most one torn line per kill."""
    lines = run.events_path.read_bytes().splitlines()
    parsed, torn = [], 0
    for line in lines:
        try:
            parsed.append(json.loads(line)["seq"])
        except (ValueError, KeyError, TypeError):
            torn += 1
    check(torn <= kills, f"{torn} unreadable lines in events.jsonl after {kills} kill(s)")
    check(all(a < b for a, b in zip(parsed, parsed[1:])), "event seq is not one rising sequence")


def resume_and_check(env: Env, run: Run, expected_from: int | None, kills: int = 1) -> Outcome:
    """Resume after a fault; the run must continue from `expected_from` with the reference schedule."""
    seq_before = max((e["seq"] for e in all_events(run)), default=0)
    status = finish(run, spawn(run, resume=True))
    check(status["state"] == "completed" and status.get("step") == MAX_STEPS,
          f"resumed run ended {status['state']} at step {status.get('step')}: {status.get('error')}")
    after = [e for e in all_events(run) if e["seq"] > seq_before]
    running = [e for e in after if e.get("state") == "running"]
    check(running, "no running state after resume")
    resumed_from = running[0].get("resumed_from")
    if expected_from is None:
        check(resumed_from is None, f"resumed from {resumed_from}, expected from scratch")
    else:
        check(resumed_from and resumed_from.endswith(f"checkpoint-{expected_from}"),
              f"resumed from {resumed_from}, expected checkpoint-{expected_from}")
    steps = [e["step"] for e in after if e["type"] == "log"]
    start = expected_from or 0
    check(steps == list(range(start + 1, MAX_STEPS + 1)),
          f"steps after resume run {steps[:2]}..{steps[-1:]}, expected {start + 1}..{MAX_STEPS}")
    ref = reference(env)
    for e in after:
        if e["type"] == "log":
            r = ref[e["step"]]
            check(math.isclose(e["learning_rate"], r["learning_rate"], rel_tol=1e-6),
                  f"learning rate at step {e['step']} is {e['learning_rate']}, the schedule says "
                  f"{r['learning_rate']}")
    final = logs_by_step(after)[MAX_STEPS]["loss"]
    check(abs(final - ref[MAX_STEPS]["loss"]) < 0.05,
          f"final loss {final:.4f} vs {ref[MAX_STEPS]['loss']:.4f} uninterrupted")
    check_history(run, kills)
    check(not (run.path / ".staging").exists(), ".staging left behind")
    check((run.path / "adapter" / "adapter_config.json").is_file(), "no final adapter")
    return Outcome(True)


# ---- moments ------------------------------------------------------------------------

class Follower:
    """Reads a run's events as they land, to strike at a chosen moment."""

    def __init__(self, run: Run, proc: subprocess.Popen):
        self.run, self.proc, self.reader, self.events = run, proc, EventReader(run.events_path), []

    def poll(self) -> list[dict]:
        if self.proc.poll() is not None:
            raise TrialFailed(f"engine exited {self.proc.returncode} before the fault: "
                              f"{self.run.log_tail(3)}")
        self.events += self.reader.read_new()
        return self.events

    def at_step(self, step: int) -> None:
        until(lambda: any(e["type"] == "log" and e["step"] >= step for e in self.poll()),
              what=f"step {step}")


def moment_mid_step(rng, f: Follower) -> None:
    f.at_step(rng.randint(3, MAX_STEPS - 5))
    time.sleep(rng.uniform(0, 0.02))


def moment_checkpoint(rng, f: Follower) -> None:
    step = rng.randrange(SAVE_STEPS, MAX_STEPS, SAVE_STEPS)
    staged = f.run.path / ".staging" / f"checkpoint-{step}"
    # A busy machine may starve this poll past the whole write: then the kill lands just after it.
    until(lambda: staged.exists() or step in announced_checkpoints(f.poll()), what=f"checkpoint-{step}")
    time.sleep(rng.uniform(0, 0.03))  # a tiny checkpoint takes about 26 ms to write


def moment_eval(rng, f: Follower) -> None:
    step = rng.randrange(EVAL_STEPS, MAX_STEPS, EVAL_STEPS)
    f.at_step(step)  # the step's log lands just before its evaluation starts
    time.sleep(rng.uniform(0, 0.4))


def moment_paused(rng, f: Follower) -> None:
    f.at_step(rng.randint(3, MAX_STEPS - 10))
    f.run.send_command("pause")
    until(lambda: f.poll() is not None and f.run.status().get("state") == "paused", what="paused")
    time.sleep(rng.uniform(0, 1.5))


def moment_startup(rng, f: Follower) -> None:
    time.sleep(rng.uniform(0, 4.0))


MOMENTS = {"mid-step": moment_mid_step, "during a checkpoint write": moment_checkpoint,
           "during an evaluation": moment_eval, "while paused": moment_paused}


# ---- SIGKILL ---------------------------------------------------------------------------

def kill_trial(moment, rng, tmp: Path, env: Env) -> Outcome:
    reference(env)
    run = new_run(env, tmp)
    proc = spawn(run)
    follower = Follower(run, proc)
    moment(rng, follower)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    events = all_events(run)
    complete = complete_steps(run)
    lost = len(announced_checkpoints(events) - complete)  # announced as written, then gone
    if lost:
        return Outcome(False, lost, f"complete checkpoints lost: {sorted(announced_checkpoints(events) - complete)}")
    state = run.status()["state"]
    check(state == "crashed", f"killed engine shows {state}, not crashed")
    hit = what_was_hit(run, events)
    outcome = resume_and_check(env, run, max(complete, default=None))
    outcome.detail = hit
    return outcome


def what_was_hit(run: Run, events: list[dict]) -> str:
    """Where the kill landed, told by what it left behind."""
    if any((run.path / ".staging").glob("checkpoint-*")):
        return "hit a checkpoint half written (left in .staging)"
    logged = [e["step"] for e in events if e["type"] == "log"]
    if logged and logged[-1] % EVAL_STEPS == 0 and not any(
            e["type"] == "eval" and e["step"] == logged[-1] for e in events):
        return "hit an evaluation before its result"
    if any(e.get("state") == "paused" for e in events[-3:]):
        return "hit a paused engine"
    return "hit between or inside steps"


for _name, _moment in MOMENTS.items():
    fault(f"SIGKILL {_name}", trials=5)(
        lambda rng, tmp, env, m=_moment: kill_trial(m, rng, tmp, env))


# ---- SIGTERM / SIGINT -------------------------------------------------------------------

@fault("SIGTERM or SIGINT at a random moment", trials=10, ci_trials=2)
def stop_signal_trial(rng, tmp: Path, env: Env) -> Outcome:
    reference(env)
    run = new_run(env, tmp)
    proc = spawn(run)
    name = rng.choice(["during start-up", *MOMENTS])
    sig = rng.choice([signal.SIGTERM, signal.SIGINT])
    {"during start-up": moment_startup, **MOMENTS}[name](rng, Follower(run, proc))
    sent = time.time()
    os.kill(proc.pid, sig)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return Outcome(False, detail=f"{sig.name} {name}: still running after 60 s")
    took = time.time() - sent
    status = run.status()
    check(code == 0, f"{sig.name} {name}: exit {code}, {status.get('error')}")
    step = int(status.get("step") or 0)
    if status["state"] == "completed":
        check(step == MAX_STEPS, f"completed at step {step}")
        return Outcome(True, detail=f"signal after the last step ({took:.1f}s)")
    check(status["state"] == "stopped", f"{sig.name} {name}: state {status['state']}")
    if step:
        check(max(complete_steps(run), default=None) == step,
              f"stopped at step {step} but the newest complete checkpoint is {max(complete_steps(run), default=None)}")
    outcome = resume_and_check(env, run, step or None)
    outcome.detail = f"exit within {math.ceil(took)} s"
    return outcome


# ---- a full disk during a checkpoint ----------------------------------------------------

@fault("disk full (ENOSPC) while writing a checkpoint", trials=4)
def enospc_trial(rng, tmp: Path, env: Env) -> Outcome:
    reference(env)
    run = new_run(env, tmp)
    fail_step = rng.randrange(2 * SAVE_STEPS, MAX_STEPS, SAVE_STEPS)
    cmd = worker_command(run, False, 1)
    cmd[1:3] = [str(Path(__file__).with_name("enospc_worker.py"))]  # the worker, with writes that fail
    env_vars = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
                    ENOSPC_CHECKPOINT=f"checkpoint-{fail_step}", ENOSPC_NTH=str(rng.randint(0, 3)))
    with open(run.log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env_vars, cwd=run.path, start_new_session=True)
    finish(run, proc)
    status = run.status()
    check(proc.returncode == 1 and status["state"] == "failed", f"state {status['state']}, exit {proc.returncode}")
    check("disk full" in (status.get("error") or ""), f"the run does not say why: {status.get('error')}")
    errors = [e for e in all_events(run) if e["type"] == "error"]
    check(errors and "resume" in errors[-1].get("advice", ""), "no error event with advice")
    complete = complete_steps(run)
    check(max(complete) == fail_step - SAVE_STEPS, f"complete checkpoints {sorted(complete)}, failed at {fail_step}")
    check(not (run.checkpoints_dir / f"checkpoint-{fail_step}").exists(), "the failed checkpoint was published")
    check(not (run.path / ".staging").exists(), "the partial checkpoint still takes disk space in .staging")
    return resume_and_check(env, run, fail_step - SAVE_STEPS)


# ---- damaged run directories -----------------------------------------------------------

def crashed_run(env: Env) -> Path:
    """A run killed right after its checkpoint at step 30, built once and copied per trial."""
    def build():
        tmp = env.root / "crashed"
        tmp.mkdir(exist_ok=True)
        run = new_run(env, tmp)
        proc = spawn(run)
        f = Follower(run, proc)
        until(lambda: 30 in announced_checkpoints(f.poll()), what="checkpoint 30")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        return run.path
    return env.cached("crashed", build)


def _truncate_last_event(run: Run, rng) -> str:
    data = run.events_path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    run.events_path.write_bytes(data[: rng.randint(start + 1, len(data) - 2)])
    return "events.jsonl ends in half a line"


def _newest_incomplete(run: Run, rng) -> str:
    if not run.checkpoints():
        return "no checkpoint to damage"
    step, path, _ = run.checkpoints()[-1]
    (path / COMPLETE_MARKER).unlink()
    return f"checkpoint-{step} without COMPLETE"


def _delete_checkpoint(run: Run, rng) -> str:
    if not run.checkpoints():
        return "no checkpoint to delete"
    step, path, _ = rng.choice(run.checkpoints())
    shutil.rmtree(path)
    return f"checkpoint-{step} deleted"


def _write(path: Path, data: bytes, label: str) -> str:
    path.write_bytes(data)
    return label


DAMAGES = {
    "truncated events": _truncate_last_event,
    "empty status": lambda run, rng: _write(run.status_path, b"", "status.json empty"),
    "garbage status": lambda run, rng: _write(run.status_path, rng.randbytes(rng.randint(1, 300)),
                                              "status.json garbage"),
    "status wrong types": lambda run, rng: write_atomic(run.status_path, json.dumps(
        {"state": 3, "step": "x", "heartbeat": "soon", "pid": [1], "warnings": 5, "loss": {}}))
    or "status.json with wrong types",
    "incomplete checkpoint": _newest_incomplete,
    "deleted checkpoint": _delete_checkpoint,
    "no checkpoints": lambda run, rng: shutil.rmtree(run.checkpoints_dir) or "checkpoints/ deleted",
    "no engine.log": lambda run, rng: run.log_path.unlink() or "engine.log missing",
    "no run.json": lambda run, rng: run.run_json_path.unlink() or "run.json missing",
    "garbage command": lambda run, rng: _write(run.control_dir / "cmd-0-bad.json", rng.randbytes(40),
                                               "a garbage command file"),
}


async def _app_shows(workspace: Path, run: Run) -> str:
    """The screen text of the Runs list, then of the monitor attached to the run."""
    from tui_fixtures import no_gpu_snapshot, screen_text

    from tui.app import TunedeckApp

    shown = []
    for attach in (None, run.id):
        app = TunedeckApp(workspace, mode="runs", attach=attach, gpu_interval=60, gpu_sampler=no_gpu_snapshot)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(1.0)
            shown.append(screen_text(app))
    return "\n".join(shown)


@fault("damaged run directory", trials=8, ci_trials=2)
def damaged_trial(rng, tmp: Path, env: Env) -> Outcome:
    source = crashed_run(env)
    ws = tmp / "ws"
    run = Run(ws / "runs" / source.name)
    shutil.copytree(source, run.path)
    damages = [DAMAGES[k](run, rng) for k in rng.sample(sorted(DAMAGES), rng.randint(1, 3))]
    what = ", ".join(damages)
    state = run.status().get("state")
    check(state in FINAL_STATES | {"unknown"}, f"{what}: status() says {state!r}")
    listed = subprocess.run([sys.executable, "-m", "tui.cli", "runs", "--json", "--workspace", str(ws)],
                            capture_output=True, text=True, timeout=60)
    check(listed.returncode == 0 and "Traceback" not in listed.stderr, f"{what}: `tunedeck runs` failed: "
          f"{listed.stderr.strip()[-300:]}")
    check(run.id in listed.stdout, f"{what}: `tunedeck runs` does not list the run")
    shown = asyncio.run(_app_shows(ws, run))
    check(state.upper() in shown.upper(), f"{what}: the app does not show {state}:\n{shown}")
    expected = max(complete_steps(run), default=None)
    outcome = resume_and_check(env, run, expected, kills=2)
    outcome.detail = ""
    return outcome


# ---- two engines, two followers -----------------------------------------------------------

@fault("second engine started on a running run", trials=4)
def second_engine_trial(rng, tmp: Path, env: Env) -> Outcome:
    reference(env)
    run = new_run(env, tmp)
    first = spawn(run)
    time.sleep(rng.uniform(0, 5.0))  # during the first one's start-up or its training
    how = rng.choice(["worker", "resume"])
    if how == "worker":
        second = subprocess.run([sys.executable, "-m", "engine.training.worker", "--run-dir", str(run.path), "--resume"],
                                capture_output=True, text=True, timeout=60, cwd=ROOT)
        check(second.returncode == 2 and "already being trained" in second.stderr,
              f"second worker: exit {second.returncode}: {second.stderr.strip()[-200:]}")
    else:
        try:
            spawn(run, resume=True)
            return Outcome(False, detail="a second engine was spawned on a running run")
        except RunError as exc:
            check("already has an engine running" in str(exc), str(exc))
    status = finish(run, first)
    check(status["state"] == "completed" and status.get("pid") == first.pid,
          f"first engine: {status['state']}, pid {status.get('pid')} vs {first.pid}")
    events = all_events(run)
    steps = [e["step"] for e in events if e["type"] == "log"]
    check(steps == list(range(1, MAX_STEPS + 1)), "the first run's steps were disturbed")
    check_history(run, 0)
    return Outcome(True)


@fault("two apps attached, the same command twice", trials=3)
def two_apps_trial(rng, tmp: Path, env: Env) -> Outcome:
    """Two real apps (`tunedeck attach RUN` in pseudo-terminals) follow one run: both press `p`,
    which must pause it once; one resumes it; a command file delivered twice is applied once; both
    press `s`, which must stop it once with a checkpoint; both show the end."""
    from pty_app import PtyApp

    run = new_run(env, tmp, max_steps=100000, save_steps=50000, eval_steps=50000)  # runs until stopped
    proc = spawn(run)
    f = Follower(run, proc)
    f.at_step(3)
    apps = [PtyApp("attach", run.id, "--workspace", str(tmp / "ws")) for _ in range(2)]
    try:
        for app in apps:
            app.wait_for(b"RUNNING")
        for app in rng.sample(apps, 2):  # both press pause, in either order
            app.press(b"p")
        until(lambda: f.poll() is not None and run.status().get("state") == "paused", what="paused")
        replay = run.send_command("checkpoint")  # a command file delivered twice, with one id
        until(lambda: any(e.get("id") == replay for e in f.poll()), what="checkpoint ack")
        done = run.control_dir / "done" / f"cmd-{replay}.json"
        shutil.copy(done, run.control_dir / done.name)
        resumer = rng.choice(apps)
        resumer.wait_for(b"PAUSED")
        resumer.press(b"p")  # paused, so `p` sends resume
        until(lambda: f.poll() is not None and run.status().get("state") == "running", what="running again")
        time.sleep(rng.uniform(0, 1.0))
        for app in rng.sample(apps, 2):
            app.press(b"s")  # stop: checkpoint, then exit
        status = finish(run, proc)
        for app in apps:
            app.wait_for(b"STOPPED", 30)
    finally:
        for app in apps:
            app.close()
    check(status["state"] == "stopped", f"run ended {status['state']}")
    events = all_events(run)
    states = [e["state"] for e in events if e["type"] == "state"]
    check(states.count("paused") == 1 and states.count("stopped") == 1, f"states {states}")
    acks = sorted(e["command"] for e in events if e["type"] == "command_ack")
    # The second `s` may land after the engine's last poll: then it is left unapplied in control/.
    check(acks in (["checkpoint", "pause", "pause", "resume", "stop"],
                   ["checkpoint", "pause", "pause", "resume", "stop", "stop"]), f"acknowledged {acks}")
    check(max(complete_steps(run), default=None) == status.get("step"), "no checkpoint at the stop")
    return Outcome(True)
