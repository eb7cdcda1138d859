"""Preference pairs from a run's own answers, end to end on a real tiny SFT run: `tunedeck pairs` samples two
seeded answers per prompt in the engine's process, the blind A/B store takes the judgements (here through the
store the review writes, and by keyboard on the review screen), and the judged pairs are written in TRL's
prompt/chosen/rejected layout that loads back as pairs; ties, skips, unjudged and identical pairs are not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chat_fixtures import SYSTEM_PROMPT
from pty_app import PtyApp
from tui_fixtures import SIZE, assert_snapshot, make_app, screen_text

from engine.data.load import load_examples
from engine.evaluation.ab import ABStore
from engine.evaluation.pairs import SAMPLES, open_review, pairs_folder, read_samples, write_preference_file
from engine.evaluation.sample_pairs import main as sample_main
from tui.cli.main import main

PROMPTS = ["cat dog", "red blue", "sun moon", "left right", "up down"]


@pytest.fixture
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"  # chat rows: their prompts are used, their answers are not
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p},
                                                     {"role": "assistant", "content": "unused"}]}) + "\n"
                            for p in PROMPTS))
    return path


def pairs_cli(run, prompts: Path, out: Path, capsys, *extra: str) -> dict:
    assert main(["pairs", str(run.path), "--prompts", str(prompts), "--out", str(out), "--no-review", "--json",
                 "--temperature", "1.5", "--max-new-tokens", "12", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_judge_write_and_load_back_as_pairs(chat_run, prompts, tmp_path, capsys):
    out = tmp_path / "prefs.jsonl"
    first = pairs_cli(chat_run, prompts, out, capsys)
    assert first["generated"]["generated"] == 5 and first["generated"]["pairs"] == 5
    assert first["written"] == 0 and first["unjudged"] + first["identical"] == 5 and out.read_text() == ""
    folder = pairs_folder(chat_run.path, prompts, 2, 1.5, 0)
    elsewhere = tmp_path / "other" / "prompts.jsonl"  # the same name, other prompts: other pairs
    elsewhere.parent.mkdir()
    elsewhere.write_text(prompts.read_text().replace("cat dog", "cat bird"))
    assert pairs_folder(chat_run.path, elsewhere, 2, 1.5, 0) != folder
    samples = {s["id"]: s for s in read_samples(folder)}
    # the run's system prompt first, as it was trained, then the prompt; the file's answers are not used
    assert samples["p0-0"]["prompt"] == [{"role": "system", "content": SYSTEM_PROMPT},
                                         {"role": "user", "content": "cat dog"}]
    assert all("unused" not in a for s in samples.values() for a in s["answers"])

    with open_review(folder) as store:  # what the review screen writes, judged the way its keys do
        pairs = store.pairs()
        for pair, choice in zip(pairs, ["A", "B", "tie", "skip"]):  # the fifth stays unjudged
            store.judge(pair.id, choice)
    identical = {p.id for p in pairs if p.a.strip() == p.b.strip()}
    assert len(identical) < 2, [(p.a, p.b) for p in pairs]  # 12 tokens at temperature 1.5: answers mostly differ

    second = pairs_cli(chat_run, prompts, out, capsys)
    assert second["generated"]["generated"] == 0  # resumed: nothing sampled again, the judgements kept
    assert second["written"] == 2 - len(identical & {pairs[0].id, pairs[1].id})
    assert (second["ties"], second["skipped"], second["unjudged"]) == (
        int(pairs[2].id not in identical), int(pairs[3].id not in identical), int(pairs[4].id not in identical))
    loaded = load_examples(out)
    assert not loaded.problems and [ex.kind for ex in loaded.examples] == ["pair"] * second["written"]
    expected = [(p.a, p.b) if choice == "A" else (p.b, p.a)
                for p, choice in zip(pairs[:2], "AB") if p.id not in identical]
    assert [(ex.messages[-1]["content"], ex.rejected[-1]["content"]) for ex in loaded.examples] == expected
    for ex in loaded.examples:
        assert [m["role"] for m in ex.messages] == ["system", "user", "assistant"]


def test_sampling_is_seeded(chat_run, prompts, tmp_path):
    def sample(folder: Path, seed: int, limit: int) -> list[list[str]]:
        assert sample_main(["--run-dir", str(chat_run.path), "--prompts", str(prompts), "--folder", str(folder),
                            "--temperature", "1.5", "--max-new-tokens", "12", "--seed", str(seed),
                            "--limit", str(limit)]) == 0
        return [s["answers"] for s in read_samples(folder)]

    once = sample(tmp_path / "once", 7, 3)
    assert sample(tmp_path / "again", 7, 3) == once  # a rerun gives the same pairs
    assert sample(tmp_path / "other", 8, 3) != once
    # a prompt's answers do not depend on the prompts before it: a killed generation resumes the same
    lines = (tmp_path / "once" / SAMPLES).read_text().splitlines()
    (tmp_path / "once" / SAMPLES).write_text(lines[0] + "\n" + lines[1][:20])  # the second line cut short
    assert sample(tmp_path / "once", 7, 3) == once


def test_bad_settings_and_an_unfinished_run_are_one_line(chat_run, prompts, tmp_path, capsys):
    assert main(["pairs", str(chat_run.path), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"),
                 "--n", "3", "--no-review"]) == 2
    assert capsys.readouterr().err.strip() == ("tunedeck: error: --n must be an even number of answers per prompt, "
                                               "2 or more (two make a pair), not 3")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text(json.dumps({"run_id": "unfinished"}))
    (unfinished / "config.yaml").write_text((chat_run.path / "config.yaml").read_text())
    assert main(["pairs", str(unfinished), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"),
                 "--no-review"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tunedeck: error: ") and "has not finished training" in err and "\n" not in err


def test_the_command_opens_the_review_and_writes_what_was_judged_on_q(chat_run, tmp_path):
    """The whole command in a terminal: generation, the review by keyboard, the file written when it closes."""
    prompts = tmp_path / "prompts.txt"  # a text file, one prompt a line (other prompts: other pairs)
    prompts.write_text("join sea and sky\njoin hot and cold\n")
    out = tmp_path / "prefs.jsonl"
    app = PtyApp("pairs", str(chat_run.path), "--prompts", str(prompts), "--out", str(out),
                 "--temperature", "1.5", "--max-new-tokens", "12", "--workspace", str(tmp_path / "ws"),
                 columns=80, lines=24)
    try:
        app.wait_for(b"0/2 judged", 180)
        app.press(b"a")
        app.wait_for(b"1/2 judged", 30)
        app.press(b"t")
        app.wait_for(b"all judged", 30)
        app.press(b"q")
        app.wait_for(b"wrote ", 60)
        assert app.proc.wait(timeout=30) == 0
    finally:
        app.close()
    with open_review(pairs_folder(chat_run.path, prompts, 2, 1.5, 0)) as store:
        first, second = store.pairs()
    assert (first.choice, second.choice) == ("A", "tie")
    written = [ex.messages[-1]["content"] for ex in load_examples(out).examples]
    assert written == ([] if first.a.strip() == first.b.strip() else [first.a])
    assert f"wrote {len(written)} preference pairs to {out}".encode() in app.screen


# ---- the review screen, on pairs written as the engine writes them (their text fixed for the snapshot) ----

def planted_folder(root: Path) -> Path:
    folder = root / "pairs" / "prompts-n2-t0.8-seed0"
    folder.mkdir(parents=True)
    rows = [("Join cat and dog.", "cat-dog", "cat dog"), ("Join red and blue.", "red-blue", "red-blue"),
            ("Join sun and moon.", "sun\x0emoon", "sun-moon")]
    (folder / SAMPLES).write_text("".join(
        json.dumps({"id": f"p{i}-0", "prompt": [{"role": "user", "content": q}], "answers": [a, b]}) + "\n"
        for i, (q, a, b) in enumerate(rows)))
    return folder


@pytest.mark.asyncio
async def test_review_keys_judge_blind_and_q_hands_back_to_the_command(tmp_path):
    folder = planted_folder(tmp_path)
    app = make_app(tmp_path / "ws", mode="eval", judge_pairs=folder)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "0/3 judged · 3 left" in text and "Join cat and dog." in text and "cat-dog" in text
        assert_snapshot(app, "pairs_review")
        await pilot.press("a")
        assert "Join red and blue." in screen_text(app) and "identical to B" in screen_text(app)
        await pilot.press("t", "b")
        assert "all judged" in screen_text(app)
        await pilot.press("u")
        assert "Join sun and moon." in screen_text(app) and "2/3 judged" in screen_text(app)
        assert "sun\\x0emoon" in screen_text(app)  # a control character shows escaped, never sent to the terminal
        await pilot.press("b")
        with ABStore(folder / "ab.sqlite") as store:
            judged = {p.id: (p.choice, p.a, p.b) for p in store.pairs()}
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0 and not app.is_running
    assert [choice for choice, _, _ in judged.values()] == ["A", "tie", "B"]
    result = write_preference_file(folder, tmp_path / "prefs.jsonl")
    assert (result["written"], result["ties"], result["identical"]) == (2, 0, 1)  # the tie's answers were identical
    chosen = [ex.messages[-1]["content"] for ex in load_examples(tmp_path / "prefs.jsonl").examples]
    assert chosen == [judged["p0-0"][1], judged["p2-0"][2]]


def test_an_llm_judge_judges_in_both_orders_and_a_position_bias_is_a_tie(chat_run, prompts, tmp_path, capsys):
    """--judge-endpoint: each pair is asked twice, the answers swapped; a judge that prefers the longer answer
    agrees with itself and its choices are written, one that always says A (a pure position bias) gives ties
    only. Pairs judged before are left as they are."""
    import re

    from openai_server import openai_server

    def longer(body):
        first, second = re.search(r"Answer A:\n(.*)\n\nAnswer B:\n(.*)\Z", body["messages"][1]["content"], re.S).groups()
        return ("A" if len(first) > len(second) else "B" if len(second) > len(first) else "tie") + ": longer.", None

    out = tmp_path / "prefs.jsonl"
    seed = ("--seed", "7")  # a folder of its own: the module's run keeps the other tests' judgements
    with openai_server(longer) as (url, seen):
        result = pairs_cli(chat_run, prompts, out, capsys, *seed, "--judge-endpoint", url)
    distinct = result["judge"]["judged"]
    assert len(seen) == 2 * distinct and distinct + result["identical"] == 5
    loaded = load_examples(out).examples
    assert len(loaded) == result["written"] == distinct - result["judge"]["ties"]
    assert all(len(ex.messages[-1]["content"]) > len(ex.rejected[-1]["content"]) for ex in loaded)

    with openai_server(lambda body: ("A, it reads better.", None)) as (url, seen):
        again = pairs_cli(chat_run, prompts, out, capsys, *seed, "--judge-endpoint", url)
    assert again["judge"]["judged"] == 0 and not seen  # nothing left to judge
    biased = tmp_path / "biased-prompts.jsonl"
    biased.write_text(prompts.read_text().replace("cat dog", "dog cat"))  # other prompts: a folder of their own
    with openai_server(lambda body: ("A, it reads better.", None)) as (url, seen):
        result = pairs_cli(chat_run, biased, tmp_path / "biased.jsonl", capsys, *seed, "--judge-endpoint", url)
    assert result["written"] == 0 and result["judge"]["ties"] == result["judge"]["judged"] > 0
