"""Exact and near-duplicate examples, reported as clusters with one example kept.

Exact: the text of every turn (content, reasoning and tool calls: `example_text`), lower-cased with
whitespace collapsed, compared whole.
Near: MinHash signatures of shingles, banded LSH for candidates, and a candidate joins a cluster only
when its estimated Jaccard similarity is at least the threshold. All of it is numpy over the whole
corpus at once: tokens are found and hashed with prefix sums over the UTF-8 bytes that Arrow holds,
documents told apart by Arrow's offsets (no separator character, which a text could contain), never
with a Python loop per token.

Shingles: a word starts a 2-word shingle. Scripts written without spaces between words (Han, kana,
Thai, Lao, Khmer, Myanmar) have no words to pair: a whole sentence would be one "word", so a single
changed character made a new shingle of every word pair around it. There each character is a token
and starts a 3-token shingle (character 3-grams; a mixed row's English words and Chinese characters
run on into each other's shingles). Measured on ~270-character answers: one changed character leaves
an estimated similarity of 0.98 (Chinese), 0.98 (Japanese), 0.99 (Thai) against 0.92 for the same edit
in English, and two different answers on one topic score 0.00 / 0.02 / 0.09. 2-grams scored Thai
answers 0.33 alike (its vowels and tone marks are characters of their own); 4-grams lose recall when
a few characters change. Hangul is written with spaces and keeps word shingles (0.93 after one edit).

Keep rule: in file order, an example is a duplicate of the first earlier *kept*
example it is similar to; otherwise it is kept. So every cluster keeps its first
example, and similarity is not chained (a~b and b~c does not drop c unless c~a).
On GPTeacher toolformer (7,673 rows) this keeps 2,380 at 0.6 (that project's own
near-dedup kept 2,396), 5,825 at 0.8 (4,709) and 7,209 at 0.9 (5,959): its measure
was looser at high thresholds. Examples too short for one shingle (a single word,
two characters) take part only in exact deduplication.

Preference data (`preference_clusters`) is judged by its parts, not as one text. A pair is its prompt,
chosen and rejected completions; an unpaired (KTO) row its prompt, completion and label. Exact: all the
parts the same (normalised as above). Near: every part alike: the prompts, the chosen and the rejected
completions each near (or exact) copies of the other pair's. Not a shared prompt alone: UltraFeedback-style
files compare several answers to each prompt, one pair per comparison, and those pairs are the data, not
copies; and not their joined text, whose similarity a long shared prompt makes high whatever the answers
say. The same prompt and completion with opposite labels, or a pair and its swap, contradict each other:
they are not duplicates either (neither says which to keep). Splits keep every row of a prompt on one
side (engine.data.split).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from engine.data.rows import completion_start

KEEP_RULE = ("in file order, an example is a duplicate of the first earlier kept example it is similar to; "
             "the first of every cluster is kept")
SHINGLE_WORDS = 2
SHINGLE_CHARS = 3  # for scripts written without spaces: see the module docstring
NUM_PERM = 128


@dataclass
class Clusters:
    """Groups of example indices (each sorted, first kept); only groups of two or more."""

    groups: list[list[int]]

    def duplicates(self) -> set[int]:
        return {i for g in self.groups for i in g[1:]}


def example_text(messages: list[dict]) -> str:
    """All of the messages' text that a row trains on: each message's reasoning, content and tool calls
    (name and arguments; a call's id is left out, as it is random per row)."""
    # a message of role and content only is the common case, and the one that stays cheap
    return "\n\x1f".join([m["content"] if len(m) == 2 else _message_text(m) for m in messages])


def _message_text(m: dict) -> str:
    parts = [m["reasoning_content"], m["content"]] if m.get("reasoning_content") else [m["content"]]
    for call in m.get("tool_calls") or ():
        args = call["function"].get("arguments", {})
        args = json.loads(args) if isinstance(args, str) else args  # the loader checked it is a JSON object
        parts.append(call["function"]["name"] + " " + json.dumps(args, sort_keys=True, ensure_ascii=False))
    return "\n\x1f".join(parts)


def exact_clusters(texts: list[str]) -> Clusters:
    """Clusters of identical normalised text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not texts:
        return Clusters([])
    arr = pc.utf8_lower(pa.array(texts, pa.large_string()))
    arr = pc.utf8_trim_whitespace(pc.replace_substring_regex(arr, r"\s+", " "))
    codes = arr.dictionary_encode().indices.to_numpy()
    return Clusters(_groups(codes))


def _groups(labels: np.ndarray) -> list[list[int]]:
    """Indices grouped by label, groups of 2+ only, each sorted, groups ordered by first member."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    bounds = np.flatnonzero(np.diff(sorted_labels)) + 1
    groups = [g.tolist() for g in np.split(order, bounds) if len(g) > 1]
    groups.sort(key=lambda g: g[0])
    return groups


# What each code point is to the shingler, as sorted (first code point, class) ranges: _SEP separates
# tokens, _WORD is a letter of a word (scripts written with spaces: Latin, Cyrillic, Arabic, Hangul ...),
# _CHAR is a character of a script written without spaces between words, each one a token.
_SEP, _WORD, _CHAR = 0, 1, 2
_RANGES = np.array([
    (0x80, _SEP), (0xC0, _WORD),  # Latin-1 punctuation and symbols (no-break space, « »)
    (0x0E00, _CHAR), (0x0F00, _WORD),  # Thai, Lao
    (0x1000, _CHAR), (0x10A0, _WORD),  # Myanmar
    (0x1780, _CHAR), (0x1800, _WORD), (0x19E0, _CHAR), (0x1A00, _WORD),  # Khmer
    (0x2000, _SEP), (0x2070, _WORD),  # general punctuation: dashes, curly quotes, ellipsis
    (0x2E80, _CHAR), (0x3000, _SEP), (0x3005, _CHAR), (0x3008, _SEP),  # CJK radicals, punctuation, 々〆〇
    (0x3040, _CHAR), (0x3130, _WORD), (0x3190, _CHAR), (0xA4D0, _WORD),  # kana, bopomofo, Han, Yi
    (0xA9E0, _CHAR), (0xAA00, _WORD), (0xAA60, _CHAR), (0xAA80, _WORD),  # Myanmar extensions
    (0xF900, _CHAR), (0xFB00, _WORD),  # CJK compatibility ideographs
    (0xFE30, _SEP), (0xFE50, _WORD),  # CJK compatibility forms (vertical punctuation)
    (0xFF00, _SEP), (0xFF10, _WORD), (0xFF1A, _SEP), (0xFF21, _WORD), (0xFF3B, _SEP),  # fullwidth forms
    (0xFF41, _WORD), (0xFF5B, _SEP), (0xFF66, _CHAR), (0xFFA0, _WORD),  # halfwidth katakana
    (0x1B000, _CHAR), (0x1B300, _WORD),  # kana supplements
    (0x20000, _CHAR), (0x40000, _WORD),  # Han extensions B and later
], dtype=np.int64)
# ASCII letters and digits are word bytes; a non-ASCII byte is one until its character is classified.
_WORD_BYTE = np.zeros(256, dtype=bool)
_WORD_BYTE[[*range(48, 58), *range(97, 123), *range(128, 256)]] = True


def _tokens(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(64-bit hash of every token in the corpus, its document, whether it is one character of a script
    without spaces), vectorised. A token is a word, or one such character."""
    import pyarrow as pa
    import pyarrow.compute as pc

    # Documents are told apart by Arrow's offsets, not by a separator: any character can occur in a text.
    arr = pc.utf8_lower(pa.array(texts, pa.large_string()))
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    buf = np.frombuffer(arr.buffers()[2] or b"", dtype=np.uint8)[offsets[0]:offsets[-1]]
    offsets = offsets - offsets[0]
    is_word = _WORD_BYTE[buf]
    # Decode the code point of every non-ASCII character (its lead byte is 0xC0 or above) and classify it.
    lead = np.flatnonzero(buf >= 0xC0)
    tail = [buf[np.minimum(lead + j, len(buf) - 1)].astype(np.int64) & 0x3F for j in (1, 2, 3)]
    b0 = buf[lead].astype(np.int64)
    size = 2 + (b0 >= 0xE0) + (b0 >= 0xF0)
    cp = np.where(size == 2, (b0 & 0x1F) << 6 | tail[0],
                  np.where(size == 3, (b0 & 0x0F) << 12 | tail[0] << 6 | tail[1],
                           (b0 & 0x07) << 18 | tail[0] << 12 | tail[1] << 6 | tail[2]))
    cls = _RANGES[np.searchsorted(_RANGES[:, 0], cp, side="right") - 1, 1]
    for j in range(4):
        is_word[lead[(cls != _WORD) & (size > j)] + j] = False
    edges = np.diff(np.concatenate(([False], is_word, [False])).astype(np.int8))
    # a word must not run on from the end of one document into the next
    cut = np.unique(offsets[1:-1])
    cut = cut[(cut > 0) & (cut < len(buf))]
    cut = cut[is_word[cut - 1] & is_word[cut]]
    word_starts = np.concatenate((np.flatnonzero(edges == 1), cut))
    char_starts = lead[cls == _CHAR]
    starts = np.concatenate((word_starts, char_starts))
    order = np.argsort(starts, kind="stable")
    starts = starts[order]
    # tokens do not overlap, so their ends sort in the same order as their starts
    ends = np.sort(np.concatenate((np.flatnonzero(edges == -1), cut, char_starts + size[cls == _CHAR])), kind="stable")
    is_char = np.concatenate((np.zeros(len(word_starts), bool), np.ones(len(char_starts), bool)))[order]
    doc = np.searchsorted(offsets, starts, side="right") - 1
    # Polynomial hash of each token from prefix sums: H[i] = sum b[j] * P^j (mod 2^64),
    # token hash = (H[end] - H[start]) * P^-start. Wrapping uint64 arithmetic is exact mod 2^64.
    p = np.uint64(0x100000001B3)
    p_inv = np.uint64(pow(0x100000001B3, -1, 1 << 64))
    with np.errstate(over="ignore"):
        powers = np.empty(len(buf) + 1, dtype=np.uint64)
        powers[0] = 1
        powers[1:] = p
        powers = np.cumprod(powers, dtype=np.uint64)
        inv = np.empty(len(buf) + 1, dtype=np.uint64)
        inv[0] = 1
        inv[1:] = p_inv
        inv = np.cumprod(inv, dtype=np.uint64)
        prefix = np.zeros(len(buf) + 1, dtype=np.uint64)
        prefix[1:] = np.cumsum((buf.astype(np.uint64) + np.uint64(1)) * powers[:-1], dtype=np.uint64)
        tokens = (prefix[ends] - prefix[starts]) * inv[starts]
    return _mix(tokens), doc, is_char


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the bits of a 64-bit value."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def shingles(texts: list[str], k: int = SHINGLE_WORDS, n: int = SHINGLE_CHARS) -> tuple[np.ndarray, np.ndarray]:
    """(hash of every shingle, its document): k tokens from each word, n from each character of a script
    without spaces; a shingle never crosses documents, and a document too short for one has none."""
    tokens, doc, is_char = _tokens(texts)
    width = np.where(is_char, n, k)
    start = np.flatnonzero(np.arange(len(tokens)) + width <= len(tokens))
    start = start[doc[start + width[start] - 1] == doc[start]]
    sh = tokens[start]
    rolled = tokens  # rolled[i]: hash of the tokens i .. i+j
    with np.errstate(over="ignore"):
        for j in range(1, width.max(initial=1)):  # widths no token has are not computed
            rolled = _mix(rolled[:-1] * np.uint64(31) + tokens[j:])
            pick = width[start] == j + 1
            sh[pick] = rolled[start[pick]]
    return sh, doc[start]


def minhash(texts: list[str], num_perm: int = NUM_PERM, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(signatures num_docs x num_perm as uint32, mask of documents that have shingles)."""
    n = len(texts)
    sh, doc = shingles(texts)
    sig = np.full((n, num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    has = np.zeros(n, dtype=bool)
    if len(sh) == 0:
        return sig, has
    order = np.argsort(doc, kind="stable")
    sh, doc = sh[order], doc[order]
    starts = np.flatnonzero(np.concatenate(([True], doc[1:] != doc[:-1])))
    docs = doc[starts]
    has[docs] = True
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 61, size=num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 1 << 61, size=num_perm, dtype=np.uint64)
    chunk = max(1, (1 << 24) // max(1, len(sh)))  # permutations per pass, bounding memory
    with np.errstate(over="ignore"):
        for lo in range(0, num_perm, chunk):
            hi = min(num_perm, lo + chunk)
            # multiply-shift hashing: the top 32 bits of a*x + b are a universal hash of x
            h = ((sh[:, None] * a[None, lo:hi] + b[None, lo:hi]) >> np.uint64(32)).astype(np.uint32)
            sig[docs, lo:hi] = np.minimum.reduceat(h, starts, axis=0)
    return sig, has


def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) minimising false positives plus false negatives around the threshold."""
    best, best_err = (1, num_perm), float("inf")
    xs = np.linspace(0, 1, 201)
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        if rows == 0:
            break
        prob = 1 - (1 - xs ** rows) ** bands
        err = prob[xs < threshold].sum() + (1 - prob[xs >= threshold]).sum()
        if err < best_err:
            best, best_err = (bands, rows), err
    return best


def near_clusters(texts: list[str], threshold: float = 0.8, num_perm: int = NUM_PERM, seed: int = 1) -> Clusters:
    """Clusters of examples whose estimated Jaccard similarity of shingles is >= threshold."""
    n = len(texts)
    if n < 2:
        return Clusters([])
    sig, has = minhash(texts, num_perm, seed)
    idx = np.flatnonzero(has)
    if len(idx) < 2:  # too few examples long enough to shingle (one-word answers)
        return Clusters([])
    bands, rows = lsh_params(threshold, num_perm)
    mult = np.random.default_rng(seed + 1).integers(1, 1 << 61, size=rows, dtype=np.uint64) | np.uint64(1)
    src, dst = [], []
    with np.errstate(over="ignore"):
        for band in range(bands):
            part = sig[idx, band * rows:(band + 1) * rows].astype(np.uint64)
            keys = _mix((part * mult).sum(axis=1, dtype=np.uint64))
            order = np.argsort(keys, kind="stable")
            k = keys[order]
            new = np.concatenate(([True], k[1:] != k[:-1]))
            leader = order[np.maximum.accumulate(np.where(new, np.arange(len(k)), 0))]
            members = ~new
            src.append(idx[leader[members]])
            dst.append(idx[order[members]])
    if not src:
        return Clusters([])
    a, b = np.concatenate(src), np.concatenate(dst)
    pairs = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), axis=0)
    if len(pairs) == 0:
        return Clusters([])
    # verify each candidate pair with the full signature, in blocks to bound memory
    keep = np.zeros(len(pairs), dtype=bool)
    for lo in range(0, len(pairs), 200_000):
        p = pairs[lo:lo + 200_000]
        keep[lo:lo + len(p)] = (sig[p[:, 0]] == sig[p[:, 1]]).mean(axis=1) >= threshold
    return Clusters(_greedy_groups(n, pairs[keep]))


def _greedy_groups(n: int, pairs: np.ndarray) -> list[list[int]]:
    """In file order, an example joins the first earlier *kept* example it is similar to; otherwise it is
    kept. Not transitive: a chain a~b~c with a and c dissimilar keeps c."""
    if len(pairs) == 0:
        return []
    order = np.lexsort((pairs[:, 0], pairs[:, 1]))  # by later member, then earlier
    later, earlier = pairs[order, 1].tolist(), pairs[order, 0].tolist()
    owner = np.arange(n)
    kept = np.ones(n, dtype=bool)
    for j, i in zip(later, earlier):
        if kept[j] and owner[j] == j and kept[i]:
            owner[j] = i
            kept[j] = False
    return _groups(owner)


def _connected(labels: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Connected components by min-label propagation with pointer jumping (vectorised)."""
    labels = labels.copy()
    if len(pairs) == 0:
        return labels
    a, b = pairs[:, 0], pairs[:, 1]
    while True:
        low = np.minimum(labels[a], labels[b])
        before = labels.copy()
        np.minimum.at(labels, a, low)
        np.minimum.at(labels, b, low)
        labels = labels[labels]
        if np.array_equal(labels, before):
            return labels


def merge(n: int, *clusterings: Clusters) -> Clusters:
    """One clustering where examples in any overlapping clusters are together."""
    pairs = [(g[0], i) for c in clusterings for g in c.groups for i in g[1:]]
    if not pairs:
        return Clusters([])
    return Clusters(_groups(_connected(np.arange(n), np.asarray(pairs, dtype=np.int64))))


def dedup(examples, similarity: float | None = 0.8) -> dict:
    """{"exact": Clusters, "near": Clusters (exact merged in), "keep_rule": ...} for a list of Example; for a
    file with preference rows also "prompts": the clusters of preference rows whose prompts are alike."""
    if any(ex.kind != "sft" for ex in examples):
        return {**preference_clusters(examples, similarity), "keep_rule": KEEP_RULE}
    texts = [example_text(ex.messages) for ex in examples]
    exact = exact_clusters(texts)
    near = merge(len(texts), exact, near_clusters(texts, similarity)) if similarity else exact
    return {"exact": exact, "near": near, "keep_rule": KEEP_RULE}


def alike(texts: list[str], similarity: float | None) -> Clusters:
    """Clusters of exact copies, merged with those of near copies when `similarity` is given."""
    exact = exact_clusters(texts)
    return merge(len(texts), exact, near_clusters(texts, similarity)) if similarity else exact


def prompt_text(example) -> str:
    """The text of an example's prompt: the turns before its (chosen) completion."""
    return example_text(example.messages[:completion_start(example.messages)])


def preference_parts(example) -> tuple[str, str, str]:
    """What a duplicate of a preference row is judged on (see the module docstring): (prompt, chosen,
    rejected) of a pair, (prompt, completion, label) of a KTO row; a demonstration's whole text."""
    if example.kind == "sft":
        return example_text(example.messages), "", ""
    start = completion_start(example.messages)
    prompt, completion = example_text(example.messages[:start]), example_text(example.messages[start:])
    if example.kind == "pair":
        return prompt, completion, example_text(example.rejected)
    return prompt, completion, "desirable" if example.desirable else "undesirable"


def preference_clusters(examples, similarity: float | None = 0.8) -> dict[str, Clusters]:
    """{"exact", "near", "prompts"} of a file that holds preference rows: exact, all parts the same; near, each
    part in the same cluster of alike texts of that part; prompts, the preference rows whose prompts are alike
    (what a split keeps together). Each cluster keeps its first example."""
    n = len(examples)
    parts = [(ex.kind, *preference_parts(ex)) for ex in examples]
    exact = exact_clusters(["\x1e".join(p) for p in parts])
    labels = [np.unique([p[0] for p in parts], return_inverse=True)[1].ravel()]
    for j in (1, 2, 3):
        label = np.arange(n)
        for group in alike([p[j] for p in parts], similarity).groups:
            label[group] = group[0]
        labels.append(label)
    together = np.unique(np.stack(labels, axis=1), axis=0, return_inverse=True)[1].ravel()
    preference = np.array([p[0] != "sft" for p in parts])
    prompts = _groups(np.where(preference, labels[1], -1 - np.arange(n)))  # a demonstration's prompt joins none
    return {"exact": exact, "near": merge(n, exact, Clusters(_groups(together))), "prompts": Clusters(prompts)}
