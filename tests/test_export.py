"""`tunedeck export`: the adapter, the merged model and GGUF, each verified against the run, with a model card.

GGUF needs a model llama.cpp's converter knows, so those tests train the demo model (SmolLM2-135M) for a
few steps; the adapter and merge tests use the tiny model. The converter is fetched once per session
(pip download of the llama-cpp-python sdist) into the session's private cache.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import yaml
from engine_runs import dump, start, wait_final

from engine.testing import learnable_rows, write_jsonl


def cli(*argv, timeout=900, env=None):
    return subprocess.run([sys.executable, "-m", "tui.cli", *argv], capture_output=True, text=True, timeout=timeout,
                          env=env)


def finished(cfg: dict, tmp) -> object:
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run, proc = start(path, tmp / "ws")
    assert wait_final(run, proc, timeout=600)["state"] == "completed", dump(run)
    return run


@pytest.fixture(scope="module")
def tiny_run(tiny_project, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tinyexport")
    test = write_jsonl(tmp / "test.jsonl", learnable_rows(4, seed=99))
    return finished({"model": str(tiny_project / "tiny-model"), "data": str(tiny_project / "train.jsonl"),
                     "test_data": str(test), "max_steps": 8, "learning_rate": 3e-3, "eval_steps": 1000,
                     "save_steps": 1000, "system_prompt": "Answer tersely."}, tmp)


@pytest.fixture(scope="module")
def demo_run(demo_model, tmp_path_factory):
    from engine.demo import demo_config, write_demo_data

    tmp = tmp_path_factory.mktemp("demoexport")
    cfg = demo_config(demo_model, write_demo_data(tmp / "data"), 3)
    cfg.update(eval_steps=1000, save_steps=1000, system_prompt="Extract the fields as JSON.")
    return finished(cfg, tmp)


def test_adapter_and_merged_exports_are_verified_and_carry_a_model_card(tiny_run, tmp_path):
    for args, kind in (([], "adapter"), (["--merge"], "merged")):
        out = tmp_path / kind
        result = cli("export", str(tiny_run.path), "--out", str(out), *args, "--json")
        assert result.returncode == 0, result.stderr
        res = json.loads(result.stdout)
        assert res["kind"] == kind and res["out"] == str(out)
        check = res["verification"]["checks"][0]
        assert check["next_token_agreement"] == 1.0 and check["greedy_same"] == check["greedy_total"] == 3
        assert res["verification"]["warnings"] == [] and res["verification"]["data"] == tiny_run.config()["test_data"]
        assert json.loads((out / "verification.json").read_text()) == res["verification"]
        card = (out / "README.md").read_text()
        front = yaml.safe_load(card.split("---")[1])
        assert front["base_model"] == tiny_run.config()["model"]
        assert front["library_name"] == ("peft" if kind == "adapter" else "transformers")
        assert "tunedeck" in front["tags"]
        from engine.data.load import fingerprint

        assert f"| data | `{tiny_run.config()['data']}` | {fingerprint(tiny_run.config()['data'])} | 200 |" in card
        assert "learning_rate: 0.003" in card  # the full config
        assert "Not evaluated yet" in card and "## Diagnosis" in card
        assert "- [ ] Checked for harmful/biased outputs: not checked by tunedeck" in card
        assert "- [ ] Tested edge cases and failure modes: not checked by tunedeck" in card
        assert "- [x] Documented training data and parameters" in card
    # what vLLM and TGI read from a model directory
    merged = tmp_path / "merged"
    assert {"config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja"} <= \
        {p.name for p in merged.iterdir()}
    assert json.loads((merged / "generation_config.json").read_text())["eos_token_id"] is not None
    text = cli("export", str(tiny_run.path), "--out", str(tmp_path / "again"))
    assert text.returncode == 0 and "next token agrees on 100.0%" in text.stdout
    assert "AutoPeftModelForCausalLM.from_pretrained(" in text.stdout  # how to load it


def test_chat_with_a_merged_export_answers_as_the_run(tiny_run, tmp_path):
    """A merged export is the adapter folded in: greedy answers from it are the adapter's. The run records the
    export, and the Chat screen's list offers it (engine.chat.session.run_exports)."""
    from engine.chat.session import run_exports

    out = tmp_path / "merged"
    assert cli("export", str(tiny_run.path), "--merge", "--out", str(out)).returncode == 0
    assert run_exports(tiny_run)[0] == out.resolve()
    answers = {}
    for name, weights in (("run", []), ("export", ["--export", str(out)])):
        result = cli("chat", str(tiny_run.path), *weights, "--prompt", "join red and cat", "--max-new-tokens", "6",
                     "--json", env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        assert result.returncode == 0, result.stderr
        answers[name] = json.loads(result.stdout)["tuned"]
    assert answers["export"] == answers["run"]
    log = max((tiny_run.path / "chat").glob("2*.jsonl"), key=lambda p: p.stat().st_mtime)
    assert json.loads(log.read_text().splitlines()[-1])["weights"] == "export merged"


def test_card_has_the_evaluation_and_forgetting_after_eval(tiny_run, tmp_path):
    assert cli("eval", str(tiny_run.path), "--baseline", "--limit", "2").returncode == 0
    assert cli("export", str(tiny_run.path), "--out", str(tmp_path / "a")).returncode == 0
    card = (tmp_path / "a" / "README.md").read_text()
    assert "### Forgetting check" in card and "| exact match |" in card
    assert "- [x] Evaluated on held-out test set" in card and "- [x] Compared to base model performance" in card


def test_refusals_are_one_line(tiny_run, tmp_path, workspace):
    if importlib.util.find_spec("llama_cpp") is None:  # else q4_k_m is written with llama.cpp's bindings
        env = dict(os.environ, PATH=os.path.dirname(sys.executable))  # no llama-quantize on it
        result = cli("export", str(tiny_run.path), "--gguf", "--quant", "q4_k_m", "--out", str(tmp_path / "q4"),
                     env=env)
        assert result.returncode == 2 and "llama-quantize" in result.stderr and result.stderr.strip().count("\n") == 0
        assert not (tmp_path / "q4").exists()
    from engine.runs.launch import create_from_config
    from engine.training.config import parse_config

    unfinished = create_from_config(parse_config(tiny_run.config()), workspace)  # created, never trained
    result = cli("export", str(unfinished.path), "--gguf", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "has not finished training" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_gguf_export_loads_in_transformers_and_answers_like_the_merged_model(demo_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged_dir, out = tmp_path / "merged", tmp_path / "gguf"
    assert cli("export", str(demo_run.path), "--merge", "--out", str(merged_dir)).returncode == 0
    result = cli("export", str(demo_run.path), "--gguf", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    res = json.loads(result.stdout)
    gguf = out / f"{demo_run.id}-f16.gguf"
    assert res["gguf"] == str(gguf) and res["quant"] == "f16" and res["bytes"] == gguf.stat().st_size
    assert res["verification"]["chat_template_in_gguf"] and res["verification"]["tokenizer_matches"]
    assert res["verification"]["checks"][0]["next_token_agreement"] >= 0.9
    assert sorted(p.name for p in out.iterdir()) == sorted([gguf.name, "Modelfile", "README.md", "verification.json"])

    # independently of the export's own verification: the GGUF against the merged directory
    tok = AutoTokenizer.from_pretrained(out, gguf_file=gguf.name)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    from_gguf = AutoModelForCausalLM.from_pretrained(out, gguf_file=gguf.name, dtype=torch.float32).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    example = json.loads(open(demo_run.config()["test_data"]).readline())["messages"]
    ids = tok.apply_chat_template([{"role": "system", "content": "Extract the fields as JSON."}, *example],
                                  tokenize=False)
    ids = torch.tensor([tok(ids, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        agree = (from_gguf(ids).logits.argmax(-1) == merged(ids).logits.argmax(-1)).float().mean().item()
    assert agree >= 0.9, agree

    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{gguf.name}\n")
    assert 'SYSTEM """Extract the fields as JSON."""' in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "TEMPLATE" in modelfile and "PARAMETER temperature 0" in modelfile
    card = (out / "README.md").read_text()
    assert f"llama-cli -m {gguf} -cnv" in card and "ollama create" in card and "ollama run" in card
    assert "library_name: gguf" in card and "gguf f16 (transformers)" in card
    assert "llama.cpp itself not checked" in card or "(llama.cpp)" in card

    # chat with the GGUF itself (its tokenizer and chat template from the file's metadata)
    result = cli("chat", str(demo_run.path), "--export", str(gguf), "--prompt", example[0]["content"],
                 "--max-new-tokens", "12", "--json", env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tuned"].strip()


def test_q8_0_export_reports_its_agreement(demo_run, tmp_path):
    result = cli("export", str(demo_run.path), "--gguf", "--quant", "q8_0", "--out", str(tmp_path / "q8"))
    assert result.returncode == 0, result.stderr
    gguf = tmp_path / "q8" / f"{demo_run.id}-q8_0.gguf"
    assert f"exported GGUF q8_0 to {gguf}" in result.stdout
    assert "verified gguf q8_0 (transformers) on 3 prompts" in result.stdout and "next token agrees on" in result.stdout
    check = json.loads((tmp_path / "q8" / "verification.json").read_text())["checks"][0]
    assert 0 < check["next_token_agreement"] <= 1 and check["expected_agreement"] == 0.9
