"""Mixing general data into the training split (engine.data.mix): the sampler, the config keys, run.json,
a real engine run, and `tunedeck data mix`."""

from __future__ import annotations

import json

import pytest
from engine_runs import dump, events, start, wait_final

from engine.data.load import load_examples
from engine.data.mix import general_wanted, mix_general
from engine.testing import learnable_rows, write_jsonl
from engine.training.config import ConfigError, parse_config


def general_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"general question {i}"},
                          {"role": "assistant", "content": f"general answer {i}"}]} for i in range(n)]


@pytest.fixture
def files(tmp_path):
    task = write_jsonl(tmp_path / "task.jsonl", learnable_rows(70))
    general = write_jsonl(tmp_path / "general.jsonl", general_rows(100))
    return load_examples(task).examples, load_examples(general).examples


def is_general(example) -> bool:
    return example.messages[0]["content"].startswith("general")


def test_the_ratio_is_the_general_share_of_the_mix(files):
    task, general = files
    mixed = mix_general(task, general, 0.3, seed=1)
    assert (mixed.task, mixed.general, mixed.wanted) == (70, 30, 30) and not mixed.capped
    assert len(mixed.examples) == 100 and sum(map(is_general, mixed.examples)) == 30
    assert sorted(id(ex) for ex in mixed.examples if not is_general(ex)) == sorted(map(id, task))  # every task one
    assert general_wanted(270, 0.3) == 116  # 116 / 386 = 30.05%, the nearest whole example
    assert mix_general(task, general, 0.5, seed=1).general == 70


def test_the_seed_picks_the_sample_and_the_order(files):
    task, general = files
    picked = lambda seed: [ex.messages[0]["content"] for ex in mix_general(task, general, 0.3, seed).examples]
    assert picked(7) == picked(7)
    assert picked(7) != picked(8)
    assert {c for c in picked(7) if c.startswith("general")} != {c for c in picked(8) if c.startswith("general")}


def test_a_short_general_file_is_used_whole_and_said(files):
    task, general = files
    mixed = mix_general(task, general[:10], 0.3, seed=1)
    assert (mixed.general, mixed.wanted, mixed.capped) == (10, 30, True)
    assert "the ratio asks for 30, the general file has only 10" in mixed.summary()
    with pytest.raises(ValueError, match="no usable examples"):
        mix_general(task, [], 0.3)
    with pytest.raises(ValueError, match="between 0 and 1"):
        mix_general(task, general, 1.0)


def test_every_field_of_a_general_row_survives_the_cli(tmp_path, capsys):
    """Tool schemas, weights and other keys of general rows reach the mixed file whole."""
    from tui.cli.main import main

    rich = {"messages": [{"role": "user", "content": "weather?"},
                         {"role": "assistant", "tool_calls": [
                             {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
                         {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                         {"role": "assistant", "content": "Sunny.", "weight": 1}],
            "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
            "id": "row-7"}
    task = write_jsonl(tmp_path / "task.jsonl", learnable_rows(20))
    general = write_jsonl(tmp_path / "general.jsonl", [rich] * 5)
    out = tmp_path / "mixed.jsonl"
    assert main(["data", "mix", str(task), str(general), "--ratio", "0.2", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["task"], report["general"], report["capped"]) == (20, 5, False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 25 and rows.count(rich) == 5
    assert [ex.messages for ex in load_examples(out).examples if ex.tools] == [load_examples(general).examples[0].messages] * 5


def test_cli_says_how_many_and_refuses_bad_input(tmp_path, capsys):
    from tui.cli.main import main

    task = write_jsonl(tmp_path / "task.jsonl", learnable_rows(14))
    general = write_jsonl(tmp_path / "general.jsonl", general_rows(3) + [{"nope": 1}])
    out = tmp_path / "mixed.json"
    assert main(["data", "mix", str(task), str(general), "--out", str(out), "--seed", "3"]) == 0
    said = capsys.readouterr().out
    assert "wrote 17 examples" in said and "14 task + 3 general" in said
    assert "the ratio asks for 6, the general file has only 3" in said
    assert "general: skipped 1 unreadable rows" in said
    assert len(json.loads(out.read_text())) == 17  # the format follows the suffix
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"nope": 1}])
    for argv, needle in [
        (["--ratio", "0"], "--ratio is the general share"),
        (["--ratio", "1"], "between 0 and 1"),
        (["--out", str(task)], "is one of the inputs"),
    ]:
        full = ["data", "mix", str(task), str(general), "--out", str(tmp_path / "m.jsonl")] + argv
        assert main(full) == 2
        assert needle in capsys.readouterr().err
    assert main(["data", "mix", str(task), str(empty), "--out", str(tmp_path / "m.jsonl")]) == 2
    assert "no usable examples in the general file" in capsys.readouterr().err
    assert main(["data", "mix", str(task), str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "m.jsonl")]) == 2
    assert "data file not found" in capsys.readouterr().err
    assert not (tmp_path / "m.jsonl").exists()


@pytest.mark.parametrize("ratio,ok", [(0.3, True), (0.99, True), (0, False), (1, False), (-0.2, False), (1.5, False)])
def test_config_general_ratio_bounds(tmp_path, ratio, ok):
    write_jsonl(tmp_path / "t.jsonl", learnable_rows(3))
    raw = {"model": "m", "data": "t.jsonl", "general_data": "t.jsonl", "general_ratio": ratio}
    if ok:
        cfg = parse_config(raw, base_dir=tmp_path)
        assert cfg.general_ratio == ratio and cfg.general_data == str(tmp_path / "t.jsonl")
    else:
        with pytest.raises(ConfigError, match="'general_ratio' must be above 0 and below 1"):
            parse_config(raw, base_dir=tmp_path)


def test_config_general_data_must_exist(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", learnable_rows(3))
    with pytest.raises(ConfigError, match="config key 'general_data': file not found"):
        parse_config({"model": "m", "data": "t.jsonl", "general_data": "nope.jsonl"}, base_dir=tmp_path)
    assert parse_config({"model": "m", "data": "t.jsonl"}, base_dir=tmp_path).general_data is None


def test_a_general_file_without_usable_examples_makes_no_run(tmp_path, write_config, workspace):
    from engine.runs.launch import create_from_config
    from engine.training.config import load_config

    empty = write_jsonl(tmp_path / "empty.jsonl", [{"nope": 1}])
    with pytest.raises(ConfigError, match="'general_data': no usable examples in .*empty.jsonl"):
        create_from_config(load_config(write_config(general_data=str(empty))), workspace)
    assert not (workspace / "runs").exists() or not list((workspace / "runs").iterdir())


def test_a_run_trains_on_the_mix_and_records_it(tmp_path, write_config, workspace):
    """200 task rows: 20 held out, 180 trained on, plus 60 general ones at 0.25; eval stays task-only."""
    from engine.data.load import fingerprint

    general = write_jsonl(tmp_path / "general.jsonl", general_rows(100))
    run, proc = start(write_config(general_data=str(general), general_ratio=0.25, max_steps=3, eval_steps=1000,
                                   save_steps=1000), workspace)
    info = json.loads(run.run_json_path.read_text())["general_data"]
    assert info == {"path": str(general), "fingerprint": fingerprint(general), "ratio": 0.25, "examples": 100}
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    ready = next(e for e in events(run) if e.get("state") == "data_ready")
    assert ready["train"]["examples"] == 240 and ready["eval"]["examples"] == 20
    assert ready["general"] == {"path": str(general), "fingerprint": fingerprint(general), "ratio": 0.25,
                                "task": 180, "general": 60}
    assert not [e for e in events(run) if e.get("code") == "general_capped"]


def test_a_short_general_file_is_capped_with_a_warning(tmp_path, write_config, workspace):
    general = write_jsonl(tmp_path / "general.jsonl", general_rows(8))
    run, proc = start(write_config(general_data=str(general), max_steps=1, eval_steps=1000, save_steps=1000,
                                   validation_split=0), workspace)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    ready = next(e for e in events(run) if e.get("state") == "data_ready")
    assert ready["train"]["examples"] == 208 and ready["eval"] is None
    capped = [e["message"] for e in events(run) if e.get("code") == "general_capped"]
    assert capped == ["general_data: 200 task + 8 general examples (4% general); "
                      "the ratio asks for 86, the general file has only 8"]


def test_plan_offers_mixing_by_method_and_writes_it_with_a_file(tmp_path):
    """Full fine-tuning is advised to mix; an adapter is told to check the probes first; the keys reach the
    config only when a general file was given."""
    from model_configs import LLAMA_7B

    from engine.models.facts import facts_from_config
    from engine.plan.recommend import Situation, forgetting_advice, plan

    model = facts_from_config(LLAMA_7B)
    h100 = {"name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559, "memory_used_mib": 0}
    s = Situation(task="extraction", baseline_score=0.2, target_score=0.9, clean_examples=2000, gpus=[h100])
    lora = plan(model, s)
    assert lora.method == "lora" and lora.forgetting.startswith("lora forgets less, not nothing")
    assert "general_data: FILE, general_ratio: 0.3" in lora.forgetting and lora.mixing == []
    assert "general_data" not in lora.config("m", "d.jsonl")
    assert "forgetting is worst: mix in general examples" in forgetting_advice("full", s)[0]
    general = write_jsonl(tmp_path / "general.jsonl", general_rows(5))
    cfg = plan(model, Situation(**{**s.__dict__, "general_data": str(general)})).config("m", "d.jsonl")
    assert (cfg["general_data"], cfg["general_ratio"]) == (str(general), 0.3)


def test_plan_cli_writes_a_mixing_config_that_loads(tiny_project, tmp_path):
    import subprocess
    import sys

    from engine.training.config import load_config

    general = write_jsonl(tmp_path / "general.jsonl", general_rows(5))
    out = tmp_path / "plan.yaml"
    base = [sys.executable, "-m", "tui.cli", "plan", "--model", str(tiny_project / "tiny-model"),
            "--data", str(tiny_project / "train.jsonl"), "--task", "extraction", "--baseline", "0.1",
            "--target", "0.9", "--write-config", str(out)]
    result = subprocess.run(base + ["--general-data", str(general)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "forgetting: lora forgets less" in result.stdout and "general_ratio = 0.3" in result.stdout
    cfg = load_config(out)
    assert cfg.general_data == str(general) and cfg.general_ratio == 0.3
    missing = subprocess.run(base + ["--general-data", str(tmp_path / "nope.jsonl")], capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode == 2 and "--general-data: file not found" in missing.stderr
