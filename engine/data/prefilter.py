"""Lint prefilters: which rows a rule's exact check must see, found at C speed over Arrow columns.

A prefilter picks a superset of the rows its rule can flag, over whole columns (RE2 through
pyarrow.compute, numpy), so the exact Python checks run only on the rows it picks. Kinds: a loose
pattern over one text (`Matches`), a vectorised condition (`Computed`), or every row (`EVERY_ROW`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from engine.data.rows import trained_turn

if TYPE_CHECKING:
    from engine.data.lint import LintConfig


def answer_of(messages: list[dict]) -> str:
    """The last message when the assistant wrote it and it is trained (its weight is not 0), else \"\"."""
    return messages[-1]["content"] if messages and trained_turn(messages[-1]) else ""


def prompt_of(messages: list[dict]) -> str:
    """The user turns joined by newlines."""
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def _strings(values: list[str]):
    import pyarrow as pa

    return pa.array(values, pa.large_string())


class Columns:
    """The texts of every example as Arrow columns, built once per lint and only as far as the prefilters ask."""

    def __init__(self, examples):
        self.examples = examples
        self.n = len(examples)

    @cached_property
    def answer(self):
        return _strings([answer_of(ex.messages) for ex in self.examples])

    @cached_property
    def prompt(self):
        return _strings([prompt_of(ex.messages) for ex in self.examples])

    @cached_property
    def message(self):
        return _strings([m["content"] for ex in self.examples for m in ex.messages])

    @cached_property
    def owner(self):
        """The example each entry of `message` belongs to."""
        import numpy as np

        return np.repeat(np.arange(self.n), [len(ex.messages) for ex in self.examples])

    def matching(self, text: str, pattern: str):
        """A row mask: the rows whose `text` column (any of their messages for "message") matches `pattern`."""
        import numpy as np
        import pyarrow.compute as pc

        hit = pc.match_substring_regex(getattr(self, text), pattern).to_numpy(zero_copy_only=False)
        if text != "message":
            return hit
        mask = np.zeros(self.n, dtype=bool)
        mask[self.owner[hit]] = True
        return mask

    def count(self, text: str, pattern: str):
        """Matches of a RE2 `pattern` in each row's `text` ("answer" or "prompt")."""
        import pyarrow.compute as pc

        return pc.count_substring_regex(getattr(self, text), pattern).to_numpy()

    @cached_property
    def pairs(self):
        """A row mask: the preference pairs (examples with a rejected completion)."""
        import numpy as np

        return np.fromiter((ex.rejected is not None for ex in self.examples), bool, count=self.n)

    @cached_property
    def carries_media(self):
        """A row mask: the rows with extra keys (Example.extra) or a message that kept its content `parts`."""
        import numpy as np

        mask = np.fromiter((ex.extra is not None for ex in self.examples), bool, count=self.n)
        parts = np.fromiter(("parts" in m for ex in self.examples for m in ex.messages), bool, count=len(self.owner))
        mask[self.owner[parts]] = True
        return mask

    def chars(self, text: str, stripped: bool = False):
        """Characters of each row's `text` (all its messages together for "message"), after strip() if `stripped`."""
        import numpy as np
        import pyarrow.compute as pc

        column = getattr(self, text)
        # Arrow trims exactly the characters str.strip() does (Unicode White_Space and \x1c-\x1f)
        counts = pc.utf8_length(pc.utf8_trim_whitespace(column) if stripped else column).to_numpy()
        return np.bincount(self.owner, weights=counts, minlength=self.n) if text == "message" else counts


class Prefilter:
    """Which rows a rule's exact check must see: a superset of the rows it can flag, without a Python pass per row."""

    def rows(self, columns: Columns, config: LintConfig):
        """A boolean row mask (numpy)."""
        raise NotImplementedError


TEXTS = ("answer", "prompt", "message")
# What Python's re means by \s and \d (Unicode); RE2's are ASCII only, so a loose pattern spells them out.
WS = r"[\t-\r\x1c-\x20\x85\pZ]"
DIGIT = r"\p{Nd}"


@dataclass(frozen=True)
class Matches(Prefilter):
    """Rows whose `text` ("answer", "prompt", or "message": any message) matches a loose RE2 pattern."""

    text: str
    pattern: str
    ignore_case: bool = False

    def __post_init__(self):
        if self.text not in TEXTS:
            raise ValueError(f"Matches text {self.text!r}: write one of {', '.join(TEXTS)}")

    def rows(self, columns, config):
        pattern = self.pattern
        if self.ignore_case:  # Python's re.I also folds İ and ı onto i, RE2's (?i) does not
            pattern = f"(?i:{pattern})|[\\x{{130}}\\x{{131}}]"
        return columns.matching(self.text, pattern)


@dataclass(frozen=True)
class Computed(Prefilter):
    """Rows picked by a vectorised condition over the columns and the config: lengths, role order."""

    select: Callable[[Columns, LintConfig], object]

    def rows(self, columns, config):
        return self.select(columns, config)


class EveryRow(Prefilter):
    """For a rule with no cheaper superset: its check sees every row."""

    def rows(self, columns, config):
        import numpy as np

        return np.ones(columns.n, dtype=bool)


EVERY_ROW = EveryRow()
