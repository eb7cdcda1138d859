"""Datasets into one example type: a list of chat messages plus where it came from.

Accepted: JSONL or a JSON array of OpenAI-style chat (`messages`, with tool calls,
tool results, `tools`, per-message `weight`, content parts), Alpaca
(`instruction`/`input`/`output`, LLaMA-Factory's `history`), ShareGPT
(`conversations` with `from`/`value`, glaive's `function_call`/`observation` turns
and `tools` column) or prompt/completion rows; plain text (one example per line); CSV and Parquet
with an optional column mapping; a `datasets` directory written by
`save_to_disk` (Arrow files, read with pyarrow; of a DatasetDict, one split).
Preference pairs (TRL's prompt/chosen/rejected) and unpaired KTO rows load as examples that say so
(Example.kind). The format is detected from the
file and can be overridden. A malformed row is reported with its file and line
and skipped; it never stops the load. Bytes that are not UTF-8 spoil only the
row (line, record) that holds them; a JSON array that breaks off keeps the rows
before the break.

Numbering: `Example.line` is the 1-based line of a JSONL or text file, and the
0-based index plus one for formats made of records (JSON array, CSV, Parquet,
Arrow). `display_line` turns it into what a person and the command line see:
the line of a line-based file, the 0-based index of a record-based one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from engine.data.readers import LINE_FORMATS, DataError, dataset_dict_split, detect_format, iter_rows
from engine.data.rows import _label, parse_row

HASHED_KEYS = ("tool_calls", "tool_call_id", "weight", "loss_weight", "reasoning_content")


@dataclass(slots=True)
class Example:
    """One training example: everything its row can mean for training, so export writes it back whole.

    `messages`: dicts with `role` (system, user, assistant, tool) and `content`, always a string (text
    parts joined; "" for an assistant turn that only calls tools), and where the row had them:
    `tool_calls` (assistant; OpenAI's `{"id", "type": "function", "function": {"name", "arguments"}}`
    as the file gave them), `tool_call_id` and `name` (tool results), `weight` (0: the turn is shown
    but not trained on), `reasoning_content` (an assistant's reasoning), `parts` (the original content
    list when it holds media: kept, never turned into text), and any other key of the source message.
    `tools`: the row's tool schemas (OpenAI `tools` list), or None. `extra`: the row's other keys
    (`images`, `videos`, `id`, metadata ...), carried through export in their order, or None.
    """

    messages: list[dict]
    source: str
    line: int  # 1-based line in JSONL/text, index+1 in record formats (see display_line)
    label: str | None = None
    tools: list | None = None
    extra: dict | None = None
    # Preference data: a pair's rejected completion (assistant messages answering the prompt that
    # `messages` ends with the chosen completion; engine.data.rows.completion_start says where it begins),
    # or, for an unpaired (KTO) row, whether its completion is desirable.
    rejected: list[dict] | None = None
    desirable: bool | None = None

    @property
    def kind(self) -> str:
        """`pair`, `unpaired` (KTO) or `sft` (a demonstration)."""
        return "pair" if self.rejected is not None else "unpaired" if self.desirable is not None else "sft"


def example_of(row: object, columns: dict[str, str] | None, source: str, line: int,
               label_field: str | None = None) -> Example:
    """The example a parsed row holds, or ValueError with the reason (engine.data.rows)."""
    parsed = parse_row(row, columns)
    label = None if parsed.desirable is not None and not label_field else _label(row, label_field)  # KTO's label
    return Example(parsed.messages, source, line, label, parsed.tools, parsed.extra, parsed.rejected,
                   parsed.desirable)


@dataclass(slots=True)  # a file of a million bad lines keeps a million of these
class Problem:
    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


@dataclass
class LoadResult:
    examples: list[Example] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    format: str = "jsonl"
    note: str | None = None  # what was read when the path held more than one thing (a DatasetDict's split)

    def display_line(self, line: int) -> int:
        return display_line(line, self.format)


def display_line(line: int, fmt: str) -> int:
    """1-based line for line formats, 0-based record index for record formats."""
    return line if fmt in LINE_FORMATS else line - 1


def load_examples(path: str | Path, fmt: str | None = None, columns: dict[str, str] | None = None,
                  label_field: str | None = None, progress=None, split: str | None = None) -> LoadResult:
    """Every example of the file, and every row that could not be used with the reason.

    `progress(rows_read)` is called every 10,000 rows (for a UI indexing in the background). `split`
    picks one split of a DatasetDict directory (default train).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    path, note = dataset_dict_split(path, split)
    fmt = fmt or detect_format(path)
    result = LoadResult(format=fmt, note=note)
    source = str(path)
    reasons: dict[str, str] = {}  # one string per distinct reason: a million bad lines share a few
    unseen, first_keys = set((columns or {}).values()), []  # mapped columns no row has: a typo
    try:
        for n, (line, row) in enumerate(iter_rows(path, fmt), 1):
            if progress is not None and n % 10_000 == 0:
                progress(n)
            if isinstance(row, Exception):
                reason = str(row)
                result.problems.append(Problem(source, line, reasons.setdefault(reason, reason)))
                continue
            if unseen and isinstance(row, dict):
                unseen.difference_update([c for c in unseen if c in row])
                first_keys = first_keys or list(row)
            try:
                result.examples.append(example_of(row, columns, source, line, label_field))
            except (ValueError, RecursionError) as exc:
                reason = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
                result.problems.append(Problem(source, line, reasons.setdefault(reason, reason)))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if unseen and first_keys:
        raise DataError(f"column {sorted(unseen)[0]!r} is in no row of {path}; its columns are: "
                        f"{', '.join(map(str, first_keys))}")
    return result


def first_example(path: str | Path, fmt: str | None = None, columns: dict[str, str] | None = None,
                  scan: int = 1000) -> Example | None:
    """The first usable example, read without loading the file (for JSONL, text, CSV, Arrow)."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt == "json":
        return _first_json_example(path, columns)
    for n, (line, row) in enumerate(iter_rows(path, fmt)):
        if n >= scan:
            return None
        if not isinstance(row, Exception):
            try:
                return example_of(row, columns, str(path), line)
            except ValueError:
                continue
    return None


def _first_json_example(path: Path, columns) -> Example | None:
    """The first element of a JSON array, decoded from the file's first megabyte when it fits."""
    with open(path, "rb") as f:
        head = f.read(1 << 20).decode("utf-8", errors="ignore")
    start = head.find("[")
    if start < 0:
        return None
    try:
        row, _ = json.JSONDecoder().raw_decode(head, start + 1 + (len(head[start + 1:]) - len(head[start + 1:].lstrip())))
        return example_of(row, columns, str(path), 1)
    except ValueError:
        return None


def parse_columns(spec: str | None) -> dict[str, str] | None:
    """`prompt=question,completion=answer` -> {"prompt": "question", "completion": "answer"}."""
    if not spec:
        return None
    out = {}
    for part in spec.split(","):
        canon, sep, col = part.partition("=")
        if not sep or not canon.strip() or not col.strip():
            raise DataError(f"bad column mapping {part!r}: write FIELD=COLUMN, e.g. prompt=question")
        out[canon.strip()] = col.strip()
    return out


def content_hash(messages: list[dict]) -> str:
    """A stable key for an example's content: reordering the file does not change it."""
    import hashlib

    # Tool calls and weights change what is trained; they join the key only where present, so the
    # reviews of plain examples keep their keys.
    canon = json.dumps([[m["role"], m["content"]] + [[k, m[k]] for k in HASHED_KEYS if k in m] for m in messages],
                       ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.blake2b(canon.encode("utf-8"), digest_size=12).hexdigest()


def fingerprint(path: str | Path) -> str:
    """A content hash of a data file, recorded in run.json."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
