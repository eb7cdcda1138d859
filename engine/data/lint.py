"""Lint rules for instruction data: each has an id, a severity, a one-line why, its exact check and its prefilter.

The rules come from defects found in real instruction data (the AlpacaDataCleaned
list, practitioners' cleaning checklists). Each check runs once per example as a
compiled regular expression or a string method, never a Python loop per character.
Completeness is judged by unbalanced structure and dangling endings, not by "ends
with . ! ?": that rule flags 43% of GSM8K's complete answers, which end in a number.

Every rule is one entry of RULES: id, severity, why, its exact check and its prefilter
(engine/data/prefilter.py), which picks at C speed a superset of the rows the check can
flag; only those rows are checked. A rule cannot be made without one: it names a loose
pattern (`Matches`), a vectorised condition (`Computed`), or says it must see every row
(`EVERY_ROW`). tests/test_lint_rules.py holds each prefilter to its exact check.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.data.prefilter import DIGIT, WS, Columns, Computed, Matches, Prefilter, answer_of, prompt_of

SEVERITIES = ("error", "warning", "info")


@dataclass
class LintConfig:
    """Which rules run, at which severity, and the length limits."""

    disabled: set[str] = field(default_factory=set)
    severity: dict[str, str] = field(default_factory=dict)
    min_prompt_chars: int = 3
    min_answer_chars: int = 1
    max_chars: int = 32_000
    max_tokens: int = 2048

    def enabled(self, rule: str) -> bool:
        return rule not in self.disabled

    def severity_of(self, rule: str) -> str:
        return self.severity.get(rule, RULES[rule].severity)


@dataclass
class Flag:
    index: int  # position in the example list
    rule: str
    severity: str
    message: str


@dataclass(frozen=True, slots=True)
class Texts:
    """One example as the exact checks read it."""

    messages: list[dict]
    answer: str  # the last message when the assistant wrote it, else ""
    prompt: str  # the user turns joined by newlines

    @classmethod
    def of(cls, messages: list[dict]) -> Texts:
        return cls(messages, answer_of(messages), prompt_of(messages))


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    why: str
    check: Callable[[Texts, LintConfig], str | None]  # the message when the example breaks the rule
    prefilter: Prefilter

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"rule {self.id}: severity {self.severity!r} is not one of {', '.join(SEVERITIES)}")
        if not isinstance(self.prefilter, Prefilter):
            raise TypeError(f"rule {self.id}: prefilter must be Matches, Computed or EVERY_ROW, "
                            f"not {type(self.prefilter).__name__}")


# ---- the exact checks ------------------------------------------------------------------

PLACEHOLDER_INPUT = re.compile(r"<\s*no\s*-?\s*input\s*>|^\s*(?:no input|none|n/?a|null|nan)\.?\s*$", re.I | re.M)
PLACEHOLDER_ANSWER_WHOLE = re.compile(
    r"\s*(?:<\s*no\s*-?\s*output\s*>|n/?a|none|null|nan|todo|tbd|\.\.\.|-|no output\.?|no answer\.?)\s*", re.I)
PLACEHOLDER_ANSWER_PART = re.compile(r"<\s*no\s*-?\s*output\s*>|\bN/A\b|\[(?:insert|your) [^\]]{1,40}\]", re.I)
DANGLING_WORDS = "and|or|but|the|a|an|of|to|with|for|by|from|that|which|is|are|was|were|because|such as|including"
DANGLING_END = re.compile(r"(?:[,;(\[{\-–—]|\b(?:" + DANGLING_WORDS + r")|[^.!?\s]\.\.)\s*\Z", re.I)
ERROR_TEXT = re.compile(
    r"\A\s*(?:error|exception|fatal|internal server error)\b\s*[:!-]|Traceback \(most recent call last\)|"
    r"\b(?:rate limit exceeded|An error occurred|HTTP (?:error )?[45]\d\d\b|status code [45]\d\d|"
    r"(?:Type|Value|Key|Index|Attribute|Runtime)Error: |openai\.error\.|Request timed out)", re.I)
REFUSAL = re.compile(
    r"\bas an ai(?: language)? model\b|\bI(?:'m| am) (?:sorry|afraid),? (?:but )?I (?:can(?:no|')t|am unable|"
    r"won't|do not have)|\bI(?: cannot| can't| am unable to|'m unable to| am not able to) "
    r"(?:help|assist|provide|fulfill|comply|browse|access)", re.I)
UNSEEN_REFERENCE = re.compile(
    r"https?://|\bwww\.\w|\b(?:attached|enclosed|uploaded) (?:file|image|document|picture|photo|pdf|spreadsheet)|"
    r"\b(?:this|the (?:following|given|above|attached)) (?:image|picture|photo|video|diagram|screenshot|audio)\b|"
    r"\bsee (?:the )?attach", re.I)
MERGED = re.compile(r"(?:^|\n)\s*(?:##+\s*\n\s*)?\d+\s*[.)]\s*(?:Instruction|Input|Output)\s*:|\n#{2,}\s*\n\s*\d+\.",
                    re.I)
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]|\\u00[0-9a-fA-F]{2}|\\x[0-9a-fA-F]{2}")
LITERAL_NEWLINES = re.compile(r"\\n")
EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]*[a-zA-Z]{2,}\b")
PHONE = re.compile(r"(?<![\w.,])(?:\+\d{1,3}[ .-]?)?\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?![\w])")
SECRET = re.compile(r"\b(?:sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|"
                    r"xox[bpas]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35})|-----BEGIN [A-Z ]*PRIVATE KEY-----")


def truncation_reason(answer: str) -> str | None:
    """Why an answer looks cut off, or None. Ending in a number or formula is fine."""
    text = answer.rstrip()
    if not text:
        return None
    if text.count("```") % 2:
        return "a code block is opened and never closed"
    head = text[0]
    if head in "{[" and text[-1] not in "}]":
        return f"starts with {head!r} but does not close it"
    if text.count('"') % 2 and head in "{[":
        return "a quoted string is not closed"
    if len(text) > 20 and DANGLING_END.search(text[-40:]):
        return f"ends with {text[-15:].split()[-1] if text[-15:].split() else text[-15:]!r}"
    return None


def role_order_problem(messages: list[dict]) -> str | None:
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        return f"a system message at turn {roles.index('system', 1)}, not first"
    turns = roles[1:] if roles and roles[0] == "system" else roles
    if len(turns) == 1 and turns[0] == "assistant":
        return None  # plain text: one trained block
    for i, role in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            return f"turn {i + (len(roles) - len(turns))} is {role}, expected {expected}"
    return None


def _mask(text: str) -> str:
    return text[:3] + "…" + text[-2:] if len(text) > 8 else text


def _empty_answer(t: Texts, config: LintConfig) -> str | None:
    if not t.answer.strip():
        return "the answer is empty" if not t.answer else "the answer is only whitespace"
    return None


def _placeholder_input(t, config):
    m = PLACEHOLDER_INPUT.search(t.prompt)
    return f"placeholder {m.group(0).strip()!r} in the prompt" if m else None


def _placeholder_answer(t, config):
    stripped = t.answer.strip()
    if not stripped:
        return None
    if PLACEHOLDER_ANSWER_WHOLE.fullmatch(stripped):
        return f"the whole answer is {stripped[:20]!r}"
    m = PLACEHOLDER_ANSWER_PART.search(t.answer)
    return f"placeholder {m.group(0)!r} in the answer" if m else None


def _error_text(t, config):
    m = ERROR_TEXT.search(t.answer)
    return f"error text in the answer: {m.group(0).strip()[:40]!r}" if m else None


def _refusal(t, config):
    m = REFUSAL.search(t.answer)
    return f"refusal: {m.group(0)[:40]!r}" if m else None


def _unseen_reference(t, config):
    m = UNSEEN_REFERENCE.search(t.prompt)
    return f"the prompt refers to {m.group(0)[:40]!r}" if m else None


def _merged_instructions(t, config):
    return "a numbered 'Instruction:' inside the row" if any(MERGED.search(m["content"]) for m in t.messages) else None


def _control_chars(t, config):
    for msg in t.messages:
        content = msg["content"]
        if m := CONTROL.search(content):
            return f"{m.group(0)!r} in the {msg['role']} text"
        if "\n" not in content and len(LITERAL_NEWLINES.findall(content)) >= 2 and "```" not in content:
            return f"literal \\n escapes in the {msg['role']} text (double-escaped?)"
    return None


def _too_short(t, config):
    if t.prompt and len(t.prompt.strip()) < config.min_prompt_chars:
        return f"prompt of {len(t.prompt.strip())} characters"
    stripped = t.answer.strip()
    if stripped and len(stripped) < config.min_answer_chars:
        return f"answer of {len(stripped)} characters"
    return None


def _too_long(t, config):
    chars = sum(len(m["content"]) for m in t.messages)
    return f"{chars:,} characters > {config.max_chars:,}" if chars > config.max_chars else None


def _personal_data(t, config):
    for msg in t.messages:
        content = msg["content"]
        if m := EMAIL.search(content) or SECRET.search(content) or PHONE.search(content):
            return f"{_mask(m.group(0))} in the {msg['role']} text"
    return None


def _short_rows(c: Columns, config: LintConfig):
    prompt, answer = c.chars("prompt", stripped=True), c.chars("answer", stripped=True)
    # a prompt of only whitespace is too short too: its stripped length is 0
    return (((c.chars("prompt") > 0) & (prompt < config.min_prompt_chars))
            | ((answer > 0) & (answer < config.min_answer_chars)))


def _misordered_rows(c: Columns, config: LintConfig):
    import numpy as np

    mask = np.zeros(c.n, dtype=bool)
    wrong: dict[tuple, bool] = {}  # files repeat a few role sequences: judge each once
    for i, ex in enumerate(c.examples):
        key = tuple(m["role"] for m in ex.messages)
        if (bad := wrong.get(key)) is None:
            bad = wrong[key] = role_order_problem(ex.messages) is not None
        if bad:
            mask[i] = True
    return mask


# ---- the registry: one entry per rule, in the order flags of one example are listed ------

def _registry(*rules: Rule) -> dict[str, Rule]:
    ids = [r.id for r in rules]
    if len(set(ids)) != len(ids):
        raise ValueError(f"lint rule ids registered twice: {sorted({i for i in ids if ids.count(i) > 1})}")
    return {r.id: r for r in rules}


RULES = _registry(
    Rule("empty-answer", "error", "an empty answer teaches the model to say nothing", _empty_answer,
         Computed(lambda c, config: c.chars("answer", stripped=True) == 0)),
    Rule("placeholder-input", "warning", "a placeholder such as <noinput> is noise the model learns to expect",
         _placeholder_input,
         Matches("prompt", "(?m)<" + WS + "*no" + WS + "*-?" + WS + "*input" + WS + "*>|^" + WS
                 + r"*(?:no input|none|n/?a|null|nan)\.?" + WS + "*$", ignore_case=True)),
    Rule("placeholder-answer", "error", "N/A or <No Output> answers teach the model to give up", _placeholder_answer,
         Matches("answer", "^" + WS + r"*(?:n/?a|none|null|nan|todo|tbd|\.\.\.|-|no output\.?|no answer\.?)" + WS
                 + "*$|<" + WS + "*no" + WS + "*-?" + WS + "*output" + WS + r"*>|N/A|\[(?:insert|your) ",
                 ignore_case=True)),
    Rule("truncated-answer", "warning", "an answer cut off mid-way teaches the model to stop mid-way",
         lambda t, config: truncation_reason(t.answer),
         # (?:^|\W), not \b: RE2's \b sees no boundary before a non-ASCII letter such as ſ, Python's does
         Matches("answer", r"^[\[{]|```|(?:[,;(\[{\-–—]|(?:^|\W)(?:" + DANGLING_WORDS + r")|[^.!?]\.\.)" + WS + "*$",
                 ignore_case=True)),
    Rule("error-text", "error", "error messages or tracebacks from the pipeline that made the data", _error_text,
         Matches("answer", "^" + WS + r"*(?:error|exception|fatal|internal server error)|Traceback \(|rate limit "
                 r"exceeded|An error occurred|HTTP (?:error )?[45]|status code [45]|Error: |openai\.error\.|"
                 r"Request timed out", ignore_case=True)),
    Rule("refusal", "warning", "refusal boilerplate teaches refusing answerable requests", _refusal,
         Matches("answer", r"as an ai|I(?:'m| am) (?:sorry|afraid)|I(?: cannot| can't| am unable to|'m unable to|"
                 r" am not able to) ", ignore_case=True)),
    Rule("unseen-reference", "warning", "the instruction needs a URL or attachment the model cannot see",
         _unseen_reference,
         Matches("prompt", r"https?://|www\.|(?:attached|enclosed|uploaded) |(?:this|following|given|above|attached) "
                 r"(?:image|picture|photo|video|diagram|screenshot|audio)|see (?:the )?attach", ignore_case=True)),
    Rule("merged-instructions", "warning", "several instructions merged into one row", _merged_instructions,
         Matches("message", DIGIT + "+" + WS + "*[.)]" + WS + "*(?:Instruction|Input|Output)" + WS + r"*:|\n#{2,}"
                 + WS + r"*\n", ignore_case=True)),
    Rule("control-chars", "warning", "control characters or stray escapes from a broken export", _control_chars,
         Matches("message", r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x{fffd}]|\\u00|\\x|\\n")),
    Rule("too-short", "info", "too little text to learn from", _too_short, Computed(_short_rows)),
    Rule("too-long", "warning", "longer than the limit: cut in training, the end of the answer is lost", _too_long,
         Computed(lambda c, config: c.chars("message") > config.max_chars)),
    Rule("role-order", "warning", "turns out of order: system first, then user and assistant alternating",
         lambda t, config: role_order_problem(t.messages), Computed(_misordered_rows)),
    Rule("personal-data", "warning", "e-mail addresses, phone numbers or secret keys should not be trained on",
         _personal_data,
         Matches("message", r"@[\pL\pN_-]+\.|" + DIGIT + r"{3}\)?[ .-]" + DIGIT + "{3}[ .-]" + DIGIT + "{4}|"
                 r"sk-[A-Za-z0-9_-]{20}|AKIA|gh[pousr]_|xox[bpas]-|AIza|PRIVATE KEY---")),
)

# Rules whose hits are removed by default (export, the demo's clean copy): the data is wrong, not doubtful.
ERROR_RULES = frozenset(r.id for r in RULES.values() if r.severity == "error")


def _enabled(config: LintConfig) -> list[Rule]:
    return [r for r in RULES.values() if config.enabled(r.id)]


def check_example(messages: list[dict], config: LintConfig) -> list[tuple[str, str]]:
    """(rule id, message) for every enabled rule this example breaks: the exact checks, no prefilter."""
    texts = Texts.of(messages)
    return [(rule.id, message) for rule in _enabled(config) if (message := rule.check(texts, config)) is not None]


def candidates(examples, config: LintConfig):
    """For each enabled rule, a boolean mask (numpy) of the examples its check must see; None without pyarrow."""
    try:
        import numpy as np
        import pyarrow  # noqa: F401
    except ImportError:
        return None
    columns = Columns(examples)
    return {rule.id: np.asarray(rule.prefilter.rows(columns, config), dtype=bool) for rule in _enabled(config)}


def lint(examples, config: LintConfig | None = None, token_counts=None) -> list[Flag]:
    """Flags for every example (`examples`: a list of Example). `token_counts`: one per example, or None."""
    config = config or LintConfig()
    picked = candidates(examples, config)
    texts: dict[int, Texts] = {}  # each picked example read once, whichever rules picked it
    flags = []
    for rule in _enabled(config):
        rows = range(len(examples)) if picked is None else picked[rule.id].nonzero()[0].tolist()
        for i in rows:
            if (t := texts.get(i)) is None:
                t = texts[i] = Texts.of(examples[i].messages)
            if (message := rule.check(t, config)) is not None:
                flags.append(Flag(i, rule.id, config.severity_of(rule.id), message))
    if token_counts is not None and config.enabled("too-long"):
        import numpy as np

        counts = np.asarray(token_counts)
        for i in np.flatnonzero(counts > config.max_tokens).tolist():
            flags.append(Flag(i, "too-long", config.severity_of("too-long"),
                              f"{int(counts[i]):,} tokens > {config.max_tokens:,} (max_seq_length)"))
    flags.sort(key=lambda f: f.index)  # stable: one example's flags stay in registry order
    return flags


def parse_rule_options(disable: list[str] | None = None, severities: list[str] | None = None) -> LintConfig:
    """LintConfig from command-line style options; unknown ids are an error that lists the known ones."""
    from engine.data.load import DataError

    config = LintConfig()
    for rule in disable or []:
        for part in rule.split(","):
            if part not in RULES:
                raise DataError(f"unknown lint rule {part!r}; rules: {', '.join(RULES)}")
            config.disabled.add(part)
    for spec in severities or []:
        rule, _, sev = spec.partition("=")
        if rule not in RULES or sev not in SEVERITIES:
            raise DataError(f"bad severity {spec!r}: write RULE=error|warning|info")
        config.severity[rule] = sev
    return config
