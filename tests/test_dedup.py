"""Dedup on what real rows hold: any character (NUL included)."""

from __future__ import annotations

from engine.data.dedup import dedup, minhash, near_clusters
from engine.data.load import Example


def test_a_nul_inside_a_row_does_not_shift_the_rows_after_it():
    first = ("the quick brown fox jumps over the lazy dog near the river bank early this morning in the rain, "
             "then runs up the hill past the old mill and the church before the farmer wakes and lets the hens out")
    second = ("tables and indexes make a database fast when the queries only read the columns they need, and a "
              "covering index answers a query from the index alone without touching the table rows at all")
    texts = [first, "a row with a nul\x00inside it, as scraped web text sometimes has", second,
             first + " again", second + " too"]
    expected = [[0, 3], [2, 4]]
    assert near_clusters(texts).groups == expected
    assert near_clusters([t.replace("\x00", " ") for t in texts]).groups == expected
    examples = [Example([{"role": "user", "content": "q"}, {"role": "assistant", "content": t}], "m", i + 1)
                for i, t in enumerate(texts)]
    assert dedup(examples)["near"].groups == expected


def test_a_word_at_the_end_of_one_row_does_not_run_on_into_the_next():
    sig, has = minhash(["the cat sat", "on the mat", "the cat sat"])  # no separator between rows any more
    assert has.all() and (sig[0] == sig[2]).all()
