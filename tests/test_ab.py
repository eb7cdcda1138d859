"""engine.evaluation.ab: the blind A/B store survives a killed process, keeps its random order, counts right."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.evaluation.ab import ABStore, pairs_from_report, summarise, wilson_interval

ROOT = Path(__file__).resolve().parents[1]


def make_pairs(n: int) -> list[dict]:
    return [{"id": f"p{i}", "prompt": f"prompt {i}", "baseline": f"base {i}", "tuned": f"tuned {i}"}
            for i in range(n)]


def test_sides_are_random_across_pairs_and_stable_across_reopen(tmp_path):
    path = tmp_path / "ab.sqlite"
    with ABStore(path, make_pairs(40)) as store:
        sides = {p.id: p.tuned_side for p in store.pairs()}
        shown = {p.id: (p.a, p.b) for p in store.pairs()}
    assert 8 <= list(sides.values()).count("A") <= 32  # both sides used (p of failing ~1e-4)
    for p_id, side in sides.items():
        i = p_id[1:]
        assert shown[p_id] == ((f"tuned {i}", f"base {i}") if side == "A" else (f"base {i}", f"tuned {i}"))
    # Reopen (with the pairs given again, as the screen does): same sides, same order.
    with ABStore(path, make_pairs(40)) as store:
        assert {p.id: p.tuned_side for p in store.pairs()} == sides
        assert [p.id for p in store.pairs()] == [f"p{i}" for i in range(40)]
    # A different store draws a different seed, so a reviewer cannot learn a fixed pattern.
    with ABStore(tmp_path / "other.sqlite", make_pairs(40)) as other:
        assert {p.id: p.tuned_side for p in other.pairs()} != sides


def test_new_pairs_are_appended_without_moving_the_others(tmp_path):
    path = tmp_path / "ab.sqlite"
    with ABStore(path, make_pairs(5)) as store:
        before = {p.id: p.tuned_side for p in store.pairs()}
        store.judge("p0", "A")
    with ABStore(path, make_pairs(8)) as store:
        pairs = store.pairs()
        assert [p.position for p in pairs] == list(range(8))
        assert {p.id: p.tuned_side for p in pairs[:5]} == before
        assert store.judgements() == {"p0": "A"}


def test_judge_resume_undo_and_summary(tmp_path):
    with ABStore(tmp_path / "ab.sqlite", make_pairs(6), seed="fixed") as store:
        pairs = store.pairs()
        assert store.next_unjudged().id == "p0"
        tuned = {p.id: p.tuned_side for p in pairs}
        other = {"A": "B", "B": "A"}
        store.judge("p0", tuned["p0"])          # tuned wins
        store.judge("p1", tuned["p1"])          # tuned wins
        store.judge("p2", other[tuned["p2"]])   # baseline wins
        store.judge("p3", "tie")
        store.judge("p4", "skip")
        assert store.next_unjudged().id == "p5"
        s = store.summary()
        assert (s["wins"], s["losses"], s["ties"], s["skipped"]) == (2, 1, 1, 1)
        assert (s["judged"], s["remaining"], s["total"]) == (5, 1, 6)
        assert s["win_rate"] == pytest.approx(2.5 / 4)
        assert (s["ci_low"], s["ci_high"]) == pytest.approx(wilson_interval(2.5, 4))
        assert store.pair("p2").outcome() == "loss" and store.pair("p3").outcome() == "tie"

        assert store.undo() == "p4"
        assert store.undo() == "p3"
        assert store.next_unjudged().id == "p3"
        assert store.summary()["judged"] == 3
        with pytest.raises(ValueError):
            store.judge("p3", "C")
        with pytest.raises(KeyError):
            store.judge("nope", "A")
        for _ in range(3):
            store.undo()
        assert store.undo() is None and store.summary()["win_rate"] is None


def test_wilson_interval_on_hand_made_counts():
    # 8 of 10: the textbook Wilson 95% interval is 0.490 to 0.943 (Wald would give 0.552 to 1.048).
    low, high = wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    # All wins stays inside [0, 1] and is not a zero-width interval.
    low, high = wilson_interval(5, 5)
    assert round(low, 3) == 0.566 and high == pytest.approx(1.0)
    # 50 of 100: symmetric around one half.
    low, high = wilson_interval(50, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # Ties count half: 6 wins, 2 losses, 2 ties is a rate of 0.7 on n = 10.
    s = summarise(6, 2, 2)
    assert s["win_rate"] == pytest.approx(0.7)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx(wilson_interval(7, 10))
    assert summarise(0, 0, 0)["win_rate"] is None


CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from engine.evaluation.ab import ABStore
store = ABStore({path!r})
for pair, choice in zip(store.pairs(), ["A", "B", "tie", "skip", "A", "B", "A"]):
    store.judge(pair.id, choice)
    print(pair.id, choice, flush=True)   # printed only after the commit returned
print("waiting", flush=True)
time.sleep(60)
"""


def test_judgements_survive_sigkill(tmp_path):
    path = tmp_path / "eval" / "ab.sqlite"
    ABStore(path, make_pairs(10)).close()
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT), path=str(path))],
                            stdout=subprocess.PIPE, text=True)
    seen = {}
    try:
        for line in proc.stdout:
            if line.strip() == "waiting":
                break
            pair_id, choice = line.split()
            seen[pair_id] = choice
        os.kill(proc.pid, signal.SIGKILL)  # no close(), no clean exit
    finally:
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert len(seen) == 7
    with ABStore(path, make_pairs(10)) as store:
        assert store.judgements() == seen
        assert store.next_unjudged().id == "p7"
        assert store.summary()["remaining"] == 3


def test_pairs_from_report_rows():
    report = json.loads(json.dumps({"rows": [
        {"line": 3, "prompt": "q", "reference": "r", "tuned": "t", "baseline": "b"},
        {"line": 4, "prompt": "q2", "reference": "r", "tuned": "t2", "baseline": None},
    ]}))
    assert pairs_from_report(report) == [{"id": "line-3", "prompt": "q", "baseline": "b", "tuned": "t"}]
    assert pairs_from_report({"rows": []}) == []
