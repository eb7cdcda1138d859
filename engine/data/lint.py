"""Lint rules for instruction data: each has an id, a severity, a one-line why, its exact check and its prefilter.

The rules come from defects found in real instruction data (the AlpacaDataCleaned
list, practitioners' cleaning checklists). Each check runs once per example as a
compiled regular expression or a string method, never a Python loop per character.
Completeness is judged by unbalanced structure, dangling endings and a prose line that
stops mid-sentence, not by "ends with . ! ?": that rule flags 43% of GSM8K's complete
answers, which end in a number. The exact checks live in engine/data/checks.py.

Every rule is one entry of RULES: id, severity, why, its exact check and its prefilter
(engine/data/prefilter.py), which picks at C speed a superset of the rows the check can
flag; only those rows are checked. A rule cannot be made without one: it names a loose
pattern (`Matches`), a vectorised condition (`Computed`), or says it must see every row
(`EVERY_ROW`). tests/test_lint_rules.py holds each prefilter to its exact check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from engine.data import checks
from engine.data.checks import DANGLING_WORDS, Texts, role_order_problem
from engine.data.prefilter import DIGIT, WS, Columns, Computed, Matches, Prefilter
from engine.data.rows import rejected_conversation

SEVERITIES = ("error", "warning", "info")
# Forms of an answer's ending that a file may hold to (RE2 patterns, for pyarrow), and what a lacking one says:
# a last character that ends a sentence, a quote, a bracket, code or a list; a number in the last line.
FILE_ENDINGS = {"punctuation": (r"[.!?…。！？」』)\]}\"'»”’`*:;>|%]$", "ends with {word!r} without punctuation"),
                "number": (r"\d[^\n]*$", "its last line holds no number")}
FILE_EVIDENCE = 200  # answers a file needs before its habit of ending with punctuation is a rule


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


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    why: str
    check: Callable[[Texts, LintConfig], str | None]  # the message when the example breaks the rule
    prefilter: Prefilter
    # Judges the answer as one to imitate (or the prompt by what a good answer does with it). Such a defect is
    # what a completion shown as the bad example may well have (a pair's rejected side, an undesirable KTO
    # completion: a refusal, a cut-off answer, a loop), so these rules judge only the chosen and desirable
    # completions; the others (empty or error text, broken characters, personal data, length) are faults of
    # the data on any side.
    answer_quality: bool = False

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"rule {self.id}: severity {self.severity!r} is not one of {', '.join(SEVERITIES)}")
        if not isinstance(self.prefilter, Prefilter):
            raise TypeError(f"rule {self.id}: prefilter must be Matches, Computed or EVERY_ROW, "
                            f"not {type(self.prefilter).__name__}")


# ---- prefilters that are conditions, not patterns ------------------------------------

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
        if "tool" in key:  # whether a tool turn is in order depends on the assistant's tool_calls: judge each
            mask[i] = role_order_problem(ex.messages) is not None
            continue
        if (bad := wrong.get(key)) is None:
            bad = wrong[key] = role_order_problem(ex.messages) is not None
        if bad:
            mask[i] = True
    return mask


def _repeating_rows(c: Columns, config: LintConfig):
    # a unit said REPEAT_TIMES times needs that many characters and REPEAT_TIMES - 1 breaks between units
    chars = c.chars("answer")
    return (((chars >= checks.REPEAT_TIMES * checks.REPEAT_UNIT_CHARS)
             & (c.count("answer", r"[.!?\n]") >= checks.REPEAT_TIMES - 1))
            | (chars >= checks.LOOP_MIN_CHARS))


# ---- the registry: one entry per rule, in the order flags of one example are listed ------

def _registry(*rules: Rule) -> dict[str, Rule]:
    ids = [r.id for r in rules]
    if len(set(ids)) != len(ids):
        raise ValueError(f"lint rule ids registered twice: {sorted({i for i in ids if ids.count(i) > 1})}")
    return {r.id: r for r in rules}


RULES = _registry(
    Rule("empty-answer", "error", "an empty answer teaches the model to say nothing", checks.empty_answer,
         Computed(lambda c, config: c.chars("answer", stripped=True) == 0)),
    Rule("placeholder-input", "warning", "a placeholder such as <noinput> is noise the model learns to expect",
         checks.placeholder_input,
         Matches("prompt", "(?m)<" + WS + "*no" + WS + "*-?" + WS + "*input" + WS + "*>|^" + WS
                 + r"*(?:no input|none|n/?a|null|nan)\.?" + WS + "*$", ignore_case=True)),
    Rule("placeholder-answer", "error", "N/A or <No Output> answers teach the model to give up",
         checks.placeholder_answer,
         Matches("answer", "^" + WS + r"*(?:n/?a|none|null|nan|todo|tbd|\.\.\.|-|no output\.?|no answer\.?)" + WS
                 + "*$|<" + WS + "*no" + WS + "*-?" + WS + "*output" + WS + r"*>|N/A", ignore_case=True),
         answer_quality=True),
    Rule("unfilled-placeholder", "warning", "a blank such as {{name}} or [Your Name] is learnt literally: fill it in",
         checks.unfilled_placeholder, Matches("message", r"\{\{|\[(?:insert|your|enter) ", ignore_case=True),
         answer_quality=True),
    Rule("truncated-answer", "warning", "an answer cut off mid-way teaches the model to stop mid-way",
         lambda t, config: checks.truncation_reason(t.answer),
         # (?:^|\W), not \b: RE2's \b sees no boundary before a non-ASCII letter such as ſ, Python's does
         # and an open parenthesis anywhere, or a last word: a sentence that may stop mid-way
         Matches("answer", r"^[\[{]|```|\(|(?:[,;(\[{\-–—]|(?:^|\W)(?:" + DANGLING_WORDS + r")|[^.!?]\.\.|[a-z])"
                 + WS + "*$", ignore_case=True), answer_quality=True),
    Rule("error-text", "error", "error messages or tracebacks from the pipeline that made the data",
         checks.error_text,
         Matches("answer", r"error|exception|fatal|Traceback \(|rate limit exceeded|timed out|<html|HTTP|"
                 r"Bad Gateway|Service Unavailable|Gateway Time|Too Many Requests", ignore_case=True)),
    Rule("refusal", "warning", "refusal boilerplate teaches refusing answerable requests", checks.refusal,
         Matches("answer", r"as an ai|I(?:'m| am) (?:sorry|afraid)|I(?: cannot| can't| am unable to|'m unable to|"
                 r" am not able to) ", ignore_case=True), answer_quality=True),
    Rule("unseen-reference", "warning", "the instruction needs a URL or attachment the model cannot see",
         checks.unseen_reference,
         Matches("prompt", r"https?://|www\.|(?:attached|enclosed|uploaded) |(?:this|following|given|above|attached) "
                 r"(?:image|picture|photo|video|diagram|screenshot|audio)|see (?:the )?attach|(?:image|picture|photo|"
                 r"video|diagram|screenshot|chart|graph|figure) (?:above|below|attached|provided|shown)",
                 ignore_case=True), answer_quality=True),  # a URL the answer repeats is data: a good answer's word
    Rule("merged-instructions", "warning", "several instructions merged into one row", checks.merged_instructions,
         Matches("message", DIGIT + "+" + WS + "*[.)]" + WS + "*Instruction" + WS + r"*:|\n#{2,}" + WS + r"*\n",
                 ignore_case=True)),
    Rule("control-chars", "warning", "control characters or stray escapes from a broken export", checks.control_chars,
         Matches("message", r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x{fffd}]|\\u00|\\x|\\n")),
    Rule("too-short", "info", "too little text to learn from", checks.too_short, Computed(_short_rows)),
    Rule("too-long", "warning", "longer than the limit: cut in training, the end of the answer is lost",
         checks.too_long, Computed(lambda c, config: c.chars("message") > config.max_chars)),
    Rule("role-order", "warning", "turns out of order: system first, then user and assistant (and tool results) "
         "alternating", lambda t, config: role_order_problem(t.messages), Computed(_misordered_rows)),
    Rule("personal-data", "warning", "e-mail addresses, phone numbers or secret keys should not be trained on",
         checks.personal_data,
         Matches("message", r"@[\pL\pN_-]+\.|" + DIGIT + r"{3}\)?[ .-]" + DIGIT + "{3}[ .-]" + DIGIT + "{4}|"
                 r"sk-[A-Za-z0-9_-]{20}|AKIA|gh[pousr]_|xox[bpas]-|AIza|PRIVATE KEY---")),
    Rule("repetition", "warning", "an answer that says one thing over and over teaches the model to loop",
         checks.repetition, Computed(_repeating_rows), answer_quality=True),
    Rule("media", "warning", "attached media (images/audio/video) is not used by a text-only model", checks.media,
         Computed(lambda c, config: c.carries_media | c.matching("message", "<(?:image|video|audio)>"))),
    Rule("identical-pair", "error", "a pair whose chosen and rejected say the same has no preference to learn: "
         "DPO's loss on it is constant (log 2), its gradient zero", checks.identical_pair,
         Computed(lambda c, config: c.pairs)),
)

# Rules whose hits are removed by default (export, the demo's clean copy): the data is wrong, not doubtful.
ERROR_RULES = frozenset(r.id for r in RULES.values() if r.severity == "error")


def _enabled(config: LintConfig) -> list[Rule]:
    return [r for r in RULES.values() if config.enabled(r.id)]


REJECTED = "rejected: "  # how a flag of a pair's rejected side begins


def check_example(example, config: LintConfig) -> list[tuple[str, str]]:
    """(rule id, message) for every enabled rule this example (an Example) breaks: the exact checks, no prefilter.
    A pair's rejected side is checked too (see `lint`)."""
    texts = Texts.of(example)
    found = [(rule.id, message) for rule in _enabled(config)
             if not (rule.answer_quality and example.desirable is False) and (message := rule.check(texts, config))]
    if example.rejected is not None:
        side, seen = Texts.of(rejected_side(example)), {rule for rule, _ in found}
        found += [(rule.id, REJECTED + message) for rule in _enabled(config)
                  if not rule.answer_quality and rule.id not in seen and (message := rule.check(side, config))]
    return found


def rejected_side(example):
    """A pair's rejected side as an example of its own (engine.data.rows.rejected_conversation)."""
    from engine.data.load import Example

    return Example(rejected_conversation(example), example.source, example.line, example.label, example.tools,
                   example.extra)


def candidates(columns: Columns, config: LintConfig, rules: list[Rule] | None = None):
    """For each enabled rule (or each of `rules`), a boolean mask (numpy) of the examples its check must see."""
    import numpy as np

    return {rule.id: np.asarray(rule.prefilter.rows(columns, config), dtype=bool)
            for rule in (_enabled(config) if rules is None else rules)}


def lint(examples, config: LintConfig | None = None, token_counts=None) -> list[Flag]:
    """Flags for every example (`examples`: a list of Example). `token_counts`: one per example, or None.

    Preference data: a pair's chosen side is checked as an answer is; its rejected side (the prompt and
    the rejected completion) by the rules that are not about answer quality (`Rule.answer_quality`), its
    flags' messages beginning "rejected: " and left out where the same rule already flags the example (the
    prompt is shared); an undesirable KTO completion is likewise not held to the answer-quality rules."""
    import numpy as np

    config = config or LintConfig()
    columns = Columns(examples)
    undesirable = np.fromiter((ex.desirable is False for ex in examples), bool, count=len(examples))
    flags = _checked(examples, columns, _enabled(config), config, skip=undesirable)
    flags += _rejected_flags(examples, config, {(f.index, f.rule) for f in flags})
    if config.enabled("truncated-answer"):
        flags += [Flag(i, "truncated-answer", config.severity_of("truncated-answer"), message)
                  for i, message in unlike_the_file(columns, {f.index for f in flags})]
    if token_counts is not None and config.enabled("too-long"):
        counts = np.asarray(token_counts)
        for i in np.flatnonzero(counts > config.max_tokens).tolist():
            flags.append(Flag(i, "too-long", config.severity_of("too-long"),
                              f"{int(counts[i]):,} tokens > {config.max_tokens:,} (max_seq_length)"))
    flags.sort(key=lambda f: f.index)  # stable: one example's flags stay in registry order
    return flags


def _checked(examples, columns: Columns, rules: list[Rule], config: LintConfig, skip=None) -> list[Flag]:
    """Flags of `rules` on the examples their prefilters pick; `skip`: a mask of undesirable completions, which
    the answer-quality rules do not judge."""
    picked = candidates(columns, config, rules)
    texts: dict[int, Texts] = {}  # each picked example read once, whichever rules picked it
    flags = []
    for rule in rules:
        rows = picked[rule.id] & ~skip if skip is not None and rule.answer_quality else picked[rule.id]
        for i in rows.nonzero()[0].tolist():
            if (t := texts.get(i)) is None:
                t = texts[i] = Texts.of(examples[i])
            if (message := rule.check(t, config)) is not None:
                flags.append(Flag(i, rule.id, config.severity_of(rule.id), message))
    return flags


def _rejected_flags(examples, config: LintConfig, seen: set[tuple[int, str]]) -> list[Flag]:
    """Flags of the pairs' rejected sides, by their pair's index, where the rule does not flag the pair already."""
    owners = [i for i, ex in enumerate(examples) if ex.rejected is not None]
    if not owners:
        return []
    sides = [rejected_side(examples[i]) for i in owners]
    flags = []
    for f in _checked(sides, Columns(sides), [r for r in _enabled(config) if not r.answer_quality], config):
        i = owners[f.index]
        if (i, f.rule) not in seen:
            seen.add((i, f.rule))
            flags.append(Flag(i, f.rule, f.severity, REJECTED + f.message))
    return flags


def unlike_the_file(columns: Columns, flagged: set[int]) -> list[tuple[int, str]]:
    """Answers whose ending lacks a form that 98% or more of the other answers of their file have (at least
    FILE_EVIDENCE of them, not `flagged` by another rule): a final punctuation mark (chat, roleplay) or a
    number in the last line (worked maths: GSM8K 99.97%). There a bare last word is a cut, not a style; a
    file whose answers end either way gives no evidence, and nothing is flagged there."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    answers = pc.utf8_rtrim_whitespace(columns.answer)
    present = pc.greater(pc.utf8_length(answers), 0).to_numpy(zero_copy_only=False)
    files = pa.array([ex.source for ex in columns.examples], pa.string()).dictionary_encode()
    file_of = files.indices.to_numpy(zero_copy_only=False)
    unflagged = np.fromiter((ex.desirable is not False for ex in columns.examples), bool, count=columns.n)
    unflagged[list(flagged)] = False  # and an undesirable completion neither shows the file's habit nor breaks it
    found: dict[int, str] = {}
    for form, (pattern, lacking) in FILE_ENDINGS.items():
        has = pc.match_substring_regex(answers, pattern).to_numpy(zero_copy_only=False)
        for code in range(len(files.dictionary)):
            in_file = present & (file_of == code)
            evidence = in_file & unflagged  # a file full of defects must not hide them by lowering its own share
            if evidence.sum() < FILE_EVIDENCE or (share := has[evidence].mean()) < 0.98:
                continue
            for i in np.flatnonzero(evidence & ~has).tolist():
                answer = answers[i].as_py()
                if i not in found and not checks.ends_by_form(answer):
                    found[i] = f"{lacking.format(word=answer[-15:].split()[-1])}, unlike {share:.0%} of the answers " \
                               "in its file"
    return sorted(found.items())


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
