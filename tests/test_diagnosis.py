"""`tunedeck diagnose` on real runs of a tiny model planted with each fault of the debugging tree, and the
next run's configuration it writes, trained as written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from engine_runs import dump, events, start, wait_final

from engine.evaluation.diagnosis import diagnose, write_next_config
from engine.evaluation.findings import MARK_CLOSE, MARK_OPEN
from engine.testing import unlearnable_rows, write_jsonl
from engine.training.config import load_config


def cli(*argv, timeout=300):
    return subprocess.run([sys.executable, "-m", "tui.cli", *argv], capture_output=True, text=True, timeout=timeout)


def config_file(tmp_path, name: str, tiny_project, **keys):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"model": str(tiny_project / "tiny-model"), "max_seq_length": 64,
                                    "save_steps": 1000, **keys}))
    return path


def ids(result: dict) -> list[str]:
    return [f["id"] for f in result["findings"]]


def finding(result: dict, id_: str) -> dict:
    return next(f for f in result["findings"] if f["id"] == id_)


def test_overfit_run_is_diagnosed_and_its_next_config_trains_healthy(tiny_project, tmp_path, workspace):
    # Twelve answers to learn by heart, a separate eval file, full fine-tuning at a constant rate: train
    # loss goes to zero while eval loss turns up after a few evaluations.
    train = write_jsonl(tmp_path / "train.jsonl", unlearnable_rows(12, seed=1))
    held = write_jsonl(tmp_path / "eval.jsonl", unlearnable_rows(12, seed=2))
    cfg = config_file(tmp_path, "overfit", tiny_project, data=str(train), eval_data=str(held), method="full",
                      max_steps=80, eval_steps=10, learning_rate=3e-3, lr_scheduler_type="constant",
                      warmup_steps=0, early_stopping_patience=None)
    run, proc = start(cfg, workspace)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    evals = [(e["step"], e["eval_loss"]) for e in events(run) if e["type"] == "eval"]
    best_step = min(evals, key=lambda e: e[1])[0]

    result = json.loads(cli("diagnose", str(run.path), "--json", "--write-config", str(tmp_path / "next.yaml"),
                            "--workspace", str(workspace)).stdout)
    assert ids(result) == ["overfitting"], result
    found = finding(result, "overfitting")
    assert set(found) >= {"id", "evidence", "advice", "config"}
    assert f"lowest at step {best_step}" in found["evidence"] and "rose to" in found["evidence"]
    assert found["config"]["max_steps"] == best_step and found["config"]["weight_decay"] == 0.1
    assert f"step-{best_step}" in found["advice"]  # the kept best model is named
    assert run.status()["best_step"] == best_step

    # The next run, from the written file as it is: accepted, and it stops where the first one turned.
    written = yaml.safe_load((tmp_path / "next.yaml").read_text())
    assert written["max_steps"] == best_step and written["eval_data"] == str(held)
    following, proc = start(tmp_path / "next.yaml", workspace)
    assert wait_final(following, proc)["state"] == "completed", dump(following)
    again = diagnose(following)
    assert ids(again) == ["healthy"], again
    assert "eval loss best at step" in again["findings"][0]["evidence"]
    assert any("no evaluation yet" in n for n in again["not_checked"])


def test_learning_rate_1e9_is_not_learning_with_the_template_shown(tiny_project, tmp_path, workspace):
    cfg = config_file(tmp_path, "flat", tiny_project, data=str(tiny_project / "train.jsonl"), max_steps=20,
                      learning_rate=1e-9, eval_steps=1000)
    run, proc = start(cfg, workspace)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    result = diagnose(run)
    assert ids(result) == ["not_learning"], result
    found = finding(result, "not_learning")
    assert "train loss" in found["evidence"] and "fall" in found["evidence"]
    assert found["config"] == {"learning_rate": 2e-4}  # the LoRA recipes' rate, not 3x of nothing
    shown = found["details"]["examples"]
    assert len(shown) == 3 and all(f"{MARK_OPEN}" in ex["text"] and MARK_CLOSE in ex["text"] for ex in shown)
    # The marked text is the answer: what the engine's labels train.
    first = json.loads((tiny_project / "train.jsonl").read_text().splitlines()[0])["messages"][1]["content"]
    assert f"{MARK_OPEN}{first}" in shown[0]["text"] and 0 < shown[0]["trained"] < shown[0]["tokens"]

    text = cli("diagnose", run.id, "--workspace", str(workspace), "--write-config", str(tmp_path / "n.yaml"))
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"diagnosis of {run.id} (completed)\nnot_learning: train loss")
    assert "learning_rate: 1e-09 -> 0.0002" in (tmp_path / "n.yaml").read_text()


def test_exploding_run_is_lr_too_high(write_config, workspace):
    run, proc = start(write_config(method="full", learning_rate=5.0, max_grad_norm=1e9, max_steps=30,
                                   warmup_steps=0, eval_steps=1000, save_steps=1000), workspace)
    wait_final(run, proc)
    codes = {e["code"] for e in events(run) if e["type"] == "warning"}
    assert codes & {"nan_loss", "nan_grad", "divergence", "grad_spike"}, dump(run)
    result = diagnose(run)
    assert ids(result)[0] == "lr_too_high" and "not_learning" not in ids(result), result
    found = finding(result, "lr_too_high")
    assert found["config"]["learning_rate"] in (0.5, 1.7) and found["config"]["max_grad_norm"] == 1.0
    assert "step" in found["evidence"]


@pytest.fixture(scope="module")
def memorized_run(tiny_project, tmp_path_factory):
    """Six long answers learnt by heart, then evaluated on eight other prompts with their own answers."""
    tmp = tmp_path_factory.mktemp("memo")
    train = write_jsonl(tmp / "train.jsonl", unlearnable_rows(6, 1, "story of {} {}", answer_words=12))
    test = write_jsonl(tmp / "test.jsonl", unlearnable_rows(8, 2, "story of {} {}", answer_words=12))
    cfg = config_file(tmp, "memo", tiny_project, data=str(train), test_data=str(test), method="full",
                      max_steps=80, eval_steps=1000, learning_rate=3e-3, lr_scheduler_type="constant",
                      warmup_steps=0, per_device_train_batch_size=2, validation_split=0)
    run, proc = start(cfg, tmp / "ws")
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    evaluated = subprocess.run([sys.executable, "-m", "engine.evaluation.run", "--run-dir", str(run.path)],
                               capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    return run, tmp


def test_copied_training_answers_are_memorization(memorized_run):
    run, tmp = memorized_run
    result = diagnose(run)
    found = finding(result, "memorization")
    report = json.loads((run.path / "eval" / "report.json").read_text())
    train_answers = {json.loads(line)["messages"][1]["content"]: i for i, line in
                     enumerate((tmp / "train.jsonl").read_text().splitlines(), 1)}
    copied = found["details"]["copied"]
    assert len(copied) >= 2 and f"of {len(report['rows'])} held-out answers copy training answers" in found["evidence"]
    for c in copied:  # each named copy is really there: whole, or most of its 8-word runs
        row = next(r for r in report["rows"] if r["line"] == c["line"])
        assert row["tuned"] != row["reference"]
        if c["coverage"] == 1.0:
            assert train_answers[row["tuned"]] == c["training_line"]
    assert found["config"]["max_steps"] == 40


def test_general_text_perplexity_rise_is_forgetting_and_the_cure_is_written(memorized_run, tmp_path):
    run, tmp = memorized_run
    general = write_jsonl(tmp_path / "general.jsonl", unlearnable_rows(20, 7, "say {} {}"))
    result = diagnose(run, general_data=str(general))
    found = finding(result, "forgetting")
    perplexity = json.loads((run.path / "eval" / "report.json").read_text())["forgetting"]["perplexity"]
    assert perplexity["tuned"] > 1.2 * perplexity["base"]
    assert "general-text perplexity" in found["evidence"]
    assert found["config"]["method"] == "lora"  # the run was full fine-tuning
    assert found["config"]["general_data"] == str(general) and found["config"]["general_ratio"] == 0.3
    # The cure as train reads it: a LoRA run with the general file mixed into its training split.
    write_next_config(run, result, tmp_path / "next.yaml")
    following = load_config(tmp_path / "next.yaml")
    assert (following.method, following.general_data, following.general_ratio) == ("lora", str(general), 0.3)


def test_diagnose_errors_are_one_line(workspace):
    result = cli("diagnose", "no-such-run", "--workspace", str(workspace))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no-such-run" in result.stderr


def test_answers_out_of_format_name_the_training_examples_most_like_them(tiny_project, tmp_path, workspace):
    # The held-out references are JSON; the training answers teach `a-b`: the data, not the run, is at fault.
    held = [{"messages": [row["messages"][0], {"role": "assistant", "content": json.dumps(
        dict(zip(("first", "second"), row["messages"][0]["content"].split()[1::2])))}]}
        for row in unlearnable_rows(6, 3)]
    test = write_jsonl(tmp_path / "test.jsonl", held)
    cfg = config_file(tmp_path, "fmt", tiny_project, data=str(tiny_project / "train.jsonl"), test_data=str(test),
                      max_steps=30, learning_rate=3e-3, eval_steps=1000)
    run, proc = start(cfg, workspace)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    evaluated = subprocess.run([sys.executable, "-m", "engine.evaluation.run", "--run-dir", str(run.path)],
                               capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    result = diagnose(run)
    found = finding(result, "format")
    assert found["evidence"].startswith("format compliance 0% on 6 held-out examples")
    train = [json.loads(line)["messages"][1]["content"] for line in
             (tiny_project / "train.jsonl").read_text().splitlines()]
    for failing in found["details"]["similar"]:
        assert len(failing["training"]) == 3
        for near in failing["training"]:  # real lines of the training file, most alike first
            assert train[near["line"] - 1] == near["answer"]
        assert failing["training"][0]["similarity"] >= failing["training"][-1]["similarity"] > 0


def test_failed_run_is_said_first_with_the_engines_own_message(tiny_project, tmp_path, workspace):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')  # no answer to train on
    run, proc = start(config_file(tmp_path, "bad", tiny_project, data=str(bad), max_steps=5), workspace)
    assert wait_final(run, proc)["state"] == "failed", dump(run)
    found = diagnose(run)["findings"][0]
    assert found["id"] == "failed" and "no usable examples" in found["evidence"]
    assert found["config"] == {}  # not a memory problem: nothing to change in the config


def test_the_recipe_rate_of_a_preference_run_is_the_preference_recipes(tmp_path):
    """A DPO run's default learning rate is 5e-6 (LoRA), not SFT's 2e-4: the diagnosis judges and advises
    against the rate the run really used."""
    from engine.evaluation.findings import Evidence
    from engine.runs.workspace import create_run

    rates = {}
    for objective in ("sft", "dpo", "kto"):
        run = create_run(tmp_path / objective, {"model": "m", "data": "d.jsonl", "method": "lora",
                                                "objective": objective})
        rates[objective] = Evidence.read(run).learning_rate()
    assert rates == {"sft": 2e-4, "dpo": 5e-6, "kto": 5e-6}
