"""Reward accuracy and margin on held-out pairs, through `tunedeck eval` on a real tiny SFT run whose adapter
learned the pairs' chosen answers; the log-probabilities checked against the model's own loss."""

from __future__ import annotations

import json
import random

import pytest
import yaml
from engine_runs import dump, start, wait_final

from engine.testing import WORDS, learnable_rows, write_jsonl

BETA = 0.1


def pair_rows(n: int, seed: int) -> list[dict]:
    """Held-out pairs: the answer the rule gives (what the SFT run learned) against an off-task one."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.choice(WORDS), rng.choice(WORDS)
        rows.append({"prompt": [{"role": "user", "content": f"join {a} and {b}"}],
                     "chosen": [{"role": "assistant", "content": f"{a}-{b}"}],
                     "rejected": [{"role": "assistant", "content": f"I would rather not {rng.choice(WORDS)}."}]})
    return rows


@pytest.fixture(scope="module")
def sft_run(tiny_project, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prefeval")
    test = write_jsonl(tmp / "test.jsonl", learnable_rows(6, seed=99))
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tiny_project / "tiny-model"), "data": str(tiny_project / "train.jsonl"),
                                   "test_data": str(test), "max_steps": 30, "learning_rate": 3e-3,
                                   "eval_steps": 1000, "save_steps": 1000, "sample_prompts": 0}))
    run, proc = start(cfg, tmp / "ws")
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    return run, tmp


def test_eval_on_pairs_reports_reward_accuracy_and_margin(sft_run):
    from tui.cli.evaluation import format_eval, run_eval

    run, tmp = sft_run
    pairs = write_jsonl(tmp / "pairs.jsonl", pair_rows(10, seed=7))
    result = run_eval(run, str(pairs), False, None)
    p = result["preference"]
    assert p["pairs"] == 10 and p["beta"] == BETA and p["truncated"] == 0
    assert p["reward_accuracy"] >= 0.9, p  # the adapter learned the chosen answers' rule
    assert p["reward_margin"] > 0 and p["chosen_reward"] > p["rejected_reward"], p
    assert result["tuned"]["exact_match"] is not None  # the SFT metrics beside, on the chosen answers
    assert "preference pairs: 10, reward accuracy" in format_eval(result)

    report = json.loads((run.path / "eval" / "report.json").read_text())
    assert report["preference"] == p
    for row in report["rows"]:  # each pair's reward is beta times its log-ratio, summed over its tokens
        for side in ("chosen", "rejected"):
            assert row[f"{side}_reward"] == pytest.approx(BETA * (row[f"{side}_logp"] - row[f"{side}_ref_logp"]),
                                                          abs=1e-4)
    accuracy = sum(r["chosen_reward"] > r["rejected_reward"] for r in report["rows"]) / 10
    assert accuracy == p["reward_accuracy"]
    markdown = (run.path / "eval" / "report.md").read_text()
    assert "## Preference pairs" in markdown and "| reward accuracy |" in markdown


def test_demonstrations_have_no_preference_section(sft_run):
    from tui.cli.evaluation import format_eval, run_eval

    run, _ = sft_run
    result = run_eval(run, None, False, 3)  # the run's test_data: plain demonstrations
    assert "preference" not in result and "preference pairs" not in format_eval(result)


def test_completion_log_probability_is_the_models_own_loss(sft_run):
    """Summed log-probabilities of the completion's tokens equal minus the model's mean loss on exactly those
    tokens times their count: the tokens scored are the completion's, none of the prompt's."""
    import torch

    from engine.evaluation.preference import completion_ids, completion_logp
    from engine.evaluation.run import Models
    from engine.training.config import parse_config

    run, _ = sft_run
    models = Models(run.path, parse_config(run.config(), base_dir=run.path, check_paths=False))
    prompt, chosen = pair_rows(1, seed=3)[0]["prompt"], pair_rows(1, seed=3)[0]["chosen"]
    ids, start = completion_ids(models.tokenizer, prompt, chosen)
    rendered = models.tokenizer.apply_chat_template(prompt + chosen, tokenize=False)
    assert models.tokenizer.decode(ids) == rendered and chosen[0]["content"] in models.tokenizer.decode(ids[start:])
    labels = torch.tensor([[-100] * start + ids[start:]])
    with torch.no_grad():
        loss = models.tuned(input_ids=torch.tensor([ids]), labels=labels, use_cache=False).loss
    tuned = completion_logp(models.tuned, ids, start)
    assert tuned == pytest.approx(-float(loss) * (len(ids) - start), rel=1e-4)
    with models.base_context():  # the reference differs: the adapter raised the learned answer's likelihood
        assert completion_logp(models.as_base(), ids, start) < tuned - 1
