"""Preference rows into the example type (engine.data.load.Example): a pair is one Example whose `messages`
are the shared prompt plus the chosen completion and whose `rejected` is the rejected completion; an unpaired
(KTO) row is its prompt plus completion with `desirable`. Built on engine.data.rows' readers of turns."""

from __future__ import annotations

from engine.data.rows import (
    Parsed,
    _alpaca_prompt,
    _check_conversation,
    _maybe_json,
    _openai_messages,
    _sharegpt_turns,
    _tools,
    completion_start,
)


def parse_preference(row: dict) -> Parsed | None:
    """The pair or unpaired row `row` holds, None when it is not a preference row, or ValueError with the reason."""
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
    return None


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
