"""Chat examples to token ids and labels, training only on what the assistant says (its tool calls
included, its turns of weight 0 and tool results not: engine.data.template).

The chat template is rendered to text; the character spans of assistant turns are
found by rendering each prefix; a fast tokenizer's offsets then mark which tokens
fall inside those spans. This works for any template, including the many that
have no `{% generation %}` markers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.data.template import assistant_spans

IGNORE_INDEX = -100


@dataclass
class TokenizeStats:
    examples: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_target: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    longest: int = 0
    lengths: list[int] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "lengths"}


def encode_examples(tokenizer, conversations: list[list[dict]], max_length: int, train_on: str = "assistant",
                    overlong: str = "truncate", tools: list[list | None] | None = None
                    ) -> tuple[list[dict], TokenizeStats]:
    """Features {input_ids, labels} for the Trainer, and counts of what was cut or dropped. `tools`: each
    conversation's tool schemas (Example.tools), or None."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("tunedeck needs a fast (Rust) tokenizer to find assistant tokens; "
                         "this model only has a slow one")
    rendered = [assistant_spans(tokenizer, messages, schemas)
                for messages, schemas in zip(conversations, tools or [None] * len(conversations))]
    encoded = tokenizer([text for text, _ in rendered], add_special_tokens=False,
                        return_offsets_mapping=True)
    stats = TokenizeStats(examples=len(conversations))
    features = []
    for (text, spans), ids, offsets in zip(rendered, encoded["input_ids"], encoded["offset_mapping"]):
        if train_on == "all":
            labels = list(ids)
        else:
            labels = [tok if any(s <= start < e for s, e in spans) else IGNORE_INDEX
                      for tok, (start, _end) in zip(ids, offsets)]
        stats.longest = max(stats.longest, len(ids))
        if len(ids) > max_length:
            if overlong == "drop":
                stats.dropped_too_long += 1
                continue
            stats.truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        trained = sum(1 for label in labels if label != IGNORE_INDEX)
        if trained == 0:
            stats.dropped_no_target += 1  # nothing left to learn from (e.g. answer cut off)
            continue
        features.append({"input_ids": ids, "labels": labels})
        stats.kept += 1
        stats.tokens += len(ids)
        stats.trained_tokens += trained
        stats.lengths.append(len(ids))
    return features, stats
