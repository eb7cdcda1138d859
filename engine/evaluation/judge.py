"""Optional LLM judge: rubric scores from an OpenAI-compatible endpoint the user points at
(engine.evaluation.endpoint). Off by default, never required; stdlib only."""

from __future__ import annotations

import re

from engine.evaluation.endpoint import EndpointError, chat_completion

RUBRIC = ("You grade an answer against a reference. Score 1 to 5: 5 = fully correct and in the requested "
          "format, 3 = partly correct, 1 = wrong or off-task. Reply with the score first, then one sentence why.")


def score(endpoint: str, model: str, prompt: str, answer: str, reference: str, timeout: float = 60) -> dict:
    """{"score": 1..5, "reason": str} from one chat completion at temperature 0."""
    messages = [{"role": "system", "content": RUBRIC},
                {"role": "user", "content": f"Instruction:\n{prompt}\n\nReference answer:\n{reference}\n\n"
                                            f"Answer to grade:\n{answer}"}]
    reply = chat_completion(endpoint, model, messages, 100, "judge", "--judge-endpoint and --judge-model",
                            timeout)["content"]
    found = re.search(r"\b([1-5])\b", reply)
    if not found:
        raise EndpointError(f"judge reply has no 1-5 score: {reply[:80]!r}")
    return {"score": int(found.group(1)), "reason": reply[found.end():].strip(" .:-\n")[:200]}


def judge_rows(rows: list[dict], side: str, endpoint: str, model: str) -> float:
    """Score every row's answer on one side; returns the mean score and marks each row."""
    for row in rows:
        row[f"{side}_judge"] = score(endpoint, model, row["prompt"], row[side], row["reference"])
    return round(sum(r[f"{side}_judge"]["score"] for r in rows) / max(1, len(rows)), 3)


PAIRWISE = ("You compare two answers to the same instruction. Reply with A if the first answer is better, B if "
            "the second is better, or tie if neither is; then one sentence why.")


def prefer(endpoint: str, model: str, prompt: str, first: str, second: str, timeout: float = 60) -> str:
    """"A", "B" or "tie": which of two answers the judge prefers, from one chat completion at temperature 0."""
    messages = [{"role": "system", "content": PAIRWISE},
                {"role": "user", "content": f"Instruction:\n{prompt}\n\nAnswer A:\n{first}\n\nAnswer B:\n{second}"}]
    reply = chat_completion(endpoint, model, messages, 100, "judge", "--judge-endpoint and --judge-model",
                            timeout)["content"]
    found = re.search(r"\b(A|B|tie)\b", reply, flags=re.IGNORECASE)
    if not found:
        raise EndpointError(f"judge reply names neither A, B nor tie: {reply[:80]!r}")
    return found.group(1).upper() if found.group(1).lower() != "tie" else "tie"


def judge_win_rate(rows: list[dict], endpoint: str, model: str) -> dict:
    """Win rate of the tuned answers over the baseline side's, as the blind A/B review counts it (ties half,
    Wilson's 95% interval: engine.evaluation.ab.summarise). Each pair is judged twice, the tuned answer first
    and then second, because LLM judges favour a position (Zheng et al. 2023, MT-Bench): a win or a loss only
    when both orders agree, anything else a tie. Marks each row's `judge_preference`."""
    from engine.evaluation.ab import summarise

    outcomes = []
    for row in rows:
        orders = (prefer(endpoint, model, row["prompt"], row["tuned"], row["baseline"]),
                  prefer(endpoint, model, row["prompt"], row["baseline"], row["tuned"]))
        row["judge_preference"] = {("A", "B"): "win", ("B", "A"): "loss"}.get(orders, "tie")
        outcomes.append(row["judge_preference"])
    return {**summarise(outcomes.count("win"), outcomes.count("loss"), outcomes.count("tie")),
            "judge": f"{model} at {endpoint}", "orders": "both"}
