"""Every lint rule's prefilter against its exact check run by brute force on every row.

lint() runs a rule's exact check only on the rows its prefilter picks; a prefilter that is
missing or narrower than its check hides flags silently. Here the exact checks run on every
example (check_example: no prefilter) of the shared real datasets plus crafted rows that make
every rule fire, including the Unicode cases where Python's re and RE2 disagree (Unicode
whitespace and digits, case folding), and lint() must find exactly the same flags.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.data.lint import RULES, LintConfig, Rule, check_example, lint, unlike_the_file
from engine.data.load import Example, load_examples
from engine.data.prefilter import Columns, Matches

DATA = Path("/work/shared/data")
DATASETS = sorted(p for p in DATA.iterdir() if p.suffix in {".json", ".jsonl", ".csv", ".parquet"})
CONFIGS = {"default": LintConfig(),  # and tight limits, so the length rules fire on real rows too
           "tight-lengths": LintConfig(min_prompt_chars=40, min_answer_chars=30, max_chars=1500)}


def qa(q: str, a: str) -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def turns(*roles: str) -> list[dict]:
    return [{"role": r, "content": f"a {r} turn with some words"} for r in roles]


# rule -> rows its exact check flags under the default config
CRAFTED = {
    "empty-answer": [qa("Say something", ""), qa("Say something", " \u00a0\n"), turns("user")],
    "placeholder-input": [qa("<noinput>\nName a fruit", "Apple."), qa("Name a fruit\nNo input.", "Apple."),
                          qa("Name a fruit\n\u00a0none\u3000", "Apple."), qa("<no \u0131nput> Name a fruit", "Apple.")],
    "placeholder-answer": [qa("Your age?", "N/A"), qa("Your age?", "<No Output>"), qa("Your age?", "none\u00a0"),
                           qa("Your age?", "\u3000tbd\u3000")],
    "unfilled-placeholder": [qa("Write a letter", "Dear [insert name], hello."), qa("Who are you?", "I am {{name}}."),
                             qa("Who made you?", "I was made by {{ author }}"),
                             qa("Sign it", "Thanks,\n[Your Name]")],
    "truncated-answer": [qa("List colours", "The colours are red, green and"),
                         qa("Write code", "```python\nprint(1)"), qa("Give JSON", '{"a": 1, "b": 2'),
                         qa("List colours", "The colours are red, green and\u00a0"),
                         qa("List colours", "The colours are red, green \u017fuch as"),
                         qa("Explain", "Rain falls when clouds cool. The droplets grow until they"),
                         qa("Call it", "The forecast is weather('Paris tomorrow")],
    "error-text": [qa("Summarise", "Error: upstream model rate limit exceeded, please retry."),
                   qa("Run it", "Traceback (most recent call last):\n  File \"x.py\", line 1"),
                   qa("Run it", "\u3000fatal - the job died"),
                   qa("Fetch it", "\u3000HTTP 5\u0660\u0663: the upstream model failed."),
                   qa("Fetch it", "<html><head><title>502 Bad Gateway</title></head></html>"),
                   qa("Explain", "ValueError: invalid literal for int() with base 10: 'x'")],
    "refusal": [qa("Tell a joke", "As an AI language model, I cannot tell jokes."),
                qa("Tell a joke", "I'm sorry, but I can't do that."),
                qa("Tell a joke", "As an a\u0131 language model I decline."),
                qa("Write malware", "I can't help with that."), qa("Browse it", "I am unable to browse the web.")],
    "unseen-reference": [qa("Summarise https://example.com/post", "It says hello."),
                         qa("Describe the attached image", "A cat."), qa("What is in this photo?", "A dog."),
                         qa("See the attachment and reply", "Done.")],
    "merged-instructions": [qa("Write a poem.\n##\n18. Instruction: Name a fruit.", "Roses are red."),
                            qa("Write a poem.\n\u0661\u0668.\u00a0Instruction: Name a fruit.", "Roses are red."),
                            qa("Write a poem.", "Roses.\n###\n2. Write another one.")],
    "control-chars": [qa("Fix\x07 this", "Done."), qa("Split it", "line one\\nline two\\nline three"),
                      qa("Spell it", "caf\\u00e9 is a word"), qa("Spell it", "broken \ufffd character")],
    "too-short": [qa("Hi", "Hello there, how can I help?"), qa("   ", "A full answer here."),
                  qa("\u00a0\u2003", "A full answer here.")],
    "too-long": [qa("Write a long text", "word " * 6500),
                 [{"role": "system", "content": "s" * 11000}, *qa("u" * 11000, "a" * 11000)]],
    "role-order": [turns("assistant", "user", "assistant"), turns("user", "system", "assistant"),
                   turns("user", "user"), turns("system", "assistant", "user"), turns("system", "assistant"),
                   turns("user", "tool", "assistant"), turns("user", "assistant", "tool", "assistant")],
    "personal-data": [qa("Who to mail?", "Write to jane.doe@fastmail.com about it."),
                      qa("Who to call?", "Call 555-123-4567 today."),
                      qa("Which key?", "Use sk-abcdefghijklmnopqrstuvwxyz123 for it."),
                      qa("Who to mail?", "Write to jane@ex\u00e4mple.org about it."),
                      qa("Who to call?", "Call \u0665\u0665\u0665 \u0661\u0662\u0663 \u0664\u0665\u0666\u0667 now."),
                      qa("Which key?", "-----BEGIN RSA PRIVATE KEY-----\nMIIE")],
    "repetition": [qa("Describe it", "It is big. " + "The sky is very blue today. " * 12),
                   qa("Count", "ha" * 800)],
    "media": [qa("<image>What is this?", "A cat."),
              [{"role": "user", "content": "What is this?",
                "parts": [{"type": "image_url", "image_url": {"url": "x.png"}}, {"type": "text", "text": "What is this?"}]},
               {"role": "assistant", "content": "A cat."}]],
}
# and rows whose flags depend on the example beyond its messages
CRAFTED_EXTRA = {"media": [(qa("What is in the picture?", "A cat."), {"images": ["cat.jpg"]}),
                           (qa("Describe the clip", "A dog runs."), {"videos": ["dog.mp4"]})]}
# preference pairs: (prompt and chosen, rejected completion) that the rule flags
CRAFTED_PAIRS = {"identical-pair": [(qa("Say hi", "Hi there!"), [{"role": "assistant", "content": "Hi there!"}]),
                                    (qa("Say hi", "Hi  there!"), [{"role": "assistant", "content": "Hi there!\n"}])],
                 "error-text": [(qa("Summarise", "It is short."),
                                 [{"role": "assistant", "content": "Error: rate limit exceeded, retry."}])],
                 "empty-answer": [(qa("Summarise", "It is short."), [{"role": "assistant", "content": " "}])]}
# and rows whose answers break answer-quality rules where that is the point: a refusal or a cut-off
# answer as the rejected side or as an undesirable KTO completion (not flagged)
PREFERENCE_ROWS = [Example(qa("Tell a joke", "Why did the chicken cross the road? To get across."), "pairs", 1,
                           rejected=[{"role": "assistant", "content": "I'm sorry, but I can't do that."}]),
                   Example(qa("List colours", "The colours are red, green and"), "kto", 1, desirable=False),
                   Example(qa("Tell a joke", "I'm sorry, but I can't do that."), "kto", 2, desirable=False)]


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    assert len(DATASETS) >= 3, f"expected the shared datasets in {DATA}"
    rows = [ex for path in DATASETS for ex in load_examples(path).examples]
    crafted = [(messages, None) for rows_of_rule in CRAFTED.values() for messages in rows_of_rule]
    crafted += [row for rows_of_rule in CRAFTED_EXTRA.values() for row in rows_of_rule]
    pairs = [Example(m, "pairs", i + 1, rejected=rejected)
             for i, (m, rejected) in enumerate(row for rows_of_rule in CRAFTED_PAIRS.values() for row in rows_of_rule)]
    return rows + [Example(m, "crafted", i + 1, extra=extra) for i, (m, extra) in enumerate(crafted)] + pairs \
        + PREFERENCE_ROWS


@pytest.fixture(scope="module")
def brute_force(examples):
    """Flags of every rule's exact check on every example, no prefilter, by config name (each computed once)."""
    flags: dict[str, list[tuple]] = {}

    def of(name: str) -> list[tuple]:
        if name not in flags:
            config = CONFIGS[name]
            exact = [(i, rule, config.severity_of(rule), message)
                     for i, ex in enumerate(examples) for rule, message in check_example(ex, config)]
            # and the one pass over the whole file: answers that end unlike the rest of their file
            by_file = [(i, "truncated-answer", config.severity_of("truncated-answer"), message)
                       for i, message in unlike_the_file(Columns(examples), {f[0] for f in exact})
                       ] if config.enabled("truncated-answer") else []
            flags[name] = sorted(exact + by_file, key=lambda f: f[0])
        return flags[name]
    return of


def found(examples: list[Example], config: LintConfig) -> list[tuple]:
    return [(f.index, f.rule, f.severity, f.message) for f in lint(examples, config)]


def test_crafted_rows_make_every_rule_fire():
    assert set(CRAFTED) | set(CRAFTED_PAIRS) == set(RULES), "a rule without crafted rows is not held to its check"
    for rule, rows in CRAFTED_PAIRS.items():
        for messages, rejected in rows:
            assert rule in {r for r, _ in check_example(Example(messages, "m", 1, rejected=rejected), LintConfig())}
    for example in PREFERENCE_ROWS:  # answer-quality defects where they are the point
        assert not check_example(example, LintConfig()), example
    for rule, rows in CRAFTED.items():
        for messages in rows:
            assert rule in {r for r, _ in check_example(Example(messages, "m", 1), LintConfig())}, (rule, messages)
    for rule, rows in CRAFTED_EXTRA.items():
        for messages, extra in rows:
            assert rule in {r for r, _ in check_example(Example(messages, "m", 1, extra=extra), LintConfig())}, rule


@pytest.mark.parametrize("name", CONFIGS)
def test_lint_finds_exactly_what_brute_force_finds(examples, brute_force, name):
    expected = brute_force(name)
    assert {rule for _, rule, _, _ in expected} == set(RULES)
    got = found(examples, CONFIGS[name])
    missed = [f for f in expected if f not in set(got)]
    assert not missed, f"{len(missed)} flags hidden by a prefilter, first: {missed[:3]}"
    assert got == expected


def test_each_rule_alone_finds_what_brute_force_finds(examples, brute_force):
    """Each rule's own prefilter must suffice: no rule may rely on rows another rule's prefilter picks."""
    expected = brute_force("default")
    for rule in RULES:
        alone = LintConfig(disabled=set(RULES) - {rule})
        assert found(examples, alone) == [f for f in expected if f[1] == rule], rule


def test_a_rule_cannot_be_registered_without_a_prefilter():
    check = RULES["refusal"].check
    with pytest.raises(TypeError):
        Rule("new-rule", "warning", "why", check)  # the missing prefilter is the point
    for not_a_prefilter in (None, r"as an ai", lambda columns, config: None):
        with pytest.raises(TypeError, match="prefilter must be"):
            Rule("new-rule", "warning", "why", check, not_a_prefilter)
    with pytest.raises(ValueError, match="write one of answer, prompt, message"):
        Matches("answers", "as an ai")
