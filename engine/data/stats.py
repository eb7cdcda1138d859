"""Statistics of a dataset: counts, lengths, turns and roles, class balance, flags per rule, the two sides
of preference data; and the token-length estimate the plan is made from."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from engine.data.dedup import preference_parts
from engine.data.rows import attached_media, completion_start, trained_turn

CHARS_PER_TOKEN = 4  # about right for English text under the usual BPE vocabularies
TEMPLATE_TOKENS = 16  # the chat template's role markers around an example's turns
# Chosen longer than rejected in this share of the pairs or more: a length bias. DPO learns length as readily
# as quality from such pairs, and its models then answer longer without answering better (Park et al. 2024,
# "Disentangling Length from Quality in Direct Preference Optimization", arXiv:2403.19159). An unbiased file
# sits near half; 0.6 is a clear lean.
LENGTH_BIAS_SHARE = 0.6
# KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"; TRL's KTOTrainer
# warns alike): desirable_weight * desirables over undesirable_weight * undesirables should lie in [1, 4/3].
KTO_BALANCE = (1.0, 4 / 3)


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
    out.update(preference_stats(examples))
    return out


def preference_stats(examples) -> dict:
    """The pairs' chosen against rejected lengths (characters of the completions) and the KTO rows' balance,
    with `warnings` where a run would learn the wrong thing; {} for a file without preference rows."""
    out, warnings = {}, []
    pairs = [ex for ex in examples if ex.kind == "pair"]
    if pairs:
        chosen = np.array([_chars(ex.messages[completion_start(ex.messages):]) for ex in pairs])
        rejected = np.array([_chars(ex.rejected) for ex in pairs])
        longer = float(np.mean(chosen > rejected))
        out["pairs"] = {"count": len(pairs), "chosen_chars": _centre(chosen), "rejected_chars": _centre(rejected),
                        "chosen_longer": longer, "same_length": float(np.mean(chosen == rejected))}
        if longer >= LENGTH_BIAS_SHARE:
            warnings.append(f"length bias: chosen is longer than rejected in {longer:.0%} of the pairs (mean "
                            f"{chosen.mean():,.0f} against {rejected.mean():,.0f} characters); DPO learns to answer "
                            "longer from such pairs (Park et al. 2024): balance the lengths, or compare pairs of "
                            "like length")
    if contradicting := contradictions(examples):
        out["contradictions"] = contradicting
        warnings.append(f"{contradicting} preference rows contradict another: a pair and its swap, or one completion "
                        "labelled both desirable and undesirable; their losses pull both ways: keep one judgement")
    unpaired = [ex.desirable for ex in examples if ex.kind == "unpaired"]
    if unpaired:
        desirable = sum(unpaired)
        out["unpaired"] = {"desirable": desirable, "undesirable": len(unpaired) - desirable}
        if advice := kto_weight_advice(desirable, len(unpaired) - desirable):
            warnings.append(advice)
    if warnings:
        out["warnings"] = warnings
    return out


def contradictions(examples) -> int:
    """Preference rows that another row of the file contradicts: a pair whose swap (the same prompt, chosen and
    rejected exchanged) is in the file, a KTO completion that is also labelled the other way. Texts compared
    as duplicates are (engine.data.dedup: lower-cased, whitespace collapsed)."""
    judged = set()
    for ex in examples:
        if ex.kind != "sft":
            judged.add((ex.kind, *(" ".join(part.lower().split()) for part in preference_parts(ex))))
    opposite = {"desirable": "undesirable", "undesirable": "desirable"}
    return sum(1 for kind, prompt, first, second in judged if first != second  # identical-pair's, not these
               and ((kind, prompt, second, first) if kind == "pair" else (kind, prompt, first, opposite[second])) in judged)


def kto_weight_advice(desirable: int, undesirable: int, desirable_weight: float = 1.0,
                      undesirable_weight: float = 1.0) -> str | None:
    """What to set when the weighted KTO balance falls outside KTO_BALANCE, or None."""
    if not desirable or not undesirable:
        return (f"KTO rows are all {'desirable' if desirable else 'undesirable'}: KTO needs both kinds of "
                "completion")
    balance = desirable_weight * desirable / (undesirable_weight * undesirable)
    low, high = KTO_BALANCE
    if low <= balance <= high:
        return None
    middle = (low + high) / 2  # aimed at, so that the rounded weight stays inside the range
    if balance < low:  # too few desirable rows: weigh them up
        fix = f"desirable_weight: {middle * undesirable_weight * undesirable / desirable:.2f}"
    else:  # too many: weigh the undesirable ones up
        fix = f"undesirable_weight: {desirable_weight * desirable / (middle * undesirable):.2f}"
    return (f"KTO balance: {desirable:,} desirable and {undesirable:,} undesirable rows give desirable_weight x "
            f"desirable / (undesirable_weight x undesirable) = {balance:.2f}, outside the KTO paper's 1 to 4/3; "
            f"set {fix}")


def _chars(messages: list[dict]) -> int:
    return sum(len(m["content"]) for m in messages)


def _centre(values: np.ndarray) -> dict:
    return {"mean": float(values.mean()), "median": float(np.median(values))}


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
