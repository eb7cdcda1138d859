"""Datasets into one example type: a list of chat messages plus where it came from.

Accepted rows (JSONL, or a JSON array): OpenAI-style chat (`messages`), Alpaca
(`instruction`/`input`/`output`), ShareGPT (`conversations` with `from`/`value`),
prompt/completion pairs. A malformed row is reported with its file and line and
skipped; it never stops the load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

ROLES = {"system", "user", "assistant"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant"}


@dataclass
class Example:
    messages: list[dict]
    source: str
    line: int  # 1-based line in JSONL, index+1 in a JSON array


@dataclass
class Problem:
    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


@dataclass
class LoadResult:
    examples: list[Example] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


class DataError(ValueError):
    """The file as a whole cannot be read; the message says what to do."""


def row_to_messages(row: object) -> list[dict]:
    """Normalise one row to messages, or raise ValueError with the reason."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                raise ValueError(f"message {i} needs a string 'content'")
            if m.get("role") not in ROLES:
                raise ValueError(f"message {i} has unknown role {m.get('role')!r}")
            out.append({"role": m["role"], "content": m["content"]})
    elif "conversations" in row:
        turns = row["conversations"]
        if not isinstance(turns, list) or not turns:
            raise ValueError("'conversations' must be a non-empty list")
        out = []
        for i, t in enumerate(turns):
            if not isinstance(t, dict) or not isinstance(t.get("value"), str):
                raise ValueError(f"turn {i} needs a string 'value'")
            role = SHAREGPT_ROLES.get(str(t.get("from", "")).lower())
            if role is None:
                raise ValueError(f"turn {i} has unknown speaker {t.get('from')!r}")
            out.append({"role": role, "content": t["value"]})
    elif "instruction" in row and "output" in row:
        fields = [row["instruction"], row.get("input") or "", row["output"]]
        if not all(isinstance(v, str) for v in fields):
            raise ValueError("'instruction', 'input' and 'output' must be strings")
        prompt = row["instruction"] if not fields[1].strip() else f"{row['instruction']}\n\n{fields[1]}"
        out = [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]
    elif "prompt" in row and "completion" in row:
        if not isinstance(row["prompt"], str) or not isinstance(row["completion"], str):
            raise ValueError("'prompt' and 'completion' must be strings")
        out = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
    else:
        raise ValueError("unknown row format: expected 'messages', 'conversations', "
                         "'instruction'+'output' or 'prompt'+'completion'")
    if out[-1]["role"] != "assistant":
        raise ValueError("conversation does not end with an assistant message")
    return out


def _rows(path: Path):
    """(line number, parsed row or the exception) for a JSONL or JSON-array file."""
    raw = path.read_bytes()
    stripped = raw.lstrip()
    if stripped.startswith(b"["):
        try:
            rows = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            yield 1, ValueError(f"not valid JSON: {exc}")
            return
        for i, row in enumerate(rows, 1):
            yield i, row
        return
    for i, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            yield i, ValueError("invalid UTF-8")
        except ValueError as exc:
            yield i, ValueError(f"broken JSON: {exc.args[0] if exc.args else exc}")


def load_examples(path: str | Path) -> LoadResult:
    path = Path(path)
    try:
        rows = list(_rows(path))
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    result = LoadResult()
    for line, row in rows:
        if isinstance(row, Exception):
            result.problems.append(Problem(str(path), line, str(row)))
            continue
        try:
            result.examples.append(Example(row_to_messages(row), str(path), line))
        except ValueError as exc:
            result.problems.append(Problem(str(path), line, str(exc)))
    return result


def fingerprint(path: str | Path) -> str:
    """A content hash of a data file, recorded in run.json."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
