"""Loading rows of every accepted layout; bad rows reported by file and line, never fatal."""

from __future__ import annotations

import json

import pytest

from engine.data import DataError, load_examples

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
