"""The exact lint checks: one example (`Texts`) in, the message saying what is wrong, or None.

Each check is a compiled regular expression or a string method over one example; lint.py
registers it in RULES with its severity and the prefilter that picks the rows it must see.
A check judges what the model is trained to say: the answer is the last assistant turn, and
text that merely mentions an error, a refusal or a URL (quoted, in code, the subject of the
task) is not the defect itself.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass

from engine.data.prefilter import answer_of, prompt_of
from engine.data.rows import attached_media, completion_start

MEDIA_TAG = re.compile(r"<(?:image|video|audio)>")  # the same convention's placeholder in the text


@dataclass(frozen=True, slots=True)
class Texts:
    """One example as the exact checks read it."""

    messages: list[dict]
    answer: str  # the last message when the assistant wrote it and it is trained (weight not 0), else ""
    prompt: str  # the user turns joined by newlines
    extra: dict | None  # the row's other keys (Example.extra): `images`, `videos` ...
    rejected: list[dict] | None = None  # a pair's rejected completion (Example.rejected)

    @classmethod
    def of(cls, example) -> Texts:
        return cls(example.messages, answer_of(example.messages), prompt_of(example.messages), example.extra,
                   example.rejected)

    def media(self) -> str | None:
        return attached_media(self.messages, self.extra)


# ---- patterns ----------------------------------------------------------------------------

PLACEHOLDER_INPUT = re.compile(r"<\s*no\s*-?\s*input\s*>|^\s*(?:no input|none|n/?a|null|nan)\.?\s*$", re.I | re.M)
PLACEHOLDER_ANSWER_WHOLE = re.compile(
    r"\s*(?:<\s*no\s*-?\s*output\s*>|n/?a|none|null|nan|todo|tbd|\.\.\.|-|no output\.?|no answer\.?)\s*", re.I)
PLACEHOLDER_ANSWER_PART = re.compile(r"<\s*no\s*-?\s*output\s*>|\bN/A\b", re.I)
# fill-in-the-blanks: mustache/Jinja variables and bracketed "[Your Name]" / "[Insert date]"
UNFILLED = re.compile(r"\{\{\s*[A-Za-z_][\w.]*\s*\}\}|\[(?:insert|your|enter) [^\]\n]{1,40}\]", re.I)
CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.S)  # code spans: a template there is the subject
DANGLING_WORDS = "and|or|but|the|a|an|of|to|with|for|by|from|that|which|is|are|was|were|because|such as|including"
DANGLING_END = re.compile(r"(?:[,;(\[{\-–—]|\b(?:" + DANGLING_WORDS + r")|\b[a-z]{2,}\.\.)\s*\Z", re.I)
SENTENCE_BREAK = re.compile(r"[.!?][\"')\]]?\s+(?=[\"'(]?[A-Z])")
LAST_WORD = re.compile(r"(?:^|\s)([A-Za-z]+(?:[-'][A-Za-z]+)*)\Z")
SIGN_OFF = re.compile(r"[,\-–—]\s+(?!I\b)[A-Z][^,]*\Z")  # "With respect, Your AI companion", "Best of luck! - Harry"
# A letter's closing anywhere at the end of an answer, for the file pass (lint.unlike_the_file)
SIGN_OFF_LINE = re.compile(r"(?:^|[\n.!?]\s*)(?:yours|sincerely|best|kind|warm|with|regards|cheers|love|forever|"
                           r"respectfully|faithfully|your)\b[^\n.!?]{0,40},(?:\s*\n\s*[^\n]{1,60}|[ \t]*[^\n,]{1,60})\Z|"
                           r"(?:^|\s)[-–—]\s*[A-Z][\w .]{0,40}\Z", re.I)
LIST_LINE = re.compile(r"(?:[-*•]|\d+[.)]|[A-Z][\w ]{0,30}:)\s")
RESULT_END = re.compile(r"=\s*\$?\d[\d,.]*%?\s*(?:[A-Za-z]+\s*){0,4}\Z")  # "= 900 tents": a result and unit
# words that open a sentence and cannot close one: "... of the war. This" was cut after one word
STARTERS = frozenset("the this that these those it its they their we our you your he his she her my another "
                     "in if as but and so then when while for with an there here".split())  # not "A": a label
NOT_DANGLING = re.compile(r"(?:&#?\w+;|\bA)\s*\Z")  # an HTML entity's ';'; a capital A is a label ("5. A")
ERROR_LEAD = re.compile(  # an error dump is the answer: it starts with the error
    r"\A\s*(?:(?:error|exception|fatal|internal server error)\b\s*[:!-]|Traceback \(most recent call last\)|"
    r"\w+(?:Error|Exception): |openai\.error\.|\{\s*\"error\"\s*:|HTTP(?:/\d(?:\.\d)?| error)? [45]\d\d\b|"
    r"[45]\d\d (?:Internal Server Error|Bad Gateway|Service Unavailable|Gateway Time-?out|Too Many Requests))", re.I)
HTML_ERROR = re.compile(  # a web server's error page: its title or heading names the status
    r"\A\s*(?:<!doctype html>\s*)?<html\b.{0,400}?<(?:title|h1)>[^<]*(?:\b[45]\d\d\b|error)", re.I | re.S)
ERROR_PHRASE = re.compile(  # what only a failing pipeline writes, in an answer short enough to be just that
    r"\b(?:rate limit exceeded|An error occurred|openai\.error\.|Request timed out)", re.I)
ERROR_PHRASE_MAX_CHARS = 300
REFUSAL = re.compile(
    r"\bas an ai(?: language)? model\b|\bI(?:'m| am) (?:sorry|afraid),? (?:but )?I (?:can(?:no|')t|am unable to|"
    r"won't|do not have|don't have)(?: \w+)? (?:help|assist|provide|fulfill|comply|browse|access|do|write|create|"
    r"generate|answer|share|give|complete|perform|engage|support|that|this)\b|"
    r"\bI(?: cannot| can't| am unable to|'m unable to| am not able to) "
    r"(?:help|assist|provide|fulfill|comply|browse|access)\b(?! but\b)", re.I)
OPEN_QUOTE = re.compile(r'["“”]')
URL = re.compile(r"\bhttps?://([\w-]+(?:\.[\w-]+)+)([^\s'\"()<>]*)|\bwww\.([\w-]+(?:\.[\w-]+)+)([^\s'\"()<>]*)", re.I)
ATTACHMENT = re.compile(
    r"\b(?:attached|enclosed|uploaded) (?:file|image|document|picture|photo|pdf|spreadsheet)|"
    r"\b(?:this|the (?:following|given|above|attached)) (?:image|picture|photo|video|diagram|screenshot|audio)\b|"
    r"\bsee (?:the )?attach|\bthe (?:image|picture|photo|video|diagram|screenshot|chart|graph|figure) "
    r"(?:above|below|attached|provided|shown)\b", re.I)
MERGED = re.compile(r"(?:^|\n)\s*(?:##+\s*\n\s*)?\d+\s*[.)]\s*Instruction\s*:|\n#{2,}\s*\n\s*\d+\.", re.I)
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]|\\u00[0-9a-fA-F]{2}|\\x[0-9a-fA-F]{2}")
LITERAL_NEWLINES = re.compile(r"\\n")
EMAIL = re.compile(r"\b([\w.+-]+)@([\w-]+\.[\w.-]*[a-zA-Z]{2,})\b")
# not anyone's address: RFC 2606/6761 reserved names, a masked or a "your..." local part
SAFE_DOMAIN = re.compile(r"(?:^|\.)(?:example\.(?:com|org|net)|example|test|invalid|localhost)$", re.I)
SAFE_LOCAL = re.compile(r"[x*#.]+|your[._-]?\w*", re.I)
PHONE = re.compile(r"(?<![\w.,])(?:\+\d{1,3}[ .-]?)?\(?(\d{3})\)?[ .-](\d{3})[ .-](\d{4})(?![\w])")
# not anyone's line: NANP toll-free codes (businesses' published service numbers) and 555-0100..0199 (fiction)
TOLL_FREE = {"800", "833", "844", "855", "866", "877", "888"}
SECRET = re.compile(r"\b(?:sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|"
                    r"xox[bpas]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35})|-----BEGIN [A-Z ]*PRIVATE KEY-----")
UNIT_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")  # sentences and lines
REPEAT_TIMES, REPEAT_UNIT_CHARS = 5, 10  # a unit of at least 10 characters said 5 times; real data: 2 at most
LOOP_MIN_CHARS, LOOP_RATIO = 1000, 0.1  # a loop with no sentence breaks: zlib shrinks it 10x (real prose: 0.29+)


# ---- the checks --------------------------------------------------------------------------

def truncation_reason(answer: str) -> str | None:
    """Why an answer looks cut off, or None. Ending in a number or formula is fine."""
    text = answer.rstrip()
    if not text:
        return None
    if text.count("```") % 2:
        return "a code block is opened and never closed"
    head = text[0]
    if head in "{[" and text.count(head) > text.count("}" if head == "{" else "]"):
        return f"starts with {head!r} but does not close it"  # counted: "[a link](url)" closes its bracket
    if text.count('"') % 2 and head in "{[":
        return "a quoted string is not closed"
    if len(text) > 20 and DANGLING_END.search(text[-40:]) and not NOT_DANGLING.search(text[-12:]):
        return f"ends with {text[-15:].split()[-1] if text[-15:].split() else text[-15:]!r}"
    if text.count("(") > text.count(")"):
        return "a parenthesis is opened and never closed"
    return _cut_sentence(text)


def _cut_sentence(text: str) -> str | None:
    """A prose line that stops mid-sentence: after a full sentence on the same line, or as a whole one-line
    answer, it ends in a bare word. Lines that end in a result ("= 900 tents") or a sign-off are endings."""
    line = text.rsplit("\n", 1)[-1].strip()
    if not (last := LAST_WORD.search(line)) or RESULT_END.search(line):
        return None
    breaks = [m.end() for m in SENTENCE_BREAK.finditer(line)]
    tail = line[breaks[-1]:].split() if breaks else line.split()
    word = last.group(1)
    if breaks and len(tail) <= 2 and tail[0].lower() in STARTERS:
        return f"a sentence stops after {' '.join(tail)!r}"
    if len(tail) < 3 or SIGN_OFF.search(line[breaks[-1] if breaks else 0:]):
        return None  # too little to judge, or a sign-off
    if breaks or ("\n" not in text and len(tail) >= 5 and word.islower() and line[0].isupper()):
        return f"stops mid-sentence after {word!r}"
    return None


def role_order_problem(messages: list[dict]) -> str | None:
    """System first, then user and assistant alternating; an assistant's tool calls are answered by tool turns
    before the assistant speaks again. One assistant message alone is plain text and fine."""
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        return f"a system message at turn {roles.index('system', 1)}, not first"
    if roles == ["assistant"]:
        return None
    if "user" not in roles:
        return "no user turn: the answer replies to nothing"
    expected = ("user",)
    for i in range(1 if roles[0] == "system" else 0, len(messages)):
        role, msg = roles[i], messages[i]
        if role not in expected:
            return f"turn {i} is {role}, expected {' or '.join(expected)}"
        if role == "assistant" and msg.get("tool_calls"):
            expected = ("tool", "user")
        else:
            expected = {"user": ("assistant",), "assistant": ("user",), "tool": ("tool", "assistant")}[role]
    return None


def _mask(text: str) -> str:
    return text[:3] + "…" + text[-2:] if len(text) > 8 else text


def empty_answer(t: Texts, config) -> str | None:
    last = t.messages[-1] if t.messages else {}
    if last.get("role") == "assistant" and last.get("tool_calls"):
        return None  # a turn that only calls tools says nothing on purpose
    if last.get("role") == "assistant" and last.get("weight", 1) == 0:
        trained = any(m["role"] == "assistant" and m.get("weight", 1) != 0 for m in t.messages)
        return None if trained else "no assistant turn is trained: every one has weight 0"
    if not t.answer.strip():
        return "the answer is empty" if not t.answer else "the answer is only whitespace"
    return None


def placeholder_input(t, config):
    m = PLACEHOLDER_INPUT.search(t.prompt)
    return f"placeholder {m.group(0).strip()!r} in the prompt" if m else None


def placeholder_answer(t, config):
    stripped = t.answer.strip()
    if not stripped:
        return None
    if PLACEHOLDER_ANSWER_WHOLE.fullmatch(stripped):
        return f"the whole answer is {stripped[:20]!r}"
    m = PLACEHOLDER_ANSWER_PART.search(t.answer)
    return f"placeholder {m.group(0)!r} in the answer" if m else None


def unfilled_placeholder(t, config):
    for msg in t.messages:
        if m := UNFILLED.search(CODE.sub("", msg["content"])):
            return f"{m.group(0)!r} in the {msg['role']} text"
    return None


def error_text(t, config):
    m = ERROR_LEAD.search(t.answer)
    if m is None and "html" not in t.prompt.lower():  # unless HTML is what the prompt asked for
        m = HTML_ERROR.search(t.answer)
    if m is None and len(t.answer.strip()) <= ERROR_PHRASE_MAX_CHARS:
        m = ERROR_PHRASE.search(t.answer)
    return f"error text in the answer: {m.group(0).strip()[:40]!r}" if m else None


def _quoted(text: str, at: int) -> bool:
    """Whether position `at` is inside quoted speech: an odd number of quote marks before it on its line."""
    return len(OPEN_QUOTE.findall(text, text.rfind("\n", 0, at) + 1, at)) % 2 == 1


def refusal(t, config):
    # a refusal is the answer's own voice: its first sentence, or AI boilerplate anywhere, never quoted speech
    first = re.search(r"[.!?](?:\s|\Z)", t.answer)
    lead_end = first.end() if first else len(t.answer)
    for m in REFUSAL.finditer(t.answer):
        if _quoted(t.answer, m.start()):
            continue
        boilerplate = m.group(0).lower().startswith("as an ai")
        if boilerplate and "ai language model" in t.prompt.lower():
            continue  # the prompt cast the answer as an AI model: saying so is the role, not boilerplate
        if m.start() < lead_end or boilerplate:
            return f"refusal: {m.group(0)[:40]!r}"
    return None


def unseen_reference(t, config):
    for m in URL.finditer(t.prompt):
        host, path = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        host = host.lower().removeprefix("www.")
        parent = host.split(".", 1)[1] if host.count(".") >= 2 else ""  # blog.acme.io -> acme.io, not co.uk
        answer = t.answer.lower()
        # the URL is the data (extract its domain, fetch it with a tool) when the answer repeats it
        if (host not in answer and (len(parent) < 6 or parent not in answer)
                and (len(path.strip("/")) < 4 or path.lower().rstrip("/.") not in answer)):
            return f"the prompt refers to {m.group(0)[:40]!r}"
    if (m := ATTACHMENT.search(t.prompt)) and t.media() is None:
        return f"the prompt refers to {m.group(0)[:40]!r}"
    return None


def merged_instructions(t, config):
    return "a numbered 'Instruction:' inside the row" if any(MERGED.search(m["content"]) for m in t.messages) else None


def control_chars(t, config):
    for msg in t.messages:
        content = msg["content"]
        if m := CONTROL.search(content):
            return f"{m.group(0)!r} in the {msg['role']} text"
        if "\n" not in content and len(LITERAL_NEWLINES.findall(content)) >= 2 and "```" not in content:
            return f"literal \\n escapes in the {msg['role']} text (double-escaped?)"
    return None


def too_short(t, config):
    if t.prompt and len(t.prompt.strip()) < config.min_prompt_chars:
        return f"prompt of {len(t.prompt.strip())} characters"
    stripped = t.answer.strip()
    if stripped and len(stripped) < config.min_answer_chars:
        return f"answer of {len(stripped)} characters"
    return None


def too_long(t, config):
    chars = sum(len(m["content"]) for m in t.messages)
    return f"{chars:,} characters > {config.max_chars:,}" if chars > config.max_chars else None


def _private_phone(m: re.Match) -> bool:
    area, exchange, line = m.groups()
    return area not in TOLL_FREE and not (exchange == "555" and line.startswith("01"))


def personal_data(t, config):
    for msg in t.messages:
        content = msg["content"]
        found = [m for m in EMAIL.finditer(content)
                 if not SAFE_DOMAIN.search(m.group(2)) and not SAFE_LOCAL.fullmatch(m.group(1))]
        found += [m for m in PHONE.finditer(content) if _private_phone(m)]
        if m := SECRET.search(content):
            found.append(m)
        if found:
            return f"{_mask(min(found, key=lambda m: m.start()).group(0))} in the {msg['role']} text"
    return None


def repetition(t, config):
    units = Counter(u for u in map(str.strip, UNIT_SPLIT.split(t.answer)) if len(u) >= REPEAT_UNIT_CHARS)
    if units:
        unit, times = units.most_common(1)[0]
        if times >= REPEAT_TIMES and times * len(unit) * 3 >= len(t.answer):  # and a third of the answer
            return f"{unit[:40]!r} said {times} times"
    if len(t.answer) >= LOOP_MIN_CHARS:
        data = t.answer.encode()
        if (ratio := len(zlib.compress(data)) / len(data)) < LOOP_RATIO:
            return f"the answer loops: it compresses to {ratio:.0%} of its size"
    return None


def media(t, config):
    if found := t.media():
        return found
    for msg in t.messages:
        if m := MEDIA_TAG.search(msg["content"]):
            return f"{m.group(0)!r} in the {msg['role']} text"
    return None


def identical_pair(t, config):
    if t.rejected is None:
        return None
    chosen = t.messages[completion_start(t.messages):]
    if _said(chosen, str) == _said(t.rejected, str):
        return "chosen and rejected are the same"
    if _said(chosen, _squashed) == _said(t.rejected, _squashed):
        return "chosen and rejected differ only in whitespace"
    return None


def _said(messages: list[dict], text) -> list[tuple]:
    """What a completion says: each turn's text, reasoning and tool calls, the texts passed through `text`."""
    return [(text(m["content"]), text(m.get("reasoning_content") or ""), m.get("tool_calls")) for m in messages]


def _squashed(text: str) -> str:
    return " ".join(text.split())


def ends_by_form(answer: str) -> bool:
    """Endings that need no punctuation: a signature ("Yours sincerely,\nSherlock Holmes"), a list item or
    a labelled line ("Day 7: ..."), verse (its last three lines short), a hashtag, three words or fewer."""
    lines = [line.strip() for line in answer.splitlines() if line.strip()]
    last = lines[-1]
    if len(answer.split()) <= 3 or SIGN_OFF_LINE.search(answer) or LIST_LINE.match(last) or last.startswith("#") \
            or last.split()[-1].startswith("#"):
        return True
    return len(lines) >= 3 and all(len(line) <= 60 for line in lines[-3:])  # verse
