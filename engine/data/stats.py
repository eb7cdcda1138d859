"""Statistics of a dataset: counts, lengths, turns and roles, class balance, flags per rule; and the
token-length estimate the plan is made from."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from engine.data.rows import attached_media, trained_turn

CHARS_PER_TOKEN = 4  # about right for English text under the usual BPE vocabularies
TEMPLATE_TOKENS = 16  # the chat template's role markers around an example's turns


def histogram(values, bins: int = 20) -> dict:
    """Counts in equal-width bins over [min, max] plus percentiles; empty input gives zeros."""
    arr = np.asarray(values, dtype=np.int64)
    if arr.size == 0:
        return {"count": 0, "min": 0, "p50": 0, "p90": 0, "p99": 0, "max": 0, "bins": [0] * bins, "edges": []}
    counts, edges = np.histogram(arr, bins=bins)
    p50, p90, p99 = (int(x) for x in np.percentile(arr, [50, 90, 99]))
    return {"count": int(arr.size), "min": int(arr.min()), "p50": p50, "p90": p90, "p99": p99,
            "max": int(arr.max()), "mean": float(arr.mean()), "bins": counts.tolist(),
            "edges": [round(float(e), 1) for e in edges]}


def dataset_stats(examples, problems=(), flags=(), clusters=None, token_counts=None) -> dict:
    roles = Counter(m["role"] for ex in examples for m in ex.messages)
    turns = Counter(len(ex.messages) for ex in examples)
    labels = Counter(ex.label for ex in examples if ex.label is not None)
    answers = [len(ex.messages[-1]["content"]) for ex in examples]
    chars = [sum(len(m["content"]) for m in ex.messages) for ex in examples]
    flags_per_rule = Counter(f.rule for f in flags)
    out = {
        "examples": len(examples),
        "skipped": len(problems),
        "roles": dict(roles),
        "turns": {str(k): v for k, v in sorted(turns.items())},
        "answer_chars": histogram(answers),
        "example_chars": histogram(chars),
        "flags": dict(sorted(flags_per_rule.items())),
        "flagged_examples": len({f.index for f in flags}),
    }
    if carried := carried_counts(examples):
        out["carried"] = carried
    if token_counts is not None:
        out["tokens"] = histogram(token_counts)
        out["tokens"]["total"] = int(np.sum(token_counts))
    if labels:
        out["labels"] = dict(labels.most_common())
    if clusters is not None:
        out["duplicate_clusters"] = len(clusters.groups)
        out["duplicates"] = sum(len(g) - 1 for g in clusters.groups)
    return out


def carried_counts(examples) -> dict[str, int]:
    """How many examples carry what changes training beyond plain turns (only the kinds present)."""
    kinds = {
        "tool calls": lambda ex: any(m.get("tool_calls") for m in ex.messages),
        "tool schemas": lambda ex: bool(ex.tools),
        "weight-0 turns": lambda ex: any(m["role"] == "assistant" and not trained_turn(m) for m in ex.messages),
        "reasoning": lambda ex: any(m.get("reasoning_content") for m in ex.messages),
        "media": lambda ex: attached_media(ex.messages, ex.extra) is not None,
    }
    counts = {name: sum(1 for ex in examples if has(ex)) for name, has in kinds.items()}
    return {name: n for name, n in counts.items() if n}


def sparkline(counts: list[int]) -> str:
    blocks = " ▁▂▃▄▅▆▇█"
    top = max(counts) if counts else 0
    if not top:
        return " " * len(counts)
    return "".join(blocks[0 if c == 0 else max(1, round(c / top * 8))] for c in counts)


@dataclass(frozen=True)
class TokenEstimate:
    examples: int
    mean: int | None  # tokens per example; None without examples
    p99: int | None  # 99th percentile of example length in tokens


def estimate_tokens(examples) -> TokenEstimate:
    """Example lengths in tokens from their characters, without a tokenizer: what `tunedeck plan` and
    the Plan screen recommend max_seq_length and the training time from."""
    lengths = sorted(sum(len(m["content"]) for m in ex.messages) // CHARS_PER_TOKEN + TEMPLATE_TOKENS
                     for ex in examples)
    if not lengths:
        return TokenEstimate(0, None, None)
    return TokenEstimate(len(lengths), sum(lengths) // len(lengths),
                         lengths[min(len(lengths) - 1, int(0.99 * len(lengths)))])
