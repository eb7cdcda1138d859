"""The chat's model process: `python -m engine.chat.server --run-dir DIR [--checkpoint STEP | --export PATH]`.

Loads the run's models as evaluation does (engine.evaluation.run.Models: the base and the tuned model
sharing one copy of the base weights, 4 bit for QLoRA) and answers JSON lines on stdin with JSON lines on
stdout, one object each:

    in:  {"type": "generate", "id": N, "side": "tuned"|"base", "messages": [...], "temperature": 0.0,
          "top_p": 1.0, "max_new_tokens": 256}      temperature 0 is greedy
         {"type": "stop"}                           ends every answer asked for so far
    out: {"type": "loading"} then {"type": "ready", "run_id", "weights", "system_prompt", "device",
          "base_4bit"}                              base_4bit: a QLoRA run's base, held in 4 bit as trained
         {"type": "token", "id", "side", "text"}    as each token is generated
         {"type": "done", "id", "side", "text", "tokens", "seconds", "first_token_seconds",
          "tokens_per_second", "stopped"}
         {"type": "error", "id"?, "message"}        a bad request; at start-up, fatal (exit 1)

The conversation is the client's: each request carries all of it, and the run's system prompt goes first
where it has none, as in training. The chat template and special tokens are the run's tokenizer's.
Closing stdin ends the process. Heavy (imports torch): never imported by the UI.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from engine.chat.session import SIDES, ChatWeights, chat_weights, with_system


class Output:
    """stdout, one whole JSON line per message, from any thread."""

    def __init__(self, stream):
        self.stream, self.lock = stream, threading.Lock()

    def __call__(self, type: str, **fields) -> None:
        with self.lock:
            self.stream.write(json.dumps({"type": type, **fields}, ensure_ascii=False) + "\n")
            self.stream.flush()


class TokenStream(BaseStreamer):
    """Called by `generate` with each new token: sends the text it adds (held back while a character is
    still incomplete) and counts tokens up to and including the end of sequence."""

    def __init__(self, tokenizer, emit: Output, request: dict, eos: set[int], started: float):
        self.tokenizer, self.emit, self.request, self.eos = tokenizer, emit, request, eos
        self.prompt_seen, self.ended = False, False
        self.ids: list[int] = []
        self.text = ""
        self.started, self.first_token_at = started, None

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate passes the prompt first
            self.prompt_seen = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        for token in value.reshape(-1).tolist():
            if self.ended:
                return
            self.ids.append(token)
            self.ended = token in self.eos
            text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            if len(text) > len(self.text) and not text.endswith("\ufffd"):
                self.emit("token", id=self.request["id"], side=self.request["side"], text=text[len(self.text):])
                self.text = text

    def end(self) -> None:
        pass


class StopAsked(StoppingCriteria):
    """True once a stop arrived after this request: the answer ends at the next token."""

    def __init__(self, requests: Requests, arrival: int):
        self.requests, self.arrival = requests, arrival

    def __call__(self, input_ids, scores, **kwargs):
        stopped = self.arrival <= self.requests.stopped_through
        return torch.full((input_ids.shape[0],), stopped, dtype=torch.bool, device=input_ids.device)


class Requests:
    """Reads stdin in a thread: generate requests queue up, numbered as they arrive; a stop marks every request
    received so far."""

    def __init__(self, stream, emit: Output):
        self.queue: queue.Queue[dict | None] = queue.Queue()
        self.stopped_through = 0
        self.received = 0
        self.emit = emit
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
                kind = request["type"]
            except (ValueError, TypeError, KeyError):
                self.emit("error", message=f"not a request (a JSON object with a type): {line.strip()[:200]}")
                continue
            if kind == "stop":
                self.stopped_through = self.received
            elif kind == "generate":
                self.received += 1
                self.queue.put({**request, "arrival": self.received})
            else:
                self.emit("error", message=f"unknown request type {kind!r}; use generate or stop")
        self.queue.put(None)  # stdin closed: the client is gone


def check_request(request: dict) -> str | None:
    """What is wrong with a generate request, or None."""
    if not isinstance(request.get("id"), int):
        return "a generate request needs an integer id"
    if request.get("side") not in SIDES:
        return f"side must be one of {', '.join(SIDES)}, not {request.get('side')!r}"
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        return "messages must be a non-empty list of {role, content} objects"
    try:
        temperature, top_p = float(request.get("temperature", 0)), float(request.get("top_p", 1))
        max_new_tokens = int(request.get("max_new_tokens", 256))
    except (TypeError, ValueError):
        return "temperature, top_p and max_new_tokens must be numbers"
    if not 0 <= temperature <= 5:
        return "temperature must be between 0 (greedy) and 5"
    if not 0 < top_p <= 1:
        return "top_p must be above 0 and at most 1"
    if not 1 <= max_new_tokens <= 32768:
        return "max_new_tokens must be between 1 and 32768"
    return None


def answer(models, system_prompt: str | None, request: dict, requests: Requests, emit: Output) -> None:
    started = time.perf_counter()
    tokenizer = models.tokenizer
    messages = with_system(request["messages"], system_prompt)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    model = models.tuned if request["side"] == "tuned" else models.as_base()
    batch = batch.to(model.device)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
    stream = TokenStream(tokenizer, emit, request, eos, started)
    temperature = float(request.get("temperature", 0))
    sampling = {"do_sample": True, "temperature": temperature, "top_p": float(request.get("top_p", 1))} \
        if temperature > 0 else {"do_sample": False}
    with models.base_context() if request["side"] == "base" else nullcontext(), torch.no_grad():
        model.generate(**batch, **sampling, max_new_tokens=int(request.get("max_new_tokens", 256)),
                       pad_token_id=tokenizer.pad_token_id, streamer=stream,
                       stopping_criteria=StoppingCriteriaList([StopAsked(requests, request["arrival"])]))
    seconds = time.perf_counter() - started
    first = stream.first_token_at - started if stream.first_token_at else None
    decode_seconds = seconds - first if first is not None else 0.0
    emit("done", id=request["id"], side=request["side"], text=stream.text.strip(), tokens=len(stream.ids),
         seconds=round(seconds, 4), first_token_seconds=round(first, 4) if first is not None else None,
         # after the first token: the speed of generation itself, not of reading the prompt
         tokens_per_second=round((len(stream.ids) - 1) / decode_seconds, 2) if len(stream.ids) > 1 else None,
         stopped=request["arrival"] <= requests.stopped_through)


def serve(models, system_prompt: str | None, requests: Requests, emit: Output) -> None:
    while (request := requests.queue.get()) is not None:
        problem = check_request(request)
        if problem:
            emit("error", id=request.get("id"), message=problem)
            continue
        try:
            answer(models, system_prompt, request, requests, emit)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            emit("error", id=request["id"], message="out of GPU memory while answering: ask for fewer new "
                                                     "tokens or start a new conversation")
        except Exception as exc:  # one answer failed (a chat template that refuses the roles...): say so, go on
            traceback.print_exc()
            emit("error", id=request["id"], message=f"answering failed: {type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> int:
    from engine.evaluation.run import Models
    from engine.runs.protocol import Run
    from engine.training.config import parse_config

    parser = argparse.ArgumentParser(prog="python -m engine.chat.server")
    parser.add_argument("--run-dir", type=Path, required=True)
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--checkpoint", type=int)
    choice.add_argument("--export", type=Path, help="an export directory or GGUF file of this run")
    args = parser.parse_args(argv)
    emit = Output(sys.stdout)
    emit("loading")
    started = time.perf_counter()
    try:
        run = Run(args.run_dir)
        choice = ChatWeights(args.checkpoint, args.export)
        weights = chat_weights(run, choice)
        cfg = parse_config(run.config(), base_dir=run.path, check_paths=False)
        models = Models(run.path, cfg, weights, export=args.export is not None)
    except Exception as exc:  # the client shows this line; the traceback goes to stderr, the chat's log
        traceback.print_exc()
        emit("error", message=f"cannot load the models of {args.run_dir.name}: {exc}", fatal=True)
        return 1
    emit("ready", run_id=run.id, weights=choice.label, system_prompt=cfg.system_prompt,
         device=str(models.tuned.device), base_4bit=bool(getattr(models.as_base(), "is_loaded_in_4bit", False)),
         seconds=round(time.perf_counter() - started, 2))
    serve(models, cfg.system_prompt, Requests(sys.stdin, emit), emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
