"""Preference tuning: DPO and ORPO on preference pairs, KTO on completions labelled desirable or not.

The data is read with the engine's one loader (engine.data.load; Example.kind says pair, unpaired or sft)
and handed to TRL's trainers as conversational rows, rendered by the run's chat template: prompt/chosen/
rejected for DPO and ORPO, prompt/completion/label for KTO (a pair becomes one desirable and one undesirable
row). The held-out split keeps every row of one prompt on one side. The model (LoRA/QLoRA through the one
loader), TrainingArguments, resume, the final save, events, status and control are engine.training.recipes.base
and the plumbing under it, as for SFT; each TRL trainer gets atomic checkpoints from AtomicCheckpoints.

The reference model: with LoRA/QLoRA it is the base with the adapter disabled (no second copy of the weights);
full fine-tuning of DPO and KTO loads a frozen copy in the evaluation precision, which costs the memory of a
second model (engine.plan's estimate counts it). ORPO has no reference model.
Runs in the engine subprocess (engine.training.worker), never in the UI; heavy by design.
"""

from __future__ import annotations

import random
from collections import Counter

import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

from engine.data.load import Example, fingerprint
from engine.data.rows import completion_start
from engine.data.split import split_indices
from engine.models.find import resolve_model
from engine.models.load import load_model
from engine.training.checkpoints import AtomicCheckpoints
from engine.training.distributed import local_device
from engine.training.labels import TokenizeStats
from engine.training.recipes.base import Recipe, examples_for
from engine.training.recipes.sft import read_conversations

class AtomicDPOTrainer(AtomicCheckpoints, DPOTrainer):
    """TRL's DPOTrainer with atomic checkpoints."""


class AtomicKTOTrainer(AtomicCheckpoints, KTOTrainer):
    """TRL's KTOTrainer with atomic checkpoints."""


def _orpo_classes():
    """ORPO lives in trl.experimental (TRL 1.16), which warns on import: imported only for an ORPO run."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    class AtomicORPOTrainer(AtomicCheckpoints, ORPOTrainer):
        """TRL's ORPOTrainer with atomic checkpoints."""

        def _track_num_input_tokens(self, inputs):
            # ORPO's batches have no input_ids (chosen_/rejected_ columns), which the Trainer's count of tokens
            # seen looks for: count both sequences' tokens, as DPO's pairs are counted.
            if self.args.include_num_input_tokens_seen == "no":
                return
            tokens = inputs["chosen_attention_mask"].sum() + inputs["rejected_attention_mask"].sum()
            self.state.num_input_tokens_seen += self.accelerator.gather(tokens.to(self.args.device)).sum().item()

    return ORPOConfig, AtomicORPOTrainer


def preference_examples(examples: list[Example], objective: str, path: str) -> list[Example]:
    """The examples, refused as engine.training.recipes.base.examples_for says, and when they call tools."""
    examples_for(objective, examples, path)
    for ex in examples:
        if ex.tools or any(m["role"] == "tool" or m.get("tool_calls") for m in ex.messages + (ex.rejected or [])):
            raise ValueError(f"{ex.source} line {ex.line}: preference rows with tool calls are not trained yet; "
                             "leave them out")
    return examples


def _prompt(ex: Example) -> list[dict]:
    return ex.messages[:completion_start(ex.messages)]


def _plain(messages: list[dict]) -> list[dict]:
    """Role and text only: TRL's rows become Arrow columns, which want one shape for every message."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def split_by_prompt(examples: list[Example], share: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held out): about `share` of the rows held out by the data tools' split (engine.data.split), which
    keeps every row of one prompt, and exact copies, on one side: no prompt is both trained on (with one pair)
    and evaluated on (with another). Prompts are matched exactly (near copies would cost seconds at start)."""
    parts = split_indices(examples, seed, (1 - share, share, 0.0), similarity=None)
    train = sorted(parts["train"] + parts["test"])  # "test" gets only what rounding leaves over
    return [examples[i] for i in train], [examples[i] for i in parts["validation"]]


class PreferenceRecipe(Recipe):
    # TRL's metrics that reach the log events beside loss, lr and grad norm (eval events carry all eval_ keys)
    LOGGED_METRICS = ("rewards/", "logps/", "logits/", "nll_loss", "log_odds_ratio", "log_odds_chosen", "kl")

    def load_data(self) -> tuple[Dataset, Dataset | list]:
        cfg, plumbing = self.cfg, self.plumbing
        read = lambda path: preference_examples(read_conversations(path, cfg.system_prompt, plumbing),
                                                cfg.objective, path)
        train = read(cfg.data)
        if cfg.eval_data:
            held_out = read(cfg.eval_data)
        elif cfg.validation_split > 0 and len(train) >= 10:
            train, held_out = split_by_prompt(train, cfg.validation_split, cfg.seed)
        else:
            held_out = []
        # Answers sampled at each evaluation are compared with a good answer: a pair's chosen one, never an
        # undesirable KTO completion.
        self.held_out = [ex for ex in held_out if ex.desirable is not False]
        train_rows, train_stats = self._rows(train)
        eval_rows, eval_stats = self._rows(held_out) if held_out else ([], None)
        if not train_rows:
            raise ValueError(f"no training example fits: {train_stats.summary()}; raise max_seq_length "
                             "or use overlong: truncate")
        if train_stats.truncated or train_stats.dropped_too_long or train_stats.dropped_no_target:
            plumbing.event("warning", code="overlong",
                           message=f"{train_stats.truncated} examples truncated, {train_stats.dropped_too_long} "
                                   f"dropped as too long and {train_stats.dropped_no_target} dropped whose prompt "
                                   f"alone fills max_seq_length {cfg.max_seq_length} (longest {train_stats.longest})")
        if cfg.objective == "kto":
            # KTOTrainer reads its rows in order (sequential sampling: each row's KL completion is its batch
            # neighbour's), so the order is shuffled here, once, or a pair's two rows would always meet.
            random.Random(cfg.seed).shuffle(train_rows)
        plumbing.event("state", state="data_ready", objective=cfg.objective, train=train_stats.summary(),
                       eval=eval_stats.summary() if eval_stats else None, fingerprint=fingerprint(cfg.data),
                       kinds=dict(Counter(ex.kind for ex in train)))
        return Dataset.from_list(train_rows), Dataset.from_list(eval_rows) if eval_rows else []

    def _rows(self, examples: list[Example]) -> tuple[list[dict], TokenizeStats]:
        """TRL's conversational rows, and counts of what max_seq_length cuts (TRL truncates the completion's
        end) or drops (overlong: drop; and always a row whose prompt alone fills the length: nothing to learn)."""
        cfg = self.cfg
        rows, sequences = [], []
        for ex in examples:
            prompt = _plain(_prompt(ex))
            completion = _plain(ex.messages[len(prompt):])
            if ex.kind == "pair" and cfg.objective != "kto":
                rows.append({"prompt": prompt, "chosen": completion, "rejected": _plain(ex.rejected)})
                sequences.append((prompt, [completion, _plain(ex.rejected)]))
            elif ex.kind == "pair":  # KTO: a pair is a desirable and an undesirable completion of one prompt
                rows += [{"prompt": prompt, "completion": completion, "label": True},
                         {"prompt": prompt, "completion": _plain(ex.rejected), "label": False}]
                sequences += [(prompt, [completion]), (prompt, [_plain(ex.rejected)])]
            else:
                rows.append({"prompt": prompt, "completion": completion, "label": bool(ex.desirable)})
                sequences.append((prompt, [completion]))
        stats = TokenizeStats(examples=len(rows))
        kept = []
        for row, lengths, prompt_length in zip(rows, *self._lengths(sequences)):
            stats.longest = max(stats.longest, *lengths)
            if prompt_length >= cfg.max_seq_length:
                stats.dropped_no_target += 1
                continue
            if max(lengths) > cfg.max_seq_length:
                if cfg.overlong == "drop":
                    stats.dropped_too_long += 1
                    continue
                stats.truncated += 1
            cut = [min(n, cfg.max_seq_length) for n in lengths]  # each completion is its own sequence
            stats.tokens += sum(cut)
            stats.trained_tokens += sum(cut) - prompt_length * len(cut)
            kept.append(row)
        stats.kept = len(kept)
        return kept, stats

    def _lengths(self, sequences: list[tuple[list[dict], list[list[dict]]]]) -> tuple[list[list[int]], list[int]]:
        """Per row, in tokens: each rendered prompt + completion, and the rendered prompt."""
        tokenizer = self.tokenizer
        render = lambda messages, prompt: tokenizer.apply_chat_template(messages, tokenize=False,
                                                                        add_generation_prompt=prompt)
        count = lambda texts: [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] \
            if texts else []
        prompts = count([render(prompt, True) for prompt, _ in sequences])
        wholes = count([render(prompt + completion, False) for prompt, completions in sequences
                        for completion in completions])
        per_row, i = [], 0
        for _, completions in sequences:
            per_row.append(wholes[i:i + len(completions)])
            i += len(completions)
        return per_row, prompts

    def build_trainer(self, args: dict, callbacks: list):
        # `args` sets what TRL's configs default differently from TrainingArguments (bf16 on, gradient
        # checkpointing on, logging every 10 steps, lr 1e-6): the run's values apply, as for SFT. TRL's
        # disable_dropout (on) stays: dropout would make the policy's and the reference's log-probabilities of
        # the same answer differ by noise, and LoRA's dropout with it.
        cfg = self.cfg
        common = dict(beta=cfg.beta, max_length=cfg.max_seq_length)
        if cfg.objective == "orpo":
            config_class, trainer_class = _orpo_classes()
            # ORPOTrainer pads with its own collator, which needs the raw columns kept (it says so, then sets it).
            config = config_class(**args, **common, remove_unused_columns=False)
            ref = {}
        else:
            config_class, trainer_class = (DPOConfig, AtomicDPOTrainer) if cfg.objective == "dpo" \
                else (KTOConfig, AtomicKTOTrainer)
            own = ({} if cfg.objective == "dpo" else
                   dict(desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight))
            if cfg.loss_type is not None:
                own["loss_type"] = cfg.loss_type
            config = config_class(**args, **common, **own)
            ref = {"ref_model": self._reference_copy()}
        trainer = trainer_class(model=self.model, args=config, train_dataset=self.train_dataset,
                                eval_dataset=self.eval_dataset or None, processing_class=self.tokenizer,
                                callbacks=callbacks, checkpoints=self.checkpoints, **ref)
        self._undo_trl_adapter_changes(trainer.model)
        return trainer

    def _reference_copy(self):
        """Full fine-tuning: a frozen copy of the base through the one loader, in the evaluation precision (16
        bit on a GPU). Memory-heavy: a second model beside the trained one. With an adapter: None, and TRL
        computes the reference with the adapter disabled."""
        if self.cfg.method != "full":
            return None
        reference = load_model(resolve_model(self.cfg.model), "evaluate", self.cfg, local_device())
        reference.requires_grad_(False)
        self.plumbing.event("state", state="reference_loaded",
                            weight_bytes=sum(p.numel() * p.element_size() for p in reference.parameters()))
        return reference

    def _undo_trl_adapter_changes(self, model) -> None:
        """Two things TRL 1.16 does to a PeftModel it is given, undone:
        - it adds a "ref" adapter, a copy of ours, to be the reference (meant for a pretrained adapter). Ours is
          fresh (LoRA's B is zero), so the base with the adapter disabled is the same reference without the copy,
          and the saved adapter stays one adapter (a "ref" one would be saved beside it, in adapter/ref/).
        - on a 4-bit base it casts the trainable weights to bf16 (the QLoRA paper's advice): at preference learning
          rates (5e-6) bf16 rounds most of Adam's updates of lora_A away, so they go back to fp32, as for SFT.
          The optimizer is built when training starts, after this."""
        if not hasattr(model, "peft_config"):
            return
        if "ref" in model.peft_config:
            model.delete_adapter("ref")
        if getattr(model, "is_loaded_in_4bit", False):
            for p in model.parameters():
                if p.requires_grad and p.dtype == torch.bfloat16:
                    p.data = p.data.float()
