"""Supervised fine-tuning: chat examples, trained on what the assistant says (or on every token).

The data is read with the engine's one loader and encoded with engine.training.labels; batches are
padded by length or packed; the Trainer is transformers' own with atomic checkpoints. Everything else
(model, resume, events, status, control) is engine.training.recipes.base and the plumbing under it.
Runs in the engine subprocess (engine.training.worker), never in the UI; heavy by design.
"""

from __future__ import annotations

import random

from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, TrainingArguments

from engine.data.load import Example, fingerprint, load_examples
from engine.data.mix import mix_general
from engine.training.checkpoints import AtomicCheckpointTrainer
from engine.training.labels import IGNORE_INDEX, encode_examples
from engine.training.recipes.base import Recipe, examples_for

MAX_BAD_ROW_WARNINGS = 20


def read_conversations(path: str, system_prompt: str | None, plumbing) -> list[Example]:
    """The examples in a data file, the run's system prompt first where one has none; bad rows are
    warning events (the first 20, then a count). `plumbing` needs only `event`."""
    result = load_examples(path)
    for problem in result.problems[:MAX_BAD_ROW_WARNINGS]:
        plumbing.event("warning", code="bad_row", message=str(problem))
    if len(result.problems) > MAX_BAD_ROW_WARNINGS:
        plumbing.event("warning", code="bad_row",
                       message=f"{len(result.problems) - MAX_BAD_ROW_WARNINGS} more bad rows in {path}")
    if not result.examples:
        raise ValueError(f"no usable examples in {path}; see the bad_row warnings in events.jsonl")
    if system_prompt:
        for ex in result.examples:
            if ex.messages[0]["role"] != "system":
                ex.messages = [{"role": "system", "content": system_prompt}] + ex.messages
    return result.examples


class SFTRecipe(Recipe):
    def load_data(self) -> tuple[list[dict], list[dict]]:
        cfg, plumbing = self.cfg, self.plumbing
        train = examples_for("sft", read_conversations(cfg.data, cfg.system_prompt, plumbing), cfg.data)
        if cfg.eval_data:
            held_out = examples_for("sft", read_conversations(cfg.eval_data, cfg.system_prompt, plumbing),
                                    cfg.eval_data)
        elif cfg.validation_split > 0 and len(train) >= 10:
            order = list(range(len(train)))
            random.Random(cfg.seed).shuffle(order)
            n_eval = max(1, int(len(train) * cfg.validation_split))
            held_out = [train[i] for i in order[:n_eval]]
            train = [train[i] for i in order[n_eval:]]
        else:
            held_out = []
        mixed = self._mix_general(train) if cfg.general_data else None
        if mixed is not None:
            train = mixed.examples
        self.held_out = held_out
        encode = lambda examples: encode_examples(self.tokenizer, [ex.messages for ex in examples], cfg.max_seq_length,
                                                  cfg.train_on, cfg.overlong, tools=[ex.tools for ex in examples])
        train_features, train_stats = encode(train)
        eval_features, eval_stats = encode(held_out) if held_out else ([], None)
        if not train_features:
            raise ValueError(f"no training example fits: {train_stats.summary()}; raise max_seq_length "
                             "or use overlong: truncate")
        if train_stats.truncated or train_stats.dropped_too_long:
            plumbing.event("warning", code="overlong",
                           message=f"{train_stats.truncated} examples truncated and {train_stats.dropped_too_long} "
                                   f"dropped at max_seq_length {cfg.max_seq_length} (longest {train_stats.longest})")
        plumbing.event("state", state="data_ready", train=train_stats.summary(),
                       eval=eval_stats.summary() if eval_stats else None, fingerprint=fingerprint(cfg.data),
                       general=None if mixed is None else {
                           "path": cfg.general_data, "fingerprint": fingerprint(cfg.general_data),
                           "ratio": cfg.general_ratio, "task": mixed.task, "general": mixed.general})
        return train_features, eval_features

    def _mix_general(self, train: list[Example]):
        """General examples sampled into the training split (after the held-out split: eval stays task-only)."""
        cfg = self.cfg
        general = examples_for("sft", read_conversations(cfg.general_data, cfg.system_prompt, self.plumbing),
                               cfg.general_data)
        mixed = mix_general(train, general, cfg.general_ratio, cfg.seed)
        if mixed.capped:
            self.plumbing.event("warning", code="general_capped", message=f"general_data: {mixed.summary()}")
        return mixed

    def build_trainer(self, args: dict, callbacks: list) -> AtomicCheckpointTrainer:
        cfg = self.cfg
        attention = self.model.config._attn_implementation
        packing = cfg.packing if cfg.packing != "auto" else attention in ("flash_attention_2", "flash_attention_3")
        group_by_length = cfg.group_by_length if cfg.group_by_length is not None else not packing
        self.plumbing.event("state", state="batching", packing=packing, group_by_length=group_by_length,
                            attention=attention)
        if packing:
            collator = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
        else:
            collator = DataCollatorForSeq2Seq(self.tokenizer, padding=True, pad_to_multiple_of=8,
                                              label_pad_token_id=IGNORE_INDEX)
        training_args = TrainingArguments(
            **args, train_sampling_strategy="group_by_length" if group_by_length else "random",
            remove_unused_columns=False, label_names=["labels"])
        return AtomicCheckpointTrainer(
            model=self.model, args=training_args, train_dataset=self.train_dataset,
            eval_dataset=self.eval_dataset or None, data_collator=collator, processing_class=self.tokenizer,
            callbacks=callbacks, checkpoints=self.checkpoints)
