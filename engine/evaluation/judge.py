"""Optional LLM judge: rubric scores from an OpenAI-compatible endpoint the user points at
(a local vLLM or llama.cpp server, say). Off by default, never required; stdlib only."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request

RUBRIC = ("You grade an answer against a reference. Score 1 to 5: 5 = fully correct and in the requested "
          "format, 3 = partly correct, 1 = wrong or off-task. Reply with the score first, then one sentence why.")


class JudgeError(RuntimeError):
    pass


def score(endpoint: str, model: str, prompt: str, answer: str, reference: str, timeout: float = 60) -> dict:
    """{"score": 1..5, "reason": str} from one chat completion at temperature 0."""
    body = {"model": model, "temperature": 0, "max_tokens": 100, "messages": [
        {"role": "system", "content": RUBRIC},
        {"role": "user", "content": f"Instruction:\n{prompt}\n\nReference answer:\n{reference}\n\n"
                                    f"Answer to grade:\n{answer}"}]}
    request = urllib.request.Request(endpoint.rstrip("/") + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    if os.environ.get("OPENAI_API_KEY"):
        request.add_header("Authorization", f"Bearer {os.environ['OPENAI_API_KEY']}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read())["choices"][0]["message"]["content"]
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError) as exc:
        raise JudgeError(f"judge at {endpoint} failed: {exc}; check --judge-endpoint (e.g. "
                         "http://localhost:8000/v1) and --judge-model") from None
    found = re.search(r"\b([1-5])\b", reply)
    if not found:
        raise JudgeError(f"judge reply has no 1-5 score: {reply[:80]!r}")
    return {"score": int(found.group(1)), "reason": reply[found.end():].strip(" .:-\n")[:200]}


def judge_rows(rows: list[dict], side: str, endpoint: str, model: str) -> float:
    """Score every row's answer on one side; returns the mean score and marks each row."""
    for row in rows:
        row[f"{side}_judge"] = score(endpoint, model, row["prompt"], row[side], row["reference"])
    return round(sum(r[f"{side}_judge"]["score"] for r in rows) / max(1, len(rows)), 3)
