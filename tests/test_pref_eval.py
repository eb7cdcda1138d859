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


# ---- win rate of one run against another ---------------------------------------------

def rule_score(answer: str, reference: str) -> int:
    """How far an answer follows the rule (`join a and b` -> `a-b`): 2 exactly, 1 with a hyphen, else 0 (a tiny
    model that trained 30 steps has learnt the hyphen, not yet the words)."""
    return 2 if answer == reference else int("-" in answer)


def rule_judge(body):
    """A judge that prefers the answer that follows the rule further; a tie when they follow it as far."""
    text = body["messages"][-1]["content"]
    if "Answer A:" not in text:  # the rubric score each side gets too
        return "3 partly", None
    a, b = text.split("Instruction:\njoin ")[1].split("\n")[0].split(" and ")
    first = text.split("Answer A:\n")[1].split("\n\nAnswer B:\n")[0]
    second = text.split("\n\nAnswer B:\n")[1]
    scores = rule_score(first, f"{a}-{b}"), rule_score(second, f"{a}-{b}")
    return ("A. It follows the rule further." if scores[0] > scores[1] else
            "B, it follows the rule further." if scores[1] > scores[0] else "tie"), None


@pytest.fixture(scope="module")
def weak_run(tiny_project, sft_run):
    """A second real run of the same model that barely trained: the starting point the first one should beat."""
    _, tmp = sft_run
    cfg = tmp / "weak.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tiny_project / "tiny-model"), "data": str(tiny_project / "train.jsonl"),
                                   "max_steps": 2, "learning_rate": 1e-5, "eval_steps": 1000, "save_steps": 1000,
                                   "sample_prompts": 0}))
    run, proc = start(cfg, tmp / "ws")
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    return run


def test_against_another_run_fills_the_ab_review_and_the_judged_win_rate(sft_run, weak_run):
    from openai_server import openai_server

    from engine.evaluation.ab import ABStore, pairs_from_report, store_path
    from tui.cli.evaluation import format_eval, run_eval

    run, tmp = sft_run
    held_out = run.config()["test_data"]
    with openai_server(rule_judge) as (endpoint, seen):
        result = run_eval(run, held_out, False, None, "--against", str(weak_run.path),
                          "--judge-endpoint", endpoint, "--judge-model", "rules")
    assert result["against"] == weak_run.id and result["baseline"]["model"] == f"run {weak_run.id}"
    report = json.loads((run.path / "eval" / "report.json").read_text())
    # the baseline side is the other run answering as itself: its own evaluation gives the same answers
    own = run_eval(weak_run, held_out, False, None)
    weak_answers = json.loads((weak_run.path / "eval" / "report.json").read_text())["rows"]
    assert [r["baseline"] for r in report["rows"]] == [r["tuned"] for r in weak_answers]
    assert own["tuned"]["exact_match"] == result["baseline"]["exact_match"]

    # judged in both orders; a win only when both agree, checked against the rule on each row's answers
    assert sum("Answer A:" in body["messages"][-1]["content"] for _, body in seen) == 2 * len(report["rows"])
    for row in report["rows"]:
        tuned, other = rule_score(row["tuned"], row["reference"]), rule_score(row["baseline"], row["reference"])
        assert row["judge_preference"] == ("win" if tuned > other else "loss" if other > tuned else "tie")
    w = result["judge_win_rate"]
    assert w["wins"] > w["losses"] and w["win_rate"] > 0.5 and w["ci_low"] <= w["win_rate"] <= w["ci_high"]
    assert "judge win rate of tuned over the baseline side" in format_eval(result)

    # the blind review of the same pairs keeps its own store, apart from the prompted baseline's
    path = store_path(run.path, report)
    assert path.name == f"ab-{weak_run.id}.sqlite"
    with ABStore(path, pairs_from_report(report)) as store:
        for pair in store.pairs():
            store.judge(pair.id, pair.tuned_side if pair.outcome() is None and row_outcome(report, pair) else "tie")
        summary = store.summary()
    assert summary["judged"] == len(report["rows"]) and summary["wins"] == w["wins"]


def row_outcome(report: dict, pair) -> bool:
    """The reviewer's choice in the test: the tuned answer when it follows the rule further."""
    from engine.evaluation.ab import row_key

    row = next(r for i, r in enumerate(report["rows"]) if row_key(r, i) == pair.id)
    return rule_score(row["tuned"], row["reference"]) > rule_score(row["baseline"], row["reference"])


def test_against_base_and_bad_combinations(sft_run):
    from tui.cli.common import CliError
    from tui.cli.evaluation import cmd_eval, run_eval

    run, _ = sft_run
    result = run_eval(run, None, False, 3, "--against", "base")
    assert result["against"] == "base" and result["baseline"]["model"] == "base, unprompted"
    assert result["tuned"]["exact_match"] >= result["baseline"]["exact_match"]

    class Args:  # what argparse hands cmd_eval
        workspace, data, limit, judge_endpoint, reference, batch_size, json = run.path.parents[1], None, 1, None, None, 8, True
        baseline, against = True, "base"

    with pytest.raises(CliError, match="pick one"):
        cmd_eval(type("A", (Args,), {"run": run.id})())
    with pytest.raises(CliError, match="is the run itself"):
        cmd_eval(type("A", (Args,), {"run": run.id, "baseline": False, "against": run.id})())


# ---- the Eval screen ----------------------------------------------------------------

@pytest.mark.asyncio
async def test_eval_screen_shows_the_preference_figures_and_reviews_the_other_run(tmp_path):
    """A report of a run evaluated on pairs --against its SFT run: the metrics view shows the reward accuracy
    and the judged win rate, and the blind review judges into the comparison's own store."""
    from eval_fixtures import make_report, write_report
    from tui_fixtures import SIZE, make_app, make_run, screen_text, wait_for

    from engine.evaluation.ab import summarise
    from tui.screens.eval import EvalScreen

    run = make_run(tmp_path, run_id="20260105-101500-dpo-3f2a", state="completed", steps=10, max_steps=10)
    report = make_report()
    report["baseline"]["model"] = "run 20260104-090000-sft-1a2b"
    report["against"] = "20260104-090000-sft-1a2b"
    report["preference"] = {"pairs": 40, "beta": 0.1, "reward_accuracy": 0.875, "reward_margin": 0.4213,
                            "chosen_reward": 0.3011, "rejected_reward": -0.1202, "chosen_logp": -12.5,
                            "rejected_logp": -20.1, "truncated": 0}
    report["judge_win_rate"] = {**summarise(4, 1, 1), "judge": "judge at http://127.0.0.1:8000/v1", "orders": "both"}
    write_report(run, report)
    app = make_app(tmp_path, mode="eval")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, EvalScreen) and app.screen.loaded)
        shown = " ".join(screen_text(app).split())
        assert "baseline: run 20260104-090000-sft-1a2b" in shown
        assert "preference pairs: 40, reward accuracy 87.5%, margin +0.4213" in shown
        assert "judge win rate of tuned over the baseline side: 75.0%" in shown
        await pilot.press("r")  # the A/B review
        await wait_for(pilot, lambda: app.screen.pair is not None)
        await pilot.press("a")
        await wait_for(pilot, lambda: app.screen.store.summary()["judged"] == 1)
        assert app.screen.store.path == run.path / "eval" / "ab-20260104-090000-sft-1a2b.sqlite"
    assert not (run.path / "eval" / "ab.sqlite").exists()
