"""Data files into rows: the format detected from the layout, suffix and first bytes, then each row
parsed (JSON Lines, a JSON array or object, text lines, CSV, Parquet, a `datasets` directory) with
its line or record number, or the exception that says why it could not be read. What a row means is
engine.data.rows; engine.data.load turns rows into examples.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Iterator

from engine.core.quoting import SURROGATE, brief

FORMATS = ("jsonl", "json", "text", "csv", "parquet", "arrow")
LINE_FORMATS = {"jsonl", "text"}
MAX_LINE_BYTES = 16 << 20  # a longer line is reported, not parsed: it is almost always a broken export


class DataError(ValueError):
    """The file as a whole cannot be read; the message says what to do."""


def detect_format(path: str | Path) -> str:
    """The format by directory layout, suffix, then the first bytes."""
    path = Path(path)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            return "arrow"
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file() or list(path.glob("*.arrow")):
            return "arrow"
        raise DataError(f"{path} is a directory but not a `datasets` save_to_disk directory "
                        "(no dataset_info.json, state.json or .arrow files)")
    suffix = path.suffix.lower()
    known = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet",
             ".pq": "parquet", ".txt": "text", ".arrow": "arrow"}
    if suffix in known:
        return known[suffix]
    with open(path, "rb") as f:
        head = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()  # a byte order mark is not content
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"["):
        return "json"
    if head.startswith(b"{"):
        return "jsonl" if _first_line_is_an_object(path) else "json"  # else one object over many lines
    return "text"


def dataset_dict_split(path: Path, split: str | None = None) -> tuple[Path, str | None]:
    """The split folder to read from a DatasetDict (`save_to_disk` of several splits): `split`, else
    train, else the only one; with a note naming the splits. Any other path comes back as it is."""
    info = path / "dataset_dict.json"
    if not (path.is_dir() and info.is_file()):
        if split:
            raise DataError(f"--split {split!r} needs a DatasetDict directory; {path} is not one")
        return path, None
    try:
        splits = [str(s) for s in json.loads(info.read_text())["splits"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{info} does not list the splits; open one split's folder instead") from None
    chosen = split or ("train" if "train" in splits else splits[0] if len(splits) == 1 else None)
    if chosen not in splits:
        raise DataError(f"{path} is a DatasetDict with splits {', '.join(splits)}: "
                        + (f"it has no split {split!r}" if split else "choose one with --split NAME"))
    return path / chosen, f"split {chosen} of {', '.join(splits)}"


def _first_line_is_an_object(path: Path) -> bool:
    """JSON Lines start with a whole object on line one; a pretty-printed file starts with "{" alone."""
    with open(path, "rb") as f:
        line = f.readline(1 << 20)
    if len(line) == 1 << 20 and not line.endswith(b"\n"):
        return True  # a line too long to read here: JSON Lines, whose rows are checked one by one
    try:
        return isinstance(json.loads(line.decode("utf-8-sig", errors="replace")), dict)
    except ValueError:
        return False


def _jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    with open(path, "rb") as f:
        for i, line in enumerate(_lines(f), 1):
            if isinstance(line, Exception):
                yield i, line
                continue
            if not line.strip():
                continue
            try:
                yield i, json.loads(line.decode("utf-8-sig" if i == 1 else "utf-8"))  # -sig: a byte order mark
            except UnicodeDecodeError:
                yield i, ValueError("invalid UTF-8")
            except RecursionError:
                yield i, ValueError("broken JSON: nested too deeply")
            except ValueError as exc:
                yield i, ValueError(f"broken JSON: {exc.args[0] if exc.args else exc}")


def _lines(f) -> Iterator[bytes | Exception]:
    """Lines of a binary file; a line over MAX_LINE_BYTES becomes an error, read past in blocks."""
    while True:
        line = f.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            size = len(line)
            while True:
                rest = f.readline(1 << 20)
                size += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
            yield ValueError(f"line of {size / 2**20:.0f} MB is longer than the {MAX_LINE_BYTES >> 20} MB limit")
            continue
        yield line


def _json_rows(path: Path) -> Iterator[tuple[int, object]]:
    # Bytes that are not UTF-8 become lone surrogates: a row holding them is reported (parse_row),
    # the rows around it still load.
    text = path.read_bytes().decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    start = _JSON_SPACE.match(text).end()
    if text.startswith("[", start):
        yield from _json_array_rows(text, start + 1)
        return
    try:
        rows = json.loads(text)
    except RecursionError:
        yield 1, ValueError("not valid JSON: nested too deeply")
        return
    except json.JSONDecodeError as exc:
        yield 1, ValueError(_json_error(text, exc))
        return
    if isinstance(rows, dict):  # {"data": [...]} and similar wrappers
        lists = [v for v in rows.values() if isinstance(v, list)]
        rows = lists[0] if len(lists) == 1 else [rows]
    if not isinstance(rows, list):
        yield 1, ValueError(f"expected a JSON array of rows, got {type(rows).__name__}")
        return
    yield from enumerate(rows, 1)


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _json_array_rows(text: str, pos: int) -> Iterator[tuple[int, object]]:
    """The elements of a JSON array one at a time, so that the rows before a break still load
    (a truncated export, a bad byte between rows); the break is reported as the next row."""
    decoder = json.JSONDecoder()
    pos = _JSON_SPACE.match(text, pos).end()
    if text.startswith("]", pos):
        return
    index = 0
    while True:
        index += 1
        try:
            row, pos = decoder.raw_decode(text, pos)
        except RecursionError:
            yield index, ValueError("not valid JSON: nested too deeply; the rows after it cannot be read")
            return
        except json.JSONDecodeError as exc:
            yield index, ValueError(_json_error(text, exc) + "; the rows after it cannot be read")
            return
        yield index, row
        pos = _JSON_SPACE.match(text, pos).end()
        if text.startswith(",", pos):
            pos = _JSON_SPACE.match(text, pos + 1).end()
            continue
        if not text.startswith("]", pos):
            where = "the file ends" if pos >= len(text) else f"found {brief(text[pos:pos + 20])}"
            yield index + 1, ValueError(f"not valid JSON at {_json_where(text, pos)}: expected ',' or ']' "
                                        f"after row {index}, {where}")
        elif _JSON_SPACE.match(text, pos + 1).end() < len(text):
            yield index + 1, ValueError(f"not valid JSON at {_json_where(text, pos + 1)}: text after the closing ']'")
        return


def _json_where(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    return f"line {line} column {pos - text.rfind(chr(10), 0, pos)}"


def _json_error(text: str, exc: json.JSONDecodeError) -> str:
    if exc.pos < len(text) and "\udc80" <= text[exc.pos] <= "\udcff":
        return f"invalid UTF-8 at {_json_where(text, exc.pos)}"
    return f"not valid JSON at {_json_where(text, exc.pos)}: {exc.msg}"


def _text_rows(path: Path) -> Iterator[tuple[int, object]]:
    for i, line in _jsonl_lines_raw(path):
        if isinstance(line, Exception):
            yield i, line
            continue
        try:
            text = line.decode("utf-8-sig" if i == 1 else "utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            yield i, ValueError("invalid UTF-8")
            continue
        if text.strip():
            yield i, {"text": text}


def _jsonl_lines_raw(path: Path):
    with open(path, "rb") as f:
        yield from enumerate(_lines(f), 1)


def _csv_rows(path: Path) -> Iterator[tuple[int, object]]:
    # A byte that is not UTF-8 spoils its row, not the file: decode leniently, report the rows holding one.
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))  # the default, 128 KB, is one long answer
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    i = 0
    while True:
        i += 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # reported; the reader goes on at the next line
            yield i, ValueError(f"broken CSV at line {reader.line_num}: {exc}")
            continue
        if None in row:
            yield i, ValueError(f"row has {len(reader.fieldnames or []) + len(row[None])} cells, "
                                f"the header {len(reader.fieldnames or [])}")
            continue
        if any(isinstance(v, str) and SURROGATE.search(v) for v in row.values()):
            yield i, ValueError("invalid UTF-8")
            continue
        yield i, row


def _arrow_tables(path: Path, fmt: str):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet or `datasets` directories needs pyarrow: pip install pyarrow") from None
    if fmt == "parquet":
        try:
            yield pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"cannot read {path} as Parquet: {exc}") from None
        return
    path = dataset_dict_split(path)[0]
    files = sorted(path.glob("*.arrow")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"no .arrow files in {path}")
    for file in files:
        with pa.memory_map(str(file)) as source:
            try:
                yield pa.ipc.open_stream(source).read_all()  # what save_to_disk writes
            except pa.ArrowInvalid:
                yield pa.ipc.open_file(source).read_all()


def _arrow_rows(path: Path, fmt: str) -> Iterator[tuple[int, object]]:
    index = 0
    for table in _arrow_tables(path, fmt):
        for batch in table.to_batches(max_chunksize=10_000):
            for row in batch.to_pylist():
                index += 1
                yield index, {k: v for k, v in row.items() if v is not None}  # a column the row lacks is null


def iter_rows(path: str | Path, fmt: str | None = None) -> Iterator[tuple[int, object]]:
    """(line, parsed row or the exception saying why not) for every row of the file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    readers = {"jsonl": _jsonl_rows, "json": _json_rows, "text": _text_rows, "csv": _csv_rows}
    try:
        if fmt in readers:
            yield from readers[fmt](path)
        else:
            yield from _arrow_rows(path, fmt)
    except IsADirectoryError:
        raise DataError(f"{path} is a directory; only a `datasets` save_to_disk directory can be read") from None
    except PermissionError:
        raise DataError(f"cannot read {path}: permission denied") from None
