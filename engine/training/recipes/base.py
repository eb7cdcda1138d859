"""What every recipe shares: a recipe is a subclass that supplies its data and its Trainer.

    class MyRecipe(Recipe):
        def load_data(self):                    -> (train dataset, eval dataset or []), self.held_out set
        def build_trainer(self, args, callbacks) -> a Trainer with AtomicCheckpoints (checkpoints=self.checkpoints)

The worker drives it: `recipe = MyRecipe(cfg, plumbing); recipe.setup(); recipe.train(); recipe.cleanup()`.
Here, once: the base model through the one loader with LoRA/QLoRA on it, the TrainingArguments the run
config decides, resume from the newest complete checkpoint, the final save of the best model, and the
distributed exit. Events, status and control go through the RunPlumbing the worker gives.
"""

from __future__ import annotations

import os
import random
import shutil
from collections import Counter
from collections.abc import Sequence

import torch

from engine.data.load import Example
from engine.models.anatomy import lora_targets_error
from engine.models.find import resolve_model
from engine.models.load import load_model, load_tokenizer, resolve_precision
from engine.training.callback import RunCallback
from engine.training.checkpoints import CheckpointBook, checkpoint_step
from engine.training.config import ConfigError, RunConfig, resolve_lora_dropout
from engine.training.distributed import barrier, init_distributed, local_device, shut_down, world_size
from engine.training.health import EarlyStopping, HealthMonitor
from engine.training.plumbing import RunPlumbing
from engine.training.samples import AnswerSampler, sample_conversations


# What each objective learns from, as Example.kind: KTO takes pairs too (each side one labelled row).
DATA_KINDS = {"sft": ("sft",), "dpo": ("pair",), "orpo": ("pair",), "kto": ("unpaired", "pair")}
KIND_WORDS = {"pair": "preference pairs", "unpaired": "unpaired (KTO) rows", "sft": "demonstrations"}


def examples_for(objective: str, examples: list[Example], path: str) -> list[Example]:
    """The examples, refused whole, by count, when some are of a kind the objective cannot learn from: SFT
    would learn a pair's chosen side without its rejected one, or an undesirable KTO completion as an answer."""
    kinds = Counter(ex.kind for ex in examples)
    wrong = {kind for kind in kinds if kind not in DATA_KINDS[objective]}
    if wrong:
        found = " and ".join(f"{n} {KIND_WORDS[kind]}" for kind, n in sorted(kinds.items()))
        needs = " or ".join(KIND_WORDS[kind] for kind in DATA_KINDS[objective])
        hint = ("train demonstrations with objective: sft" if "sft" in wrong
                else "train preference rows with objective: dpo, orpo or kto" if objective == "sft"
                else "train unpaired rows with objective: kto")
        raise ValueError(f"{path} holds {found}: {objective} learns from {needs} only; {hint}")
    return examples


class Recipe:
    # Metrics of the recipe's Trainer that the log events carry beside loss, lr and grad norm: names, or prefixes
    # ending in "/" (TRL's rewards/...). Evaluation events carry every eval_ metric anyway.
    LOGGED_METRICS: tuple[str, ...] = ()

    def __init__(self, cfg: RunConfig, plumbing: RunPlumbing):
        self.cfg, self.plumbing = cfg, plumbing
        self.early = EarlyStopping(cfg.early_stopping_patience, cfg.early_stopping_threshold)
        self.checkpoints = CheckpointBook(plumbing, cfg.save_total_limit, self.early)
        self.trainer = None
        self.held_out: list[Example] = []  # the held-out examples as read; load_data sets them

    # ---- what a recipe supplies ----------------------------------------------
    def load_data(self) -> tuple[Sequence, Sequence]:
        """The training and evaluation datasets, encoded for this recipe's Trainer (self.tokenizer is loaded);
        what was dropped or cut is reported as events. Sets self.held_out to the evaluation examples as read
        (the system prompt in place), for the answers sampled at each evaluation."""
        raise NotImplementedError

    def build_trainer(self, args: dict, callbacks: list):
        """The Trainer over self.model, self.train_dataset and self.eval_dataset, with TrainingArguments (or a
        subclass such as a TRL config) made from `args` plus the recipe's own, the callbacks, and
        `checkpoints=self.checkpoints` for its AtomicCheckpoints mixin."""
        raise NotImplementedError

    # ---- setup ------------------------------------------------------------------
    def setup(self) -> None:
        cfg, plumbing = self.cfg, self.plumbing
        init_distributed()
        plumbing.start()
        plumbing.set_state("starting", resume=plumbing.resume, world_size=world_size())
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.precision = resolve_precision(cfg.precision)
        if cfg.fsdp and not torch.cuda.is_available():
            # accelerate enables its FSDP plugin for GPU ranks only: on CPUs the Trainer would train plain DDP
            raise ConfigError(f"fsdp: {cfg.fsdp} needs GPUs (accelerate runs FSDP on GPUs only, and this machine has "
                              "none); leave fsdp out to train with DDP, every rank holding the whole model")
        self.tokenizer, self.model = self._load_model()
        self.train_dataset, self.eval_dataset = self.load_data()
        per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world_size()
        steps_per_epoch = max(1, -(-len(self.train_dataset) // per_step))
        total = cfg.max_steps if cfg.max_steps > 0 else int(steps_per_epoch * cfg.num_train_epochs)
        self._trackers_into_the_run()
        self.callback = RunCallback(plumbing, HealthMonitor(cfg.divergence_factor, cfg.grad_spike_factor),
                                    self.early, can_evaluate=bool(self.eval_dataset), samples=self._sampler(),
                                    metrics=self.LOGGED_METRICS)
        self.trainer = self.build_trainer(self._training_arguments(total), [self.callback])
        plumbing.update(max_steps=total)

    def _trackers_into_the_run(self) -> None:
        """report_to backends write inside the run directory. wandb runs offline, always: tunedeck opens no
        network connection (`wandb sync <run>/wandb/offline-run-*` uploads later, if you want), and its
        settings, cache and data directories are the run's too, so nothing lands in the home directory."""
        run_dir = self.plumbing.run.path
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
        if "wandb" in self.cfg.report_to:
            wandb_dir = run_dir / "wandb"
            os.environ.update(WANDB_MODE="offline", WANDB_ERROR_REPORTING="false", WANDB_DIR=str(run_dir),
                              WANDB_CONFIG_DIR=str(wandb_dir / "config"), WANDB_CACHE_DIR=str(wandb_dir / "cache"),
                              WANDB_DATA_DIR=str(wandb_dir / "data"), WANDB_ARTIFACT_DIR=str(wandb_dir / "artifacts"))
            os.environ.setdefault("WANDB_PROJECT", "tunedeck")

    def _sampler(self) -> AnswerSampler | None:
        """Rank 0 answers the sample prompts; none without held-out data or with sample_prompts: 0."""
        cfg = self.cfg
        conversations = sample_conversations(self.held_out, cfg.sample_prompts) if self.eval_dataset else []
        if not conversations or not self.plumbing.writes:
            return None
        return AnswerSampler(conversations, self.tokenizer, cfg.max_seq_length, cfg.per_device_eval_batch_size,
                             self.precision)

    def _load_model(self):
        cfg = self.cfg
        ref = resolve_model(cfg.model)
        tokenizer = load_tokenizer(ref, cfg.trust_remote_code)
        model = load_model(ref, "train", cfg, local_device())
        load_in_4bit = bool(getattr(model, "is_loaded_in_4bit", False))
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        checkpointing = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else cfg.method == "qlora"
        checkpointing = checkpointing and not cfg.fsdp_activation_checkpointing  # FSDP's own replaces it
        self.gradient_checkpointing = checkpointing
        if cfg.method in ("lora", "qlora"):
            from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

            if cfg.method == "qlora":
                model = prepare_model_for_kbit_training(
                    model, use_gradient_checkpointing=checkpointing,
                    gradient_checkpointing_kwargs={"use_reentrant": False})
                self._keep_unquantized_weights_16bit(model)
            lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=self._lora_dropout(model),
                              target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM")
            try:
                model = get_peft_model(model, lora)
            except ValueError as exc:  # peft's NoMatchingPeftModuleError: targets this model does not have
                raise lora_targets_error(model, exc) from None
            if checkpointing:
                model.enable_input_require_grads()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # NF4: packed bytes
        self.plumbing.event("state", state="model_loaded", model=ref.label, trainable_parameters=trainable,
                            total_parameters=total, weight_bytes=weight_bytes, precision=self.precision,
                            gradient_checkpointing=checkpointing, load_in_4bit=load_in_4bit)
        return tokenizer, model

    def _keep_unquantized_weights_16bit(self, model) -> None:
        """peft's kbit preparation casts every weight bitsandbytes left unquantized to fp32: embeddings, head
        and, on a MoE, the 3-D experts (bitsandbytes#1849), four bytes a parameter. As the QLoRA reference
        code does, only norms and biases (1-D) stay in fp32; the rest goes back to the compute dtype."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        if dtype is None:
            return
        for p in model.parameters():
            if p.dtype == torch.float32 and p.dim() >= 2:
                p.data = p.data.to(dtype)

    def _lora_dropout(self, model) -> float:
        """all-linear on a MoE model makes peft wrap the 3-D expert tensors, which take no dropout."""
        wraps_experts = self.cfg.lora_target_modules == "all-linear" and any(p.dim() == 3 for p in model.parameters())
        dropout = resolve_lora_dropout(self.cfg.lora_dropout, wraps_experts)
        if wraps_experts and dropout:
            raise ConfigError(f"lora_dropout {dropout:g} cannot apply to this model's expert weights (peft wraps "
                              "them without dropout): set lora_dropout: auto or 0, or name lora_target_modules")
        return dropout

    def _training_arguments(self, total_steps: int) -> dict:
        """TrainingArguments keywords every recipe shares: schedule, batches, precision, logging (NaN kept),
        evaluation and saving into the staging area, distributed settings."""
        cfg = self.cfg
        eval_steps = cfg.eval_steps or max(1, total_steps // 10)
        return dict(
            output_dir=str(self.plumbing.run.path / ".staging"),
            max_steps=cfg.max_steps, num_train_epochs=cfg.num_train_epochs,
            learning_rate=cfg.resolved_learning_rate(), lr_scheduler_type=cfg.lr_scheduler_type,
            warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
            optim=cfg.optim, seed=cfg.seed,
            per_device_train_batch_size=cfg.per_device_train_batch_size,
            per_device_eval_batch_size=cfg.per_device_eval_batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            logging_steps=cfg.logging_steps, logging_nan_inf_filter=False,  # NaN must reach the log
            include_num_input_tokens_seen="non_padding",
            eval_strategy="steps" if self.eval_dataset else "no", eval_steps=eval_steps,
            save_strategy="steps", save_steps=cfg.save_steps or eval_steps, save_total_limit=None,
            bf16=self.precision == "bf16", fp16=self.precision == "fp16", use_cpu=not torch.cuda.is_available(),
            gradient_checkpointing=self.gradient_checkpointing and cfg.method != "qlora",
            gradient_checkpointing_kwargs={"use_reentrant": False},
            report_to=cfg.report_to or "none", run_name=self.plumbing.run.id, disable_tqdm=True,
            dataloader_num_workers=0, ddp_find_unused_parameters=False,
            **self._fsdp_arguments(),
        )

    def _fsdp_arguments(self) -> dict:
        """The Trainer's FSDP settings for the config's fsdp keys, by fsdp_config's own names: layers wrapped by
        the model's own no-split class (its decoder layer), checkpoints written as shards by every rank (resume
        loads each rank's shard of weights and optimizer state); the final save gathers them (_save_final)."""
        cfg = self.cfg
        if not cfg.fsdp:
            return {}
        # FSDP2 takes the strategy as reshard_after_forward: full_shard frees gathered weights after the forward,
        # shard_grad_op keeps them for the backward; FSDP1 takes the strategy's own name.
        reshard = cfg.fsdp == "full_shard" if cfg.fsdp_version == 2 else cfg.fsdp
        config = {"version": cfg.fsdp_version, "reshard_after_forward": reshard,
                  "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "state_dict_type": "SHARDED_STATE_DICT",
                  "cpu_offload": cfg.fsdp_offload, "activation_checkpointing": cfg.fsdp_activation_checkpointing}
        layers = getattr(self.model, "_no_split_modules", None)  # a peft model passes it on from its base
        if layers:
            config["transformer_layer_cls_to_wrap"] = sorted(layers)
        return {"fsdp": True, "fsdp_config": config}

    # ---- train -------------------------------------------------------------------
    def train(self) -> str:
        plumbing, trainer = self.plumbing, self.trainer
        resume_from = self.checkpoints.resume_point() if plumbing.resume else None
        plumbing.set_state("running", step=checkpoint_step(resume_from) if resume_from else 0,
                           resumed_from=str(resume_from) if resume_from else None)
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        step = trainer.state.global_step
        runtime = output.metrics.get("train_runtime") or 0
        tokens = int(trainer.state.num_input_tokens_seen or 0) - self.callback.tokens_at_start
        self._save_final()
        final = "stopped" if plumbing.stop_requested else "completed"
        plumbing.set_state(final, step=step, early_stopped=self.callback.early_stopped, train_runtime=runtime,
                           train_tokens_per_second=round(tokens / runtime, 1) if runtime else None)
        barrier()  # ranks leave together
        return final

    def _save_final(self) -> None:
        """The best evaluated model (or the last one) to adapter/ or model/, whole or not at all."""
        best = self.checkpoints.best_to_load(self.trainer.state.global_step)
        if best:
            self.trainer._load_from_checkpoint(best)
            self.plumbing.event("state", state="best_loaded", checkpoint=best, eval_loss=self.early.best)
        out = self.plumbing.run.path / ("model" if self.cfg.method == "full" else "adapter")
        tmp = out.with_name(out.name + ".partial")
        if self.plumbing.writes:
            shutil.rmtree(tmp, ignore_errors=True)
        if self.trainer.is_fsdp_enabled:
            # Whole, as eval, export and chat load it: every rank gives its shards, rank 0 writes
            self.trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        self.trainer.save_model(str(tmp))  # writes on rank 0 only (the other ranks join an FSDP gather)
        if self.plumbing.writes:
            self.tokenizer.save_pretrained(str(tmp))
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
            self.plumbing.event("state", state="saved", path=str(out))
            self.plumbing.update(output=str(out))

    def cleanup(self) -> None:
        """Partial saves removed, the process group left; the worker closes the plumbing after this."""
        if self.plumbing.writes:
            shutil.rmtree(self.plumbing.run.path / ".staging", ignore_errors=True)
        shut_down()
