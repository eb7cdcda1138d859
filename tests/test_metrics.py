"""Metrics and probes on hand-made cases: correctness and format compliance kept apart."""

from __future__ import annotations

import pytest

from engine.evaluation.metrics import (
    exact_match,
    format_checker,
    json_field_f1,
    key_phrase_recall,
    label_accuracy,
    matches_regex,
    matches_schema,
    normalised_match,
    rouge_l,
    score_rows,
    token_f1,
)
from engine.evaluation.probes import BUILTIN_PROBES, Probe, load_user_probes, verdict

REF = '{"name": "Maria Silva", "age": 34, "city": "Lisbon"}'


def test_compliant_but_wrong_and_right_but_not_compliant():
    wrong_json = '{"name": "Maria Silva", "age": 43, "city": "Lisbon"}'
    right_in_prose = 'Here you go: {"name": "Maria Silva", "age": 34, "city": "Lisbon"}'
    rows = [{"reference": REF, "tuned": wrong_json}, {"reference": REF, "tuned": right_in_prose}]
    result, name = score_rows(rows, "tuned", "extraction")
    assert name == "json_field_f1"
    assert rows[0]["tuned_format"] is True and rows[0]["tuned_exact"] is False
    assert rows[1]["tuned_format"] is False and rows[1]["tuned_exact"] is False
    assert result["format_compliance"] == 0.5 and result["exact_match"] == 0.0
    assert json_field_f1(wrong_json, REF) == pytest.approx(2 / 3)  # two of three fields right
    assert json_field_f1(right_in_prose, REF) == 0.0  # not JSON: no field can be read


def test_text_metrics():
    assert exact_match("  a  b ", "a b") and not exact_match("A b", "a b")
    assert normalised_match("The Cat!", "cat")
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert rouge_l("cat sat on mat", "cat sat mat") == pytest.approx(2 * 0.75 / 1.75)  # LCS 3: P 3/4, R 1
    assert rouge_l("police killed the gunman", "the gunman was killed by police") == pytest.approx(0.25)  # order
    assert key_phrase_recall("Paris is the capital of France", ["paris", "berlin"]) == 0.5
    assert label_accuracy("Positive\nbecause it is nice", "positive") and not label_accuracy("neutral", "positive")


def test_format_checks():
    schema = {"type": "object", "required": ["age"], "properties": {"age": {"type": "integer"}}}
    assert matches_schema('{"age": 3}', schema) and not matches_schema('{"age": "3"}', schema)
    assert not matches_schema("not json", schema)
    assert matches_regex("ID-1234", r"ID-\d{4}") and not matches_regex("ID-12345x", r"ID-\d{4}")
    assert format_checker(None, [REF, "{}"]) is not None  # JSON references: JSON is the format
    assert format_checker(None, ["plain words"]) is None
    assert format_checker("regex:\\d+", [])("42")


def test_probes_and_verdict(tmp_path):
    assert len({p.category for p in BUILTIN_PROBES}) == 5
    by_name = {p.name: p for p in BUILTIN_PROBES}
    assert by_name["capital-france"].passes("It is Paris.") and not by_name["capital-france"].passes("Lyon")
    assert by_name["add"].passes("12") and not by_name["add"].passes("112")
    assert by_name["json-list"].passes('["red", "green", "blue"]')
    probes = [Probe("a", "facts", "q", "yes"), Probe("b", "facts", "q", "yes"), Probe("c", "facts", "q", "yes")]
    result = verdict(probes, ["yes", "no", "yes"], ["no", "yes", "yes"], 20.0, 22.0)
    assert result["regressed"] == ["a"] and result["improved"] == ["b"]
    assert "1 of 3 probes regressed: a" in result["verdict"] and "+10%" in result["verdict"]
    user = tmp_path / "probes.jsonl"
    user.write_text('{"name": "x", "prompt": "2+2?", "expect": "4"}\n{"prompt": "hi", "regex": "^h"}\n')
    loaded = load_user_probes(user)
    assert loaded[0].passes("it is 4") and loaded[1].name == "user-2"
    user.write_text('{"prompt": "no expectation"}\n')
    with pytest.raises(ValueError, match="probes.jsonl:1"):
        load_user_probes(user)
