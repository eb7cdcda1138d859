"""notify_command through the real engine: once per ending, once per warning code, a resume notifies only its
own ending, a failing command is a warning that never fails the run; and the Notifier's timeout."""

from __future__ import annotations

import json
import shlex
import signal
import sys
import time
from pathlib import Path

import pytest

from engine.training.config import ConfigError, load_config
from engine.training.notify import NOTIFY_FAILED, Notifier
from engine_runs import dump, events, kill, log_steps, start, wait_final, wait_for

KEYS = ("TUNEDECK_RUN_ID", "TUNEDECK_RUN_DIR", "TUNEDECK_STATE", "TUNEDECK_REASON", "TUNEDECK_WARNING", "TUNEDECK_STEP")


@pytest.fixture
def notify(tmp_path):
    """(notify_command, calls): a command that appends its TUNEDECK_ environment to a file and exits with `code`."""
    script = tmp_path / "notify.py"
    script.write_text("import json, os, sys\n"
                      f"keys = {KEYS!r}\n"
                      "with open(sys.argv[1], 'a') as f:\n"
                      "    f.write(json.dumps({k: os.environ.get(k) for k in keys}) + '\\n')\n"
                      "sys.exit(int(sys.argv[2]))\n")
    out = tmp_path / "calls.jsonl"

    def command(code: int = 0) -> str:
        return shlex.join([sys.executable, str(script), str(out), str(code)])

    def calls() -> list[dict]:
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []

    return command, calls


def endings(calls: list[dict]) -> list[str]:
    return [c["TUNEDECK_STATE"] for c in calls if c["TUNEDECK_STATE"] != "warning"]


def test_completed_run_notifies_once_per_ending_and_warning_code_and_survives_a_failing_command(
        write_config, workspace, notify, tiny_project, tmp_path):
    command, calls = notify
    data = tmp_path / "train.jsonl"  # three bad rows: three bad_row warnings, one notification
    data.write_text((tiny_project / "train.jsonl").read_text() + "not json\n{\"messages\": 3}\n[1, 2]\n")
    run, proc = start(write_config(data=str(data), max_steps=8, save_steps=4, eval_steps=4,
                                   notify_command=command(code=3)), workspace)
    status = wait_final(run, proc)
    assert status["state"] == "completed", dump(run)  # the command failed every time; the run did not
    got = calls()
    assert endings(got) == ["completed"]
    ending = next(c for c in got if c["TUNEDECK_STATE"] == "completed")
    assert ending["TUNEDECK_RUN_ID"] == run.id and ending["TUNEDECK_RUN_DIR"] == str(run.path)
    assert ending["TUNEDECK_STEP"] == "8" and ending["TUNEDECK_WARNING"] == ""
    warned = [e for e in events(run) if e["type"] == "warning" and e["code"] != NOTIFY_FAILED]
    assert [e["code"] for e in warned].count("bad_row") == 3
    notified = [c["TUNEDECK_WARNING"] for c in got if c["TUNEDECK_STATE"] == "warning"]
    assert sorted(notified) == sorted({e["code"] for e in warned})  # each code once
    first = next(e for e in warned if e["code"] == "bad_row")
    bad_row = next(c for c in got if c["TUNEDECK_WARNING"] == "bad_row")
    assert bad_row["TUNEDECK_REASON"] == first["message"] and bad_row["TUNEDECK_STEP"] == ""
    failures = [e["message"] for e in events(run) if e["type"] == "warning" and e["code"] == NOTIFY_FAILED]
    assert len(failures) == len(got)  # each failed call is one warning, and those are never notified
    assert all("exited with code 3" in m for m in failures)


def test_stopped_run_notifies_once_and_its_resume_only_its_own_ending(write_config, workspace, notify):
    command, calls = notify
    run, proc = start(write_config(max_steps=30, save_steps=1000, eval_steps=1000, notify_command=command()),
                      workspace)
    wait_for(lambda: len(log_steps(run)) >= 3, what="training to start")
    kill(proc, signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert run.status()["state"] == "stopped", dump(run)
    assert endings(calls()) == ["stopped"]
    assert calls()[-1]["TUNEDECK_REASON"] == f"stopped at step {run.status()['step']}"

    run, proc = start(Path("unused"), workspace, resume_run=run)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    assert endings(calls()) == ["stopped", "completed"]


def test_stop_signal_during_start_up_notifies_the_stop(write_config, workspace, notify):
    command, calls = notify
    run, proc = start(write_config(notify_command=command()), workspace)
    kill(proc, signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert run.status()["state"] == "stopped", dump(run)
    assert [(c["TUNEDECK_STATE"], c["TUNEDECK_REASON"]) for c in calls()] == [
        ("stopped", "stop signal before training started")]


def test_a_command_that_hangs_is_killed_with_its_children_and_reported(tmp_path):
    failures: list[str] = []
    marker = tmp_path / "child-survived"
    # sh leaves a child sleeping; killing only sh would leave it to write the marker later
    notifier = Notifier(f"sh -c 'sleep 3 && touch {marker} & wait'", "r1", tmp_path, failures.append,
                        timeout=0.5)
    notifier.ending("failed", "boom", 3)
    notifier.ending("failed", "boom again", 4)  # one ending per engine: not run twice
    notifier.wait()
    assert len(failures) == 1 and "took over 0.5s" in failures[0] and "failed" in failures[0]
    time.sleep(3.5)
    assert not marker.exists()


def test_a_missing_program_is_reported_not_raised(tmp_path):
    failures: list[str] = []
    notifier = Notifier(str(tmp_path / "gone"), "r1", tmp_path, failures.append)
    notifier.warning("divergence", "loss rose", 5)
    notifier.warning(NOTIFY_FAILED, "never notified", 5)
    notifier.wait()
    assert len(failures) == 1 and "could not start for warning divergence" in failures[0]


@pytest.mark.parametrize("command, error", [
    ("", "is empty"), ("notify 'open", "cannot split"), ("./no-such-script", "not found or not executable"),
])
def test_a_bad_notify_command_is_one_line_naming_the_key(tmp_path, tiny_project, command, error):
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps({"model": str(tiny_project / "tiny-model"), "data": str(tiny_project / "train.jsonl"),
                                "notify_command": command}))
    with pytest.raises(ConfigError, match=f"'notify_command'.*{error}"):
        load_config(path)


def test_a_relative_program_is_taken_from_the_config_folder(tmp_path, tiny_project):
    script = tmp_path / "hooks" / "done.sh"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o700)
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps({"model": str(tiny_project / "tiny-model"), "data": str(tiny_project / "train.jsonl"),
                                "notify_command": "./hooks/done.sh --quiet 'two words'"}))
    assert load_config(path).notify_command == f"{script} --quiet 'two words'"
