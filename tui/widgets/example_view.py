"""One example, large: each turn under a role header (coloured, and labelled for NO_COLOR),
or the rendered chat template with the trained-on characters marked; a preference pair's
prompt with its chosen and rejected completions, an unpaired row with its label."""

from __future__ import annotations

import json

from rich.console import RenderableType
from rich.text import Text

from engine.data.rows import MEDIA_PART_TYPES, completion_start, trained_turn

ROLE_STYLE = {"system": "bold magenta", "user": "bold cyan", "assistant": "bold green", "tool": "bold yellow"}


def conversation_text(messages: list[dict], tools: list | None = None) -> Text:
    """Each turn as training reads it: tool calls, tool results, reasoning, attached media, and which
    assistant turns are not trained on (weight 0)."""
    text = Text()
    if tools:
        names = [t.get("function", t).get("name", "?") for t in tools]
        text.append(f"tools offered: {', '.join(map(str, names))}\n\n", "dim")
    for i, message in enumerate(messages):
        role = message["role"]
        if i:
            text.append("\n")
        text.append(f"▌{role.upper()}", ROLE_STYLE.get(role, "bold"))
        if role == "tool" and (message.get("name") or message.get("tool_call_id")):
            text.append(f" result of {message.get('name') or message['tool_call_id']}", "dim")
        if role == "assistant" and not trained_turn(message):
            text.append(" · weight 0: shown, not trained", "italic")
        text.append("\n")
        if message.get("reasoning_content"):
            text.append(f"(reasoning) {message['reasoning_content']}\n", "italic dim")
        for part in message.get("parts") or ():
            if isinstance(part, dict) and part.get("type") in MEDIA_PART_TYPES:
                text.append(f"[{part['type']} attached: not used by a text-only model]\n", "italic dim")
        content = message["content"]
        if content.strip() or not message.get("tool_calls"):
            text.append(content if content.strip() else "(empty)", "" if content.strip() else "italic dim")
            text.append("\n")
        for call in message.get("tool_calls") or ():
            function = call["function"]
            arguments = function.get("arguments", {})
            arguments = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
            text.append(f"→ calls {function['name']}({arguments})\n", "bold")
    return text


def template_text(rendered: str, spans: list[tuple[int, int]], tokens: int | None, trained: int | None,
                  template_name: str) -> Text:
    """The rendered template; trained characters underlined and reversed (visible without colour)."""
    text = Text()
    head = f"{template_name}: " + (f"{tokens} tokens, {trained} trained (marked)" if tokens is not None
                                   else "trained text marked; choose a model (M) for token counts")
    text.append(head + "\n\n", "dim")
    last = 0
    for start, end in spans:
        text.append(rendered[last:start])
        text.append(rendered[start:end], "reverse underline")
        last = end
    text.append(rendered[last:])
    return text


SIDE_BY_SIDE_WIDTH = 120  # below this a pair's completions are stacked: two 40-column answers are unreadable


def pair_view(example, width: int, flipped: bool) -> RenderableType:
    """A preference pair: the prompt, then the chosen and the rejected completion, side by side where `width`
    allows and stacked below it; each side under its name in words, readable without colour."""
    from rich import box
    from rich.console import Group
    from rich.table import Table

    start = completion_start(example.messages)
    prompt = conversation_text(example.messages[:start], example.tools)
    sides = [("CHOSEN", example.messages[start:]), ("REJECTED", example.rejected)]
    swapped = " (swapped in review)" if flipped else ""
    if width >= SIDE_BY_SIDE_WIDTH:
        table = Table(box=box.SQUARE, expand=True, show_lines=False)
        for name, _ in sides:
            table.add_column(f"{name}{swapped}", ratio=1, header_style="bold")
        table.add_row(*(conversation_text(completion) for _, completion in sides))
        return Group(prompt, Text(), table)
    text = prompt.copy()
    for name, completion in sides:
        text.append(f"\n━━ {name}{swapped} ━━\n", "bold reverse")
        text.append_text(conversation_text(completion))
    return text


def label_text(desirable: bool, flipped: bool) -> Text:
    """An unpaired (KTO) row's label, as a line: what training is told about its completion."""
    text = Text("label: ")
    text.append("DESIRABLE" if desirable else "UNDESIRABLE", "bold reverse")
    if flipped:
        text.append(f" (flipped in review from {'undesirable' if desirable else 'desirable'})", "italic")
    return text.append("\n")
