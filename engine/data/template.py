"""Token counts and the rendered chat template without transformers: the model's
tokenizer.json through the `tokenizers` package and its chat template through jinja2."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

# For base models that ship without a chat template.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '### ' + message['role'] | capitalize + ':\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the (start, end) character spans of assistant turns."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        # Templates that rewrite earlier turns (some drop past reasoning) break the prefix property;
        # then fall back to locating the content itself.
        if text.startswith(through) and through.startswith(before):
            spans.append((len(before), len(through)))
        else:
            start = text.find(message["content"], spans[-1][1] if spans else 0)
            if start >= 0:
                spans.append((start, start + len(message["content"])))
    return text, spans


class ChatTemplate:
    """A chat template rendered with jinja2; without a model, the plain fallback template."""

    special: dict = {}

    def __init__(self, source: str | None = None):
        self.template_source = source or FALLBACK_CHAT_TEMPLATE

    def apply_chat_template(self, messages, tokenize: bool = False, add_generation_prompt: bool = False) -> str:
        return _compile(self.template_source).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                     **{k: v or "" for k, v in self.special.items()})

    def trained_view(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]], int | None, int | None]:
        text, spans = assistant_spans(self, messages)
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
        return self.count([self.apply_chat_template(ex.messages) for ex in examples])

    def trained_view(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]], int, int]:
        """(rendered text, trained character spans, tokens, trained tokens)."""
        text, spans = assistant_spans(self, messages)
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

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, indent=indent, ensure_ascii=False)
    return env.from_string(source)
