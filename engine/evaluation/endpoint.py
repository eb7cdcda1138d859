"""An OpenAI-compatible chat endpoint the user points at (a local vLLM or llama.cpp server, say):
the judge's rubric scores and the reference model's answers both come from one. Stdlib only."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request


class EndpointError(RuntimeError):
    pass


def chat_completion(endpoint: str, model: str, messages: list[dict], max_tokens: int, who: str, options: str,
                    timeout: float = 60) -> dict:
    """One chat completion at temperature 0: {"content", "prompt_tokens", "completion_tokens"}, the token
    counts from the server's `usage` (None where it sends none). A failure names `who` asked (the judge,
    the reference model) and the command-line `options` to check."""
    body = {"model": model, "temperature": 0, "max_tokens": max_tokens, "messages": messages}
    request = urllib.request.Request(endpoint.rstrip("/") + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    if os.environ.get("OPENAI_API_KEY"):
        request.add_header("Authorization", f"Bearer {os.environ['OPENAI_API_KEY']}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read())
        content = reply["choices"][0]["message"]["content"]
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise EndpointError(f"{who} at {endpoint} failed: {exc}; check {options} (e.g. "
                            "http://localhost:8000/v1)") from None
    usage = reply.get("usage") or {}
    return {"content": content or "", "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens")}
