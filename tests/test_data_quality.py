"""Lint, dedup, splits, formats, export and the review store, on small files made here and the shared real data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from engine.data.dedup import dedup, near_clusters
from engine.data.export import export
from engine.data.lint import LintConfig, lint
from engine.data.load import content_hash, first_example, load_examples
from engine.data.readers import detect_format
from engine.data.review import ReviewStore
from engine.data.split import leakage, split_indices
from engine.demo import write_demo_data

SHARED = "/work/shared/data"


def _rows(messages_list):
    return "".join(json.dumps({"messages": m}) + "\n" for m in messages_list)


def qa(q, a):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_lint_finds_every_planted_demo_defect(tmp_path):
    paths = write_demo_data(tmp_path)
    result = load_examples(paths["train"])
    by_answer = {}
    for f in lint(result.examples):
        by_answer.setdefault(result.examples[f.index].messages[-1]["content"], set()).add(f.rule)
    assert by_answer[""] == {"empty-answer"}
    assert "error-text" in by_answer["Error: upstream model rate limit exceeded, please retry."]
    assert {"placeholder-input", "placeholder-answer"} <= by_answer['{"name": "N/A", "age": 0, "city": "N/A"}']
    truncated = [a for a, rules in by_answer.items() if "truncated-answer" in rules]
    assert len(truncated) == 1 and len(truncated[0]) == 18
    assert len(by_answer) == 4  # nothing else in 305 clean rows is flagged
    exact = dedup(result.examples, None)["exact"]
    assert len(exact.groups) == 1 and len(exact.groups[0]) == 2  # the planted exact duplicate


def test_lint_rules_on_small_cases():
    cases = {
        "merged-instructions": qa("Write a poem.\n##\n18. Instruction: Name a fruit.", "Roses are red."),
        "unseen-reference": qa("Summarise https://example.com/post please", "It says hello."),
        "control-chars": qa("Fix\x07 this", "Done."),
        "refusal": qa("Tell me a joke", "As an AI language model, I cannot tell jokes."),
        "personal-data": qa("Who to mail?", "Write to jane.doe@fastmail.com about it."),
        "role-order": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "hey"},
                       {"role": "assistant", "content": "hello"}],
        "truncated-answer": qa("List three colours", "The colours are red, green and"),
    }
    from engine.data.load import Example

    examples = [Example(m, "mem", i + 1) for i, m in enumerate(cases.values())]
    found = {(f.index, f.rule) for f in lint(examples)}
    for i, rule in enumerate(cases):
        assert (i, rule) in found, rule
    quiet = lint(examples, LintConfig(disabled={"refusal"}))
    assert not any(f.rule == "refusal" for f in quiet)


def test_gsm8k_answers_ending_in_numbers_are_not_truncated():
    result = load_examples(f"{SHARED}/gsm8k_train.json")
    flags = lint(result.examples)
    truncated = [f for f in flags if f.rule == "truncated-answer"]
    # "must end with . ! ?" would flag 43% of these complete answers; the structural rule flags a handful
    assert len(truncated) < 0.002 * len(result.examples)
    assert not any(f.rule in ("empty-answer", "error-text") for f in flags)


def test_near_duplicates_on_gpteacher_toolformer_track_the_published_figure():
    result = load_examples(f"{SHARED}/gpteacher_toolformer.json")
    kept = len(result.examples) - len(dedup(result.examples, 0.6)["near"].duplicates())
    assert abs(kept - 2396) < 0.1 * 2396  # that project's near-dedup kept 2,396 at < 0.6


def test_near_duplicate_cluster_keeps_the_first():
    base = "the quick brown fox jumps over the lazy dog near the river bank today"
    texts = [base, "something else entirely about databases and indexes", base + " again", base.upper()]
    groups = near_clusters(texts, 0.7).groups
    assert groups == [[0, 2, 3]]


def test_split_is_seeded_stratified_and_keeps_clusters_together(tmp_path):
    from engine.data.load import Example

    examples = [Example(qa(f"question number {i} about topic {i % 7}", f"answer {i}"), "m", i + 1,
                        label="pos" if i % 4 == 0 else "neg") for i in range(400)]
    examples.append(Example(qa("question number 5 about topic 5", "answer 5"), "m", 401, label="neg"))
    parts = split_indices(examples, seed=3)
    assert parts == split_indices(examples, seed=3) and parts != split_indices(examples, seed=4)
    assert sorted(sum(parts.values(), [])) == list(range(401))
    assert abs(len(parts["train"]) - 0.7 * 401) <= 3
    side = {i: name for name, idx in parts.items() for i in idx}
    assert side[5] == side[400]  # exact copies on one side
    for name, idx in parts.items():
        share = sum(1 for i in idx if examples[i].label == "pos") / len(idx)
        assert 0.2 < share < 0.3, name
    assert leakage([examples[5]], [examples[400], examples[7]])["exact"] == [(0, 0)]


def test_every_format_loads_with_provenance(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.csv").write_text("question,answer\nq1,a1\n\"multi\nline\",a2\n")
    r = load_examples(tmp_path / "d.csv", columns={"prompt": "question", "completion": "answer"})
    assert [e.messages[1]["content"] for e in r.examples] == ["a1", "a2"] and r.display_line(r.examples[1].line) == 1
    pq.write_table(pa.table({"prompt": ["p0", "p1"], "completion": ["c0", ""], "label": ["x", "y"]}),
                   tmp_path / "d.parquet")
    r = load_examples(tmp_path / "d.parquet")
    assert r.format == "parquet" and r.examples[1].label == "y"
    (tmp_path / "d.txt").write_text("first line\n\nsecond line\n")
    r = load_examples(tmp_path / "d.txt")
    assert [e.line for e in r.examples] == [1, 3] and r.examples[0].messages[0]["role"] == "assistant"
    arrow_dir = tmp_path / "saved"
    arrow_dir.mkdir()
    table = pa.table({"instruction": ["i"], "input": [""], "output": ["o"]})
    with pa.OSFile(str(arrow_dir / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    (arrow_dir / "state.json").write_text("{}")
    assert detect_format(arrow_dir) == "arrow"
    assert load_examples(arrow_dir).examples[0].messages[1]["content"] == "o"
    (tmp_path / "d.data").write_text('[{"prompt": "p", "completion": "c"}]')
    assert detect_format(tmp_path / "d.data") == "json"
    assert load_examples(tmp_path / "d.data", fmt="json").examples[0].messages[1]["content"] == "c"


def test_broken_inputs_are_reported_per_line_never_fatal(tmp_path):
    path = tmp_path / "fuzz.jsonl"
    good = json.dumps({"prompt": "p", "completion": "c"}).encode()
    lines = [good, b'{"prompt": "p", "completion": ', b"\xc3\x28", b"[]", b'{"messages": []}',
             b'{"messages": [{"role": "user"}]}', b'{"messages": [{"role": "robot", "content": "x"}]}',
             b'{"messages": [{"role": "user", "content": "x"}]}', b'{"prompt": 1, "completion": "c"}',
             b'"just a string"', b"{" * 100_000, b'{"text": "' + b"a" * (50 << 20) + b'"}', good]
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = load_examples(path)
    assert [e.line for e in result.examples] == [1, 13]
    reasons = {p.line: p.reason for p in result.problems}
    assert sorted(reasons) == list(range(2, 13))
    assert "broken JSON" in reasons[2] and reasons[3] == "invalid UTF-8"
    assert "unknown role 'robot'" in reasons[7] and "does not end with an assistant" in reasons[8]
    assert "longer than" in reasons[12]
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert load_examples(tmp_path / "empty.jsonl").examples == []
    (tmp_path / "broken.json").write_text('[{"prompt": "p"')
    assert "not valid JSON" in load_examples(tmp_path / "broken.json").problems[0].reason


def test_first_example_of_a_large_file_without_loading_it(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps([{"prompt": f"p{i}", "completion": "c"} for i in range(50_000)]))
    assert first_example(path).messages[0]["content"] == "p0"


def test_export_applies_verdicts_edits_and_rules(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text(_rows([qa("a", "1"), qa("b", ""), qa("c", "3"), qa("a", "1")]))
    result = load_examples(src)
    store = ReviewStore.for_dataset(src)
    store.set_verdict(content_hash(result.examples[2].messages), "bad")
    store.set_edit(content_hash(result.examples[0].messages), qa("a", "one"))
    flags = lint(result.examples)
    report = export(result, tmp_path / "out.jsonl", reviews=store.all(), flags=flags, drop_rules={"empty-answer"},
                    duplicates=dedup(result.examples, None)["exact"].duplicates())
    out = [json.loads(x)["messages"] for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert out == [qa("a", "one")]
    assert {r["line"]: r["reason"].split(":")[0] for r in report["removed_examples"]} == \
        {2: "lint", 3: "verdict bad", 4: "duplicate"}
    assert src.read_text() == _rows([qa("a", "1"), qa("b", ""), qa("c", "3"), qa("a", "1")])


def test_review_store_undo_steps_and_bulk(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite")
    store.set_verdict("h1", "good")
    store.set_verdict("h1", "bad")
    store.set_verdicts(["h2", "h3"], "skip")
    assert store.counts() == {"bad": 1, "skip": 2}
    assert sorted(store.undo()) == ["h2", "h3"] and store.get("h2") is None
    store.undo()
    assert store.get("h1")["verdict"] == "good"
    store.undo()
    assert store.get("h1") is None and store.undo() == []


def test_review_store_survives_a_killed_process(tmp_path):
    db = tmp_path / "r.sqlite"
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        from engine.data.review import ReviewStore
        store = ReviewStore({str(db)!r})
        for i in range(50):
            store.set_verdict(f"h{{i}}", "good" if i % 2 else "bad")
        store.set_note("h3", "check the maths")
        print("written", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL and "written" in proc.stdout
    store = ReviewStore(db)
    assert store.counts() == {"good": 25, "bad": 25}
    assert store.get("h3") == {"verdict": "good", "note": "check the maths", "edit": None}


def test_cli_lint_and_dedup_json_contract(tmp_path, capsys):
    from tui.cli.main import main

    src = tmp_path / "d.json"
    src.write_text(json.dumps([{"prompt": "p", "completion": "c"}, {"prompt": "q", "completion": ""},
                               {"prompt": "p", "completion": "c"}, {"nope": 1}]))
    assert main(["data", "lint", str(src), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["examples"] == 3 and out["skipped"][0]["line"] == 3
    assert {"line": 1, "rule": "empty-answer"} in [{k: f[k] for k in ("line", "rule")} for f in out["flags"]]
    assert main(["data", "dedup", str(src), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["clusters"] == [[0, 2]]
    assert main(["data", "lint", str(tmp_path / "missing.jsonl")]) == 2


def test_cli_says_what_it_left_out_and_gates_ci(tmp_path, capsys):
    """Skipped rows are reported by every command that writes; --fail-on turns flags into an exit code;
    --severity reaches --drop-rule errors; a mistyped column and a character fallback are said."""
    from tui.cli.main import main

    src = tmp_path / "d.jsonl"
    rows = [{"prompt": f"Explain topic {i} in a sentence", "completion": f"Topic {i} is about numbers."}
            for i in range(6)]
    rows.append({"prompt": "What went wrong?", "completion": "Traceback (most recent call last):\n  File x"})
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n" + json.dumps({"nope": 1}) + "\n")

    assert main(["data", "lint", str(src)]) == 0
    capsys.readouterr()
    assert main(["data", "lint", str(src), "--fail-on", "error"]) == 1  # error-text, and two unreadable rows
    capsys.readouterr()

    out = tmp_path / "clean.jsonl"
    assert main(["data", "export", str(src), "--out", str(out), "--drop-rule", "errors"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 6 examples" in printed and printed.count("skipped 1 unreadable rows") == 2, printed
    assert main(["data", "export", str(src), "--out", str(out), "--drop-rule", "errors",
                 "--severity", "error-text=warning", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kept"] == 7 and len(report["skipped"]) == 2  # error-text is a warning now: kept

    assert main(["data", "lint", str(src), "--columns", "prompt=prompt,completion=answr"]) == 2
    assert "'answr' is in no row" in capsys.readouterr().err
    assert main(["data", "lint", str(src), "--max-tokens", "512"]) == 0
    assert "counts characters instead" in capsys.readouterr().err


def test_a_dataset_dict_folder_reads_a_named_split(tmp_path, capsys):
    """`DatasetDict.save_to_disk` writes dataset_dict.json and one folder per split."""
    import pyarrow as pa

    from engine.data.load import DataError
    from tui.cli.main import main

    root = tmp_path / "dd"
    sizes = {"train": 5, "test": 2}
    for split, n in sizes.items():
        folder = root / split
        folder.mkdir(parents=True)
        table = pa.table({"instruction": [f"{split} question {i}" for i in range(n)],
                          "output": [f"answer {i}" for i in range(n)]})
        with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
        (folder / "state.json").write_text("{}")
    (root / "dataset_dict.json").write_text(json.dumps({"splits": list(sizes)}))
    default = load_examples(root)
    assert len(default.examples) == 5 and default.note == "split train of train, test"
    assert len(load_examples(root, split="test").examples) == 2
    with pytest.raises(DataError, match="splits train, test: it has no split 'dev'"):
        load_examples(root, split="dev")
    assert main(["data", "lint", str(root), "--split", "test"]) == 0
    captured = capsys.readouterr()
    assert "2 examples" in captured.out and "split test of train, test" in captured.err
