"""Rows in the shapes real public datasets have load whole, export key for key, and train the right tokens:
OpenAI tool calling and per-message weights (its fine-tuning guide's samples), LLaMA-Factory's glaive
tool layout (ShareGPT with function_call/observation and a `tools` column), its multimodal rows
(`<image>` with an `images` column) and content parts with reasoning."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from engine.data.export import export
from engine.data.load import load_examples
from engine.testing import CHATML

QWEN_TEMPLATE = (Path(__file__).parent / "chat_templates" / "qwen2.5-instruct.jinja").read_text()

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string", "description": "The city and country, eg. San Francisco, USA"},
        "format": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location", "format"]}}}
# OpenAI's fine-tuning guide: an assistant turn that only calls a tool (no content key), and one whose
# call is answered by the tool; `parallel_tool_calls` is a row key tunedeck does not read, but keeps.
OPENAI_TOOL_ROWS = [
    {"messages": [{"role": "user", "content": "What is the weather in San Francisco?"},
                  {"role": "assistant", "tool_calls": [{"id": "call_id", "type": "function", "function": {
                      "name": "get_current_weather",
                      "arguments": "{\"location\": \"San Francisco, USA\", \"format\": \"celsius\"}"}}]}],
     "parallel_tool_calls": False, "tools": [WEATHER_TOOL]},
    {"messages": [{"role": "system", "content": "You are a weather assistant."},
                  {"role": "user", "content": "Is it warm in Lisbon?"},
                  {"role": "assistant", "tool_calls": [{"id": "call_7", "type": "function", "function": {
                      "name": "get_current_weather",
                      "arguments": "{\"location\": \"Lisbon, Portugal\", \"format\": \"celsius\"}"}}]},
                  {"role": "tool", "tool_call_id": "call_7", "content": "{\"temperature\": 24, \"sky\": \"clear\"}"},
                  {"role": "assistant", "content": "Yes: 24 °C and a clear sky in Lisbon."}],
     "tools": [WEATHER_TOOL]},
]
# OpenAI's guide: weight 0 keeps a turn as context without training on it.
OPENAI_WEIGHTED = {"messages": [
    {"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."},
    {"role": "user", "content": "What's the capital of France?"},
    {"role": "assistant", "content": "Paris", "weight": 0},
    {"role": "user", "content": "Can you be more sarcastic?"},
    {"role": "assistant", "content": "Paris, as if everyone doesn't know that already.", "weight": 1}]}
LOAN_TOOLS = [{"name": "calculate_loan_payment", "description": "Calculate the monthly loan payment",
               "parameters": {"type": "object", "properties": {
                   "principal": {"type": "number", "description": "The loan amount"},
                   "interest_rate": {"type": "number", "description": "The annual interest rate"},
                   "loan_term": {"type": "integer", "description": "The loan term in years"}},
                   "required": ["principal", "interest_rate", "loan_term"]}}]
GLAIVE_ROW = {"conversations": [
    {"from": "human", "value": "Hi, I need help calculating my loan payment."},
    {"from": "gpt", "value": "Of course. What are the principal, the annual interest rate and the term in years?"},
    {"from": "human", "value": "The principal is $50000, the rate 5% and the term 10 years."},
    {"from": "function_call", "value": json.dumps({"name": "calculate_loan_payment", "arguments": {
        "principal": 50000, "interest_rate": 5, "loan_term": 10}})},
    {"from": "observation", "value": "{\"monthly_payment\": 530.33}"},
    {"from": "gpt", "value": "Your monthly loan payment would be $530.33."}],
    "tools": json.dumps(LOAN_TOOLS)}
MLLM_ROW = {"messages": [{"content": "<image>Who are they?", "role": "user"},
                         {"content": "They're Kane and Gretzka from Bayern Munich.", "role": "assistant"}],
            "images": ["mllm_demo_data/1.jpg"]}
PARTS_ROW = {"messages": [
    {"role": "user", "content": [{"type": "text", "value": "What is 17 * 3?"}], "loss_weight": 0.0},
    {"role": "assistant", "content": [{"type": "reasoning", "value": "17 * 3 = 51."}, {"type": "text", "value": "51"}],
     "loss_weight": 1.0}]}
IMAGE_PARTS_ROW = {"messages": [
    {"role": "user", "content": [{"type": "text", "text": "Describe "},
                                 {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                                 {"type": "text", "text": "this picture."}]},
    {"role": "assistant", "content": "A grey cat asleep on a windowsill."}]}
ALL_ROWS = [*OPENAI_TOOL_ROWS, OPENAI_WEIGHTED, GLAIVE_ROW, MLLM_ROW, PARTS_ROW, IMAGE_PARTS_ROW]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_every_row_loads_with_what_it_means(tmp_path):
    result = load_examples(write(tmp_path / "rows.jsonl", ALL_ROWS))
    assert result.problems == [] and len(result.examples) == len(ALL_ROWS)
    only_call, answered, weighted, glaive, mllm, parts, image = result.examples
    assert only_call.tools == [WEATHER_TOOL] and only_call.extra == {"parallel_tool_calls": False}
    assert only_call.messages[1]["content"] == "" and only_call.messages[1]["tool_calls"][0]["id"] == "call_id"
    assert [m["role"] for m in answered.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert weighted.messages[2]["weight"] == 0
    assert [m["role"] for m in glaive.messages] == ["user", "assistant", "user", "assistant", "tool", "assistant"]
    assert glaive.messages[3]["tool_calls"] == [{"type": "function", "function": {
        "name": "calculate_loan_payment", "arguments": {"principal": 50000, "interest_rate": 5, "loan_term": 10}}}]
    assert glaive.tools == LOAN_TOOLS and glaive.extra is None
    assert mllm.extra == {"images": ["mllm_demo_data/1.jpg"]}
    assert parts.messages[1]["content"] == "51" and parts.messages[1]["reasoning_content"] == "17 * 3 = 51."
    assert image.messages[0]["content"] == "Describe this picture."


def test_jsonl_export_writes_each_openai_row_back_key_for_key(tmp_path):
    rows = [*OPENAI_TOOL_ROWS, OPENAI_WEIGHTED, MLLM_ROW, PARTS_ROW, IMAGE_PARTS_ROW]
    result = load_examples(write(tmp_path / "rows.jsonl", rows))
    export(result, tmp_path / "out.jsonl")
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert written == rows


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv"])
def test_export_reads_back_as_the_same_examples(tmp_path, fmt):
    source = load_examples(write(tmp_path / "rows.jsonl", ALL_ROWS))
    report = export(source, tmp_path / f"out.{fmt}")
    back = load_examples(tmp_path / f"out.{fmt}")
    assert report["kept"] == len(ALL_ROWS) and back.problems == []
    assert [(e.messages, e.tools) for e in back.examples] == [(e.messages, e.tools) for e in source.examples]
    if fmt == "csv":  # a CSV cell is text: other keys come back as their JSON text
        with open(tmp_path / "out.csv", newline="") as f:
            assert next(csv.DictReader(f))["parallel_tool_calls"] == "false"
    else:
        assert [e.extra for e in back.examples] == [e.extra for e in source.examples]


@pytest.fixture(scope="module")
def tokenizer(tiny_project):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_project / "tiny-model")


def trained_and_untrained(tokenizer, example) -> tuple[str, str]:
    from engine.training.labels import IGNORE_INDEX, encode_examples

    features, _ = encode_examples(tokenizer, [example.messages], 4096, tools=[example.tools])
    ids, labels = features[0]["input_ids"], features[0]["labels"]
    return (tokenizer.decode([t for t in labels if t != IGNORE_INDEX]),
            tokenizer.decode([t for t, label in zip(ids, labels) if label == IGNORE_INDEX]))


def test_a_tools_template_trains_the_calls_and_answers_not_the_results(tmp_path, tokenizer):
    tokenizer.chat_template = QWEN_TEMPLATE
    glaive, weighted = load_examples(write(tmp_path / "rows.jsonl", [GLAIVE_ROW, OPENAI_WEIGHTED])).examples
    trained, untrained = trained_and_untrained(tokenizer, glaive)
    call = ('<tool_call>\n{"name": "calculate_loan_payment", "arguments": {"principal": 50000, "interest_rate": 5, '
            '"loan_term": 10}}\n</tool_call><|im_end|>')
    assert trained == ("Of course. What are the principal, the annual interest rate and the term in years?<|im_end|>\n"
                       + call + "\nYour monthly loan payment would be $530.33.<|im_end|>\n")
    # The schema (rendered by the template into the system turn) and the tool's result are context.
    assert '"name": "calculate_loan_payment", "description"' in untrained
    assert "<tool_response>\n{\"monthly_payment\": 530.33}\n</tool_response>" in untrained
    trained, untrained = trained_and_untrained(tokenizer, weighted)
    assert trained == "Paris, as if everyone doesn't know that already.<|im_end|>\n"
    assert "Paris<|im_end|>" in untrained


def test_a_template_without_tools_gets_the_documented_fallback(tmp_path, tokenizer):
    """SmolLM2's ChatML template ignores tool_calls: rendered as it is, the call would be an empty turn
    and the model would learn to answer nothing."""
    tokenizer.chat_template = CHATML
    glaive = load_examples(write(tmp_path / "rows.jsonl", [GLAIVE_ROW])).examples[0]
    trained, untrained = trained_and_untrained(tokenizer, glaive)
    assert ('<tool_call>\n{"name": "calculate_loan_payment", "arguments": {"principal": 50000, "interest_rate": 5, '
            '"loan_term": 10}}\n</tool_call><|im_end|>') in trained
    assert "530.33}" not in trained.split("</tool_call>")[0] and "$530.33." in trained
    assert "<|im_start|>system\nYou can call these tools." in untrained and "<tools>\n{\"type\": \"function\"" in untrained
    assert "<|im_start|>user\n<tool_response>\n{\"monthly_payment\": 530.33}\n</tool_response>" in untrained


def test_the_light_template_renders_as_transformers_does(tmp_path, tokenizer):
    """The Data screen renders without transformers (jinja2 alone); its trained view must match training."""
    from engine.data.template import ChatTemplate, assistant_spans

    tokenizer.chat_template = QWEN_TEMPLATE
    glaive = load_examples(write(tmp_path / "rows.jsonl", [GLAIVE_ROW])).examples[0]
    light = ChatTemplate(QWEN_TEMPLATE)
    assert light.trained_view(glaive.messages, glaive.tools)[:2] == assistant_spans(tokenizer, glaive.messages,
                                                                                    glaive.tools)


@pytest.mark.parametrize("row, reason", [
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"},
                   {"role": "assistant", "content": "ok"}]}, "message 1 is a tool result with no tool call before it"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"type": "function",
      "function": {"name": "f", "arguments": "{\"a\": 1"}}]}]}, "message 1: the arguments of tool call 'f' are not valid JSON"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok", "weight": 0.5}]},
     "message 1 has weight 0.5: only 0 (shown, not trained) and 1 are supported"),
    ({**GLAIVE_ROW, "tools": "[{\"name\": "}, "'tools' is not valid JSON"),
    ({"messages": [{"role": "user", "content": "Weather in Oslo?"}, {"role": "assistant", "content": None,
      "function_call": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
     "message 1 uses OpenAI's legacy function calling (function_call, role 'function'): write it as tool_calls "
     "and role 'tool'"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "get_time()"}]},
     "turn 1: the function_call is not valid JSON"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "value": "x"}]},
                   {"role": "assistant", "content": "ok"}]}, "message 0 has a 'tool_result' content part"),
])
def test_rows_that_cannot_train_say_why(tmp_path, row, reason):
    result = load_examples(write(tmp_path / "bad.jsonl", [row, OPENAI_WEIGHTED]))
    assert len(result.examples) == 1 and [p.reason for p in result.problems] == [reason]


GEMMA2_LIKE = (  # Gemma 2's template refuses a system turn and knows no tools
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_a_template_without_a_system_turn_gets_the_schemas_in_the_first_user_turn(tmp_path, tokenizer):
    tokenizer.chat_template = GEMMA2_LIKE
    glaive = load_examples(write(tmp_path / "rows.jsonl", [GLAIVE_ROW])).examples[0]
    trained, untrained = trained_and_untrained(tokenizer, glaive)
    assert untrained.startswith("<|im_start|>user\nYou can call these tools.")
    assert "Hi, I need help calculating my loan payment." in untrained and "<tool_call>" in trained
