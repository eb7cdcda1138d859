"""Lint rules for instruction data: each has an id, a severity and a one-line why.

The rules come from defects found in real instruction data (the AlpacaDataCleaned
list, practitioners' cleaning checklists). Each check runs once per example as a
compiled regular expression or a string method, never a Python loop per character.
Completeness is judged by unbalanced structure and dangling endings, not by "ends
with . ! ?": that rule flags 43% of GSM8K's complete answers, which end in a number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    why: str


RULES = {r.id: r for r in (
    Rule("empty-answer", "error", "an empty answer teaches the model to say nothing"),
    Rule("placeholder-input", "warning", "a placeholder such as <noinput> is noise the model learns to expect"),
    Rule("placeholder-answer", "error", "N/A or <No Output> answers teach the model to give up"),
    Rule("truncated-answer", "warning", "an answer cut off mid-way teaches the model to stop mid-way"),
    Rule("error-text", "error", "error messages or tracebacks from the pipeline that made the data"),
    Rule("refusal", "warning", "refusal boilerplate teaches refusing answerable requests"),
    Rule("unseen-reference", "warning", "the instruction needs a URL or attachment the model cannot see"),
    Rule("merged-instructions", "warning", "several instructions merged into one row"),
    Rule("control-chars", "warning", "control characters or stray escapes from a broken export"),
    Rule("too-short", "info", "too little text to learn from"),
    Rule("too-long", "warning", "longer than the limit: cut in training, the end of the answer is lost"),
    Rule("role-order", "warning", "turns out of order: system first, then user and assistant alternating"),
    Rule("personal-data", "warning", "e-mail addresses, phone numbers or secret keys should not be trained on"),
)}

# Rules whose hits are removed by default (export, the demo's clean copy): the data is wrong, not doubtful.
ERROR_RULES = frozenset(r.id for r in RULES.values() if r.severity == "error")


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
    r"won't|do not have)|\bI(?: cannot|can't|am unable to|'m unable to|am not able to) "
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


def _answer(messages: list[dict]) -> str:
    return messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else ""


def _prompt(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


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


def check_example(messages: list[dict], config: LintConfig) -> list[tuple[str, str]]:
    """(rule id, message) for every rule this example breaks."""
    found: list[tuple[str, str]] = []
    on = config.enabled
    answer, prompt = _answer(messages), _prompt(messages)
    stripped = answer.strip()
    if on("empty-answer") and not stripped:
        found.append(("empty-answer", "the answer is empty" if not answer else "the answer is only whitespace"))
    if on("placeholder-input") and (m := PLACEHOLDER_INPUT.search(prompt)):
        found.append(("placeholder-input", f"placeholder {m.group(0).strip()!r} in the prompt"))
    if on("placeholder-answer") and stripped:
        if PLACEHOLDER_ANSWER_WHOLE.fullmatch(stripped):
            found.append(("placeholder-answer", f"the whole answer is {stripped[:20]!r}"))
        elif m := PLACEHOLDER_ANSWER_PART.search(answer):
            found.append(("placeholder-answer", f"placeholder {m.group(0)!r} in the answer"))
    if on("truncated-answer") and (why := truncation_reason(answer)):
        found.append(("truncated-answer", why))
    if on("error-text") and (m := ERROR_TEXT.search(answer)):
        found.append(("error-text", f"error text in the answer: {m.group(0).strip()[:40]!r}"))
    if on("refusal") and (m := REFUSAL.search(answer)):
        found.append(("refusal", f"refusal: {m.group(0)[:40]!r}"))
    if on("unseen-reference") and (m := UNSEEN_REFERENCE.search(prompt)):
        found.append(("unseen-reference", f"the prompt refers to {m.group(0)[:40]!r}"))
    if on("merged-instructions") and any(MERGED.search(m["content"]) for m in messages):
        found.append(("merged-instructions", "a numbered 'Instruction:' inside the row"))
    if on("control-chars"):
        for msg in messages:
            content = msg["content"]
            if m := CONTROL.search(content):
                found.append(("control-chars", f"{m.group(0)!r} in the {msg['role']} text"))
                break
            if "\n" not in content and len(LITERAL_NEWLINES.findall(content)) >= 2 and "```" not in content:
                found.append(("control-chars", f"literal \\n escapes in the {msg['role']} text (double-escaped?)"))
                break
    if on("too-short"):
        if prompt and len(prompt.strip()) < config.min_prompt_chars:
            found.append(("too-short", f"prompt of {len(prompt.strip())} characters"))
        elif stripped and len(stripped) < config.min_answer_chars:
            found.append(("too-short", f"answer of {len(stripped)} characters"))
    if on("too-long"):
        chars = sum(len(m["content"]) for m in messages)
        if chars > config.max_chars:
            found.append(("too-long", f"{chars:,} characters > {config.max_chars:,}"))
    if on("role-order") and (why := role_order_problem(messages)):
        found.append(("role-order", why))
    if on("personal-data"):
        for msg in messages:
            content = msg["content"]
            m = EMAIL.search(content) or SECRET.search(content) or PHONE.search(content)
            if m:
                found.append(("personal-data", f"{_mask(m.group(0))} in the {msg['role']} text"))
                break
    return found


def _mask(text: str) -> str:
    return text[:3] + "…" + text[-2:] if len(text) > 8 else text


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


# Loose RE2 versions of the rules for pyarrow.compute: a superset of what the exact Python rules
# match, run over the whole column at C speed; only the rows they pick go through check_example.
PREFILTER = {
    "answer": [
        r"(?i)^\s*(?:<\s*no\s*-?\s*output\s*>|n/?a|none|null|nan|todo|tbd|\.\.\.|-|no output\.?|no answer\.?)\s*$"
        r"|<\s*no\s*-?\s*output\s*>|\bN/A\b|\[(?:insert|your) ",
        r"(?s)^\s*[\[{]|```|(?i)(?:[,;(\[{\-–—]|\b(?:" + DANGLING_WORDS + r")|[^.!?\s]\.\.)\s*$",
        r"(?i)^\s*(?:error|exception|fatal|internal server error)|Traceback \(|rate limit exceeded|An error occurred"
        r"|HTTP (?:error )?[45]\d\d|status code [45]\d\d|Error: |openai\.error\.|Request timed out",
        r"(?i)as an ai|I(?:'m| am) (?:sorry|afraid)|I(?: cannot|can't|am unable to|'m unable to|am not able to) ",
    ],
    "prompt": [
        r"(?im)<\s*no\s*-?\s*input\s*>|^\s*(?:no input|none|n/?a|null|nan)\.?\s*$",
        r"(?i)https?://|www\.|(?:attached|enclosed|uploaded) |(?:this|following|given|above|attached) "
        r"(?:image|picture|photo|video|diagram|screenshot|audio)|see (?:the )?attach",
    ],
    "message": [
        r"(?i)\d+\s*[.)]\s*(?:Instruction|Input|Output)\s*:|\n#{2,}\s*\n",
        r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x{fffd}]|\\u00|\\x|\\n",
        r"@[\w-]+\.|\d{3}\)?[ .-]\d{3}[ .-]\d{4}|sk-[A-Za-z0-9_-]{20}|AKIA|gh[pousr]_|xox[bpas]-|AIza|PRIVATE KEY---",
    ],
}


def candidates(examples, config: LintConfig):
    """A boolean mask of the examples that may break a rule (numpy), or None without pyarrow."""
    try:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError:
        return None
    n = len(examples)
    mask = np.zeros(n, dtype=bool)
    if not n:
        return mask
    answers = pa.array([_answer(ex.messages) for ex in examples], pa.large_string())
    prompts = pa.array([_prompt(ex.messages) for ex in examples], pa.large_string())
    sizes = np.fromiter((len(ex.messages) for ex in examples), dtype=np.int64, count=n)
    messages = pa.array([m["content"] for ex in examples for m in ex.messages], pa.large_string())
    owner = np.repeat(np.arange(n), sizes)
    for pattern in PREFILTER["answer"]:
        mask |= pc.match_substring_regex(answers, pattern).to_numpy(zero_copy_only=False)
    for pattern in PREFILTER["prompt"]:
        mask |= pc.match_substring_regex(prompts, pattern).to_numpy(zero_copy_only=False)
    for pattern in PREFILTER["message"]:
        hit = pc.match_substring_regex(messages, pattern).to_numpy(zero_copy_only=False)
        mask[owner[hit]] = True
    answer_len = pc.utf8_length(pc.utf8_trim_whitespace(answers)).to_numpy()
    prompt_len = pc.utf8_length(pc.utf8_trim_whitespace(prompts)).to_numpy()
    total = np.add.reduceat(pc.utf8_length(messages).to_numpy(), np.cumsum(sizes) - sizes)
    mask |= answer_len < max(config.min_answer_chars, 1)
    mask |= (prompt_len > 0) & (prompt_len < config.min_prompt_chars)
    mask |= total > config.max_chars
    roles_ok: dict[tuple, bool] = {}
    for i, ex in enumerate(examples):
        key = tuple(m["role"] for m in ex.messages)
        ok = roles_ok.get(key)
        if ok is None:
            ok = roles_ok[key] = role_order_problem(ex.messages) is None
        if not ok:
            mask[i] = True
    return mask


def lint(examples, config: LintConfig | None = None, token_counts=None) -> list[Flag]:
    """Flags for every example (`examples`: a list of Example). `token_counts`: one per example, or None."""
    config = config or LintConfig()
    flags = []
    mask = candidates(examples, config)
    picked = range(len(examples)) if mask is None else mask.nonzero()[0].tolist()
    for i in picked:
        for rule, message in check_example(examples[i].messages, config):
            flags.append(Flag(i, rule, config.severity_of(rule), message))
    if token_counts is not None and config.enabled("too-long"):
        import numpy as np

        counts = np.asarray(token_counts)
        for i in np.flatnonzero(counts > config.max_tokens).tolist():
            flags.append(Flag(i, "too-long", config.severity_of("too-long"),
                              f"{int(counts[i]):,} tokens > {config.max_tokens:,} (max_seq_length)"))
    flags.sort(key=lambda f: f.index)
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
