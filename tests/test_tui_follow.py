"""The monitor's data side: bounded downsampled curves and incremental following by byte offset."""

from __future__ import annotations

import math

import pytest
from tui_fixtures import make_run

from engine.runs.events import EventWriter
from tui.follow import BucketSeries, RunFollower, fmt_age, fmt_duration, fmt_num, word_diff


def test_bucket_series_stays_bounded_and_keeps_the_mean():
    s = BucketSeries(capacity=8)
    for i in range(1000):
        s.add(i, float(i))
    pts = s.points()
    assert len(pts) <= 8 + 1  # full buckets plus the partial newest one
    assert s.count == 1000 and s.last == (999, 999.0)
    # Means weighted by bucket size give back the mean of all points.
    counts = [b[4] for b in s.buckets] + ([s.pending[4]] if s.pending else [])
    assert sum(counts) == 1000
    assert sum(p[1] * c for p, c in zip(pts, counts)) / 1000 == pytest.approx(499.5)
    assert pts[0][2] == 0.0 and pts[-1][0] == 999  # min of the oldest bucket, newest x last
    assert all(a[0] < b[0] for a, b in zip(pts, pts[1:]))


def test_bucket_series_keeps_extremes_in_min_max():
    s = BucketSeries(capacity=4)
    for i in range(100):
        s.add(i, 100.0 if i == 37 else 1.0)
    assert max(p[3] for p in s.points()) == 100.0  # a spike survives downsampling


def test_nonfinite_values_are_counted_not_drawn():
    s = BucketSeries()
    s.add(1, 1.0)
    s.add(2, math.nan)
    s.add(3, math.inf)
    assert s.nonfinite == 2 and len(s.points()) == 1


def test_odd_capacity_is_refused():
    with pytest.raises(ValueError):
        BucketSeries(capacity=7)


def test_follower_reads_only_new_events_and_waits_for_torn_lines(tmp_path):
    run = make_run(tmp_path, steps=20)
    f = RunFollower(run)
    assert f.poll() > 20
    offset = f.reader.offset
    assert f.poll() == 0 and f.reader.offset == offset  # nothing new: no work
    with open(run.events_path, "a") as fh:
        fh.write('{"seq": 999, "type": "log", "step": 21, "loss": 0.5')  # no newline yet
        fh.flush()
        assert f.poll() == 0
        fh.write(', "grad_norm": 2.0}\n')
    assert f.poll() == 1
    assert f.series["loss"].last == (21.0, 0.5) and f.series["grad_norm"].last == (21.0, 2.0)


def test_follower_collects_warnings_acks_checkpoints_errors(tmp_path):
    run = make_run(tmp_path, steps=30)
    w = EventWriter(run.events_path)
    w.write("command_ack", 30, command="pause", id="abc")
    w.write("checkpoint", 30, path="checkpoints/checkpoint-30")
    w.write("error", 31, message="CUDA out of memory", advice="halve the batch size")
    w.write("log", 32, loss=float("nan"))
    w.write("eval", 40, eval_loss=0.75, eval_runtime=1.0)  # as the engine writes it
    w.close()
    f = RunFollower(run)
    f.poll()
    view = f.view({"state": "running"}, ["a", "b"])
    assert view.acks["abc"]["command"] == "pause"
    assert [x["code"] for x in view.warnings] == ["grad_spike"]
    assert view.checkpoints[-1]["step"] == 30
    assert view.errors[-1]["advice"] == "halve the batch size"
    assert view.nonfinite["loss"] == 1
    assert len(view.series["eval_loss"]) == 4  # evals at steps 10, 20, 30, 40
    assert view.series_last["eval_loss"] == (40.0, 0.75) and view.nonfinite["loss"] == 1
    assert view.log_tail == ("a", "b") and not view.replaying


def test_chunked_replay_reports_progress(tmp_path):
    run = make_run(tmp_path, steps=200)
    f = RunFollower(run)
    f.poll(max_bytes=4096)
    view = f.view()
    assert view.replaying and 0 < view.replay_fraction < 1
    while f.poll(max_bytes=4096):
        pass
    assert not f.view().replaying and f.series["loss"].count == 200


def test_memory_of_a_long_replay_is_bounded(tmp_path):
    run = make_run(tmp_path, steps=0, warnings=False, evals=False)
    w = EventWriter(run.events_path)
    for step in range(1, 20001):
        w.write("log", step, loss=1.0 / step, learning_rate=1e-4, grad_norm=1.0)
        if step % 100 == 0:
            w.write("warning", step, code="x", message="m")
    w.close()
    f = RunFollower(run, capacity=64, keep=10)
    while f.poll(max_bytes=1 << 20):
        pass
    kept = sum(len(s.buckets) for s in f.series.values())
    assert f.events == 20001 + 200
    assert kept <= 4 * 64 and len(f.warnings) == 10


def test_formatters():
    assert fmt_duration(3725) == "1h02m" and fmt_duration(None) == "?" and fmt_duration(59) == "59s"
    assert fmt_age(7300) == "2h" and fmt_age(-1) == "?"
    assert fmt_num(0.000123) == "1.23e-04" and fmt_num(2.5) == "2.500" and fmt_num(float("nan")) == "nan"


def test_follower_compares_the_newest_answers_with_the_evaluation_before(tmp_path):
    run = make_run(tmp_path, steps=0, evals=False, warnings=False)
    writer = EventWriter(run.events_path)

    def sample(step, *answers):
        writer.write("sample", step, samples=[{"index": i, "prompt": f"q{i}", "reference": f"r{i}", "answer": a}
                                              for i, a in enumerate(answers)])

    follower = RunFollower(run)
    follower.poll()
    assert follower.view().samples == () and follower.view().sample_steps == (None, None)
    sample(10, "cat cat", "dog")
    follower.poll()
    first = follower.view()
    assert first.sample_steps == (10, None)
    assert [(s.prompt, s.reference, s.answer, s.previous, s.changed) for s in first.samples] == [
        ("q0", "r0", "cat cat", None, False), ("q1", "r1", "dog", None, False)]
    sample(20, "cat dog", "dog")
    sample(30, "cat-dog is the answer", "dog")
    writer.close()
    follower.poll()
    view = follower.view()
    assert view.sample_steps == (30, 20)  # only the last two evaluations count
    assert [(s.answer, s.previous, s.changed) for s in view.samples] == [
        ("cat-dog is the answer", "cat dog", True), ("dog", "dog", False)]
    follower.feed({"type": "sample", "step": 40, "samples": [["not", "a", "sample"], {"index": [1], "answer": 3}]})
    assert [(s.index, s.answer, s.previous) for s in follower.view().samples] == [(1, "3", "dog")]


def test_word_diff_marks_changed_words_and_elides_far_context():
    assert word_diff("blue blue", "blue star") == [("same", "blue"), ("del", "blue"), ("add", "star")]
    old = "one two three four five six seven eight nine ten"
    assert word_diff(old, old.replace("six", "SIX")) == [
        ("gap", "…"), ("same", "three four five"), ("del", "six"), ("add", "SIX"), ("same", "seven eight nine"),
        ("gap", "…")]
    assert word_diff("", "new words") == [("add", "new words")]
    assert word_diff("a b", "a") == [("same", "a"), ("del", "b")]
