"""The run-directory protocol, on real files and real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from engine.core.files import write_atomic
from engine.runs.events import EventReader, EventWriter
from engine.runs.protocol import COMPLETE_MARKER, RunError
from engine.runs.workspace import create_run, list_runs, resolve_run


@pytest.fixture
def run(tmp_path):
    return create_run(tmp_path / "ws", {"model": "m", "data": "d.jsonl", "method": "lora"}, name="t")


def test_create_run_writes_identity_and_is_private(run):
    info = json.loads(run.run_json_path.read_text())
    assert info["run_id"] == run.id and info["schema"] == 1 and len(info["config_hash"]) == 16
    assert run.config()["method"] == "lora"
    assert run.status()["state"] == "starting"
    assert os.stat(run.path).st_mode & 0o777 == 0o700
    assert os.stat(run.path.parent.parent).st_mode & 0o077 == 0  # the workspace too


def test_write_atomic_replaces_whole_file(tmp_path):
    target = tmp_path / "status.json"
    write_atomic(target, json.dumps({"a": 1}))
    write_atomic(target, json.dumps({"a": 2}))
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temp files left


def test_damaged_status_is_reported_not_raised(run):
    run.status_path.write_text("")
    assert run.status()["state"] == "unknown" and "damaged" in run.status()["error"]
    run.status_path.write_text("{garbage")
    assert run.status()["state"] == "unknown"
    run.status_path.unlink()
    assert "missing" in run.status()["error"]


def test_reader_follows_by_offset_and_waits_for_partial_line(run):
    writer = EventWriter(run.events_path)
    writer.write("log", step=1, loss=1.0)
    reader = EventReader(run.events_path)
    assert [e["step"] for e in reader.read_new()] == [1]
    assert reader.read_new() == []  # nothing new: nothing re-read
    with open(run.events_path, "a") as f:
        f.write('{"seq": 2, "type": "log", "st')  # an engine mid-write
    assert reader.read_new() == []
    with open(run.events_path, "a") as f:
        f.write('ep": 2}\n')
    assert [e["step"] for e in reader.read_new()] == [2]


def test_writer_continues_seq_and_ends_a_torn_line(run):
    writer = EventWriter(run.events_path)
    for step in range(3):
        writer.write("log", step=step)
    writer.close()
    with open(run.events_path, "a") as f:
        f.write('{"seq": 4, "ty')  # killed mid-line
    writer = EventWriter(run.events_path)
    event = writer.write("state", state="running")
    writer.close()
    assert event["seq"] == 4
    reader = EventReader(run.events_path)
    events = reader.read_new()
    assert [e["seq"] for e in events] == [1, 2, 3, 4] and reader.skipped == 1


def test_commands_round_trip(run):
    first = run.send_command("pause")
    run.send_command("resume")
    (run.control_dir / "cmd-0-bad.json").write_text("not json")
    pending = run.pending_commands()
    assert [c["command"] for c in pending] == ["pause", "resume"] and pending[0]["id"] == first
    run.retire_command(pending[0])
    assert [c["command"] for c in run.pending_commands()] == ["resume"]
    assert (run.control_dir / "done" / "cmd-0-bad.json").exists()  # damaged ones set aside
    with pytest.raises(RunError, match="unknown command"):
        run.send_command("explode")


def test_crashed_when_heartbeat_stale_and_pid_gone(run):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = time.time() - 60
    write_atomic(run.status_path, json.dumps({"state": "running", "pid": dead.pid, "heartbeat": old}))
    status = run.status()
    assert status["state"] == "crashed" and "resume" in status["error"]
    # Same stale heartbeat but a live pid: slow, not dead.
    write_atomic(run.status_path, json.dumps({"state": "running", "pid": os.getpid(), "heartbeat": old}))
    assert run.status()["state"] == "running"
    # Fresh heartbeat, dead pid, nobody holds engine.lock: dead at once, no waiting for staleness.
    write_atomic(run.status_path, json.dumps({"state": "running", "pid": dead.pid, "heartbeat": time.time()}))
    assert run.status()["state"] == "crashed"
    # ... unless an engine holds the lock (the pid on file may be a launcher's), then only staleness counts.
    import fcntl

    with open(run.lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert run.status()["state"] == "running"
    # A run just created, no pid yet: starting, not crashed.
    write_atomic(run.status_path, json.dumps({"state": "starting", "heartbeat": time.time()}))
    assert run.status()["state"] == "starting"
    # Final states are never re-judged.
    write_atomic(run.status_path, json.dumps({"state": "completed", "pid": dead.pid, "heartbeat": old}))
    assert run.status()["state"] == "completed"


def test_resume_checkpoint_takes_newest_complete(run):
    for step, complete in ((10, True), (20, True), (30, False)):
        path = run.checkpoints_dir / f"checkpoint-{step}"
        path.mkdir(parents=True)
        if complete:
            (path / COMPLETE_MARKER).write_text("{}")
    checkpoint, skipped = run.resume_checkpoint()
    assert checkpoint.name == "checkpoint-20"
    assert len(skipped) == 1 and "checkpoint-30" in skipped[0]


def test_list_and_resolve(tmp_path):
    ws = tmp_path / "ws"
    a = create_run(ws, {"model": "m"}, name="alpha")
    b = create_run(ws, {"model": "m"}, name="beta")
    assert {r.id for r in list_runs(ws)} == {a.id, b.id}
    assert resolve_run(a.id, ws).path == a.path
    assert resolve_run(str(b.path), ws).path == b.path
    assert resolve_run(b.id[-6:], ws).path == b.path  # unique suffix
    with pytest.raises(RunError, match="no run"):
        resolve_run("nope", ws)
    with pytest.raises(RunError):
        resolve_run("../../etc", ws)


def test_completed_run_is_not_resumed(run):
    write_atomic(run.status_path, json.dumps({"state": "completed", "heartbeat": time.time()}))
    for detach in ([], ["--detach"]):
        result = subprocess.run([sys.executable, "-m", "tui.cli", "resume", str(run.path), *detach],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "completed; start a new run" in result.stderr
    assert not run.log_path.exists()  # no engine was started


def test_run_ids_never_leave_the_workspace(tmp_path):
    """Found by the fault suite (tests/faults/input_faults.py): a link in WS/runs to a directory
    outside was used by id (and `stop` wrote control/ there); a directory holding only a
    config.yaml (a project folder) was taken for a run; a very long name raised OSError."""
    ws = tmp_path / "ws"
    inside = create_run(ws, {"model": "m"}, name="inside")
    outside = create_run(tmp_path / "elsewhere", {"model": "m"}, name="outside")
    (ws / "runs" / "escape").symlink_to(outside.path)
    (ws / "runs" / "alias").symlink_to(inside.path)
    for ref in ("escape", str(ws / "runs" / "escape")):
        with pytest.raises(RunError, match="outside"):
            resolve_run(ref, ws)
    with pytest.raises(RunError, match="no run 'esc'"):  # nor is it found by a prefix
        resolve_run("esc", ws)
    assert resolve_run("alias", ws).path == inside.path  # a link that stays inside is fine
    assert resolve_run(str(outside.path), ws).path == outside.path  # a path given as such is taken as given
    assert "escape" not in {r.id for r in list_runs(ws)}
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.yaml").write_text("model: m\n")
    with pytest.raises(RunError, match="not a run directory"):
        resolve_run(str(project), ws)
    for ref in ("a" * 5000, "/" + "a/" * 3000, "../../etc", "a;touch x", "$(touch x)"):
        with pytest.raises(RunError):
            resolve_run(ref, ws)
    result = subprocess.run([sys.executable, "-m", "tui.cli", "stop", "escape", "--workspace", str(ws)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "outside" in result.stderr
    assert not outside.control_dir.joinpath("done").exists() and list(outside.control_dir.iterdir()) == []


def test_unknown_home_in_workspace_is_one_line():
    result = subprocess.run([sys.executable, "-m", "tui.cli", "runs", "--workspace", "~nosuchuser/ws"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "cannot use the workspace '~nosuchuser/ws'" in result.stderr


@pytest.mark.parametrize("damaged", [
    {"state": 3, "step": "x", "heartbeat": "soon", "pid": [1], "warnings": 5, "loss": {}, "error": 7},
    {"state": "running", "step": True, "heartbeat": None, "max_steps": "100"},
    {"state": None},
    {"state": ["running"], "warnings": {"a": 1}},
])
def test_status_with_wrong_types_reads_sane(run, damaged):
    """A damaged status.json (seen by the fault suite) must not hand readers a non-string state or text steps."""
    write_atomic(run.status_path, json.dumps(damaged))
    status = run.status()
    assert status["state"] in {"unknown", "crashed", "running"}
    assert isinstance(status["error"] if status["state"] != "running" else "", str)
    for key in ("step", "heartbeat", "pid", "loss", "max_steps"):
        assert key not in status or isinstance(status[key], (int, float)) and not isinstance(status[key], bool)
    assert isinstance(status.get("warnings", []), list)


def test_damaged_and_repeated_commands_are_retired_unapplied(run):
    for name, body in (("cmd-1-list.json", '{"command": ["stop"]}'), ("cmd-2-dict.json", '{"command": {}}'),
                       ("cmd-3-text.json", "not json")):
        (run.control_dir / name).write_text(body)
    first = run.send_command("pause")
    (applied,) = run.pending_commands()
    assert applied["id"] == first
    run.retire_command(applied)
    # The same command file delivered again (a retry, a second app relaying it): applied once only.
    done = run.control_dir / "done" / f"cmd-{first}.json"
    (run.control_dir / done.name).write_text(done.read_text())
    assert run.pending_commands() == []
    assert not list(run.control_dir.glob("cmd-*.json"))


def test_write_atomic_from_two_threads_at_once(tmp_path):
    """The engine's heartbeat thread and its training thread both replace status.json; a temp file
    shared between them made one rename fail (FileNotFoundError) in the fault suite."""
    import threading

    path, errors = tmp_path / "status.json", []

    def writer(name):
        for i in range(150):
            try:
                write_atomic(path, json.dumps({"writer": name, "i": i}))
            except OSError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(path.read_text())["i"] == 149
    assert not list(tmp_path.glob(".*.tmp"))
