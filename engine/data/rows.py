"""One row of any accepted shape into an example's parts (messages, tools, other keys), or a ValueError
that says why not. The message shape is the contract in `engine.data.load.Example`."""

from __future__ import annotations

import json
from dataclasses import dataclass

from engine.core.quoting import SURROGATE, brief, printable

ROLES = {"system", "user", "assistant", "tool"}

# ShareGPT speakers; LLaMA-Factory's tool layout (glaive) adds function_call (an assistant's call)
# and observation (the tool's result).
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant",
                  "function_call": "assistant", "observation": "tool", "tool": "tool"}

# Per-message train weight: OpenAI's `weight`, LLaMA-Factory's `loss_weight`. Only 0 and 1 have a
# meaning the token labels can carry (masked or trained); a fraction is refused, not rounded.
WEIGHT_KEYS = ("weight", "loss_weight")
MEDIA_PART_TYPES = {"image", "image_url", "input_image", "audio", "input_audio", "audio_url", "video", "video_url",
                    "file"}

MEDIA_KEYS = ("images", "videos", "audios")  # LLaMA-Factory's multimodal columns, beside `<image>` in the text

LABEL_FIELDS = ("label", "category", "class")

# Keys each layout reads; every other key of the row is kept in Example.extra.
LAYOUT_KEYS = {"messages": {"messages"}, "conversations": {"conversations"},
               "alpaca": {"instruction", "input", "output", "history"}, "prompt": {"prompt", "completion"},
               "text": {"text"}}


@dataclass(slots=True)
class Parsed:
    messages: list[dict]
    tools: list | None
    extra: dict | None
    rejected: list[dict] | None = None  # see engine.data.load.Example
    desirable: bool | None = None


def parse_row(row: object, columns: dict[str, str] | None = None) -> Parsed:
    """Normalise one row, or raise ValueError with the reason.

    `columns` maps the canonical field names (messages, conversations, instruction, input, output,
    prompt, completion, system, text, tools) to this file's column names.
    """
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if "chosen" in row and "rejected" in row:
        return _pair(row)
    if "chosen_messages" in row and "rejected_messages" in row:
        return _whole_conversations(row, "chosen_messages", "rejected_messages")
    if "preferred_output" in row or "non_preferred_output" in row:
        return _openai_preference(row)
    # a label that is not a boolean is a class label (engine.data.load.Example.label), not KTO's
    if "completion" in row and "prompt" in row and _desirable(row.get("label")) is not None:
        return _unpaired(row)
    if ("messages" in row or "conversations" in row) and (tag := next(
            (k for k in KTO_TAGS if _desirable(row.get(k)) is not None), None)):
        return _unpaired_conversation(row, tag)
    renamed = set()
    if columns:
        renamed = {col for canon, col in columns.items() if col in row and col != canon}
        row = {**row, **{canon: row[col] for canon, col in columns.items() if col in row}}
    if "messages" in row:
        layout, out = "messages", _openai_messages(_maybe_json(row["messages"]))
    elif "conversations" in row:
        layout, out = "conversations", _sharegpt_turns(_maybe_json(row["conversations"]))
    elif "instruction" in row and "output" in row:
        if not isinstance(row["output"], str):
            raise ValueError("'instruction', 'input' and 'output' must be strings")
        layout, out = "alpaca", _alpaca_prompt(row) + [{"role": "assistant", "content": row["output"]}]
    elif "prompt" in row and "completion" in row:
        if not isinstance(row["prompt"], str) or not isinstance(row["completion"], str):
            raise ValueError("'prompt' and 'completion' must be strings")
        layout, out = "prompt", [{"role": "user", "content": row["prompt"]},
                                 {"role": "assistant", "content": row["completion"]}]
    elif isinstance(row.get("text"), str):
        layout, out = "text", [{"role": "assistant", "content": row["text"]}]  # plain text: every token is trained on
    else:
        keys = printable(", ".join(sorted(map(str, row)))[:120])
        raise ValueError("unknown row format: expected 'messages', 'conversations', "
                         f"'instruction'+'output' or 'prompt'+'completion' (has: {keys})")
    consumed = LAYOUT_KEYS[layout] | {"tools"} | renamed
    if isinstance(row.get("system"), str) and row["system"].strip() and out[0]["role"] != "system":
        out.insert(0, {"role": "system", "content": row["system"]})
        consumed.add("system")  # otherwise (unused, or a second system prompt) it stays among the extra keys
    _check_conversation(out)
    tools = _tools(row.get("tools"))
    extra = {k: v for k, v in row.items() if k not in consumed}
    return Parsed(out, tools, extra or None)


def completion_start(messages: list[dict]) -> int:
    """Where the completion begins: the trailing assistant turns (an answer, or tool calls then the answer
    without results between them); everything before is the prompt."""
    start = len(messages)
    while start > 0 and messages[start - 1]["role"] == "assistant":
        start -= 1
    return start


def rejected_conversation(example) -> list[dict]:
    """A pair's rejected side as a conversation of its own: the prompt, then the rejected completion."""
    return example.messages[:completion_start(example.messages)] + example.rejected


# Preference rows. A pair is one Example: `messages` is the shared prompt plus the chosen completion and
# `rejected` the rejected completion; an unpaired (KTO) row is its prompt plus completion with `desirable`.
# Layouts read (each with the row's `system` and `tools`, every other key kept in `extra`):
#   TRL        {"prompt", "chosen", "rejected"}: texts or messages; without "prompt", two whole conversations
#   LLaMA-Factory Alpaca   {"instruction", "input", "history", "chosen", "rejected"}: strings
#   LLaMA-Factory ShareGPT {"conversations" ending with a human turn, "chosen"/"rejected": one {"from", "value"} turn}
#   LLaMA-Factory v1       {"chosen_messages", "rejected_messages"}: two whole conversations
#   OpenAI     {"input": {"messages", "tools", ...}, "preferred_output", "non_preferred_output"}: assistant messages
#   KTO        TRL's {"prompt", "completion", "label"}; LLaMA-Factory's "messages"/"conversations" with a
#              boolean "label" or "kto_tag" (the trailing assistant turns are the completion)
KTO_TAGS = ("label", "kto_tag")


def _pair(row: dict) -> Parsed:
    """A row with `chosen` and `rejected`: after a `prompt` (TRL), an Alpaca instruction or ShareGPT
    conversations (LLaMA-Factory), or, without any of those, two whole conversations (TRL's implicit prompt)."""
    chosen, rejected = _maybe_json(row["chosen"]), _maybe_json(row["rejected"])
    if "prompt" in row:
        prompt, consumed = _prompt_messages(_maybe_json(row["prompt"])), {"prompt"}
    elif "instruction" in row:
        prompt, consumed = _alpaca_prompt(row), {"instruction", "input", "history"}
    elif "conversations" in row or "messages" in row:
        key = "conversations" if "conversations" in row else "messages"
        turns = _maybe_json(row[key])
        prompt = _prompt_messages(_sharegpt_turns(turns) if key == "conversations" else turns, key)
        consumed = {key}
    elif isinstance(chosen, list) and isinstance(rejected, list):
        return _whole_conversations(row, "chosen", "rejected")
    else:
        raise ValueError("'chosen' and 'rejected' are texts without a 'prompt': add the prompt they answer")
    return _preference(row, prompt, _completion(chosen, "chosen"), consumed | {"chosen", "rejected"},
                       rejected=_completion(rejected, "rejected"))


def _whole_conversations(row: dict, chosen_key: str, rejected_key: str) -> Parsed:
    """Two whole conversations (TRL's implicit prompt, LLaMA-Factory's chosen_messages/rejected_messages):
    their shared beginning is the prompt, what follows in each is its completion."""
    whole_chosen, whole_rejected = (_openai_messages(_maybe_json(row[k])) for k in (chosen_key, rejected_key))
    start = min(completion_start(whole_chosen), completion_start(whole_rejected))
    prompt = whole_chosen[:start]
    if not prompt or whole_rejected[:start] != prompt:
        raise ValueError(f"{chosen_key!r} and {rejected_key!r} are whole conversations that do not begin with the "
                         "same prompt: give the prompt in a 'prompt' key")
    return _preference(row, prompt, whole_chosen[start:], {chosen_key, rejected_key},
                       rejected=whole_rejected[start:])


def _openai_preference(row: dict) -> Parsed:
    """OpenAI's preference fine-tuning row: `input` {"messages", "tools", ...} and `preferred_output` /
    `non_preferred_output` (assistant messages). The input's other keys (parallel_tool_calls) join `extra`."""
    given = row.get("input")
    if not isinstance(given, dict) or "messages" not in given:
        raise ValueError("'preferred_output' needs an 'input' object with the prompt's 'messages'")
    if "preferred_output" not in row or "non_preferred_output" not in row:
        raise ValueError("an OpenAI preference row needs both 'preferred_output' and 'non_preferred_output'")
    prompt = _prompt_messages(given["messages"])
    chosen = _completion(row["preferred_output"], "preferred_output")
    rejected = _completion(row["non_preferred_output"], "non_preferred_output")
    flat = {**{k: v for k, v in given.items() if k != "messages"},
            **{k: v for k, v in row.items() if k != "input"}}  # the row's own keys win a clash
    return _preference(flat, prompt, chosen, {"preferred_output", "non_preferred_output"}, rejected=rejected)


def _unpaired(row: dict) -> Parsed:
    """TRL's unpaired preference (KTO) layout: `prompt`, `completion` and a boolean `label` (desirable); with
    another label, the row is a demonstration with a class label."""
    prompt = _prompt_messages(_maybe_json(row["prompt"]))
    completion = _completion(_maybe_json(row["completion"]), "completion")
    return _preference(row, prompt, completion, {"prompt", "completion", "label"}, desirable=_desirable(row["label"]))


def _unpaired_conversation(row: dict, tag: str) -> Parsed:
    """LLaMA-Factory's KTO layout: a conversation (`messages` or `conversations`) and a boolean `label` or
    `kto_tag`; the trailing assistant turns are the completion judged, the turns before them its prompt."""
    key = "messages" if "messages" in row else "conversations"
    turns = _maybe_json(row[key])
    whole = _openai_messages(turns) if key == "messages" else _sharegpt_turns(turns)
    start = completion_start(whole)
    if start == len(whole):
        raise ValueError(f"the conversation of a {tag!r} row must end with the assistant's completion")
    if start == 0:
        raise ValueError(f"the conversation of a {tag!r} row has no prompt before the assistant's completion")
    return _preference(row, whole[:start], whole[start:], {key, tag}, desirable=_desirable(row[tag]))


def _desirable(value) -> bool | None:
    """A KTO label: a boolean, or its JSON text (CSV has no booleans: export writes `true`/`false` there)."""
    return value if isinstance(value, bool) else {"true": True, "false": False}.get(value) \
        if isinstance(value, str) else None


def _prompt_messages(prompt, key: str = "prompt") -> list[dict]:
    """The prompt: a text (one user turn) or messages, which must not end with the assistant's turn."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else \
        prompt if key == "conversations" else _openai_messages(prompt)  # conversations come parsed
    if messages[-1]["role"] == "assistant":
        raise ValueError(f"the {'prompt' if key == 'prompt' else repr(key)} ends with an assistant turn: the "
                         "completion must follow a user or tool turn")
    return messages


def _alpaca_prompt(row: dict) -> list[dict]:
    """An Alpaca row's prompt: its `history` turns, then the instruction with its input."""
    instruction, given = row["instruction"], row.get("input") or ""
    if not isinstance(instruction, str) or not isinstance(given, str):
        raise ValueError("'instruction' and 'input' must be strings")
    prompt = instruction if not given.strip() else f"{instruction}\n\n{given}"
    return _alpaca_history(row.get("history")) + [{"role": "user", "content": prompt}]


def _completion(value, key: str) -> list[dict]:
    """A completion: a text, assistant messages, or one assistant turn (LLaMA-Factory's {"from": "gpt", "value"})."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict):
        value = [value]
    messages = None
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        messages = _sharegpt_turns(value) if "from" in value[0] else _openai_messages(value)
    if not messages or any(m["role"] != "assistant" for m in messages):
        raise ValueError(f"'{key}' must be a text or a list of assistant messages")
    return messages


def _preference(row: dict, prompt: list[dict], completion: list[dict], consumed: set,
                rejected: list[dict] | None = None, desirable: bool | None = None) -> Parsed:
    consumed = consumed | {"tools"}
    messages = prompt + completion
    if isinstance(row.get("system"), str) and row["system"].strip() and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": row["system"]})
        consumed.add("system")
    _check_conversation(messages)
    if rejected is not None:
        _check_conversation(prompt + rejected)
    extra = {k: v for k, v in row.items() if k not in consumed}
    return Parsed(messages, _tools(row.get("tools")), extra or None, rejected, desirable)


def file_message(message: dict) -> dict:
    """A message as export writes it: content parts back as they were read (the joined text replaced
    when it was edited), a turn that only calls tools without content, as OpenAI's fine-tuning files."""
    parts = message.get("parts")
    out = {k: v for k, v in message.items() if k != "parts"}
    if parts is None:
        if out.get("tool_calls") and out["content"] == "":
            del out["content"]
        return out
    kinds = {p.get("type") for p in parts if isinstance(p, dict)}
    for key, derived in (("reasoning_content", {"reasoning", "thinking"}), ("tool_calls", {"tool_call"})):
        if kinds & derived:
            out.pop(key, None)
    if _joined_text(parts) != message["content"]:  # edited in review: the new text where the text was
        first = next((i for i, p in enumerate(parts) if p.get("type") == "text"), len(parts))
        key = "value" if first < len(parts) and "value" in parts[first] else "text"  # as the file wrote it
        parts = [p for p in parts[:first] if p.get("type") != "text"] + [{"type": "text", key: message["content"]}] \
            + [p for p in parts[first:] if p.get("type") != "text"]
    out["content"] = parts
    return out


def _joined_text(parts: list) -> str:
    return "".join(p.get("text", p.get("value")) for p in parts if p.get("type") == "text")


def _openai_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"message {i} needs a string 'content'")
        if "function_call" in m or m.get("role") == "function":
            raise ValueError(f"message {i} uses OpenAI's legacy function calling (function_call, role 'function'): "
                             "write it as tool_calls and role 'tool'")
        if not isinstance(m.get("role"), str) or m["role"] not in ROLES:
            raise ValueError(f"message {i} has unknown role {brief(m.get('role'))}")
        message = dict(m)
        content = m.get("content")
        if isinstance(content, list):
            _read_parts(message, content, i)
        elif content is None and m["role"] == "assistant" and m.get("tool_calls"):
            message["content"] = ""  # a turn that only calls tools
        elif not isinstance(content, str):
            raise ValueError(f"message {i} needs a string 'content'")
        if "tool_calls" in message:
            _check_tool_calls(message["tool_calls"], i)
        out.append(message)
    return out


def _read_parts(message: dict, parts: list, i: int) -> None:
    """Content given as parts (OpenAI `{"type": "text", "text"}`, LLaMA-Factory `{"type", "value"}`):
    text parts joined as chat templates render them; a reasoning part becomes `reasoning_content` and a
    tool_call part a tool call; the parts themselves are kept in `parts`, media never turned into text."""
    texts, reasoning, calls = [], [], []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        value = part.get("text", part.get("value")) if isinstance(part, dict) else None
        if kind == "text" and isinstance(value, str):
            texts.append(value)
        elif kind in ("reasoning", "thinking") and isinstance(value, str):
            reasoning.append(value)
        elif kind == "tool_call" and isinstance(value, str):
            try:
                call = json.loads(value)
            except ValueError:
                raise ValueError(f"message {i} has a tool_call part that is not JSON") from None
            calls.append({"type": "function", "function": call})
        elif kind not in MEDIA_PART_TYPES:
            raise ValueError(f"message {i} has a {brief(kind) if kind else 'malformed'} content part")
    message["content"] = "".join(texts)
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    message["parts"] = parts  # written back as they were (file_message); the fields above are what trains


def _check_tool_calls(calls, i: int) -> None:
    if not isinstance(calls, list) or not calls:
        raise ValueError(f"message {i}: 'tool_calls' must be a non-empty list")
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise ValueError(f"message {i} has a tool call without a function name")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                raise ValueError(f"message {i}: the arguments of tool call {brief(function['name'])} are not "
                                 "valid JSON") from None
        if not isinstance(arguments, dict):
            raise ValueError(f"message {i}: the arguments of tool call {brief(function['name'])} must be a "
                             "JSON object")


def _sharegpt_turns(turns) -> list[dict]:
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
        message = {k: v for k, v in t.items() if k not in ("from", "value")}  # e.g. a per-turn weight
        if speaker.lower() == "function_call":
            message.update(role="assistant", content="", tool_calls=_glaive_calls(t["value"], i))
        else:
            message.update(role=role, content=t["value"])
        out.append(message)
    return out


def _glaive_calls(value: str, i: int) -> list[dict]:
    """A function_call turn's value: one `{"name", "arguments"}` object, or a list of them."""
    try:
        calls = json.loads(value)
    except ValueError:
        raise ValueError(f"turn {i}: the function_call is not valid JSON") from None
    calls = calls if isinstance(calls, list) else [calls]
    out = [{"type": "function", "function": call} for call in calls]
    _check_tool_calls(out, i)
    return out


def _tools(value) -> list | None:
    """The row's tool schemas: a list, or the JSON text of one (LLaMA-Factory's `tools` column)."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError("'tools' is not valid JSON") from None
    value = _maybe_json(value)
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ValueError("'tools' must be a list of tool schemas (objects)")
    return value or None


def attached_media(messages: list[dict], extra: dict | None) -> str | None:
    """What media an example attaches (its row's images/videos/audios, a message's media parts), or None."""
    for key in MEDIA_KEYS:
        if extra and extra.get(key):
            n = len(extra[key]) if isinstance(extra[key], list) else 1
            return f"{n} {key if n != 1 else key[:-1]} in the row's {key!r}"
    for message in messages:
        for part in message.get("parts") or ():
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in MEDIA_PART_TYPES:
                return f"a {kind} part in the {message['role']} turn"
    return None


def trained_turn(message: dict) -> bool:
    """Whether training learns this turn: the assistant's, unless its weight is 0."""
    return message["role"] == "assistant" and all(message.get(k, 1) != 0 for k in WEIGHT_KEYS)


def _check_conversation(out: list[dict]) -> None:
    for i, m in enumerate(out):
        if SURROGATE.search(m["content"]):
            raise ValueError(f"message {i} is not valid Unicode (a byte that is not UTF-8, or a lone "
                             "surrogate \\u escape)")
        weight = next((m[k] for k in WEIGHT_KEYS if k in m), 1)
        if weight not in (0, 1) or isinstance(weight, bool):
            raise ValueError(f"message {i} has weight {brief(weight)}: only 0 (shown, not trained) and 1 are "
                             "supported")
        if m["role"] == "tool" and (i == 0 or not (out[i - 1]["role"] == "tool" or out[i - 1].get("tool_calls"))):
            raise ValueError(f"message {i} is a tool result with no tool call before it")
    if out[-1]["role"] != "assistant":
        raise ValueError("conversation does not end with an assistant message")


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
