"""The optional judge against a real OpenAI-compatible HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from engine.evaluation.endpoint import EndpointError
from engine.evaluation.judge import judge_rows, score


@pytest.fixture
def server():
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            graded = body["messages"][1]["content"].rsplit("Answer to grade:\n", 1)[1]
            reply = "5. Matches the reference." if graded == "ok" else "Score: 2 - wrong fields"
            if graded == "garbage":
                reply = "I cannot grade this"
            data = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/v1", seen
    httpd.shutdown()


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
