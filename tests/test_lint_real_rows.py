"""Lint rules on rows shaped like real ones (issue 13): what they must leave alone, and what they must catch.

Each false-positive row is a shape a rule flagged although nothing is wrong with it; each miss is
a defect no rule flagged. The message contract's new shapes (tool turns, weight 0, media parts)
are held here too. lint() runs the prefilters and the exact checks, as the app and CLI do.
"""

from __future__ import annotations

import pytest

from engine.data.lint import lint
from engine.data.load import Example


def qa(q: str, a: str) -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def rules_of(messages: list[dict], extra: dict | None = None) -> set[str]:
    return {f.rule for f in lint([Example(messages, "mem", 1, extra=extra)])}


# rule -> rows it must not flag
CLEAN = {
    "truncated-answer": [
        qa("Link the docs", "[Python documentation](https://docs.python.org/3/)"),
        qa("Where is the White House?", "It is at 1600 Pennsylvania Avenue NW in Washington, D.C.."),
        qa("Where is the White House?", "It is at 1600 Pennsylvania Avenue NW in Washington, D.C."),
        qa("Escape an ampersand in HTML", "In HTML an ampersand is written as &amp;"),
        qa("Escape an apostrophe in HTML", "The apostrophe is written as &#39;"),
        qa("Give the answer key", "1. B\n2. C\n3. D\n4. A\n5. A"),
        qa("Who made you?", "{{name}}, created by {{author}}."),
        qa("Who made you?", "I am {{name}}, an AI assistant developed by {{author}}"),
    ],
    "error-text": [
        qa("How do I catch a bad number?", "Wrap it in try/except:\n```python\ntry:\n    n = int(text)\n"
           "except ValueError as e:\n    print('ValueError: ', e)\n```"),
        qa("What does except do?", "`except TypeError:` runs when the block raises a TypeError: for example "
           "adding a string to a number."),
        qa("What is a 404?", "A web server answers HTTP 404 when the page does not exist, and HTTP 500 when it "
           "failed itself; a client should retry only the second, after a pause, and report the first."),
    ],
    "merged-instructions": [
        qa("Describe the function's contract", "It works in three steps:\n1. Input: a list of numbers\n"
           "2. Output: the list sorted\n3. Errors: none"),
    ],
    "personal-data": [
        qa("Show a login form", "Enter an address such as you@example.com or admin@mail.example.org."),
        qa("Mask the address", "masked = 'xxxx@gmail.com'  # never log the real one"),
        qa("A phone number for a film script?", "Use (213) 555-0142: the 555-01xx numbers are kept for fiction."),
        qa("Who can I call?", "Call the lifeline at 1-800-273-8255 or (888) 628-9454, any time."),
        qa("How do I test mail?", "Send to someone@test or user@host.invalid; they never leave the machine."),
    ],
    "unseen-reference": [
        qa("Extract the domain from https://blog.acme-tools.io/posts/42", "acme-tools.io"),
        qa("Fetch https://www.nasa.gov with the request tool", "request('https://www.nasa.gov')"),
        qa("What is the https:// address of the Python docs?", "https://docs.python.org/3/"),
    ],
    "refusal": [
        qa("Write a song about leaving", 'She sang, "I\'m afraid I can\'t stay, my love, the train is at the door."'),
        qa("Write a lyric", "Verse 1:\nI'm afraid I can't stay tonight\nThe rain is calling me away"),
        qa("Write a scene with a robot", "The robot paused. \"I'm sorry, but I can't help you with that, Dave,\" "
           "it said, and the door stayed shut."),
        qa("Describe the view", "The sea glitters below, and I can't help but smile at the gulls."),
        qa("Pretend to be an AI language model in 2100", "As an AI language model of 2100, I learn from every talk."),
    ],
}


@pytest.mark.parametrize("rule,messages", [(r, m) for r, rows in CLEAN.items() for m in rows],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_rows_that_are_fine_are_not_flagged(rule, messages):
    assert rule not in rules_of(messages)


# rule -> rows it must flag
DEFECTS = {
    "error-text": [
        qa("Summarise the article", "Traceback (most recent call last):\n  File \"gen.py\", line 3\n"
           "openai.error.RateLimitError: Rate limit reached"),
        qa("Summarise the article", "Error: rate limit exceeded, retry in 20s"),
        qa("Summarise the article", "<!DOCTYPE html>\n<html><head><title>500 Internal Server Error</title></head>"
           "<body><h1>Internal Server Error</h1></body></html>"),
    ],
    "merged-instructions": [qa("Write a poem.\n##\n18. Instruction: Name a fruit.", "Roses are red.")],
    "personal-data": [qa("Who to call?", "Call Maria on (415) 867-5309 after six.")],
    "refusal": [qa("Write a poem", "I'm sorry, but I can't help with that."),
                qa("Write a poem", "As an AI language model, I do not write poems, but here is a summary.")],
    "unfilled-placeholder": [qa("Who are you?", "I am {{name}}, an AI assistant developed by {{author}}."),
                             qa("Write a letter", "Dear team,\nThanks.\n[Your Name]")],
    "repetition": [qa("Describe the sea", "The sea is calm. " + "The waves are gentle and blue. " * 2000)],
    "role-order": [[{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "assistant", "content": "Paris is the capital of France."}]],
    "truncated-answer": [qa("Explain rain", "Rain forms when clouds cool. The droplets grow until they are")],
    "unseen-reference": [qa("Summarise https://www.bbc.co.uk/news/science-65012345", "Scientists found water.")],
}


@pytest.mark.parametrize("rule,messages", [(r, m) for r, rows in DEFECTS.items() for m in rows],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_defects_are_flagged(rule, messages):
    assert rule in rules_of(messages)


def test_the_identity_set_shape_is_flagged_as_a_placeholder_but_not_as_truncated():
    # LLaMA-Factory's identity.json: 85 of its 91 answers hold {{name}} or {{author}}
    rows = [qa("hi", "Hello! I am {{name}}, an AI assistant developed by {{author}}. How can I assist you today?"),
            qa("Who are you?", "I am {{name}}, an AI assistant developed by {{author}}"),
            qa("What is your name?", "{{name}}")]
    flags = lint([Example(m, "identity", i + 1) for i, m in enumerate(rows)])
    assert {f.index for f in flags if f.rule == "unfilled-placeholder"} == {0, 1, 2}
    assert not [f for f in flags if f.rule in ("truncated-answer", "placeholder-answer")]
    # a template inside code is the subject of the answer, not a blank
    assert "unfilled-placeholder" not in rules_of(qa("Show a Jinja greeting", "Write `Hello {{ name }}!` in it."))


def test_plain_text_rows_are_not_a_missing_user_turn():
    assert "role-order" not in rules_of([{"role": "assistant", "content": "A paragraph of pretraining text."}])


TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}


def test_tool_calls_follow_the_message_contract():
    convo = [{"role": "system", "content": "You can call tools."}, {"role": "user", "content": "Weather in Paris?"},
             {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
             {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
             {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'},
             {"role": "assistant", "content": "It is 21 degrees and clear in Paris."}]
    assert rules_of(convo) == set()
    assert rules_of(convo[:3]) == set()  # a turn that only calls a tool is a real answer, not an empty one
    lost_call = [*convo[:2], {"role": "assistant", "content": "Let me check."}, *convo[3:]]
    assert "role-order" in rules_of(lost_call)  # a tool result nobody asked for


def test_a_weight_0_turn_is_not_judged_as_the_answer():
    convo = [{"role": "user", "content": "Tell me a joke"}, {"role": "assistant", "content": "Why did the chicken"
             " cross the road? To get to the other side."}, {"role": "user", "content": "Another"},
             {"role": "assistant", "content": "I'm sorry, but I can't help with that.", "weight": 0}]
    assert rules_of(convo) == set()  # the refusal is shown, not trained
    convo[1]["weight"] = 0
    assert rules_of(convo) == {"empty-answer"}  # nothing in the row is trained


def test_media_is_flagged_and_makes_a_reference_to_it_seen():
    image = qa("Describe the attached image", "A cat on a sofa.")
    assert rules_of(image) == {"unseen-reference"}
    assert rules_of(image, {"images": ["cat.jpg"]}) == {"media"}
    parts = [{"role": "user", "content": "What is in this photo?", "parts": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
        {"type": "text", "text": "What is in this photo?"}]}, {"role": "assistant", "content": "A dog."}]
    assert rules_of(parts) == {"media"}
    reasoning = [{"role": "user", "content": "What is 17 * 3?"}, {"role": "assistant", "content": "51",
                 "reasoning_content": "17 * 3 = 51.", "parts": [{"type": "reasoning", "value": "17 * 3 = 51."},
                                                               {"type": "text", "value": "51"}]}]
    assert rules_of(reasoning) == set()  # kept parts that are not media are nothing to say
    assert rules_of(qa("<video>What happens?", "A dog runs.")) == {"media"}
    assert rules_of(qa("Name a fruit", "Apple."), {"images": [], "id": 7}) == set()  # no media: nothing to say
