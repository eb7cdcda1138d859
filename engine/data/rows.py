"""One row of any accepted shape into chat messages, or a ValueError that says why not."""

from __future__ import annotations

import json

from engine.core.quoting import SURROGATE, brief, printable

ROLES = {"system", "user", "assistant"}


SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant"}


LABEL_FIELDS = ("label", "category", "class")


def row_to_messages(row: object, columns: dict[str, str] | None = None) -> list[dict]:
    """Normalise one row to messages, or raise ValueError with the reason.

    `columns` maps the canonical field names (messages, conversations, instruction,
    input, output, prompt, completion, system, text) to this file's column names.
    """
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if "chosen" in row and "rejected" in row:  # TRL's preference layout, plain or conversational
        raise ValueError("a preference pair (chosen/rejected): tunedeck trains on demonstrations, and "
                         "preference training (DPO) is not supported yet")
    if isinstance(row.get("label"), bool) and "completion" in row:  # TRL's unpaired preference (KTO) layout
        raise ValueError("a KTO row (a completion labelled true/false): its undesirable completions must not "
                         "be trained on as answers, and KTO is not supported yet")
    if columns:
        row = {**row, **{canon: row[col] for canon, col in columns.items() if col in row}}
    if "messages" in row:
        messages = _maybe_json(row["messages"])
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
        out = []
        for i, m in enumerate(messages):
            content = _text_of_parts(m.get("content"), i) if isinstance(m, dict) else None
            if not isinstance(content, str):
                raise ValueError(f"message {i} needs a string 'content'")
            if not isinstance(m.get("role"), str) or m["role"] not in ROLES:
                raise ValueError(f"message {i} has unknown role {brief(m.get('role'))}")
            out.append({"role": m["role"], "content": content})
    elif "conversations" in row:
        turns = _maybe_json(row["conversations"])
        if not isinstance(turns, list) or not turns:
            raise ValueError("'conversations' must be a non-empty list")
        out = []
        for i, t in enumerate(turns):
            if not isinstance(t, dict) or not isinstance(t.get("value"), str):
                raise ValueError(f"turn {i} needs a string 'value'")
            speaker = t.get("from", "")
            role = SHAREGPT_ROLES.get(speaker.lower()) if isinstance(speaker, str) else None
            if role is None:
                raise ValueError(f"turn {i} has unknown speaker {brief(speaker)}")
            out.append({"role": role, "content": t["value"]})
    elif "instruction" in row and "output" in row:
        fields = [row["instruction"], row.get("input") or "", row["output"]]
        if not all(isinstance(v, str) for v in fields):
            raise ValueError("'instruction', 'input' and 'output' must be strings")
        prompt = row["instruction"] if not fields[1].strip() else f"{row['instruction']}\n\n{fields[1]}"
        out = _alpaca_history(row.get("history")) + [{"role": "user", "content": prompt},
                                                     {"role": "assistant", "content": row["output"]}]
    elif "prompt" in row and "completion" in row:
        if not isinstance(row["prompt"], str) or not isinstance(row["completion"], str):
            raise ValueError("'prompt' and 'completion' must be strings")
        out = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
    elif isinstance(row.get("text"), str):
        out = [{"role": "assistant", "content": row["text"]}]  # plain text: every token is trained on
    else:
        keys = printable(", ".join(sorted(map(str, row)))[:120])
        raise ValueError("unknown row format: expected 'messages', 'conversations', "
                         f"'instruction'+'output' or 'prompt'+'completion' (has: {keys})")
    if isinstance(row.get("system"), str) and row["system"].strip() and out[0]["role"] != "system":
        out.insert(0, {"role": "system", "content": row["system"]})
    if out[-1]["role"] != "assistant":
        raise ValueError("conversation does not end with an assistant message")
    for i, m in enumerate(out):
        if SURROGATE.search(m["content"]):
            raise ValueError(f"message {i} is not valid Unicode (a byte that is not UTF-8, or a lone "
                             "surrogate \\u escape)")
    return out


def _text_of_parts(content, i: int):
    """Content given as parts (OpenAI `{"type": "text", "text"}`, LLaMA-Factory `{"type", "value"}`): the text
    parts joined as chat templates render them, one after another. Any other part (an image, audio,
    reasoning) is refused by name rather than dropped: a text-only example would lose it."""
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        text = part.get("text", part.get("value")) if kind == "text" else None
        if not isinstance(text, str):
            raise ValueError(f"message {i} has a {brief(kind) if kind else 'malformed'} content part: only text "
                             "parts can be used by a text model")
        texts.append(text)
    return "".join(texts)


def _alpaca_history(history) -> list[dict]:
    """LLaMA-Factory's Alpaca `history`: the earlier turns as [instruction, answer] pairs, oldest first."""
    history = _maybe_json(history)
    if history is None or history == []:
        return []
    if not isinstance(history, list) or not all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)
            for pair in history):
        raise ValueError("'history' must be a list of [instruction, answer] string pairs")
    return [{"role": role, "content": text} for pair in history
            for role, text in zip(("user", "assistant"), pair)]


def _maybe_json(value):
    """CSV and Parquet cells hold nested lists as JSON text."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            pass
    if hasattr(value, "tolist"):
        value = value.tolist()
    return value


def _label(row: object, label_field: str | None) -> str | None:
    if not isinstance(row, dict):
        return None
    for key in (label_field,) if label_field else LABEL_FIELDS:
        value = row.get(key)
        if isinstance(value, (str, int, bool)):
            return printable(str(value))
    return None
