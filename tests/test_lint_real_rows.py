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


def file_of(answers: list[str], source: str = "f.jsonl") -> list[Example]:
    return [Example(qa(f"Question {i} about the topic at hand", a), source, i + 1) for i, a in enumerate(answers)]


def cut_flags(examples) -> dict[int, str]:
    return {f.index: f.message for f in lint(examples) if f.rule == "truncated-answer"}


def test_an_answer_cut_before_a_plausible_word_is_caught_by_how_its_file_ends():
    """"The current weather in Los" is a cut no pattern sees alone: its file's answers all end with a full
    stop or a bracket, so its bare last word is a cut, not a style."""
    complete = [f"The current weather in city number {i} is weather('city {i}')." for i in range(250)]
    letter = "Thank you for your kind words.\n\nYours sincerely,\nMary, Queen of Scots"
    examples = file_of(complete + ["The current weather in Los", letter, "Day 7: farewell dinner in Roppongi"])
    assert cut_flags(examples) == {250: "ends with 'Los' without punctuation, unlike 99% of the answers in its file"}
    # Planted defects do not lower the file's share and hide themselves: 20 more cuts of a kind the
    # per-example check catches, and the bare cut is still found.
    dangling = [f"The forecast for city {i} is sunny with" for i in range(20)]
    assert 270 in cut_flags(file_of(complete + dangling + ["The current weather in Los"]))


def test_a_file_whose_answers_end_either_way_gives_no_such_evidence():
    mixed = [f"So the answer is {i}." if i % 2 else "Then she goes home with her friend Anna" for i in range(250)]
    assert cut_flags(file_of(mixed + ["The current weather in Los"])) == {}
    few = [f"The current weather in city number {i} is sunny." for i in range(50)]  # too few answers to judge
    assert cut_flags(file_of(few + ["The current weather in Los"])) == {}


def test_worked_maths_ends_with_a_number_in_its_last_line():
    """GSM8K: 43% of its complete answers end in a number or a word, but 99.97% end with a line that holds a
    number; a step cut before its result does not."""
    steps = [f"Natalia sold {i}/2 = {i / 2} clips in May.\nIn total she sold {i}+{i / 2} = {1.5 * i} clips"
             for i in range(250)]
    cut = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold the clips to her"
    assert cut_flags(file_of(steps + [cut])) == {250: "its last line holds no number, unlike 100% of the answers "
                                                      "in its file"}


def test_each_file_is_judged_by_its_own_answers():
    punctuated = file_of([f"The weather in city {i} is sunny." for i in range(250)], "a.jsonl")
    numbers = file_of([f"{i} + 2 = {i + 2}" for i in range(250)], "b.jsonl")
    assert cut_flags(punctuated + numbers) == {}
