"""Values quoted in one-line messages: bounded in length and depth, printable whatever they hold."""

from __future__ import annotations

import functools
import re
import reprlib

# A lone surrogate: a `\udXXX` JSON escape without its pair, or (from a surrogateescape decode) a byte that
# is not UTF-8. Such text cannot be encoded, printed or tokenized.
SURROGATE = re.compile("[\ud800-\udfff]")


def printable(text: str) -> str:
    """Text with lone surrogates written as escapes, so that it can always be printed."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8") if SURROGATE.search(text) else text


@functools.lru_cache(maxsize=None)
def _repr(width: int) -> reprlib.Repr:
    r = reprlib.Repr()  # strings and other values elided in the middle at half the width; two levels deep
    r.maxstring = r.maxother = width // 2
    r.maxlevel, r.maxlist, r.maxdict = 2, 4, 4
    return r


def brief(value: object, width: int = 120) -> str:
    """repr(value) in at most `width` characters, even for a huge or deeply nested value."""
    text = _repr(width).repr(value)
    return printable(text if len(text) <= width else text[: width - 10] + "...")
