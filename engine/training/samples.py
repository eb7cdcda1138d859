"""What the model says while it trains: greedy answers to a few held-out prompts at each evaluation, written
as one `sample` event, so that the monitor shows the answers change from one evaluation to the next.

The prompts are the first `sample_prompts` held-out conversations that end in a text answer, with the run's
system prompt as training saw it; they stay the same for the whole run (and across a resume: the split is
seeded), so answers compare. Generation is engine.evaluation.run's `generate`. Around it the model is in eval
mode (no dropout) without gradients, under the autocast training uses, and the tokenizer pads on the left;
model mode and padding side are then put back as training left them. Greedy decoding draws no random numbers,
so training goes on exactly as it would have without samples. Heavy: in the engine subprocess only.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from engine.data.load import Example
from engine.evaluation.run import generate
from engine.models.load import HALF_DTYPES

MAX_NEW_TOKENS = 64  # short answers: this runs at every evaluation
MAX_TEXT = 1000  # characters of a prompt or reference kept in the event, so events.jsonl stays small


def sample_conversations(examples: list[Example], n: int) -> list[list[dict]]:
    """The first `n` held-out conversations whose last turn is a text answer to a user turn. Rows with tools
    are left out: `generate` renders the prompt without tool schemas, as evaluation does."""
    chosen = []
    for ex in examples:
        if len(chosen) == n:
            break
        *prompt, last = ex.messages
        if (ex.tools or last["role"] != "assistant" or not last["content"] or last.get("tool_calls")
                or not any(m["role"] == "user" for m in prompt)
                or any(m["role"] == "tool" or m.get("tool_calls") for m in prompt)):
            continue
        chosen.append(ex.messages)
    return chosen


class AnswerSampler:
    """Answers the fixed prompts with the model as it is now. `precision`: the run's resolved precision."""

    def __init__(self, conversations: list[list[dict]], tokenizer, max_seq_length: int, batch_size: int,
                 precision: str):
        self.conversations, self.tokenizer, self.batch_size = conversations, tokenizer, batch_size
        self.max_new_tokens = min(MAX_NEW_TOKENS, max_seq_length)
        self.half = HALF_DTYPES.get(precision)

    def answers(self, model) -> list[dict]:
        tokenizer = self.tokenizer
        was_training, padding_side = model.training, tokenizer.padding_side
        # The Trainer autocasts its forward passes; generation goes around that wrapper, so autocast here
        # too: a 16-bit or 4-bit base with fp32 norms or adapters then computes as in training.
        autocast = torch.autocast(model.device.type, dtype=self.half) if self.half is not None else nullcontext()
        model.eval()
        try:
            with autocast:
                answers, _costs = generate(model, tokenizer, [c[:-1] for c in self.conversations], self.max_new_tokens,
                                          self.batch_size)
        finally:
            tokenizer.padding_side = padding_side  # the training collator pads on this side
            model.train(was_training)
        return [{"index": i, "prompt": _last_user_text(c)[:MAX_TEXT], "reference": c[-1]["content"][:MAX_TEXT],
                 "answer": answer} for i, (c, answer) in enumerate(zip(self.conversations, answers))]


def _last_user_text(conversation: list[dict]) -> str:
    return next(m["content"] for m in reversed(conversation[:-1]) if m["role"] == "user")
