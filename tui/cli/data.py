"""`tunedeck data lint|dedup|stats|split|export|mix|review FILE`: the Data screen's work, headless.

Line numbers are what `engine.data.load.display_line` gives: 1-based lines of a JSONL or
text file, 0-based indices of a JSON array, CSV, Parquet or Arrow rows.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from engine.data.load import DataError, LoadResult, load_examples, parse_columns
from tui.cli.common import print_json


PREFERENCE_DUPLICATES = ("preference rows are duplicates when prompt, chosen and rejected (KTO: prompt, completion and "
                         "label) are all alike; pairs that only share a prompt are kept")


def _load(args) -> LoadResult:
    result = load_examples(args.file, fmt=args.format, columns=parse_columns(args.columns), label_field=args.label,
                           split=args.split)
    if result.note:
        print(f"tunedeck: reading {result.note} of {args.file}", file=sys.stderr)
    return result


def _lint_config(args):
    from engine.data.lint import parse_rule_options

    config = parse_rule_options(args.disable, args.severity)
    if getattr(args, "max_tokens", None):
        config.max_tokens = args.max_tokens
        if not getattr(args, "model", None):
            print(f"tunedeck: note: --max-tokens without --model: too-long counts characters instead "
                  f"(over {config.max_chars:,}); pass --model to count {args.max_tokens:,} tokens", file=sys.stderr)
    return config


def _token_counts(args, result):
    if not getattr(args, "model", None):
        return None
    from engine.data.template import LightTokenizer

    return LightTokenizer(args.model).count_examples(result.examples)


def _skipped(result: LoadResult) -> list[dict]:
    return [{"line": result.display_line(p.line), "reason": p.reason} for p in result.problems]


def _skipped_summary(result: LoadResult) -> str:
    """Rows that could not be read, by reason: every command that writes says what it left out."""
    by_reason = Counter(p.reason for p in result.problems)
    return "".join(f"\nskipped {n} unreadable rows: {why}" for why, n in by_reason.items())


def cmd_lint(args) -> int:
    from engine.data.lint import RULES, lint

    result = _load(args)
    flags = lint(result.examples, _lint_config(args), _token_counts(args, result))
    if args.json:
        print_json({"examples": len(result.examples), "skipped": _skipped(result),
                     "flags": [{"line": result.display_line(result.examples[f.index].line), "rule": f.rule,
                                "severity": f.severity, "message": f.message} for f in flags]})
        return _lint_exit(args, result, flags)
    for p in result.problems:
        print(f"{args.file}:{result.display_line(p.line)}: skipped: {p.reason}")
    for f in flags:
        print(f"{args.file}:{result.display_line(result.examples[f.index].line)}: {f.severity}: "
              f"{f.rule}: {f.message}")
    by_rule: dict[str, int] = {}
    for f in flags:
        by_rule[f.rule] = by_rule.get(f.rule, 0) + 1
    print(f"{len(result.examples)} examples, {len(result.problems)} skipped, {len(flags)} flags"
          + "".join(f"\n  {n:6d} {rule}: {RULES[rule].why}" for rule, n in sorted(by_rule.items())))
    return _lint_exit(args, result, flags)


def _lint_exit(args, result, flags) -> int:
    """0, or 1 under --fail-on when a flag reaches that severity or a row could not be read (CI gates)."""
    if not args.fail_on:
        return 0
    failing = ("error",) if args.fail_on == "error" else ("error", "warning")
    return 1 if result.problems or any(f.severity in failing for f in flags) else 0


def cmd_dedup(args) -> int:
    from engine.data.dedup import dedup

    result = _load(args)
    found = dedup(result.examples, None if args.exact else args.similarity)
    clusters = found["near"]
    lines = [[result.display_line(result.examples[i].line) for i in group] for group in clusters.groups]
    if args.json:
        print_json({"clusters": lines, "keep_rule": found["keep_rule"],
                     "similarity": None if args.exact else args.similarity,
                     "examples": len(result.examples), "duplicates": sum(len(g) - 1 for g in lines)})
        return 0
    for group in lines:
        print(f"keep {group[0]}, drop {', '.join(map(str, group[1:]))}")
    print(f"{len(lines)} clusters, {sum(len(g) - 1 for g in lines)} duplicates in {len(result.examples)} examples "
          f"({'exact' if args.exact else f'similarity >= {args.similarity}'}); {found['keep_rule']}")
    if any(ex.kind != "sft" for ex in result.examples):
        print(PREFERENCE_DUPLICATES)
    return 0


def cmd_stats(args) -> int:
    from engine.data.dedup import dedup
    from engine.data.lint import lint
    from engine.data.stats import dataset_stats, sparkline

    result = _load(args)
    counts = _token_counts(args, result)
    flags = lint(result.examples, _lint_config(args), counts)
    stats = dataset_stats(result.examples, result.problems, flags, dedup(result.examples, args.similarity)["near"],
                          counts)
    stats["format"] = result.format
    if args.json:
        print_json(stats, ascii=False)
        return 0
    print(f"{stats['examples']} examples ({result.format}), {stats['skipped']} skipped, "
          f"{stats['flagged_examples']} flagged, {stats.get('duplicates', 0)} duplicates")
    print("roles: " + ", ".join(f"{k} {v}" for k, v in stats["roles"].items())
          + " · turns: " + ", ".join(f"{k}:{v}" for k, v in stats["turns"].items()))
    for key, title in (("tokens", "tokens"), ("answer_chars", "answer characters")):
        if key in stats:
            h = stats[key]
            print(f"{title}: min {h['min']} p50 {h['p50']} p90 {h['p90']} p99 {h['p99']} max {h['max']}  "
                  f"{sparkline(h['bins'])}")
    if "carried" in stats:
        print("examples with " + ", ".join(f"{k} {v}" for k, v in stats["carried"].items()))
    if "labels" in stats:
        print("labels: " + ", ".join(f"{k} {v}" for k, v in stats["labels"].items()))
    if pairs := stats.get("pairs"):
        chosen, rejected = pairs["chosen_chars"], pairs["rejected_chars"]
        print(f"pairs: {pairs['count']}; chosen mean {chosen['mean']:,.0f} median {chosen['median']:,.0f} characters, "
              f"rejected mean {rejected['mean']:,.0f} median {rejected['median']:,.0f}; chosen longer in "
              f"{pairs['chosen_longer']:.0%}")
    if unpaired := stats.get("unpaired"):
        print(f"KTO rows: {unpaired['desirable']} desirable, {unpaired['undesirable']} undesirable")
    for warning in stats.get("warnings", ()):
        print(f"warning: {warning}")
    for rule, n in stats["flags"].items():
        print(f"  {n:6d} {rule}")
    return 0


def _proportions(text: str | None):
    if not text:
        return None
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise DataError(f"bad --proportions {text!r}: write e.g. 0.8,0.1,0.1") from None
    if len(parts) != 3 or abs(sum(parts) - 1) > 1e-6:
        raise DataError(f"bad --proportions {text!r}: three numbers that sum to 1")
    return parts


def cmd_split(args) -> int:
    from engine.data.split import leakage, write_splits

    result = _load(args)
    if args.check:
        other = load_examples(args.check, fmt=None)
        found = leakage(result.examples, other.examples, args.similarity)
        report = {"a": str(args.file), "b": str(args.check),
                  "exact": [[result.display_line(result.examples[i].line), other.display_line(other.examples[j].line)]
                            for i, j in found["exact"]],
                  "near": [[result.display_line(result.examples[i].line), other.display_line(other.examples[j].line)]
                           for i, j in found["near"]]}
        if args.json:
            print_json(report, ascii=False)
        else:
            for kind in ("exact", "near"):
                for a, b in report[kind]:
                    print(f"{kind}: {args.file}:{a} ~ {args.check}:{b}")
            print(f"{len(report['exact'])} exact and {len(report['near'])} near copies of {args.file} in {args.check}")
        return 1 if report["exact"] or report["near"] else 0
    out_dir = Path(args.out) if args.out else Path(args.file).resolve().parent
    written = write_splits(result, args.file, out_dir, seed=args.seed, proportions=_proportions(args.proportions),
                           fmt=args.to_format, similarity=args.similarity)
    if args.json:
        print_json({"seed": args.seed, "splits": written, "skipped": _skipped(result)}, ascii=False)
    else:
        for name, info in written.items():
            print(f"{name:10s} {info['examples']:7d}  {info['path']}")
        if result.problems:
            print(_skipped_summary(result).lstrip("\n"))
    return 0


def cmd_export(args) -> int:
    from engine.data.export import DropChoices, export_chosen, parse_drop_rules
    from engine.data.review import ReviewStore, store_path

    result = _load(args)
    lint_config = _lint_config(args)
    choices = DropChoices(rules=parse_drop_rules(args.drop_rule, lint_config), duplicates=args.drop_duplicates,
                          similarity=args.similarity, verdicts=() if args.keep_bad else ("bad",))
    reviews = {}
    if store_path(args.file).exists():
        store = ReviewStore.for_dataset(args.file)
        reviews = store.all()
        store.close()
    report = export_chosen(result, args.out, choices, reviews, args.to_format,
                           lint_config if choices.rules else None)
    if args.json:
        print_json({**report, "skipped": _skipped(result)}, ascii=False)
    else:
        print(f"wrote {report['kept']} examples to {report['output']}; removed {report['removed']}"
              + "".join(f"\n  {n:6d} {why}" for why, n in report["removed_by_reason"].items())
              + _skipped_summary(result) + f"\nreport: {report['report']}")
    return 0


def cmd_mix(args) -> int:
    from engine.data.export import file_row, write_examples
    from engine.data.mix import mix_general

    if not 0 < args.ratio < 1:
        raise DataError(f"--ratio is the general share of the mixed file, between 0 and 1 (exclusive), "
                        f"got {args.ratio:g}; 0.3 is the usual")
    out = Path(args.out).expanduser()
    if any(out.resolve() == Path(given).expanduser().resolve() for given in (args.task_file, args.general_file)):
        raise DataError(f"--out {args.out} is one of the inputs: write the mix to a new file")
    loaded = {}
    for role, path in (("task", args.task_file), ("general", args.general_file)):
        loaded[role] = load_examples(path)
        if not loaded[role].examples:
            raise DataError(f"no usable examples in the {role} file {path}; see `tunedeck data lint {path}`")
    mixed = mix_general(loaded["task"].examples, loaded["general"].examples, args.ratio, args.seed)
    written = write_examples([file_row(ex) for ex in mixed.examples], out, args.to_format)
    if args.json:
        print_json({"output": str(written), "task": mixed.task, "general": mixed.general, "wanted": mixed.wanted,
                    "capped": mixed.capped, "ratio": args.ratio, "seed": args.seed,
                    "skipped": {role: _skipped(result) for role, result in loaded.items()}}, ascii=False)
        return 0
    print(f"wrote {len(mixed.examples)} examples to {written}: {mixed.summary()}"
          + "".join(_skipped_summary(result).replace("\nskipped", f"\n{role}: skipped")
                    for role, result in loaded.items()))
    return 0


def cmd_review(args) -> int:
    from tui.app import run_app

    if not Path(args.file).exists():
        raise DataError(f"data file not found: {args.file}")
    run_app(args.workspace, mode="data", data=str(Path(args.file).resolve()))
    return 0


def add_parsers(subparsers, common_parent: argparse.ArgumentParser) -> None:
    data = subparsers.add_parser("data", parents=[common_parent],
                                 help="lint, deduplicate, split, export or review a dataset")
    sub = data.add_subparsers(dest="data_command", required=True)
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument("file", help="JSONL, JSON, CSV, Parquet, text, or a datasets save_to_disk directory")
    source.add_argument("--format", choices=("jsonl", "json", "text", "csv", "parquet", "arrow"),
                        help="override the detected format")
    source.add_argument("--columns", help="column mapping for CSV/Parquet, e.g. prompt=question,completion=answer")
    source.add_argument("--label", help="the field holding a class label (default: label, category or class)")
    source.add_argument("--split", help="the split of a DatasetDict directory (default: train)")
    rules = argparse.ArgumentParser(add_help=False)
    rules.add_argument("--disable", action="append", help="lint rule ids to turn off (repeat or comma-separate)")
    rules.add_argument("--severity", action="append", help="RULE=error|warning|info")
    rules.add_argument("--model", help="model directory or cached repo id: count tokens with its tokenizer")
    rules.add_argument("--max-tokens", type=int, help="too-long above this many tokens (default 2048)")
    similarity = argparse.ArgumentParser(add_help=False)
    similarity.add_argument("--similarity", type=float, default=0.8,
                            help="near-duplicate threshold, estimated Jaccard of word pairs (default 0.8)")
    parents = [common_parent, source]

    p = sub.add_parser("lint", parents=parents + [rules], help="malformed rows and flagged examples")
    p.add_argument("--fail-on", choices=("error", "warning"),
                   help="exit 1 when a flag of this severity (or worse) or an unreadable row is found")
    p.set_defaults(func=cmd_lint)
    p = sub.add_parser("dedup", parents=parents + [similarity], help="exact and near-duplicate clusters")
    p.add_argument("--exact", action="store_true", help="exact duplicates only")
    p.set_defaults(func=cmd_dedup)
    p = sub.add_parser("stats", parents=parents + [rules, similarity], help="counts, lengths, roles, flags")
    p.set_defaults(func=cmd_stats)
    p = sub.add_parser("split", parents=parents + [similarity],
                       help="train/validation/test without leakage, or --check another file for leakage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--proportions", help="train,validation,test (default 0.7,0.15,0.15; 0.8,0.1,0.1 from 10k)")
    p.add_argument("--out", help="directory for the split files (default: beside FILE)")
    p.add_argument("--to-format", default="jsonl", choices=("jsonl", "json", "csv", "parquet"))
    p.add_argument("--check", metavar="OTHER", help="report copies of FILE's examples in OTHER; exit 1 if any")
    p.set_defaults(func=cmd_split)
    p = sub.add_parser("export", parents=parents + [rules, similarity],
                       help="write a new file with verdicts, edits and lint choices applied")
    p.add_argument("--out", required=True, help="the new file (never the source)")
    p.add_argument("--to-format", choices=("jsonl", "json", "csv", "parquet"), help="default: by --out suffix")
    p.add_argument("--drop-rule", action="append", help="drop examples flagged by these rules ('errors': all "
                   "error-severity rules)")
    p.add_argument("--drop-duplicates", choices=("exact", "near"), help="drop all but the kept one of each cluster")
    p.add_argument("--keep-bad", action="store_true", help="keep examples reviewed as bad")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("mix", parents=[common_parent],
                       help="mix a seeded sample of general examples into a task file (against forgetting)",
                       description="Writes TASK_FILE's examples plus general ones, so that general / (task + "
                       "general) = --ratio (fewer when GENERAL_FILE has fewer), shuffled. For a run, prefer the "
                       "config keys general_data and general_ratio: they mix into the training split only, "
                       "after the validation split is held out; a mixed file used as `data` is split as a whole.")
    p.add_argument("task_file", metavar="TASK_FILE")
    p.add_argument("general_file", metavar="GENERAL_FILE", help="general instruction examples, any readable format")
    p.add_argument("--ratio", type=float, default=0.3, help="share of general examples in the output (default 0.3)")
    p.add_argument("--seed", type=int, default=42, help="picks the sample and the order (default 42, as runs)")
    p.add_argument("--out", required=True, help="the mixed file (never an input)")
    p.add_argument("--to-format", choices=("jsonl", "json", "csv", "parquet"), help="default: by --out suffix")
    p.set_defaults(func=cmd_mix)
    p = sub.add_parser("review", parents=parents, help="open the app's Data screen on FILE")
    p.set_defaults(func=cmd_review)
