"""Train/validation/test splits that do not leak, and a leakage check between two files.

Seeded; stratified by label when examples have one; default proportions by size
(70/15/15 below 10,000 examples, 80/10/10 from there); every duplicate cluster
(exact or near) goes to one side whole, so a test example never has a near copy
in train. Preference rows (pairs, KTO rows) of one prompt, or of near copies of it, go
to one side together: a pair held out to measure a preference must ask a prompt the
training never showed.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from engine.data.dedup import Clusters, dedup, exact_clusters, example_text, merge, near_clusters, prompt_text
from engine.data.export import file_row, write_examples
from engine.data.load import LoadResult

SPLITS = ("train", "validation", "test")


def default_proportions(n: int) -> tuple[float, float, float]:
    return (0.7, 0.15, 0.15) if n < 10_000 else (0.8, 0.1, 0.1)


def split_indices(examples, seed: int = 0, proportions: tuple[float, float, float] | None = None,
                  similarity: float | None = 0.8) -> dict[str, list[int]]:
    """{"train": [...], "validation": [...], "test": [...]} example indices."""
    n = len(examples)
    proportions = proportions or default_proportions(n)
    if abs(sum(proportions) - 1) > 1e-6 or any(p < 0 for p in proportions):
        raise ValueError(f"proportions must be non-negative and sum to 1, got {proportions}")
    found = dedup(examples, similarity)
    clusters = merge(n, found["near"], found.get("prompts", Clusters([])))
    unit_of = list(range(n))
    for group in clusters.groups:
        for i in group:
            unit_of[i] = group[0]
    units: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        units[unit_of[i]].append(i)
    strata: dict[str | None, list[list[int]]] = defaultdict(list)
    for head, members in units.items():
        strata[examples[head].label].append(members)
    rng = random.Random(seed)
    out = {name: [] for name in SPLITS}
    for label in sorted(strata, key=str):
        stratum = strata[label]
        rng.shuffle(stratum)
        total = sum(len(u) for u in stratum)
        # whole units, largest first so big clusters do not overshoot the small splits
        stratum.sort(key=len, reverse=True)
        targets = [p * total for p in proportions]
        filled = [0.0, 0.0, 0.0]
        for unit in stratum:
            deficit = [t - f for t, f in zip(targets, filled)]
            k = max(range(3), key=lambda s: (deficit[s], -s))
            out[SPLITS[k]].extend(unit)
            filled[k] += len(unit)
    for name in SPLITS:
        out[name].sort()
    return out


def write_splits(result: LoadResult, source: str | Path, out_dir: str | Path, seed: int = 0,
                 proportions: tuple[float, float, float] | None = None, fmt: str = "jsonl",
                 similarity: float | None = 0.8) -> dict[str, dict]:
    """Write `<stem>.train|validation|test.<fmt>` into `out_dir` (the stem: `source`'s name up to its
    first dot); {"train": {"path", "examples"}, ...}. What `tunedeck data split` and the Data screen write."""
    parts = split_indices(result.examples, seed=seed, proportions=proportions, similarity=similarity)
    stem = Path(source).name.split(".")[0]
    written = {}
    for name, idx in parts.items():
        path = write_examples([file_row(result.examples[i]) for i in idx], Path(out_dir) / f"{stem}.{name}.{fmt}", fmt)
        written[name] = {"path": str(path), "examples": len(idx)}
    return written


def leakage(a_examples, b_examples, similarity: float | None = 0.8) -> dict:
    """Examples of b that are exact or near copies of examples of a: {"exact": [(ia, ib)], "near": [...]}.
    A preference row is judged by its prompt, as splits keep prompts apart."""
    texts = [prompt_text(e) if e.kind != "sft" else example_text(e.messages) for e in [*a_examples, *b_examples]]
    na = len(a_examples)

    def crossing(clusters) -> list[tuple[int, int]]:
        pairs = []
        for group in clusters.groups:
            left = [i for i in group if i < na]
            right = [i - na for i in group if i >= na]
            if left and right:
                pairs.extend((left[0], j) for j in right)
        return pairs

    exact = crossing(exact_clusters(texts))
    near = []
    if similarity:
        exact_b = {j for _, j in exact}
        near = [(i, j) for i, j in crossing(near_clusters(texts, similarity)) if j not in exact_b]
    return {"exact": exact, "near": near}
