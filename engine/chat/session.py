"""What a chat reads and writes, without torch: the weights it loads, `<run>/chat/<time>.jsonl` (one line
per answer, appended as it arrives, so a closed terminal loses nothing) and the dataset that saved
conversations are appended to (`<workspace>/data/chat-<run>.jsonl`: beside the workspace's other data,
never the run's own training file, which export and review leave untouched)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from engine.core.files import append_json_line, ensure_private_dir
from engine.runs.protocol import Run, RunError

SIDES = ("tuned", "base")


@dataclass(frozen=True)
class ChatWeights:
    """Which tuned weights a chat loads: the run's final adapter/ or model/ (neither field set), a complete
    checkpoint, or an export `tunedeck export` wrote (an adapter or merged directory, or a GGUF file)."""

    checkpoint: int | None = None
    export: Path | None = None

    @property
    def label(self) -> str:
        if self.export is not None:
            return f"export {self.export.name}"
        return f"checkpoint-{self.checkpoint}" if self.checkpoint is not None else "final"

    def argv(self) -> list[str]:
        """engine.chat.server's arguments for these weights."""
        if self.export is not None:
            return ["--export", str(self.export)]
        return ["--checkpoint", str(self.checkpoint)] if self.checkpoint is not None else []


FINAL = ChatWeights()
WEIGHT_CONFIGS = ("adapter_config.json", "config.json")  # an adapter, a whole model


def chat_weights(run: Run, weights: ChatWeights = FINAL) -> Path | None:
    """The checkpoint or export path to chat with, or None for the final adapter/ or model/; RunError says
    what is missing and what there is instead."""
    if weights.export is not None:
        export_kind(weights.export)
        return weights.export
    complete = [step for step, _, ok in run.checkpoints() if ok]
    offer = f"; complete checkpoints: {', '.join(map(str, complete))}" if complete else ""
    if weights.checkpoint is None:
        if (run.path / "adapter").is_dir() or (run.path / "model").is_dir():
            return None
        hint = f" or pick one with --checkpoint {complete[-1]}" if complete else ""
        raise RunError(f"run {run.id} has no adapter/ or model/ yet: wait until it finishes training{hint}")
    for step, path, ok in run.checkpoints():
        if step == weights.checkpoint and ok:
            if any(path.glob("pytorch_model_fsdp_*")) and not any((path / f).is_file() for f in WEIGHT_CONFIGS):
                raise RunError(f"checkpoint {step} of run {run.id} holds FSDP shards, which only a resume of the run "
                               "loads: chat with the final weights (no --checkpoint) once it finishes")
            return path
        if step == weights.checkpoint:
            raise RunError(f"checkpoint {step} of run {run.id} is incomplete (no COMPLETE marker){offer}")
    raise RunError(f"run {run.id} has no checkpoint {weights.checkpoint}{offer or ' (it has no complete checkpoint)'}")


def export_kind(path: Path) -> str:
    """`adapter`, `merged` or `gguf` for what an export wrote at `path`; RunError otherwise."""
    if path.is_file() and path.suffix == ".gguf":
        return "gguf"
    if not path.is_dir():
        raise RunError(f"{path} does not exist: give an export directory or a .gguf file that tunedeck export wrote")
    if (path / "adapter_config.json").is_file():
        return "adapter"
    if (path / "config.json").is_file():
        return "merged"
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return "gguf"
    raise RunError(f"{path} holds no adapter_config.json, config.json or single .gguf file: not an export"
                   + (f" ({len(ggufs)} GGUF files: name one)" if ggufs else ""))


def run_exports(run: Run) -> list[Path]:
    """The run's exports that are still on disk, newest first (engine.export.weights records each one in
    `<run>/exports.jsonl`)."""
    found: list[Path] = []
    path = run.path / "exports.jsonl"
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
    for line in reversed(lines):
        try:
            written = Path(json.loads(line)["path"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line
        if written not in found and (written.is_file() or written.is_dir()):
            try:
                export_kind(written)
            except RunError:
                continue  # emptied or replaced since
            found.append(written)
    return found


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """The run's system prompt first where the conversation has none, as training put it
    (engine.training.recipes.sft.read_conversations)."""
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return list(messages)


class Conversation:
    """One chat's turns, one history per side: each side is asked with its own earlier answers."""

    def __init__(self, sides: tuple[str, ...] = ("tuned",)):
        self.history: dict[str, list[dict]] = {side: [] for side in sides}

    def ask(self, text: str) -> None:
        for messages in self.history.values():
            messages.append({"role": "user", "content": text})

    def answered(self, side: str, text: str) -> None:
        self.history[side].append({"role": "assistant", "content": text})

    def turns(self) -> int:
        return sum(1 for m in next(iter(self.history.values())) if m["role"] == "user")


def turn_record(side: str, weights: str, messages: list[dict], done: dict, settings: dict) -> dict:
    """What the conversation log keeps of one answer."""
    keep = ("tokens", "seconds", "first_token_seconds", "tokens_per_second", "stopped")
    return {"side": side, "weights": weights, "messages": messages, "answer": done["text"],
            **{k: done.get(k) for k in keep}, **settings}


class ConversationLog:
    """`<run>/chat/<YYYYmmdd-HHMMSS>.jsonl`: each answer with the messages it answered, its side, weights,
    settings and speed, one line each, written whole and flushed."""

    def __init__(self, run: Run):
        folder = ensure_private_dir(run.path / "chat")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path, n = folder / f"{stamp}.jsonl", 1
        while path.exists():  # two chats started in the same second keep their own files
            n += 1
            path = folder / f"{stamp}-{n}.jsonl"
        self.path = path

    def append(self, turn: dict) -> None:
        append_json_line(self.path, {"ts": round(time.time(), 3), **turn})


def default_dataset(workspace: Path, run: Run) -> Path:
    return workspace / "data" / f"chat-{run.id}.jsonl"


def save_example(messages: list[dict], path: Path) -> int:
    """Append a conversation as one training example (OpenAI's messages layout, as engine.data.export
    writes it) and return its line in the file."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("a training example ends with the assistant's answer: ask something first")
    ensure_private_dir(path.parent, tighten=False)
    row = {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
    data = path.read_bytes() if path.exists() else b""
    torn = bool(data) and not data.endswith(b"\n")  # a file that ends without a newline
    line = data.count(b"\n") + 1 + torn
    with open(path, "a", encoding="utf-8") as f:
        if torn:
            f.write("\n")  # the new row starts on its own line
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return line
