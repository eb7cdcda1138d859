"""`tunedeck eval` and `tunedeck export` on a real tiny run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from engine_runs import dump, start, wait_final
from openai_server import openai_server

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
    del models
    # the chat loads it the same way (engine.chat.server over Models) and says so
    from engine.chat.client import ChatEngine

    engine = ChatEngine(run)
    engine.start()
    try:
        assert engine.wait_ready()["base_4bit"] is True
        assert engine.answer([{"role": "user", "content": "join red and cat"}], "tuned", max_new_tokens=4)["tokens"]
        assert engine.answer([{"role": "user", "content": "join red and cat"}], "base", max_new_tokens=4)["tokens"]
    finally:
        engine.close()
    result = cli("eval", str(run.path), "--limit", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tuned"]["loss"] > 0


def test_latency_and_prompt_cost_and_a_local_reference_model(trained_run, tmp_path):
    """Per example: prompt tokens as the chat template makes them, generated tokens, seconds; a second local
    model as the third column, prompted with the baseline's few-shot prompt."""
    from transformers import AutoTokenizer

    from engine.testing import build_tiny_model

    larger = build_tiny_model(tmp_path / "larger-model", hidden=96, layers=3, seed=1)
    result = cli("eval", str(trained_run.path), "--baseline", "--reference", str(larger), "--limit", "3", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    ref = out["reference_model"]
    assert ref["model"] == str(larger) and ref["shots"] == 3
    assert ref["perplexity"] == pytest.approx(2.718281828 ** ref["loss"], rel=1e-6)
    report = json.loads((trained_run.path / "eval" / "report.json").read_text())
    rows = report["rows"]
    assert all(row["reference_model"] is not None and "reference_model_exact" in row for row in rows)
    tok = AutoTokenizer.from_pretrained(trained_run.config()["model"])
    test = [json.loads(line) for line in open(trained_run.config()["test_data"])][:3]
    for row, example in zip(rows, test):
        prompt = tok.apply_chat_template(example["messages"][:-1], add_generation_prompt=True, tokenize=False)
        assert row["tuned_prompt_tokens"] == len(tok(prompt, add_special_tokens=False)["input_ids"])
        for side in ("tuned", "baseline", "reference_model"):
            assert 1 <= row[f"{side}_generated_tokens"] <= 96 and row[f"{side}_seconds"] > 0
            assert len(tok(row[side], add_special_tokens=False)["input_ids"]) <= row[f"{side}_generated_tokens"]
        # the few-shot prompt of the baseline and the reference is the same text, so the same length here
        assert row["baseline_prompt_tokens"] == row["reference_model_prompt_tokens"] > row["tuned_prompt_tokens"]
    for side in ("tuned", "baseline", "reference_model"):
        assert out[side]["prompt_tokens"] == pytest.approx(sum(r[f"{side}_prompt_tokens"] for r in rows) / 3,
                                                           abs=1e-3)
        assert out[side]["tokens_per_second"] == pytest.approx(
            sum(r[f"{side}_generated_tokens"] for r in rows) / sum(r[f"{side}_seconds"] for r in rows), rel=1e-3)
    ratio = out["ratios"]["baseline"]["prompt_tokens"]
    assert ratio == pytest.approx(out["tuned"]["prompt_tokens"] / out["baseline"]["prompt_tokens"], abs=1e-4)
    assert ratio < 1  # the point of seed 000: the tuned model needs no examples in its prompt
    md = (trained_run.path / "eval" / "report.md").read_text()
    assert "## Latency and prompt cost" in md and "| tuned / baseline | tuned / ref model |" in md
    assert f"| prompt tokens | {out['baseline']['prompt_tokens']:.1f} |" in md


@pytest.fixture
def served_model(trained_run):
    """A real OpenAI-compatible server on loopback that answers each held-out prompt with its reference."""
    answers = {ex["messages"][-2]["content"]: ex["messages"][-1]["content"]
               for ex in map(json.loads, open(trained_run.config()["test_data"]))}

    def reply(body):
        return answers.get(body["messages"][-1]["content"], "?"), {"prompt_tokens": 100 + len(body["messages"]),
                                                                    "completion_tokens": 7}

    with openai_server(reply) as served:
        yield served


def test_served_reference_model_is_asked_the_few_shot_prompt(trained_run, served_model):
    url, seen = served_model
    result = cli("eval", str(trained_run.path), "--reference", url, "--reference-model", "big-7b", "--limit", "2")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "ref model: big-7b at " + url in text
    assert text.splitlines()[2].split() == ["ref", "model", "tuned", "vs", "ref", "model"]
    assert next(line for line in text.splitlines() if line.startswith("exact match")).split()[2] == "100.0%"
    loss = next(line for line in text.splitlines() if line.startswith("loss")).split()
    assert loss[1] == "-" and loss[2] != "-"  # no loss from an endpoint: '-', never a number
    assert [line for line in text.splitlines() if line.startswith("prompt tokens")][0].split()[2] == "108.0"
    assert len(seen) == 2 and all(path == "/v1/chat/completions" for path, _ in seen)
    body = seen[0][1]
    assert body["model"] == "big-7b" and body["temperature"] == 0 and body["max_tokens"] == 96
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system"] + ["user", "assistant"] * 3 + ["user"]  # 3 shots, then the held-out prompt
    report = json.loads((trained_run.path / "eval" / "report.json").read_text())
    assert report["reference_model"]["loss"] is None and report["reference_model"]["generated_tokens"] == 7
    assert "baseline" not in report["ratios"] and report["ratios"]["reference_model"]["prompt_tokens"] > 0


def test_unknown_reference_model_fails_before_generating(trained_run, tmp_path):
    result = cli("eval", str(trained_run.path), "--reference", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "not found" in result.stderr
    assert result.stderr.strip().count("\n") == 0
