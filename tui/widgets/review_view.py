"""An example under review on the Data screen: its position line (place, filter, verdict, edit, flip) and its
body (flags and note above the turns, the rendered template, a preference pair, an unpaired row's label)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.text import Text

from tui.widgets.example_view import conversation_text, label_text, pair_view, template_text

if TYPE_CHECKING:
    from engine.data.load import Example
    from tui.review_session import ReviewSession

PAIR_VERDICTS = {"good": "accepted", "bad": "rejected"}  # what a verdict means for a preference pair
PAIR_KEYS = "g accept · w swap chosen/rejected · b reject pair · n note · s skip"


def position_line(session: ReviewSession, index: int) -> Text:
    ex = session.result.examples[index]
    review = session.review(index)
    line = Text()
    line.append(f"{session.pos + 1}/{len(session.view)}", "bold")
    line.append(f" · {'line' if session.result.format in ('jsonl', 'text') else 'row'} "
                f"{session.result.display_line(ex.line)}")
    if session.filter != "all":
        line.append(f" · filter {session.filter}")
    if session.spot is not None:
        line.append(f" · spot-check {session.spot_done()}/{len(session.spot)}", "bold")
    if ex.kind != "sft":
        line.append(f" · {ex.kind}")
    verdict = review.get("verdict")
    if verdict and ex.kind == "pair":
        verdict = PAIR_VERDICTS.get(verdict, verdict)
    line.append(" · ")
    line.append(f"[{verdict.upper()}]" if verdict else "[unreviewed]", "reverse" if verdict else "dim")
    if review.get("edit"):
        line.append(" edited", "italic")
    if review.get("flipped"):
        line.append(" swapped" if ex.kind == "pair" else " label flipped", "italic")
    return line


def example_body(example: Example, messages: list[dict], width: int, flipped: bool = False) -> RenderableType:
    """The example's turns; a pair's prompt, chosen and rejected with the keys that judge it; an unpaired row's
    label above its turns."""
    if example.kind == "pair":
        return Group(Text(PAIR_KEYS + "\n", "dim"), pair_view(example, width, flipped))
    text = label_text(example.desirable, flipped) if example.kind == "unpaired" else Text()
    return text.append_text(conversation_text(messages, example.tools))


def review_body(session: ReviewSession, index: int, width: int, template=None) -> RenderableType:
    """Flags, duplicate and note above the example as reviewed; with a `template` (engine.data.template), its
    rendered chat template with the trained-on text marked instead of the turns."""
    review = session.review(index)
    messages = session.messages(index)
    text = Text()
    for flag in session.flags.get(index, ()):
        text.append(f"⚑ {flag.severity} {flag.rule}: {flag.message}\n", "bold yellow")
    if index in session.duplicate_of:
        kept = session.result.examples[session.duplicate_of[index]]
        text.append(f"⚑ duplicate of {session.result.display_line(kept.line)} (that one is kept)\n", "bold yellow")
    if review.get("note"):
        text.append(f"✎ {review['note']}\n", "italic")
    if text:
        text.append("\n")
    if template is None:
        view = example_body(session.example(index), messages, width, bool(review.get("flipped")))
        if isinstance(view, Text) or not text:
            return text.append_text(view) if isinstance(view, Text) else view
        text.rstrip()  # the flags, a blank line, then the pair
        return Group(text, Text(), view)
    rendered, spans, tokens, trained = template.trained_view(messages, session.result.examples[index].tools)
    return text.append_text(template_text(rendered, spans, tokens, trained,
                                          getattr(template, "name", "fallback template")))
