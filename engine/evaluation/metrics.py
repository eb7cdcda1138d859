"""Metrics for generated answers; light (no torch), so they are tested on hand-made cases.

Correctness and format compliance are kept apart: a well-formed wrong answer and a
right answer wrapped in prose are different failures with different fixes.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter

_PUNCT = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> str:
    """Lower case, no punctuation or articles, single spaces (the SQuAD normalisation)."""
    text = text.lower().translate(_PUNCT)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def exact_match(prediction: str, reference: str) -> bool:
    return " ".join(prediction.split()) == " ".join(reference.split())


def normalised_match(prediction: str, reference: str) -> bool:
    return normalise(prediction) == normalise(reference)


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalise(prediction).split(), normalise(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 from the longest common subsequence of tokens."""
    pred, ref = normalise(prediction).split(), normalise(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    previous = [0] * (len(ref) + 1)
    for p in pred:
        current = [0]
        for j, r in enumerate(ref):
            current.append(previous[j] + 1 if p == r else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def key_phrase_recall(prediction: str, phrases: list[str]) -> float:
    if not phrases:
        return 1.0
    text = normalise(prediction)
    return sum(normalise(p) in text for p in phrases) / len(phrases)


def label_accuracy(prediction: str, reference: str) -> bool:
    """For classification: the first line of the answer, normalised, is the label."""
    first = prediction.strip().splitlines()[0] if prediction.strip() else ""
    return normalise(first) == normalise(reference)


def parse_json(text: str):
    try:
        return json.loads(text.strip())
    except ValueError:
        return None


def json_field_f1(prediction: str, reference: str) -> float:
    """For extraction into JSON: F1 over (key, value) pairs; 0 when the answer is not JSON."""
    pred, ref = parse_json(prediction), parse_json(reference)
    if not isinstance(ref, dict):
        return token_f1(prediction, reference)
    if not isinstance(pred, dict):
        return 0.0
    pairs = lambda d: {(k, json.dumps(v, sort_keys=True)) for k, v in d.items()}
    p, r = pairs(pred), pairs(ref)
    common = len(p & r)
    return 0.0 if not common else 2 * common / (len(p) + len(r))


# Format compliance ------------------------------------------------------------------

def is_json(text: str) -> bool:
    try:
        json.loads(text.strip())
    except ValueError:
        return False
    return True


def matches_schema(text: str, schema: dict) -> bool:
    import jsonschema

    value = parse_json(text)
    if value is None and text.strip() != "null":
        return False
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return False
    return True


def matches_regex(text: str, pattern: str) -> bool:
    return re.fullmatch(pattern, text.strip(), flags=re.DOTALL) is not None


TASK_METRICS = {
    "classification": ("label_accuracy", label_accuracy),
    "extraction": ("json_field_f1", json_field_f1),
    "formatting": ("json_field_f1", json_field_f1),
    "summarisation": ("rouge_l", rouge_l),
    "dialogue": ("rouge_l", rouge_l),
    "style": ("rouge_l", rouge_l),
}
DEFAULT_TASK_METRIC = ("token_f1", token_f1)


def task_metric(task: str | None):
    """(name, function(prediction, reference) -> float) for a task type."""
    return TASK_METRICS.get(task or "", DEFAULT_TASK_METRIC)


def format_checker(fmt: str | None, references: list[str]):
    """A check for the expected output format: given ('json', 'regex:...', a schema dict) or inferred
    from the references (all JSON -> JSON). None when there is no format to check."""
    if isinstance(fmt, dict):
        return lambda text: matches_schema(text, fmt)
    if fmt == "json":
        return is_json
    if isinstance(fmt, str) and fmt.startswith("regex:"):
        pattern = fmt[len("regex:"):]
        return lambda text: matches_regex(text, pattern)
    if fmt is None and references and all(is_json(r) for r in references):
        return is_json
    return None


def score_rows(rows: list[dict], side: str, task: str | None, fmt=None) -> dict:
    """Aggregate metrics for one side ('tuned', 'baseline', 'reference_model') and mark each row: exact
    match, format check, task metric."""
    name, metric = task_metric(task)
    check = format_checker(fmt, [r["reference"] for r in rows])
    n = len(rows) or 1
    totals = {"exact_match": 0.0, "normalised_match": 0.0, "task_metric": 0.0, "format_compliance": 0.0}
    for row in rows:
        prediction = row[side]
        row[f"{side}_exact"] = exact_match(prediction, row["reference"])
        row[f"{side}_format"] = check(prediction) if check else None
        totals["exact_match"] += row[f"{side}_exact"]
        totals["normalised_match"] += normalised_match(prediction, row["reference"])
        row[f"{side}_task"] = round(float(metric(prediction, row["reference"])), 4)
        totals["task_metric"] += row[f"{side}_task"]
        totals["format_compliance"] += bool(row[f"{side}_format"])
    result = {k: round(v / n, 4) for k, v in totals.items()}
    if check is None:
        result["format_compliance"] = None
    return result, name


def passed(row: dict, side: str) -> bool | None:
    """Whether a side's answer to one example is right: the task metric is full marks (a report from
    before per-row task scores: exact match); None when that side has no answer."""
    if row.get(side) is None:
        return None
    task = row.get(f"{side}_task")
    return task >= 1.0 if task is not None else bool(row.get(f"{side}_exact"))


# Latency and prompt cost ------------------------------------------------------------

def cost_metrics(rows: list[dict], side: str) -> dict:
    """Means per example of what a side's answers cost: prompt tokens, generated tokens, seconds, and
    generated tokens per second over all of them. From the rows' {side}_prompt_tokens,
    {side}_generated_tokens and {side}_seconds; a figure no row has (an endpoint without token usage) is None."""
    def mean(key):
        values = [r[key] for r in rows if r.get(key) is not None]
        return round(sum(values) / len(values), 4) if values else None

    timed = [r for r in rows if r.get(f"{side}_generated_tokens") is not None and r.get(f"{side}_seconds")]
    seconds = sum(r[f"{side}_seconds"] for r in timed)
    return {"prompt_tokens": mean(f"{side}_prompt_tokens"), "generated_tokens": mean(f"{side}_generated_tokens"),
            "seconds_per_example": mean(f"{side}_seconds"),
            "tokens_per_second": round(sum(r[f"{side}_generated_tokens"] for r in timed) / seconds, 2)
            if seconds else None}
