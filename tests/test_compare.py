"""Comparing runs (engine.runs.compare, `tunedeck compare`) on two real finished runs of a tiny model that
differ only in learning rate; damaged and missing pieces on copies of them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from engine_runs import dump, events, start, wait_final
from eval_fixtures import make_report, write_report

from engine.runs.compare import compare_runs, table_sections
from engine.runs.protocol import Run

RATES = (1e-3, 3e-3)


@pytest.fixture(scope="module")
def finished(tiny_project, tmp_path_factory) -> tuple:
    """(workspace, [run at 1e-3, run at 3e-3]): both trained to the end by the real engine, side by side."""
    tmp = tmp_path_factory.mktemp("compare")
    started = []
    for rate in RATES:
        config = tmp / f"lr-{rate}.yaml"
        config.write_text(yaml.safe_dump({
            "model": str(tiny_project / "tiny-model"), "data": str(tiny_project / "train.jsonl"), "method": "lora",
            "max_steps": 20, "eval_steps": 5, "save_steps": 20, "learning_rate": rate,
            "per_device_train_batch_size": 4, "max_seq_length": 128}))
        started.append(start(config, tmp / "ws"))
    for run, proc in started:
        assert wait_final(run, proc)["state"] == "completed", dump(run)
    return tmp / "ws", [run for run, _ in started]


@pytest.fixture
def copies(finished, tmp_path) -> list[Run]:
    """The two runs copied into a workspace of this test's own, free to damage."""
    _, runs = finished
    return [Run(shutil.copytree(run.path, tmp_path / "ws" / "runs" / run.id)) for run in runs]


def curve(run: Run, kind: str, key: str) -> list[list]:
    return [[e["step"], e[key]] for e in events(run) if e["type"] == kind]


def test_two_runs_give_both_curves_the_differing_key_and_the_best_eval(finished):
    _, runs = finished
    comparison = compare_runs(runs)
    a, b = comparison["runs"]
    assert [a["letter"], b["letter"]] == ["A", "B"] and [a["run_id"], b["run_id"]] == [r.id for r in runs]
    for entry, run in zip((a, b), runs):
        assert entry["state"] == "completed" and entry["method"] == "lora" and entry["model"].endswith("tiny-model")
        assert (entry["step"], entry["max_steps"]) == (20, 20) and entry["name"] == "train"
        assert entry["curves"]["loss"] == curve(run, "log", "loss") and len(entry["curves"]["loss"]) == 20
        assert entry["curves"]["eval_loss"] == curve(run, "eval", "eval_loss")
        assert [step for step, _ in entry["curves"]["eval_loss"]] == [5, 10, 15, 20]
        best = min(entry["curves"]["eval_loss"], key=lambda p: p[1])
        assert entry["best_eval"] == {"eval_loss": best[1], "step": best[0]}
        assert entry["eval"] is None and any("no evaluation report" in n for n in entry["notes"])
    assert a["curves"]["loss"] != b["curves"]["loss"]  # two learning rates, two trajectories
    # Every other key of the two full configurations is equal: only the learning rate is listed.
    assert comparison["config_diff"] == [{"key": "learning_rate", "values": [1e-3, 3e-3], "absent": [False, False]}]
    assert comparison["metrics"] == []
    sections = dict(table_sections(comparison))
    assert sections["configuration: keys that differ"] == [("learning_rate", ["0.001", "0.003"])]
    assert dict(sections["run"])["steps"] == ["20/20", "20/20"]
    assert json.loads(json.dumps(comparison)) == comparison  # what --json prints, whole


def test_held_out_metrics_and_forgetting_side_by_side(copies):
    a, b = copies
    report = make_report()
    report["tuned"]["exact_match"] = 0.5
    write_report(a, report)
    write_report(b)
    comparison = compare_runs([a, b])
    assert comparison["runs"][0]["eval"]["forgetting"]["regressed"] == ["capital-france"]
    rows = {row["key"]: row["values"] for row in comparison["metrics"]}
    assert rows["exact_match"] == [0.5, 0.95] and rows["perplexity"] == [1.01, 1.01]
    assert "judge_score" not in rows  # no report measured it
    sections = dict(table_sections(comparison))
    metrics = dict(sections["held-out metrics (tuned model)"])
    assert metrics["exact match"] == ["50.0%", "95.0%"] and metrics["task: json_field_f1"] == ["0.970", "0.970"]
    forgetting = dict(sections["forgetting check"])
    assert forgetting["probes regressed"] == ["1 of 8", "1 of 8"]
    assert forgetting["general-text ppl"] == ["21.30 (+6%)", "21.30 (+6%)"]
    assert not any("evaluation report" in n for e in comparison["runs"] for n in e["notes"])

    (b.path / "eval" / "report.json").write_text("[]")  # valid JSON, but no report
    metrics = dict(dict(table_sections(compare_runs([a, b])))["held-out metrics (tuned model)"])
    assert metrics["examples"] == ["40", "unreadable"] and metrics["exact match"] == ["50.0%", ""]


def test_damaged_and_missing_pieces_are_notes_not_crashes(copies, tmp_path):
    a, b = copies
    (a.path / "eval").mkdir()
    (a.path / "eval" / "report.json").write_text("{not json")
    report = make_report()
    del report["forgetting"]
    write_report(b, report)
    with open(b.events_path, "a") as f:
        f.write('{"seq": 999, "type": "log", "ste\n')  # a torn line left by a killed engine
    b.config_path.unlink()
    comparison = compare_runs([a, b])
    notes_a, notes_b = (e["notes"] for e in comparison["runs"])
    assert any("not valid JSON" in n and "tunedeck eval" in n for n in notes_a)
    assert any("incomplete" in n and "forgetting" in n for n in notes_b)
    assert "events.jsonl: 1 damaged line skipped" in notes_b and "config.yaml is missing" in notes_b
    assert len(comparison["runs"][1]["curves"]["loss"]) == 20  # the whole lines around the torn one still count
    assert [e["eval"] for e in comparison["runs"]] == [None, None]
    # With one config unread nothing can differ, and the table says the key is unknown rather than absent.
    assert comparison["config_diff"] == []
    sections = dict(table_sections(comparison))
    assert sections["run"][0] == ("name", ["train", "-"])
    assert sections["held-out metrics: no run has a readable evaluation report (see the notes)"] == []

    a.status_path.unlink()
    gone = tmp_path / "gone"
    shutil.copytree(a.path, gone)
    shutil.rmtree(gone / "eval")
    (gone / "events.jsonl").unlink()
    comparison = compare_runs([a, Run(gone)])
    entry = comparison["runs"][1]
    assert entry["state"] == "unknown" and entry["curves"] == {"loss": [], "eval_loss": []} and entry["best_eval"] is None
    assert "unknown: status.json is missing" in entry["notes"] and "events.jsonl is missing: no curves" in entry["notes"]


def test_a_crashed_run_says_so(copies):
    from tui_fixtures import dead_pid, write_status

    a, b = copies
    write_status(b, state="running", step=12, max_steps=20, pid=dead_pid())
    entry = compare_runs([a, b])["runs"][1]
    assert entry["state"] == "crashed" and entry["step"] == 12
    assert any(n.startswith("crashed: engine") and "tunedeck resume" in n for n in entry["notes"])


# ---- the command line -------------------------------------------------------------

def cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tui.cli", *argv], capture_output=True, text=True, timeout=60)


def test_cli_text_fits_80_columns(finished):
    workspace, runs = finished
    result = cli("compare", runs[0].id, runs[1].id, "--workspace", str(workspace))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, result.stdout
    assert lines[:2] == [f"A  {runs[0].id}", f"B  {runs[1].id}"]
    assert any(line.split() == ["learning_rate", "0.001", "0.003"] for line in lines), result.stdout
    assert not any(line.split()[:1] == ["max_steps"] for line in lines)  # equal keys are left out
    curves = lines[lines.index("loss curves (first -> last)") + 1:][:2]
    assert [c.split()[0] for c in curves] == ["A", "B"] and all("steps 1-20" in c for c in curves)
    assert "no evaluation report" in result.stdout


def test_cli_json_is_the_comparison(finished):
    workspace, runs = finished
    result = cli("compare", str(runs[0].path), runs[1].id, "--json", "--workspace", str(workspace))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [r["run_id"] for r in out["runs"]] == [r.id for r in runs]
    assert [row["key"] for row in out["config_diff"]] == ["learning_rate"]
    assert out == json.loads(json.dumps(compare_runs(runs)))


@pytest.mark.parametrize("refs,says", [
    ((), "two or more runs"),
    (("FIRST",), "two or more runs"),
    (("FIRST", "no-such-run"), "no run 'no-such-run'"),
    (("FIRST", "FIRST_DIR"), "are the same run"),
])
def test_cli_errors_are_one_line_and_exit_2(finished, refs, says):
    workspace, runs = finished
    argv = [{"FIRST": runs[0].id, "FIRST_DIR": str(runs[0].path)}.get(ref, ref) for ref in refs]
    result = cli("compare", *argv, "--workspace", str(workspace))
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and says in result.stderr, result.stderr
