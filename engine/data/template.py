"""Token counts and the rendered chat template without transformers: the model's
tokenizer.json through the `tokenizers` package and its chat template through jinja2.

What is trained: the assistant turns, less those of weight 0; tool results never.
Tool calls are rendered by the model's own template (`tools=` and `tool_calls`
messages, as transformers passes them) when it shows them: every call's name,
every tool result and every tool schema's name appear in the text. A template that
does not (SmolLM2's, Llama 2's) gets the documented fallback of `tool_fallback`:
the schemas in the system prompt, each call as `<tool_call>{json}</tool_call>` in
the assistant's text, the results as a user turn of `<tool_response>` blocks: the
Hermes convention that Qwen's templates render, so the text matches what a
tools-aware server shows the model.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from engine.data.rows import rejected_conversation, trained_turn

# For base models that ship without a chat template.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '### ' + message['role'] | capitalize + ':\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)
TOOLS_PREAMBLE = ("You can call these tools. To call one, answer with <tool_call>{\"name\": ..., \"arguments\": "
                  "{...}}</tool_call>.\n<tools>\n")


def render_chat(tokenizer, messages: list[dict], tools: list | None = None) -> tuple[list[dict], list | None, str]:
    """(messages, tools, text) as the template is given them: tool-call arguments as objects, schemas in
    OpenAI's `{"type": "function", "function": ...}` form, the fallback when the template hides tools."""
    messages, tools = template_inputs(messages, tools)
    if not tools and not any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        return messages, None, tokenizer.apply_chat_template(messages, tokenize=False)
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
        if _shows_tools(text, messages, tools):
            return messages, tools, text
    except Exception:  # noqa: BLE001 - a template that refuses the tool role: the fallback renders it
        pass
    fallback = tool_fallback(messages, tools)
    try:
        return fallback, None, tokenizer.apply_chat_template(fallback, tokenize=False)
    except Exception:  # noqa: BLE001 - Gemma 2's template refuses a system turn: the schemas go to the user's
        if messages[0]["role"] == "system" or not tools:
            raise
    fallback = tool_fallback(messages, tools, system=False)
    return fallback, None, tokenizer.apply_chat_template(fallback, tokenize=False)


def assistant_spans(tokenizer, messages: list[dict], tools: list | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the (start, end) character spans of the trained assistant turns."""
    messages, tools, text = render_chat(tokenizer, messages, tools)
    render = (lambda ms, **kw: tokenizer.apply_chat_template(ms, tools=tools, tokenize=False, **kw)) if tools \
        else (lambda ms, **kw: tokenizer.apply_chat_template(ms, tokenize=False, **kw))
    spans = []
    for i, message in enumerate(messages):
        if not trained_turn(message):
            continue
        before = render(messages[:i], add_generation_prompt=True) if i else ""
        through = render(messages[: i + 1])
        # Templates that rewrite earlier turns (some drop past reasoning) break the prefix property;
        # then fall back to locating the content itself.
        if text.startswith(through) and through.startswith(before):
            spans.append((len(before), len(through)))
        elif message["content"]:
            start = text.find(message["content"], spans[-1][1] if spans else 0)
            if start >= 0:
                spans.append((start, start + len(message["content"])))
    return text, spans


def template_inputs(messages: list[dict], tools: list | None) -> tuple[list[dict], list | None]:
    """Messages and tools in the shapes chat templates read (transformers' convention)."""
    out = []
    for m in messages:
        m = {k: v for k, v in m.items() if k != "parts"}
        if m.get("tool_calls"):
            m["tool_calls"] = [{**call, "function": {**call["function"], "arguments": _arguments(call["function"])}}
                               for call in m["tool_calls"]]
        out.append(m)
    tools = [t if "function" in t else {"type": "function", "function": t} for t in tools] if tools else None
    return out, tools


def tool_fallback(messages: list[dict], tools: list | None, system: bool = True) -> list[dict]:
    """Tools, calls and results as plain text for a template that cannot show them (module docstring);
    `system=False`: the schemas open the first user turn, for a template without a system turn."""
    out = []
    if tools:
        listing = TOOLS_PREAMBLE + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools) + "\n</tools>"
        if messages[0]["role"] == "system":
            out.append({**messages[0], "content": messages[0]["content"] + "\n\n" + listing})
            messages = messages[1:]
        elif system:
            out.append({"role": "system", "content": listing})
        else:
            messages = [{**messages[0], "content": listing + "\n\n" + messages[0]["content"]}] + messages[1:]
    for m in messages:
        if m["role"] == "tool":
            block = "<tool_response>\n" + m["content"] + "\n</tool_response>"
            if out and out[-1].get("tool_results"):  # parallel results: one user turn
                out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + block}
            else:
                out.append({"role": "user", "content": block, "tool_results": True})
        elif m.get("tool_calls"):
            calls = "\n".join("<tool_call>\n" + json.dumps({"name": c["function"]["name"], "arguments": _arguments(
                c["function"])}, ensure_ascii=False) + "\n</tool_call>" for c in m["tool_calls"])
            rest = {k: v for k, v in m.items() if k != "tool_calls"}
            out.append({**rest, "content": (m["content"] + "\n" if m["content"] else "") + calls})
        else:
            out.append(m)
    return [{k: v for k, v in m.items() if k != "tool_results"} for m in out]


def _arguments(function: dict):
    arguments = function.get("arguments", {})
    return json.loads(arguments) if isinstance(arguments, str) else arguments


def _shows_tools(text: str, messages: list[dict], tools: list | None) -> bool:
    names = [c["function"]["name"] for m in messages for c in m.get("tool_calls") or ()]
    names += [t["function"].get("name", "") for t in tools or ()]
    results = [m["content"] for m in messages if m["role"] == "tool"]
    return all(part in text for part in names + results)


class ChatTemplate:
    """A chat template rendered with jinja2; without a model, the plain fallback template."""

    special: dict = {}

    def __init__(self, source: str | None = None):
        self.template_source = source or FALLBACK_CHAT_TEMPLATE

    def apply_chat_template(self, messages, tools=None, tokenize: bool = False,
                            add_generation_prompt: bool = False) -> str:
        return _compile(self.template_source).render(messages=messages, tools=tools,
                                                     add_generation_prompt=add_generation_prompt,
                                                     **{k: v or "" for k, v in self.special.items()})

    def trained_view(self, messages: list[dict], tools: list | None = None
                     ) -> tuple[str, list[tuple[int, int]], int | None, int | None]:
        text, spans = assistant_spans(self, messages, tools)
        return text, spans, None, None


class LightTokenizer(ChatTemplate):
    """What the Data screen and lint need from a tokenizer: counts, offsets, the chat template."""

    is_fast = True

    def __init__(self, model_dir: str | Path):
        from tokenizers import Tokenizer

        from engine.models.find import resolve_model

        path = Path(resolve_model(str(model_dir)).path)
        if not (path / "tokenizer.json").is_file():
            from engine.models.find import ModelError

            raise ModelError(f"{path} has no tokenizer.json; token counts need a fast tokenizer file")
        self.name = path.name
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        config = {}
        if (path / "tokenizer_config.json").is_file():
            config = json.loads((path / "tokenizer_config.json").read_text())
        template = config.get("chat_template")
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text()
        if isinstance(template, list):  # named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), template[0]["template"])
        self.template_source = template or FALLBACK_CHAT_TEMPLATE
        self.special = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}

    def count(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def count_examples(self, examples) -> list[int]:
        """Tokens of each example as its chat template renders it; of a pair, its longer side (the prompt with
        the chosen or with the rejected completion: a preference trainer cuts each at the length limit)."""
        counts = self.count([render_chat(self, ex.messages, ex.tools)[2] for ex in examples])
        pairs = [i for i, ex in enumerate(examples) if ex.rejected is not None]
        rejected = self.count([render_chat(self, rejected_conversation(examples[i]), examples[i].tools)[2]
                               for i in pairs]) if pairs else []
        for i, n in zip(pairs, rejected):
            counts[i] = max(counts[i], n)
        return counts

    def trained_view(self, messages: list[dict], tools: list | None = None) -> tuple[str, list[tuple[int, int]], int, int]:
        """(rendered text, trained character spans, tokens, trained tokens)."""
        text, spans = assistant_spans(self, messages, tools)
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        trained = sum(1 for start, _ in enc.offsets if any(s <= start < e for s, e in spans))
        return text, spans, len(enc.ids), trained


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


@lru_cache(maxsize=8)
def _compile(source: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    # As transformers compiles templates (loop controls, tojson's options), so tool templates render alike.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = tojson
    return env.from_string(source)
