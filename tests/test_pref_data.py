"""Preference data end to end: every accepted layout into pairs and KTO rows (LLaMA-Factory's real demo sets
among them), lint of each side, duplicates and splits that respect prompts, chosen-against-rejected stats,
lossless export, and `tunedeck data` on a pair file through the real command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.data.dedup import dedup, prompt_text
from engine.data.export import REVIEWED, export, export_chosen
from engine.data.lint import lint
from engine.data.load import Example, content_hash, load_examples
from engine.data.split import leakage, split_indices
from engine.data.stats import LENGTH_BIAS_SHARE, dataset_stats, kto_weight_advice

DEMO = Path(__file__).parent / "data" / "llamafactory"  # copied from llamafactory 0.9.5 (Apache-2.0): SOURCE.md


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def signature(ex: Example) -> tuple:
    """Everything an example carries for training and export."""
    return ex.messages, ex.rejected, ex.desirable, ex.tools, ex.extra, ex.label


# ---- formats ----------------------------------------------------------------------------

def test_llamafactory_sharegpt_demo_loads_300_of_300_pairs():
    raw = json.loads((DEMO / "dpo_en_demo.json").read_text())
    result = load_examples(DEMO / "dpo_en_demo.json")
    assert (len(result.examples), result.problems) == (300, [])
    assert {ex.kind for ex in result.examples} == {"pair"}
    for row, ex in zip(raw, result.examples):  # the prompt is the conversation, each side one gpt turn
        assert [m["content"] for m in ex.messages] == [t["value"] for t in row["conversations"]] + [row["chosen"]["value"]]
        assert ex.rejected == [bot(row["rejected"]["value"])] and ex.extra is None
    assert result.examples[1].messages[0]["role"] == "system"  # a system turn opens the prompt
    multi = next(ex for ex in result.examples if len(ex.messages) >= 5)
    assert [m["role"] for m in multi.messages][:4] == ["user", "assistant", "user", "assistant"]


def test_llamafactory_kto_demo_loads_as_desirable_and_undesirable_rows():
    raw = json.loads((DEMO / "kto_en_demo.json").read_text())
    result = load_examples(DEMO / "kto_en_demo.json")
    assert (len(result.examples), result.problems) == (300, [])
    assert [ex.desirable for ex in result.examples] == [row["label"] for row in raw]
    assert sum(ex.desirable for ex in result.examples) == 150
    assert all(ex.kind == "unpaired" and ex.label is None and ex.rejected is None for ex in result.examples)
    assert all(ex.messages == row["messages"] for row, ex in zip(raw, result.examples))


def test_llamafactory_v1_chosen_and_rejected_messages_load_as_pairs():
    raw = [json.loads(line) for line in (DEMO / "v1_dpo_demo.jsonl").read_text().splitlines()]
    result = load_examples(DEMO / "v1_dpo_demo.jsonl")
    assert (len(result.examples), result.problems) == (10, [])
    first = result.examples[0]
    assert [m["role"] for m in first.messages] == ["system", "user", "assistant"]
    assert first.rejected[0]["content"] == raw[0]["rejected_messages"][-1]["content"][0]["value"]
    assert first.rejected[0]["loss_weight"] == 1.0 and first.messages[0]["loss_weight"] == 0.0  # kept as given
    assert first.messages[-1]["content"] != first.rejected[0]["content"]


def test_llamafactory_alpaca_preference_rows(tmp_path):
    """The Alpaca shape of LLaMA-Factory's data/README.md: instruction, input, optional history and system,
    chosen and rejected as strings."""
    path = write_rows(tmp_path / "alpaca.jsonl", [
        {"instruction": "Translate to French", "input": "cat", "chosen": "chat", "rejected": "chien"},
        {"instruction": "And a dog?", "input": "", "history": [["Translate cat", "chat"]], "system": "Be brief.",
         "chosen": "chien", "rejected": "dog", "source": "hand"},
        {"instruction": "Translate", "input": "cat", "chosen": ["chat"], "rejected": "chien"},
        {"instruction": 3, "chosen": "a", "rejected": "b"},
        {"instruction": "Translate", "history": "cat", "chosen": "a", "rejected": "b"},
    ])
    result = load_examples(path)
    first, second = result.examples
    assert first.messages == [user("Translate to French\n\ncat"), bot("chat")] and first.rejected == [bot("chien")]
    assert second.messages == [{"role": "system", "content": "Be brief."}, user("Translate cat"), bot("chat"),
                               user("And a dog?"), bot("chien")]
    assert second.rejected == [bot("dog")] and second.extra == {"source": "hand"}
    reasons = {p.line: p.reason for p in result.problems}
    assert "'chosen' must be a text or a list of assistant messages" in reasons[3]
    assert "'instruction' and 'input' must be strings" in reasons[4]
    assert "'history' must be a list" in reasons[5]


def test_llamafactory_sharegpt_preference_rows_with_reasons(tmp_path):
    path = write_rows(tmp_path / "sharegpt.jsonl", [
        {"conversations": [{"from": "human", "value": "Hi"}], "chosen": {"from": "gpt", "value": "Hello!"},
         "rejected": {"from": "gpt", "value": "Go away."}, "system": "Be kind.", "tools": ""},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}],
         "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}},
        {"conversations": [{"from": "human", "value": "Hi"}], "chosen": {"from": "human", "value": "a"},
         "rejected": {"from": "gpt", "value": "b"}},
        {"conversations": [{"from": "human", "value": "Hi"}], "chosen": {"from": "gpt"},
         "rejected": {"from": "gpt", "value": "b"}},
    ])
    result = load_examples(path)
    (ex,) = result.examples
    assert ex.messages == [{"role": "system", "content": "Be kind."}, user("Hi"), bot("Hello!")]
    assert ex.rejected == [bot("Go away.")]
    reasons = {p.line: p.reason for p in result.problems}
    assert "'conversations' ends with an assistant turn" in reasons[2]
    assert "'chosen' must be a text or a list of assistant messages" in reasons[3]
    assert "turn 0 needs a string 'value'" in reasons[4]


def test_openai_preference_rows(tmp_path):
    """OpenAI's preference fine-tuning rows: the prompt in input.messages (with tools), lists of assistant
    messages as preferred_output and non_preferred_output."""
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    path = write_rows(tmp_path / "openai.jsonl", [
        {"input": {"messages": [user("How cold is San Francisco today?")], "tools": tools, "parallel_tool_calls": True},
         "preferred_output": [bot("About 14°C in the morning, 20°C at noon.")],
         "non_preferred_output": [bot("It is not cold.")]},
        {"input": {"messages": [user("Hi")]}, "preferred_output": [bot("Hello!")]},
        {"input": "Hi", "preferred_output": [bot("a")], "non_preferred_output": [bot("b")]},
        {"input": {"messages": [user("Hi")]}, "preferred_output": [user("a")], "non_preferred_output": [bot("b")]},
        {"input": {"messages": [user("Hi"), bot("Hello")]}, "preferred_output": [bot("a")],
         "non_preferred_output": [bot("b")]},
    ])
    result = load_examples(path)
    (ex,) = result.examples
    assert ex.messages == [user("How cold is San Francisco today?"), bot("About 14°C in the morning, 20°C at noon.")]
    assert ex.rejected == [bot("It is not cold.")]
    assert ex.tools == tools and ex.extra == {"parallel_tool_calls": True}
    reasons = {p.line: p.reason for p in result.problems}
    assert "needs both 'preferred_output' and 'non_preferred_output'" in reasons[2]
    assert "needs an 'input' object" in reasons[3]
    assert "'preferred_output' must be a text or a list of assistant messages" in reasons[4]
    assert "the prompt ends with an assistant turn" in reasons[5]


def test_chosen_messages_and_rejected_messages(tmp_path):
    """Two whole conversations, as TRL's implicit prompt: their shared beginning is the prompt."""
    path = write_rows(tmp_path / "whole.jsonl", [
        {"chosen_messages": [user("Hi"), bot("Hello!")], "rejected_messages": [user("Hi"), bot("Go away.")], "id": 1},
        {"chosen_messages": [user("Hi"), bot("Hello!")], "rejected_messages": [user("Ho"), bot("Go away.")]},
        {"chosen_messages": [bot("Hello!")], "rejected_messages": [bot("Go away.")]},
    ])
    result = load_examples(path)
    (ex,) = result.examples
    assert (ex.messages, ex.rejected, ex.extra) == ([user("Hi"), bot("Hello!")], [bot("Go away.")], {"id": 1})
    reasons = {p.line: p.reason for p in result.problems}
    assert "'chosen_messages' and 'rejected_messages' are whole conversations that do not begin with the same " \
           "prompt" in reasons[2] and 2 in reasons and 3 in reasons


def test_kto_conversations_with_a_boolean_tag_and_class_labels(tmp_path):
    """LLaMA-Factory's KTO rows: a conversation with a boolean label or kto_tag. A label that is not a boolean
    stays a class label of a demonstration."""
    path = write_rows(tmp_path / "kto.jsonl", [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}], "kto_tag": True},
        {"messages": [user("Hi"), bot("Go away.")], "label": False},
        {"messages": [user("Hi"), bot("Hello!")], "label": "greeting"},
        {"messages": [bot("Hello!")], "label": True},
        {"messages": [user("Hi")], "kto_tag": False},
    ])
    result = load_examples(path)
    good, bad, labelled = result.examples
    assert (good.kind, good.desirable, good.messages) == ("unpaired", True, [user("Hi"), bot("Hello!")])
    assert (bad.kind, bad.desirable, bad.extra) == ("unpaired", False, None)
    assert (labelled.kind, labelled.label) == ("sft", "greeting")
    reasons = {p.line: p.reason for p in result.problems}
    assert "has no prompt before the assistant's completion" in reasons[4]
    assert "must end with the assistant's completion" in reasons[5]


# ---- lossless export -----------------------------------------------------------------------

def crafted_files(tmp_path) -> list[Path]:
    """One file per preference layout beyond the demo sets, with tools, parts and other keys."""
    tool_call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"SF\"}"}}
    return [
        write_rows(tmp_path / "trl.jsonl", [
            {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away.", "rating": "high"},
            {"prompt": [user("Weather?")], "chosen": [{"role": "assistant", "content": None, "tool_calls": [tool_call]}],
             "rejected": [bot("No idea.")], "tools": [{"type": "function", "function": {"name": "weather"}}],
             "rating": "low"}]),  # CSV: every row the same columns
        write_rows(tmp_path / "alpaca.jsonl", [
            {"instruction": "Name a fruit", "input": "", "system": "Be brief.", "chosen": "Apple.", "rejected": "Car."}]),
        write_rows(tmp_path / "openai.jsonl", [
            {"input": {"messages": [user("Hi")], "parallel_tool_calls": False}, "preferred_output": [bot("Hello!")],
             "non_preferred_output": [bot("Bye.")]}]),
        write_rows(tmp_path / "kto.jsonl", [
            {"prompt": "Say hi", "completion": "Hi!", "label": True, "id": "k2"},
            {"messages": [user("Say hi"), bot("Go away.")], "label": False, "id": "k3"}]),
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_export_round_trips_every_preference_layout(tmp_path, fmt):
    """load -> export -> load gives the same examples: pairs as TRL's prompt/chosen/rejected, KTO rows as
    prompt/completion/label, whatever layout they came in; the rejected side and the label are never lost."""
    sources = [DEMO / "dpo_en_demo.json", DEMO / "kto_en_demo.json", DEMO / "v1_dpo_demo.jsonl",
               *crafted_files(tmp_path)]
    for source in sources:
        before = load_examples(source)
        assert before.examples and not before.problems, source
        report = export(before, tmp_path / f"out-{source.stem}.{fmt}")
        after = load_examples(report["output"])
        assert not after.problems, (source, after.problems[:1])
        expected = [signature(ex) for ex in before.examples]
        if fmt == "csv":  # CSV has text cells only: other keys' numbers and booleans come back as their JSON text
            expected = [(*sig[:4], sig[4] and {k: v if isinstance(v, str) else json.dumps(v) for k, v in sig[4].items()},
                         sig[5]) for sig in expected]
        assert [signature(ex) for ex in after.examples] == expected, source
    row = json.loads((tmp_path / "out-dpo_en_demo.jsonl").read_text().splitlines()[0]) if fmt == "jsonl" else None
    if row:
        assert list(row) == ["prompt", "chosen", "rejected"] and row["rejected"][0]["role"] == "assistant"


def test_a_reviewed_edit_of_a_pair_keeps_its_rejected_side(tmp_path):
    result = load_examples(write_rows(tmp_path / "p.jsonl", [{"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."}]))
    ex = result.examples[0]
    edit = [user("Say hi"), bot("Hello there!")]
    report = export_chosen(result, tmp_path / "out.jsonl", REVIEWED, {content_hash(ex.messages): {"edit": edit}})
    (after,) = load_examples(report["output"]).examples
    assert (after.messages, after.rejected) == (edit, [bot("No.")])


# ---- lint ---------------------------------------------------------------------------------

def test_lint_flags_pairs_without_a_preference_and_faults_of_either_side():
    pairs = [
        Example([user("Say hi"), bot("Hi there!")], "p", 1, rejected=[bot("Hi there!")]),
        Example([user("Say hi"), bot("Hi  there!\n")], "p", 2, rejected=[bot(" Hi there!")]),
        Example([user("Say hi"), bot("Hi there!")], "p", 3, rejected=[bot("Hi, there!")]),
        Example([user("Summarise the text"), bot("It is short.")], "p", 4,
                rejected=[bot("Traceback (most recent call last):\n  File \"x.py\"")]),
        # the defects a rejected answer is there to show: a refusal, a cut-off answer
        Example([user("Tell a joke"), bot("Why did the chicken cross the road? To get across.")], "p", 5,
                rejected=[bot("I'm sorry, but I can't do that.")]),
        Example([user("List colours"), bot("Red, green and blue.")], "p", 6,
                rejected=[bot("The colours are red, green and")]),
    ]
    flags = {(f.index, f.rule): f.message for f in lint(pairs)}
    assert flags[(0, "identical-pair")] == "chosen and rejected are the same"
    assert flags[(1, "identical-pair")] == "chosen and rejected differ only in whitespace"
    assert (2, "identical-pair") not in flags  # a comma is a difference
    assert flags[(3, "error-text")].startswith("rejected: error text in the answer")
    assert not [key for key in flags if key[0] in (4, 5)]


def test_kto_rows_are_held_to_the_answer_rules_only_where_desirable():
    rows = [Example([user("Tell a joke"), bot("I'm sorry, but I can't do that.")], "k", 1, desirable=True),
            Example([user("Tell a joke"), bot("I'm sorry, but I can't do that.")], "k", 2, desirable=False),
            Example([user("Tell a joke"), bot("")], "k", 3, desirable=False)]
    assert [(f.index, f.rule) for f in lint(rows)] == [(0, "refusal"), (2, "empty-answer")]


def test_token_counts_of_a_pair_are_of_its_longer_side(tiny_project):
    """lint --model holds a pair to max_seq_length by its longer side: the trainer cuts each side on its own."""
    from engine.data.template import LightTokenizer

    tokenizer = LightTokenizer(tiny_project / "tiny-model")
    long_rejected = Example([user("Say hi"), bot("Hi!")], "p", 1, rejected=[bot("No. " * 50)])
    long_chosen = Example([user("Say hi"), bot("Hello! " * 50)], "p", 2, rejected=[bot("No.")])
    alone = [Example([user("Say hi"), bot("Hi!")], "s", 1), Example([user("Say hi"), bot("No. " * 50)], "s", 2),
             Example([user("Say hi"), bot("Hello! " * 50)], "s", 3)]
    short, rejected_side, chosen_side = tokenizer.count_examples(alone)
    assert short < rejected_side
    assert tokenizer.count_examples([long_rejected, long_chosen]) == [rejected_side, chosen_side]


# ---- duplicates and splits --------------------------------------------------------------------

LONG_PROMPT = ("Read the following report and answer the question at the end. " + " ".join(
    f"Paragraph {i} says that the quarterly numbers of region {i} rose by {i} percent over the year." for i in range(40))
    + " Question: which region grew the most?")


def test_pairs_that_share_a_prompt_are_not_duplicates():
    """UltraFeedback-style: several pairs compare answers to one prompt. Only a pair whose prompt, chosen and
    rejected are all alike is a duplicate; a swapped pair contradicts, it does not duplicate."""
    answers = ["Region 39 grew the most, by 39 percent.", "Region 39, at thirty-nine percent growth.",
               "It was region 1.", "I cannot tell from the report."]
    pairs = [Example([user(LONG_PROMPT), bot(a)], "u", i + 1, rejected=[bot(b)])
             for i, (a, b) in enumerate([(answers[0], answers[2]), (answers[0], answers[3]), (answers[1], answers[2]),
                                         (answers[1], answers[3])])]
    exact_copy = Example([user(LONG_PROMPT), bot(answers[0].upper())], "u", 5, rejected=[bot(answers[2] + "  ")])
    near_copy = Example([user(LONG_PROMPT.replace("report", "Report", 1)), bot(answers[1] + " Indeed it did grow.")],
                        "u", 6, rejected=[bot(answers[3])])
    swapped = Example([user(LONG_PROMPT), bot(answers[2])], "u", 7, rejected=[bot(answers[0])])
    found = dedup(pairs + [exact_copy, near_copy, swapped], similarity=0.5)
    assert found["exact"].groups == [[0, 4]]
    assert found["near"].groups == [[0, 4], [3, 5]]
    # the SFT measure on the same texts would call them all one cluster: the long prompt dominates
    sft = [Example(ex.messages + ex.rejected, "u", ex.line) for ex in pairs]
    assert dedup(sft, similarity=0.5)["near"].groups == [[0, 1, 2, 3]]


def test_kto_rows_with_opposite_labels_are_not_duplicates():
    rows = [Example([user("Hi"), bot("Go away.")], "k", 1, desirable=False),
            Example([user("Hi"), bot("Go away.")], "k", 2, desirable=True),
            Example([user("Hi"), bot("go  away.")], "k", 3, desirable=False)]
    assert dedup(rows)["near"].groups == [[0, 2]]


def test_splits_keep_every_row_of_a_prompt_on_one_side():
    """30 prompts with 3 pairs each and 2 KTO rows each: no prompt on two sides, whatever the seed."""
    examples = []
    for p in range(30):
        prompt = f"Question number {p}: what is {p} times {p + 7}, and why does it matter for topic {p}?"
        for k in range(3):
            examples.append(Example([user(prompt), bot(f"Answer {k} for {p}: {p * (p + 7) + k}.")], "s",
                                    len(examples) + 1, rejected=[bot(f"Wrong answer {k} for {p}: {k - p}.")]))
        examples += [Example([user(prompt), bot(f"It is {p * (p + 7)}.")], "s", len(examples) + 1, desirable=True),
                     Example([user(prompt), bot("No idea.")], "s", len(examples) + 2, desirable=False)]
    for seed in range(3):
        parts = split_indices(examples, seed=seed)
        assert sorted(i for idx in parts.values() for i in idx) == list(range(len(examples)))
        side = {prompt_text(examples[i]): name for name, idx in parts.items() for i in idx}
        assert len(side) == 30 and all(len(idx) % 5 == 0 for idx in parts.values())
        for name, idx in parts.items():
            assert all(side[prompt_text(examples[i])] == name for i in idx)
        train, test = ([examples[i] for i in parts[k]] for k in ("train", "test"))
        assert leakage(train, test) == {"exact": [], "near": []}
    assert leakage(examples[:3], examples[3:6])["exact"] == [(0, 0), (0, 1)]  # the KTO rows of prompt 0


def test_the_real_kto_demo_splits_its_shared_prompts_together():
    examples = load_examples(DEMO / "kto_en_demo.json").examples
    shared = [[i for i, ex in enumerate(examples) if prompt_text(ex) == text]
              for text in {prompt_text(ex) for ex in examples}]
    shared = [group for group in shared if len(group) > 1]
    assert shared  # the file has prompts judged more than once
    parts = split_indices(examples, seed=0)
    side = {i: name for name, idx in parts.items() for i in idx}
    assert all(len({side[i] for i in group}) == 1 for group in shared)


# ---- stats ------------------------------------------------------------------------------

def test_stats_of_pairs_warn_of_a_length_bias():
    biased = [Example([user(f"Question {i}?"), bot("A long and careful answer. " * 4)], "b", i + 1,
                      rejected=[bot("Short.")]) for i in range(8)]
    biased += [Example([user(f"Question {i}?"), bot("Short.")], "b", i + 1, rejected=[bot("A longer answer.")])
               for i in range(8, 10)]
    stats = dataset_stats(biased)
    assert stats["pairs"]["count"] == 10 and stats["pairs"]["chosen_longer"] == 0.8 >= LENGTH_BIAS_SHARE
    assert stats["pairs"]["rejected_chars"]["median"] == len("Short.")
    assert any(w.startswith("length bias: chosen is longer than rejected in 80% of the pairs") and "Park et al. 2024" in w
               for w in stats["warnings"])
    demo = dataset_stats(load_examples(DEMO / "dpo_en_demo.json").examples)
    assert demo["pairs"]["chosen_longer"] < 0.5 and "warnings" not in demo


def test_stats_count_rows_that_contradict_each_other():
    rows = [Example([user("Say hi"), bot("Hi!")], "c", 1, rejected=[bot("Go away.")]),
            Example([user("say  hi"), bot("Go away.")], "c", 2, rejected=[bot("Hi!")]),  # the swap
            Example([user("Say hi"), bot("Hello.")], "c", 3, rejected=[bot("Go away.")]),  # another comparison
            Example([user("Say hi"), bot("Same.")], "c", 4, rejected=[bot("Same.")]),  # identical-pair's case
            Example([user("Say hi"), bot("Hi!")], "c", 5, desirable=True),
            Example([user("Say hi"), bot("Hi!")], "c", 6, desirable=False),
            Example([user("Say hi"), bot("Go away.")], "c", 7, desirable=False)]
    stats = dataset_stats(rows)
    assert stats["contradictions"] == 4
    assert any(w.startswith("4 preference rows contradict another") for w in stats["warnings"])
    assert "contradictions" not in dataset_stats(load_examples(DEMO / "dpo_en_demo.json").examples)


def test_stats_of_kto_rows_give_the_balance_and_the_weight_to_set():
    rows = [Example([user("q"), bot(f"answer {i}")], "k", i + 1, desirable=i < 100) for i in range(400)]
    stats = dataset_stats(rows)
    assert stats["unpaired"] == {"desirable": 100, "undesirable": 300}
    (warning,) = stats["warnings"]
    assert "= 0.33, outside the KTO paper's 1 to 4/3; set desirable_weight: 3.50" in warning
    assert kto_weight_advice(150, 150) is None and kto_weight_advice(100, 300, desirable_weight=3.5) is None
    weight = float(kto_weight_advice(300, 100).rsplit(" ", 1)[1])  # undesirable_weight to set
    assert 1 <= 300 / (weight * 100) <= 4 / 3
    assert "all desirable" in kto_weight_advice(10, 0)
    assert "pairs" not in stats and "unpaired" not in dataset_stats([Example([user("q"), bot("a")], "s", 1)])


# ---- the command line ---------------------------------------------------------------------

def tunedeck(*argv: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "tui.cli", "data", *argv], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_tunedeck_data_on_the_llamafactory_pair_file(tmp_path):
    source = tmp_path / "dpo_en_demo.json"
    shutil.copy(DEMO / "dpo_en_demo.json", source)
    lint_report = json.loads(tunedeck("lint", str(source), "--json").stdout)
    assert lint_report["examples"] == 300 and lint_report["skipped"] == []
    stats = json.loads(tunedeck("stats", str(source), "--json").stdout)
    assert stats["pairs"]["count"] == 300 and stats["duplicates"] == 5
    assert "pairs: 300; chosen mean 1,448" in tunedeck("stats", str(source)).stdout
    dups = json.loads(tunedeck("dedup", str(source), "--json").stdout)
    assert dups["clusters"] == [[13, 157], [28, 248], [84, 230], [111, 186], [117, 275]]  # exact copies in the file
    assert "pairs that only share a prompt are kept" in tunedeck("dedup", str(source)).stdout
    split = json.loads(tunedeck("split", str(source), "--out", str(tmp_path / "splits"), "--json").stdout)
    sides = {name: load_examples(info["path"]) for name, info in split["splits"].items()}
    assert sum(len(r.examples) for r in sides.values()) == 300
    assert all(ex.kind == "pair" for r in sides.values() for ex in r.examples)
    prompts = {name: {prompt_text(ex) for ex in r.examples} for name, r in sides.items()}
    assert not prompts["train"] & prompts["test"] and not prompts["train"] & prompts["validation"]
    out = tmp_path / "clean.jsonl"
    report = json.loads(tunedeck("export", str(source), "--out", str(out), "--drop-duplicates", "exact",
                                 "--json").stdout)
    assert (report["kept"], report["removed_by_reason"]) == (295, {"duplicate": 5})
    exported = load_examples(out)
    original = load_examples(source).examples
    kept = [ex for i, ex in enumerate(original) if i not in {157, 248, 230, 186, 275}]
    assert [signature(ex) for ex in exported.examples] == [signature(ex) for ex in kept]
