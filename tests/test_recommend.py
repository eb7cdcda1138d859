"""The decision, the method and the hyperparameters, with reasons; and the config it writes."""

from __future__ import annotations

import subprocess
import sys

import yaml

from engine.config import load_config
from engine.models import facts_from_config
from engine.recommend import Situation, decide, plan
from test_estimate import LLAMA_7B

H100 = {"name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559, "memory_used_mib": 0}
T4 = {"name": "Tesla T4", "memory_total_mib": 15360, "memory_used_mib": 0}


def test_decision_follows_practice():
    assert decide(Situation(fresh_knowledge=True))[0] == "rag"
    assert decide(Situation(task_stable=False, baseline_score=0.1))[0] == "prompt"
    assert decide(Situation())[0] == "measure_baseline"
    assert decide(Situation(baseline_score=0.9, target_score=0.85))[0] == "prompt"
    assert decide(Situation(task="domain", baseline_score=0.3, target_score=0.8, clean_examples=800))[0] == \
        "collect_data"
    decision, reasons = decide(Situation(task="extraction", baseline_score=0.1, target_score=0.9,
                                         clean_examples=300))
    assert decision == "fine_tune" and "10% prompted vs target 90%" in reasons[0]


def test_method_follows_memory():
    model = facts_from_config(LLAMA_7B)
    s = Situation(task="extraction", baseline_score=0.2, target_score=0.9, clean_examples=2000)
    assert plan(model, Situation(**{**s.__dict__, "gpus": [H100]})).method == "lora"
    small = plan(model, Situation(**{**s.__dict__, "gpus": [T4]}))
    assert small.method == "qlora" and small.memory["lora"]["fits"] is False
    assert small.memory["qlora"]["fits"] is True
    hps = {h.key: h for h in small.hyperparameters}
    assert hps["learning_rate"].value == 2e-4 and "QLoRA paper" in hps["learning_rate"].reason
    assert hps["lora_alpha"].value == 2 * hps["lora_r"].value
    assert small.cost_usd is not None and small.time_hours > 0


def test_plan_writes_a_config_that_trains(tiny_project, tmp_path):
    out = tmp_path / "plan.yaml"
    result = subprocess.run([sys.executable, "-m", "tui.cli", "plan", "--model", str(tiny_project / "tiny-model"),
                             "--data", str(tiny_project / "train.jsonl"), "--task", "extraction",
                             "--baseline", "0.1", "--target", "0.9", "--write-config", str(out)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "decision: fine tune" in result.stdout
    cfg = load_config(out)  # the validator accepts every key the plan writes
    assert cfg.method == "lora" and cfg.learning_rate == 2e-4
    assert yaml.safe_load(out.read_text())["data"] == str(tiny_project / "train.jsonl")
