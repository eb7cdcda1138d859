"""Loading rows of every accepted layout; bad rows reported by file and line, never fatal."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine.data.load import DataError, load_examples

SHARED = "/work/shared/data/gsm8k_train.json"


def test_all_row_layouts_normalise_to_messages(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"instruction": "Add", "input": "1 and 2", "output": "3"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"prompt": "p", "completion": "c"},
        {"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}]},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = load_examples(path)
    assert result.problems == []
    assert [e.messages[-1]["content"] for e in result.examples] == ["a", "3", "hi", "c", "g"]
    assert result.examples[1].messages[0]["content"] == "Add\n\n1 and 2"
    assert result.examples[2].messages[0]["content"] == "Say hi"
    assert [e.line for e in result.examples] == [1, 2, 3, 4, 5]


def test_malformed_rows_reported_with_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "p", "completion": "c"}\n{broken\n\xff\xfe\n[1, 2]\n'
                     b'{"messages": [{"role": "wizard", "content": "x"}]}\n'
                     b'{"messages": [{"role": "user", "content": "x"}]}\n\n{"text": 1}\n')
    result = load_examples(path)
    assert len(result.examples) == 1
    reasons = {p.line: p.reason for p in result.problems}
    assert "broken JSON" in reasons[2] and reasons[3] == "invalid UTF-8"
    assert "expected a JSON object" in reasons[4] and "unknown role 'wizard'" in reasons[5]
    assert "does not end with an assistant" in reasons[6] and "unknown row format" in reasons[8]
    assert str(result.problems[0]).startswith(f"{path}:2: ")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_examples(tmp_path / "nope.jsonl")


def test_real_alpaca_json_array():
    result = load_examples(SHARED)
    assert len(result.examples) + len(result.problems) == 7473
    assert len(result.examples) > 7400
    assert result.examples[0].messages[1]["role"] == "assistant"


def test_rows_that_crashed_the_loader_are_reported(tmp_path):
    """Found by the fault suite (tests/faults/input_faults.py): each of these raised, or reached the
    command line as text it could not print."""
    deep = "[" * 900 + "]" * 900
    path = tmp_path / "odd.jsonl"
    path.write_text("\n".join([
        '{"prompt": "p", "completion": "c"}',
        '{"messages": [{"role": ' + deep + ', "content": "x"}]}',  # TypeError: unhashable type: 'list'
        '{"messages": "' + "[" * 100_000 + '"}',  # RecursionError from the nested-JSON-in-a-string path
        '{"prompt": "\\ud800", "completion": "c"}',  # a lone surrogate: cannot be printed or tokenized
        '{"\\udc80": 1}',
        '{"conversations": [{"from": "' + "x" * 100_000 + '", "value": "v"}]}',
    ]) + "\n")
    result = load_examples(path)
    assert len(result.examples) == 1
    reasons = {p.line: p.reason for p in result.problems}
    assert sorted(reasons) == [2, 3, 4, 5, 6]
    assert "unknown role [[[...]]]" in reasons[2] and "must be a non-empty list" in reasons[3]
    assert "not valid Unicode" in reasons[4] and "unknown row format" in reasons[5]
    assert all(len(r) < 300 for r in reasons.values())  # a huge value is shown short
    for reason in reasons.values():
        reason.encode("utf-8")  # printable
    lint = subprocess.run([sys.executable, "-m", "tui.cli", "data", "lint", str(path)], capture_output=True, timeout=60,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
    assert lint.returncode == 0 and b"Traceback" not in lint.stderr, lint.stderr[-500:]
    assert b"1 examples, 5 skipped" in lint.stdout


def test_json_array_keeps_the_rows_before_a_break(tmp_path):
    row = '{"prompt": "p", "completion": "c"}'
    cases = {
        "truncated.json": (f"[{row}, {row}, {row[:20]}", 2, 3, "the rows after it cannot be read"),
        "no-close.json": (f"[{row}, {row}", 2, 3, "the file ends"),
        "bad-byte-in-row.json": (f'[{row}, {{"prompt": "p\xff", "completion": "c"}}, {row}]', 2, 2,
                                 "not valid Unicode"),
        "bad-byte-between.json": (f"[{row}, \xff {row}]", 1, 2, "invalid UTF-8 at line 1"),
        "trailing.json": (f"[{row}] and more", 1, 2, "text after the closing"),
        "deep.json": ("[" * 100_000, 0, 1, "nested too deeply"),
    }
    for name, (text, kept, bad_line, needle) in cases.items():
        path = tmp_path / name
        path.write_bytes(text.encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff"))
        result = load_examples(path)
        assert len(result.examples) == kept, name
        assert [p.line for p in result.problems] == [bad_line], (name, result.problems)
        assert needle in result.problems[0].reason, (name, result.problems)


def test_csv_bad_bytes_and_long_fields_spoil_only_their_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b'prompt,completion\np,c\n\xff,c\np,"' + b"x" * 200_000 + b'"\np,"'
                     + b"y" * (17 << 20) + b'"\np,c\n')
    result = load_examples(path)
    assert [e.line for e in result.examples] == [1, 3, 5]  # the 200 KB answer is kept; so is the row after
    assert [(p.line, p.reason.split(" at ")[0].split(":")[0]) for p in result.problems] == [
        (2, "invalid UTF-8"), (4, "broken CSV")]


def test_byte_order_mark_is_not_content(tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "a.jsonl").write_bytes(bom + b'{"prompt": "p", "completion": "c"}\n')
    (tmp_path / "b").write_bytes(bom + b' [{"prompt": "p", "completion": "c"}]')
    (tmp_path / "c.txt").write_bytes(bom + b"hello\n")
    assert len(load_examples(tmp_path / "a.jsonl").examples) == 1
    assert load_examples(tmp_path / "b").format == "json" and len(load_examples(tmp_path / "b").examples) == 1
    assert load_examples(tmp_path / "c.txt").examples[0].messages[0]["content"] == "hello"


def test_a_million_bad_lines_share_their_reasons(tmp_path):
    path = tmp_path / "junk.jsonl"
    path.write_bytes(b"x\n" * 1000)
    problems = load_examples(path).problems
    assert len(problems) == 1000 and len({id(p.reason) for p in problems}) == 1
    assert not hasattr(problems[0], "__dict__")  # slots: a bad line costs a few dozen bytes


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`tunedeck data lint F --json | head -1`: the reader leaves early; no traceback follows it."""
    rows = tmp_path / "refusals.jsonl"
    rows.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Tell me about item {i}, please"},
        {"role": "assistant", "content": f"As an AI language model, I cannot help with item {i}."}]}) + "\n"
        for i in range(20000)))  # megabytes of flags: far more than a pipe holds
    proc = subprocess.Popen([sys.executable, "-m", "tui.cli", "data", "lint", str(rows), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"{"
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert code in (0, 141), (code, stderr)


def test_a_json_file_holding_one_object_is_read_as_one(tmp_path):
    """Pretty-printed, a top-level object spans many lines: read as JSON Lines it was a broken line each."""
    rows = [{"instruction": f"Add {i} and 1", "output": str(i + 1)} for i in range(50)]
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"version": "1.0", "data": rows}, indent=2))
    result = load_examples(wrapped)
    assert len(result.examples) == 50 and result.problems == []
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"model": "x", "epochs": 3, "notes": {"a": 1}}, indent=2))
    result = load_examples(settings)
    assert result.examples == [] and len(result.problems) == 1, result.problems
    lines = tmp_path / "rows.json"  # JSON Lines under a .json name stays JSON Lines
    lines.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(load_examples(lines).examples) == 50


def test_trl_preference_rows_load_as_pairs_and_unpaired(tmp_path):
    """TRL's preference layouts: explicit prompt with text or message completions, the implicit form of two
    whole conversations sharing a prompt, and KTO's labelled completions. None may load as a plain
    demonstration: a KTO row labelled false is an answer not to learn."""
    hi = [{"role": "user", "content": "Say hi"}]
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away."},
        {"prompt": hi, "chosen": [{"role": "assistant", "content": "Hi!"}],
         "rejected": [{"role": "assistant", "content": "No."}], "id": 7},
        {"chosen": hi + [{"role": "assistant", "content": "Hi!"}], "rejected": hi + [{"role": "assistant", "content": "No."}]},
        {"prompt": "Say hi", "completion": "Go away.", "label": False},
        {"prompt": hi, "completion": [{"role": "assistant", "content": "Hi!"}], "label": True},
        {"chosen": "Hi!", "rejected": "No."},
        {"chosen": hi + [{"role": "assistant", "content": "Hi!"}],
         "rejected": [{"role": "user", "content": "Other"}, {"role": "assistant", "content": "No."}]},
        {"prompt": "Say hi", "completion": "Hi!", "label": "yes"},
        {"prompt": "Say hi", "chosen": [{"role": "user", "content": "Hi!"}], "rejected": "No."},
    ]) + "\n")
    result = load_examples(path)
    kinds = [(ex.line, ex.kind) for ex in result.examples]
    # a label that is not a boolean is a class label: the row is a demonstration (tests/test_data_quality.py)
    assert kinds == [(1, "pair"), (2, "pair"), (3, "pair"), (4, "unpaired"), (5, "unpaired"), (8, "sft")]
    first, second, implicit, bad, good, labelled = result.examples
    assert labelled.label == "yes"
    assert first.messages == hi + [{"role": "assistant", "content": "Hi!"}]
    assert first.rejected == [{"role": "assistant", "content": "Go away."}]
    assert second.extra == {"id": 7} and implicit.messages == first.messages
    assert implicit.rejected == [{"role": "assistant", "content": "No."}]
    assert (bad.desirable, good.desirable, bad.label) == (False, True, None)  # the KTO label is not a class label
    reasons = {p.line: p.reason for p in result.problems}
    assert "without a 'prompt'" in reasons[6] and "do not begin with the same prompt" in reasons[7]
    assert "list of assistant messages" in reasons[9]


def test_supervised_run_refuses_preference_rows(tmp_path):
    """An SFT run on a preference file would learn chosen answers without their rejected ones (and KTO's
    undesirable answers): refused, naming the counts."""
    from engine.training.recipes.base import examples_for

    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n"
                    + json.dumps({"prompt": "a", "completion": "b", "label": False}) + "\n"
                    + json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    examples = load_examples(path).examples
    with pytest.raises(ValueError, match=r"holds 1 preference pairs and 1 demonstrations and 1 unpaired \(KTO\) rows: "
                                         r"sft learns from demonstrations only; train preference rows with "
                                         r"objective: dpo, orpo or kto"):
        examples_for("sft", examples, str(path))
    assert examples_for("sft", examples[2:], str(path)) == examples[2:]


def test_alpaca_history_becomes_the_earlier_turns(tmp_path):
    """LLaMA-Factory's Alpaca rows carry earlier turns in `history`; a follow-up ("and in French?") is
    not a standalone example."""
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([
        {"instruction": "And in French?", "input": "", "output": "Bonjour",
         "history": [["Say hello", "Hello"], ["Louder", "HELLO"]]},
        {"instruction": "Say hi", "input": "", "output": "Hi", "history": []},
        {"instruction": "Say hi", "output": "Hi", "history": "not pairs"},
    ]))
    result = load_examples(path)
    assert [m["content"] for m in result.examples[0].messages] == \
        ["Say hello", "Hello", "Louder", "HELLO", "And in French?", "Bonjour"]
    assert [m["role"] for m in result.examples[0].messages] == ["user", "assistant"] * 3
    assert len(result.examples[1].messages) == 2
    assert len(result.problems) == 1 and "history" in result.problems[0].reason


def test_content_given_as_parts(tmp_path):
    """OpenAI and LLaMA-Factory write content as a list of parts; text parts join as templates render them,
    an image part is kept as it was (never turned into text), not dropped with its row."""
    path = tmp_path / "parts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Name "}, {"type": "text",
                                                                                  "text": "a colour"}]},
                      {"role": "assistant", "content": [{"type": "text", "value": "Blue"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}},
                                                   {"type": "text", "text": "What is this?"}]},
                      {"role": "assistant", "content": "A cat"}]},
    ]) + "\n")
    result = load_examples(path)
    assert [m["content"] for m in result.examples[0].messages] == ["Name a colour", "Blue"]
    assert result.problems == []
    image_turn = result.examples[1].messages[0]
    assert image_turn["content"] == "What is this?" and image_turn["parts"][0]["type"] == "image_url"
