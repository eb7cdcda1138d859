"""Assistant-only labels, truncation counts, and packing that keeps examples apart."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorWithFlattening

from engine.data.template import FALLBACK_CHAT_TEMPLATE
from engine.training.labels import IGNORE_INDEX, encode_examples


@pytest.fixture(scope="module")
def tokenizer(tiny_project):
    return AutoTokenizer.from_pretrained(tiny_project / "tiny-model")


def trained_text(tokenizer, feature) -> str:
    return tokenizer.decode([t for t in feature["labels"] if t != IGNORE_INDEX])


CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "join red and cat"},
    {"role": "assistant", "content": "red-cat"},
    {"role": "user", "content": "join sun and dog"},
    {"role": "assistant", "content": "sun-dog"},
]


def test_only_assistant_turns_are_trained(tokenizer):
    features, stats = encode_examples(tokenizer, [CONVERSATION], max_length=512)
    text = trained_text(tokenizer, features[0])
    # Both answers and their end-of-turn markers, nothing the user or system said.
    assert text == "red-cat<|im_end|>\nsun-dog<|im_end|>\n"
    assert stats.trained_tokens < stats.tokens


def test_train_on_all_trains_everything(tokenizer):
    features, _ = encode_examples(tokenizer, [CONVERSATION], max_length=512, train_on="all")
    assert features[0]["labels"] == features[0]["input_ids"]


def test_overlong_truncated_or_dropped_and_counted(tokenizer):
    long = [{"role": "user", "content": "join " * 60}, {"role": "assistant", "content": "red-cat"}]
    short = CONVERSATION[1:3]
    features, stats = encode_examples(tokenizer, [long, short], max_length=40, overlong="truncate")
    # Truncation cuts the answer off entirely here: nothing left to learn, so it is dropped and counted.
    assert stats.truncated == 1 and stats.dropped_no_target == 1 and stats.kept == 1
    features, stats = encode_examples(tokenizer, [long, short], max_length=40, overlong="drop")
    assert stats.dropped_too_long == 1 and stats.kept == 1 and len(features) == 1
    assert all(len(f["input_ids"]) <= 40 for f in features)


def test_fallback_template_for_base_models(tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    features, _ = encode_examples(tokenizer, [CONVERSATION[1:3]], max_length=512)
    assert trained_text(tokenizer, features[0]) == "red-cat<|im_end|>\n\n"


def test_packed_batch_loss_equals_separate_losses(tiny_project, tokenizer):
    """Packing must not let examples attend to each other: the summed token loss of a packed
    batch equals the sum over the examples run one by one."""
    model = AutoModelForCausalLM.from_pretrained(tiny_project / "tiny-model")
    model.config.use_cache = False  # as the Trainer sets it; with a cache, packed masks are not built
    convs = [CONVERSATION[1:3], CONVERSATION, [{"role": "user", "content": "join fish and star"},
                                               {"role": "assistant", "content": "fish-star"}]]
    features, stats = encode_examples(tokenizer, convs, max_length=512)
    with torch.no_grad():
        separate = sum(
            model(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]])).loss
            * (sum(1 for t in f["labels"][1:] if t != IGNORE_INDEX)) for f in features)
        batch = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)(features)
        packed = model(**batch).loss * (batch["labels"][0, 1:] != IGNORE_INDEX).sum()
    assert batch["input_ids"].shape == (1, stats.tokens)  # no padding at all
    assert torch.allclose(packed, separate, rtol=1e-4), (packed, separate)
    # And the same batch without position ids (plain concatenation) would leak across examples.
    leaky = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss * (batch["labels"][0, 1:] != IGNORE_INDEX).sum()
    assert not torch.allclose(leaky, separate, rtol=1e-4)
