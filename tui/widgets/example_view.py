"""One example, large: each turn under a role header (coloured, and labelled for NO_COLOR),
or the rendered chat template with the trained-on characters marked."""

from __future__ import annotations

from rich.text import Text

ROLE_STYLE = {"system": "bold magenta", "user": "bold cyan", "assistant": "bold green"}


def conversation_text(messages: list[dict]) -> Text:
    text = Text()
    for i, message in enumerate(messages):
        role = message["role"]
        if i:
            text.append("\n")
        text.append(f"▌{role.upper()}\n", ROLE_STYLE.get(role, "bold"))
        content = message["content"]
        text.append(content if content.strip() else "(empty)", "" if content.strip() else "italic dim")
        text.append("\n")
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
