"""Write a reviewed dataset to a new file: verdicts, edits and lint choices applied, with a report.

Rows are written in OpenAI's chat layout (preference rows in TRL's prompt/chosen/rejected and
prompt/completion/label layouts: `file_row`) with everything the source row held (tool calls and
schemas, weights, reasoning, media parts, other keys): reading the export gives the same examples.
The source file is never touched. Removed examples are listed with why, by their
line in the source (the same numbering as `tunedeck data lint`).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from engine.core.files import ensure_private_dir
from engine.data.dedup import dedup
from engine.data.lint import ERROR_RULES, RULES, LintConfig, lint
from engine.data.load import DataError, Example, LoadResult, content_hash
from engine.data.rows import completion_start, file_message

WRITE_FORMATS = ("jsonl", "json", "csv", "parquet")
TURN_COLUMNS = ("messages", "prompt", "chosen", "rejected", "completion")  # lists of turns in `file_row`'s layouts


@dataclass(frozen=True)
class DropChoices:
    """What an export removes; edits are always applied."""

    rules: frozenset[str] = frozenset()  # lint rule ids: examples they flag are removed
    duplicates: str | None = None  # "exact" or "near": all but the kept example of each cluster
    similarity: float = 0.8  # the near-duplicate threshold
    verdicts: tuple[str, ...] = ("bad",)  # examples reviewed with these verdicts are removed


# The Data screen's export: `tunedeck data export --drop-rule errors --drop-duplicates near`.
REVIEWED = DropChoices(rules=ERROR_RULES, duplicates="near")


def parse_drop_rules(specs: list[str] | None, config: LintConfig | None = None) -> frozenset[str]:
    """`--drop-rule` values (repeated or comma-separated rule ids; `errors`: every rule of error severity,
    as `config`'s `--severity` overrides set it)."""
    config = config or LintConfig()
    rules: set[str] = set()
    for spec in specs or []:
        for rule in spec.split(","):
            if rule == "errors":
                rules |= {r for r in RULES if config.enabled(r) and config.severity_of(r) == "error"}
            elif rule not in RULES:
                raise DataError(f"unknown lint rule {rule!r}; rules: {', '.join(RULES)}, or errors")
            else:
                rules.add(rule)
    return frozenset(rules)


def output_format(path: Path, fmt: str | None) -> str:
    fmt = fmt or {".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(path.suffix.lower(), "jsonl")
    if fmt not in WRITE_FORMATS:
        raise DataError(f"cannot write format {fmt!r}; use one of {', '.join(WRITE_FORMATS)}")
    return fmt


def file_row(example: Example, messages: list[dict] | None = None) -> dict:
    """The row export writes for an example (`messages`: its reviewed edit, the prompt and the chosen
    completion of a pair), with the tool schemas and every other key the source row had, so reading it back
    gives the same example. A demonstration in OpenAI's layout (`messages`); preference rows in TRL's
    conversational layouts whatever layout they were read from (one layout for every source, that TRL and
    tunedeck both read): a pair as `prompt`/`chosen`/`rejected`, an unpaired (KTO) row as
    `prompt`/`completion`/`label`, each a list of messages."""
    messages = messages or example.messages
    if example.kind == "sft":
        row = {"messages": [file_message(m) for m in messages]}
    else:
        start = completion_start(messages)
        row = {"prompt": [file_message(m) for m in messages[:start]]}
        if example.kind == "pair":
            row.update(chosen=[file_message(m) for m in messages[start:]],
                       rejected=[file_message(m) for m in example.rejected])
        else:
            row.update(completion=[file_message(m) for m in messages[start:]], label=example.desirable)
    if example.tools:
        row["tools"] = example.tools
    return {**row, **(example.extra or {})}


def write_examples(rows: list[dict], path: str | Path, fmt: str | None = None) -> Path:
    """Write rows (`file_row`); written to a temporary name, then renamed."""
    path = Path(path)
    fmt = output_format(path, fmt)
    ensure_private_dir(path.parent, tighten=False)  # folders it creates are owner-only; yours stay as they are
    tmp = path.with_name(path.name + ".partial")
    if fmt == "jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "json":
        tmp.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    elif fmt == "csv":
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)) or ["messages"])
            writer.writeheader()
            for row in rows:  # nested values as JSON text; the loader reads the turns and tools back
                writer.writerow({k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                                 for k, v in row.items()})
    else:
        _write_parquet(rows, tmp)
    os.replace(tmp, path)
    return path


def _write_parquet(rows: list[dict], path: Path) -> None:
    """Plain turns as Parquet's list of structs (what `datasets` writes); turns with more keys, tool
    schemas and any value holding an object as JSON text: a struct column would give each row every
    other row's keys, as nulls."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {}
    for key in dict.fromkeys(k for row in rows for k in row):
        values = [row.get(key) for row in rows]
        if key in TURN_COLUMNS and any(isinstance(v, list) for v in values):
            native = all(isinstance(v, list) and all(set(m) <= {"role", "content"} for m in v) for v in values)
        else:
            native = key != "tools" and not any(map(_holds_object, values))
        if native:
            try:
                columns[key] = pa.array(values)
                continue
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # mixed types: as JSON text below
                pass
        columns[key] = pa.array([None if v is None else json.dumps(v, ensure_ascii=False) for v in values])
    pq.write_table(pa.table(columns), path)


def _holds_object(value) -> bool:
    return isinstance(value, dict) or (isinstance(value, list) and any(map(_holds_object, value)))


def plan_export(result: LoadResult, reviews: dict[str, dict] | None = None, flags=(), drop_rules=(),
                duplicates: set[int] | None = None, drop_verdicts=("bad",)) -> tuple[list[dict], list[dict]]:
    """(rows to write, removed [{line, reason}]) in source order."""
    reviews = reviews or {}
    flagged: dict[int, list[str]] = {}
    for flag in flags:
        if flag.rule in drop_rules:
            flagged.setdefault(flag.index, []).append(flag.rule)
    kept, removed = [], []
    for i, ex in enumerate(result.examples):
        review = reviews.get(content_hash(ex.messages)) or {}
        line = result.display_line(ex.line)
        if review.get("verdict") in drop_verdicts:
            removed.append({"line": line, "reason": f"verdict {review['verdict']}"
                            + (f": {review['note']}" if review.get("note") else "")})
        elif i in flagged:
            removed.append({"line": line, "reason": "lint: " + ", ".join(dict.fromkeys(flagged[i]))})
        elif duplicates and i in duplicates:
            removed.append({"line": line, "reason": "duplicate"})
        else:
            kept.append(reviewed_row(ex, review))
    return kept, removed


def reviewed_row(example: Example, review: dict) -> dict:
    """An example's row as its review leaves it: its edit applied. (A review decision that changes what a
    pair says, such as swapping chosen and rejected, is applied here.)"""
    return file_row(example, review.get("edit"))


def export(result: LoadResult, out: str | Path, fmt: str | None = None, **plan) -> dict:
    """Write the kept examples to `out` and `out`.report.json; the report as a dict."""
    out = Path(out)
    if out.resolve() == Path(result.examples[0].source if result.examples else out).resolve():
        raise DataError("export would overwrite the source file; choose another output path")
    kept, removed = plan_export(result, **plan)
    write_examples(kept, out, fmt)
    edited = sum(1 for r in (plan.get("reviews") or {}).values() if r.get("edit"))
    reasons: dict[str, int] = {}
    for r in removed:
        key = r["reason"].split(":")[0] if r["reason"].startswith("verdict") else r["reason"]
        reasons[key] = reasons.get(key, 0) + 1
    report = {"source": result.examples[0].source if result.examples else None, "output": str(out),
              "format": output_format(out, fmt), "kept": len(kept), "removed": len(removed),
              "removed_by_reason": reasons, "edited_in_review": edited, "skipped_unreadable": len(result.problems),
              "removed_examples": removed}
    report_path = out.with_name(out.name + ".report.json")
    report_path.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    report["report"] = str(report_path)
    return report


def export_chosen(result: LoadResult, out: str | Path, choices: DropChoices, reviews: dict[str, dict],
                  fmt: str | None = None, lint_config: LintConfig | None = None) -> dict:
    """Lint and deduplicate as `choices` asks, then `export`: the one path of the command line and the Data screen."""
    flags = lint(result.examples, lint_config) if choices.rules else []
    duplicates = None
    if choices.duplicates:
        found = dedup(result.examples, None if choices.duplicates == "exact" else choices.similarity)
        duplicates = found["near"].duplicates()
    return export(result, out, fmt, reviews=reviews, flags=flags, drop_rules=choices.rules, duplicates=duplicates,
                  drop_verdicts=choices.verdicts)
