"""`tunedeck eval` and `tunedeck export` on a real tiny run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from engine_runs import dump, start, wait_final

from engine.testing import learnable_rows, write_jsonl


@pytest.fixture(scope="module")
def trained_run(tiny_project, tmp_path_factory):
    import yaml

    tmp = tmp_path_factory.mktemp("evalrun")
    test = write_jsonl(tmp / "test.jsonl", learnable_rows(6, seed=99))
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tiny_project / "tiny-model"), "data": str(tiny_project / "train.jsonl"),
                                   "test_data": str(test), "max_steps": 30, "learning_rate": 3e-3,
                                   "eval_steps": 1000, "save_steps": 1000}))
    run, proc = start(cfg, tmp / "ws")
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    return run


def cli(*argv, timeout=300):
    return subprocess.run([sys.executable, "-m", "tui.cli", *argv], capture_output=True, text=True, timeout=timeout)


def test_eval_json_contract(trained_run):
    result = cli("eval", str(trained_run.path), "--baseline", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) >= {"tuned", "baseline", "forgetting"}
    for side in ("tuned", "baseline"):
        assert {"exact_match", "task_metric", "format_compliance", "loss", "perplexity"} <= set(out[side])
        assert out[side]["perplexity"] == pytest.approx(2.718281828 ** out[side]["loss"], rel=1e-6)
    assert out["baseline"]["shots"] == 3
    assert len(out["forgetting"]["probes"]) == 10 and isinstance(out["forgetting"]["regressed"], list)
    report = json.loads((trained_run.path / "eval" / "report.json").read_text())
    assert len(report["rows"]) == 6 and out["examples"] == 6  # the run's test_data by default
    assert "## Forgetting check" in (trained_run.path / "eval" / "report.md").read_text()


def test_eval_without_held_out_file_says_what_to_do(trained_run):
    import yaml

    original = trained_run.config_path.read_text()
    cfg = yaml.safe_load(original)
    cfg.pop("test_data")
    trained_run.config_path.write_text(yaml.safe_dump(cfg))
    try:
        result = cli("eval", str(trained_run.path))
    finally:
        trained_run.config_path.write_text(original)
    assert result.returncode == 2 and "pass --data FILE" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_eval_of_tool_calling_examples_is_refused_not_misscored(trained_run, tmp_path):
    """Scored as text, an answer that is a tool call would be compared with an empty reference."""
    from test_data_formats import OPENAI_TOOL_ROWS

    data = write_jsonl(tmp_path / "tools.jsonl", OPENAI_TOOL_ROWS + learnable_rows(2, seed=5))
    result = cli("eval", str(trained_run.path), "--data", str(data))
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "2 of the 4 held-out examples" in result.stderr and "use tools" in result.stderr


def test_merged_export_reloads_to_the_same_outputs(trained_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_out, merged_out = tmp_path / "adapter", tmp_path / "merged"
    assert cli("export", str(trained_run.path), "--out", str(adapter_out)).returncode == 0
    result = cli("export", str(trained_run.path), "--merge", "--out", str(merged_out))
    assert result.returncode == 0, result.stderr
    assert not (merged_out / "adapter_config.json").exists()  # a plain model: no peft needed
    base = AutoModelForCausalLM.from_pretrained(trained_run.config()["model"])
    with_adapter = PeftModel.from_pretrained(base, str(adapter_out)).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_out).eval()
    ids = torch.tensor([[5, 17, 42, 9, 100, 3]])
    with torch.no_grad():
        assert torch.allclose(with_adapter(ids).logits, merged(ids).logits, atol=1e-4)
    again = cli("export", str(trained_run.path), "--out", str(adapter_out))
    assert again.returncode == 2 and "not empty" in again.stderr


def test_qlora_run_is_evaluated_on_the_4bit_base_it_was_trained_on(tiny_project, tmp_path):
    """The adapter learned on NF4 weights; a 16-bit base would measure a model that was never trained."""
    import bitsandbytes as bnb
    import yaml

    from engine.evaluation.run import Models
    from engine.training.config import parse_config

    cfg = tmp_path / "qlora.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tiny_project / "tiny-model"), "data": str(tiny_project / "train.jsonl"),
                                   "test_data": str(write_jsonl(tmp_path / "test.jsonl", learnable_rows(4, seed=7))),
                                   "method": "qlora", "max_steps": 6, "eval_steps": 1000, "save_steps": 1000}))
    run, proc = start(cfg, tmp_path / "ws")
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    models = Models(run.path, parse_config(run.config(), base_dir=run.path, check_paths=False))
    assert models.tuned.base_model.model.is_loaded_in_4bit
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in models.tuned.modules()) == 14  # every linear layer
    result = cli("eval", str(run.path), "--limit", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tuned"]["loss"] > 0
