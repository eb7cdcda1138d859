"""The chat engine (engine.chat) and `tunedeck chat`: the protocol of the real model process on a run of the
tiny model (streamed tokens, a stop, a bad request), which weights a chat loads, saving a conversation as an
example, and the headless command's contract."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from chat_fixtures import CHAT_RUN_ID, SYSTEM_PROMPT

from engine.chat.client import ChatEngine, ChatEngineError
from engine.chat.session import ChatWeights, chat_weights, default_dataset, export_kind, save_example
from engine.data.load import load_examples
from engine.runs.protocol import RunError
from engine.runs.workspace import create_run

QUESTION = [{"role": "user", "content": "join red and cat"}]


@pytest.fixture(autouse=True)
def chat_on_the_cpu(monkeypatch):
    """The chat engine answers on the CPU, so that what it reports is the same on a machine with a GPU."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def tunedeck(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tui.cli", *argv], input=stdin, capture_output=True, text=True,
                          timeout=600)


def test_protocol_streams_tokens_stops_and_refuses_bad_requests(chat_run):
    engine = ChatEngine(chat_run)
    engine.start()
    try:
        ready = engine.wait_ready()
        assert ready["system_prompt"] == SYSTEM_PROMPT and ready["weights"] == "final" and ready["device"] == "cpu"
        request_id = engine.generate(QUESTION, "tuned", max_new_tokens=8)
        replies = []
        while not replies or replies[-1]["type"] != "done":
            replies.append(engine.read())
        tokens = [r for r in replies if r["type"] == "token"]
        done = replies[-1]
        assert len(tokens) > 1 and all(r["id"] == request_id and r["side"] == "tuned" for r in tokens)
        assert "".join(r["text"] for r in tokens).strip() == done["text"]
        assert done["tokens"] == 8 and not done["stopped"] and done["first_token_seconds"] <= done["seconds"]

        engine.send({"type": "generate", "id": 99, "side": "sideways", "messages": QUESTION})
        assert engine.read() == {"type": "error", "id": 99, "message": "side must be one of tuned, base, not 'sideways'"}
        engine.send({"type": "dance"})
        assert "unknown request type 'dance'" in engine.read()["message"]

        # a stop ends an answer asked for before it, at the next token
        long_id = engine.generate(QUESTION, "base", max_new_tokens=2000)
        engine.stop()
        while (reply := engine.read())["type"] != "done":
            pass
        assert reply["id"] == long_id and reply["stopped"] and reply["tokens"] < 2000
        # and not the next one
        assert engine.answer(QUESTION, "base", max_new_tokens=3)["stopped"] is False
    finally:
        engine.close()
    assert engine.proc.returncode == 0  # stdin closed: it ends by itself


def test_weights_of_a_chat_and_what_is_missing(chat_run, tmp_path):
    assert chat_weights(chat_run) is None  # the final adapter/
    assert chat_weights(chat_run, ChatWeights(5)) == chat_run.checkpoints_dir / "checkpoint-5"
    with pytest.raises(RunError, match="has no checkpoint 7; complete checkpoints: 5, 10"):
        chat_weights(chat_run, ChatWeights(7))
    untrained = create_run(tmp_path, {"model": "m", "data": "d.jsonl"})
    with pytest.raises(RunError, match="has no adapter/ or model/ yet: wait until it finishes training"):
        chat_weights(untrained)
    (untrained.checkpoints_dir / "checkpoint-3").mkdir(parents=True)  # no COMPLETE marker
    with pytest.raises(RunError, match="checkpoint 3 of run .* is incomplete"):
        chat_weights(untrained, ChatWeights(3))
    # an export: what `tunedeck export` writes, recognised by its files
    assert export_kind(chat_run.path / "adapter") == "adapter"
    (tmp_path / "two").mkdir()
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / "two" / name).write_bytes(b"GGUF")
    assert export_kind(tmp_path / "two" / "a.gguf") == "gguf"
    for path, error in ((tmp_path / "gone", "does not exist"), (tmp_path / "two", "not an export .2 GGUF files"),
                        (chat_run.path, "no adapter_config.json, config.json or single .gguf file")):
        with pytest.raises(RunError, match=error):
            chat_weights(chat_run, ChatWeights(export=path))


def test_a_saved_conversation_is_an_example_on_its_own_line(tmp_path):
    run = create_run(tmp_path, {"model": "m", "data": "d.jsonl"})
    path = default_dataset(tmp_path, run)
    assert path == tmp_path / "data" / f"chat-{run.id}.jsonl"
    chat = [{"role": "system", "content": "S"}, *QUESTION, {"role": "assistant", "content": "red-cat"}]
    assert save_example(chat, path) == 1
    with open(path, "a") as f:
        f.write('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}')  # no newline
    assert save_example(chat, path) == 3
    result = load_examples(path)
    assert not result.problems and [ex.line for ex in result.examples] == [1, 2, 3]
    assert result.examples[2].messages == chat
    with pytest.raises(ValueError, match="ends with the assistant's answer"):
        save_example(QUESTION, path)


def test_headless_prompt_with_base_as_json(chat_run):
    out = tunedeck("chat", str(chat_run.path), "--base", "--prompt", "join red and cat", "--max-new-tokens", "4",
                   "--json")
    assert out.returncode == 0, out.stderr
    answers = json.loads(out.stdout)
    assert set(answers) == {"tuned", "base"} and all(isinstance(a, str) for a in answers.values())
    logged = [json.loads(line) for line in max((chat_run.path / "chat").glob("2*.jsonl")).read_text().splitlines()]
    assert [(t["side"], t["answer"]) for t in logged[-2:]] == [("tuned", answers["tuned"]), ("base", answers["base"])]


def test_headless_conversation_on_a_checkpoint(chat_run):
    out = tunedeck("chat", str(chat_run.path), "--checkpoint", "5", "--max-new-tokens", "3", "--json",
                   stdin="join red and cat\njoin sun and moon\n")
    assert out.returncode == 0, out.stderr
    first, second = (json.loads(line) for line in out.stdout.splitlines())
    assert set(first) == set(second) == {"tuned"}
    log = max((chat_run.path / "chat").glob("2*.jsonl"), key=lambda p: p.stat().st_mtime)
    turns = [json.loads(line) for line in log.read_text().splitlines()]
    assert [t["weights"] for t in turns] == ["checkpoint-5", "checkpoint-5"]
    assert turns[1]["messages"][1:] == [*QUESTION, {"role": "assistant", "content": first["tuned"]},
                                         {"role": "user", "content": "join sun and moon"}]


def test_headless_errors_are_one_line(chat_run, tmp_path):
    for argv, error in (
        (["--checkpoint", "7"], f"run {CHAT_RUN_ID} has no checkpoint 7; complete checkpoints: 5, 10"),
        (["--top-p", "0"], "--top-p must be above 0 and at most 1, not 0.0"),
        (["--temperature", "9"], "--temperature must be between 0 (greedy) and 5, not 9.0"),
    ):
        out = tunedeck("chat", str(chat_run.path), *argv, "--prompt", "hi")
        assert (out.returncode, out.stderr.strip().splitlines()) == (2, [f"tunedeck: error: {error}"])
    untrained = create_run(tmp_path, {"model": "m", "data": "d.jsonl"})
    out = tunedeck("chat", str(untrained.path), "--prompt", "hi")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "has no adapter/ or model/ yet" in out.stderr


def test_a_model_that_cannot_load_is_one_error(tmp_path):
    run = create_run(tmp_path, {"model": str(tmp_path / "gone"), "data": "d.jsonl", "method": "lora"})
    (run.path / "adapter").mkdir()
    with pytest.raises(ChatEngineError, match="cannot load the models of"):
        engine = ChatEngine(run)
        engine.start()
        engine.wait_ready()
