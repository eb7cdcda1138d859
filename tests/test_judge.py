"""The optional judge against a real OpenAI-compatible HTTP server on loopback."""

from __future__ import annotations

import pytest
from openai_server import openai_server

from engine.evaluation.endpoint import EndpointError
from engine.evaluation.judge import judge_rows, score


@pytest.fixture
def server():
    def reply(body):
        graded = body["messages"][1]["content"].rsplit("Answer to grade:\n", 1)[1]
        if graded == "garbage":
            return "I cannot grade this", None
        return ("5. Matches the reference." if graded == "ok" else "Score: 2 - wrong fields"), None

    with openai_server(reply) as served:
        yield served


def test_scores_are_parsed_and_averaged(server):
    url, seen = server
    assert score(url, "m", "p", "ok", "ref") == {"score": 5, "reason": "Matches the reference"}
    rows = [{"prompt": "p", "reference": "r", "tuned": "ok"}, {"prompt": "p", "reference": "r", "tuned": "bad"}]
    assert judge_rows(rows, "tuned", url, "m") == 3.5
    assert rows[1]["tuned_judge"]["score"] == 2
    assert seen[0][0] == "/v1/chat/completions" and seen[0][1]["temperature"] == 0


def test_unusable_replies_and_dead_endpoints_are_clear(server):
    url, _ = server
    with pytest.raises(EndpointError, match="no 1-5 score"):
        score(url, "m", "p", "garbage", "r")
    with pytest.raises(EndpointError, match="check --judge-endpoint"):
        score("http://127.0.0.1:9/v1", "m", "p", "a", "r", timeout=5)
