"""The training recipe: transformers Trainer + PEFT, steered by one callback.

    recipe = Recipe(config, run); recipe.setup(); recipe.train(); recipe.cleanup()

Runs in the engine subprocess (engine.training.worker), never in the UI. torch and
transformers are imported here at module level: this module is heavy by design.
Under torchrun every rank runs it; only rank 0 writes the run directory.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    DataCollatorWithFlattening,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from engine.core.files import ensure_private_dir, write_atomic
from engine.data.load import fingerprint, load_examples
from engine.data.template import FALLBACK_CHAT_TEMPLATE
from engine.models.find import resolve_model
from engine.runs.events import EventWriter
from engine.runs.protocol import COMPLETE_MARKER, HEARTBEAT_SECONDS, Run
from engine.training.config import RunConfig
from engine.training.distributed import init_distributed, rank, world_size
from engine.training.health import EarlyStopping, HealthMonitor
from engine.training.labels import encode_examples
from engine.training.signals import SIGNALS, StopNow

OOM_ADVICE = ("out of memory: try per_device_train_batch_size 1 with gradient_accumulation_steps, "
              "gradient_checkpointing: true, method: qlora, or a shorter max_seq_length")


class StatusBoard:
    """status.json kept fresh by a heartbeat thread, so it stays current while a step,
    an evaluation, a checkpoint or a pause takes long. Only rank 0 writes."""

    def __init__(self, run: Run, writes: bool, **initial):
        self.run, self.writes = run, writes
        self.fields = {"run_id": run.id, "pid": os.getpid(), "host": socket.gethostname(), **initial}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="heartbeat")

    def start(self) -> None:
        self.flush()
        if self.writes:
            self._thread.start()

    def update(self, **fields) -> None:
        with self._lock:
            self.fields.update(fields)

    def flush(self) -> None:
        if not self.writes:
            return
        # One writer at a time, snapshot and write together: the heartbeat thread and the training
        # thread both flush, and an older snapshot must not replace a newer state (the fault suite
        # caught the two renaming one temp file at once).
        with self._write_lock:
            with self._lock:
                self.fields["heartbeat"] = time.time()
                text = json.dumps(self.fields, default=str, allow_nan=True)
            write_atomic(self.run.status_path, text)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.flush()
            except OSError:
                pass  # a full disk must not kill training; the next beat tries again

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.flush()


class AtomicCheckpointTrainer(Trainer):
    """Trainer whose checkpoints appear only when whole: written to a staging directory,
    marked COMPLETE (fsynced), then renamed into checkpoints/. Resume skips anything else."""

    def __init__(self, *args, run: Run, writes: bool, on_checkpoint, **kwargs):
        super().__init__(*args, **kwargs)
        self.run, self.writes, self.on_checkpoint = run, writes, on_checkpoint

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)  # into args.output_dir (the staging area)
        if not self.writes:
            return
        name = f"checkpoint-{self.state.global_step}"
        staged = Path(self.args.output_dir) / name
        marker = staged / COMPLETE_MARKER
        with open(marker, "w") as f:
            f.write(json.dumps({"step": self.state.global_step, "time": time.time()}))
            f.flush()
            os.fsync(f.fileno())
        final = ensure_private_dir(self.run.checkpoints_dir) / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(staged, final)
        self.on_checkpoint(final)


class RunCallback(TrainerCallback):
    """The one seam between the Trainer and the run directory: events, status, control
    commands, health warnings, early stopping, graceful stop."""

    def __init__(self, recipe: "Recipe"):
        self.r = recipe
        self.health = HealthMonitor(recipe.cfg.divergence_factor, recipe.cfg.grad_spike_factor)
        self.early = EarlyStopping(recipe.cfg.early_stopping_patience, recipe.cfg.early_stopping_threshold)
        self.paused = False
        self._last_log = (time.time(), 0)
        self._evaluating = False
        self.tokens_at_start = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.tokens_at_start = int(state.num_input_tokens_seen or 0)  # after a resume restored the state

    # ---- control -------------------------------------------------------
    def _poll(self) -> dict:
        """Requested actions from commands (rank 0) and signals, agreed across ranks."""
        wants = dict.fromkeys(("stop", "stop_now", "pause", "resume", "checkpoint", "eval"), False)
        wants["stop"] = SIGNALS.count >= 1
        wants["stop_now"] = SIGNALS.count >= 2
        if self.r.writes:
            for command in self.r.run.pending_commands():
                wants[command["command"]] = True
                self.r.event("command_ack", command=command["command"], id=command["id"])
                self.r.run.retire_command(command)
        if dist.is_available() and dist.is_initialized():
            flags = torch.tensor([float(v) for v in wants.values()], device=self.r.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            wants = {k: bool(v) for k, v in zip(wants, flags.tolist())}
        return wants

    def _apply(self, wants: dict, control, state) -> None:
        if wants["stop_now"]:
            raise StopNow("stop_now")
        if wants["pause"] and not self.paused:
            self.paused = True
        if wants["resume"]:
            self.paused = False
        if wants["checkpoint"]:
            control.should_save = True
        if wants["eval"] and self.r.eval_features:
            control.should_evaluate = True
        if wants["stop"]:
            self.r.board.update(state="stopping")
            self.r.stop_requested = True
            control.should_save = True
            control.should_training_stop = True

    def on_step_end(self, args, state, control, **kwargs):
        self._apply(self._poll(), control, state)
        if self.paused:
            self.r.set_state("paused", step=state.global_step)
            while self.paused:
                time.sleep(0.5)
                self._apply(self._poll(), control, state)
                if self.r.stop_requested:
                    self.paused = False
            if not self.r.stop_requested:
                self.r.set_state("running", step=state.global_step)
        self.r.board.update(step=state.global_step, epoch=state.epoch,
                            tokens_seen=int(state.num_input_tokens_seen or 0),
                            eta_seconds=self._eta(state))
        if control.should_save:
            self.r.board.update(state="checkpointing" if not self.r.stop_requested else "stopping")
        return control

    def on_prediction_step(self, args, state, control, **kwargs):
        if not self._evaluating:
            self._evaluating = True
            self.r.board.update(state="evaluating")
        self._apply(self._poll(), control, state)
        return control

    def _eta(self, state) -> float | None:
        if not state.max_steps or not state.global_step:
            return None
        elapsed = time.time() - self.r.started_at
        done = state.global_step - self.r.start_step
        return round(elapsed / done * (state.max_steps - state.global_step), 1) if done > 0 else None

    # ---- metrics -------------------------------------------------------
    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        step = state.global_step
        if "loss" in logs:
            now, tokens = time.time(), int(state.num_input_tokens_seen or 0)
            then, tokens_before = self._last_log
            self._last_log = (now, tokens)
            tps = (tokens - tokens_before) / (now - then) if now > then and tokens_before else None
            fields = {
                "loss": logs.get("loss"), "learning_rate": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"), "epoch": logs.get("epoch"),
                "tokens_seen": tokens, "tokens_per_second": round(tps, 1) if tps else None,
            }
            if torch.cuda.is_available():
                fields["cuda_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            self.r.event("log", step=step, **fields)
            self.r.board.update(**{k: v for k, v in fields.items() if v is not None or k == "loss"})
            for code, message in self.health.on_log(fields["loss"], fields["grad_norm"]):
                self.r.event("warning", step=step, code=code, message=message)
            self.r.board.update(warnings=list(self.health.active.values()))
        elif "eval_loss" in logs:
            self._evaluating = False
            eval_loss = logs["eval_loss"]
            self.r.event("eval", step=step, **{k: v for k, v in logs.items() if k.startswith("eval_")})
            for code, message in self.health.on_eval(eval_loss):
                self.r.event("warning", step=step, code=code, message=message)
            stop = self.early.update(eval_loss, step)
            self.r.board.update(eval_loss=eval_loss, best_metric=self.early.best,
                                best_step=self.early.best_step,
                                warnings=list(self.health.active.values()),
                                state="stopping" if self.r.stop_requested else "running")
            if stop and not self.r.stop_requested:
                self.r.event("state", step=step, state="early_stopping",
                             message=f"eval loss has not improved for {self.early.bad_evals} evaluations "
                                     f"(best {self.early.best:.4g} at step {self.early.best_step})")
                self.r.early_stopped = True
                control.should_training_stop = True
        return control


class Recipe:
    def __init__(self, cfg: RunConfig, run: Run, resume: bool = False):
        self.cfg, self.run, self.resume = cfg, run, resume
        self.writes = rank() == 0
        self.events = EventWriter(run.events_path) if self.writes else None
        self.previous_status = run.status() if resume else {}  # read before the heartbeat replaces it
        self.board = StatusBoard(run, self.writes, state="starting", method=cfg.method, model=cfg.model,
                                 max_steps=None, step=0)
        self.stop_requested = False
        self.early_stopped = False
        self.start_step = 0
        self.started_at = time.time()
        self.eval_features: list = []
        self.device = torch.device("cpu")

    # ---- run-directory writes (rank 0) ----------------------------------
    def event(self, type: str, step: int | None = None, **fields) -> None:
        if self.events is not None:
            self.events.write(type, step=step, **fields)

    def set_state(self, state: str, step: int | None = None, **fields) -> None:
        self.board.update(state=state, **fields)
        self.event("state", step=step, state=state, **{k: v for k, v in fields.items() if k != "warnings"})
        self.board.flush()

    # ---- setup ----------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        init_distributed()
        self.board.start()
        self.set_state("starting", resume=self.resume, world_size=world_size())
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        cuda = torch.cuda.is_available()
        if cuda:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        bf16 = cuda and torch.cuda.is_bf16_supported()
        precision = cfg.precision if cfg.precision != "auto" else ("bf16" if bf16 else "fp16" if cuda else "fp32")
        self.precision = precision
        self.tokenizer, self.model = self._load_model(precision, cuda)
        self.train_features, self.eval_features = self._load_data()
        self._make_trainer(precision)

    def _load_model(self, precision: str, cuda: bool):
        cfg = self.cfg
        ref = resolve_model(cfg.model)
        common = {"gguf_file": ref.gguf_file, "trust_remote_code": cfg.trust_remote_code, "local_files_only": True}
        tokenizer = AutoTokenizer.from_pretrained(ref.path, **common)
        if not tokenizer.chat_template:
            tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        kwargs = dict(common)
        if cfg.method == "full":
            kwargs["dtype"] = torch.float32  # fp32 master weights; the Trainer autocasts to bf16/fp16
        elif cfg.method == "lora":
            kwargs["dtype"] = half  # frozen base in 16 bit on GPUs; adapters are kept in fp32 by peft
        else:
            from transformers import BitsAndBytesConfig

            compute = half if cfg.bnb_4bit_compute_dtype == "auto" else getattr(torch, cfg.bnb_4bit_compute_dtype)
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type=cfg.bnb_4bit_quant_type,
                bnb_4bit_use_double_quant=cfg.bnb_4bit_use_double_quant, bnb_4bit_compute_dtype=compute)
            kwargs["dtype"] = compute
            kwargs["device_map"] = {"": self.device.index if cuda else "cpu"}
        model = AutoModelForCausalLM.from_pretrained(ref.path, **kwargs)
        load_in_4bit = bool(getattr(model, "is_loaded_in_4bit", False))
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        checkpointing = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else cfg.method == "qlora"
        self.gradient_checkpointing = checkpointing
        if cfg.method in ("lora", "qlora"):
            from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

            if cfg.method == "qlora":
                model = prepare_model_for_kbit_training(
                    model, use_gradient_checkpointing=checkpointing,
                    gradient_checkpointing_kwargs={"use_reentrant": False})
            lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM")
            model = get_peft_model(model, lora)
            if checkpointing:
                model.enable_input_require_grads()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        self.event("state", state="model_loaded", model=ref.label, trainable_parameters=trainable,
                   total_parameters=total, precision=precision, gradient_checkpointing=checkpointing,
                   load_in_4bit=load_in_4bit)
        return tokenizer, model

    def _conversations(self, path: str) -> list[list[dict]]:
        result = load_examples(path)
        for problem in result.problems[:20]:
            self.event("warning", code="bad_row", message=str(problem))
        if len(result.problems) > 20:
            self.event("warning", code="bad_row", message=f"{len(result.problems) - 20} more bad rows in {path}")
        if not result.examples:
            raise ValueError(f"no usable examples in {path}; see the bad_row warnings in events.jsonl")
        system = self.cfg.system_prompt
        return [([{"role": "system", "content": system}] if system and ex.messages[0]["role"] != "system" else [])
                + ex.messages for ex in result.examples]

    def _load_data(self):
        cfg = self.cfg
        train = self._conversations(cfg.data)
        if cfg.eval_data:
            held_out = self._conversations(cfg.eval_data)
        elif cfg.validation_split > 0 and len(train) >= 10:
            order = list(range(len(train)))
            random.Random(cfg.seed).shuffle(order)
            n_eval = max(1, int(len(train) * cfg.validation_split))
            held_out = [train[i] for i in order[:n_eval]]
            train = [train[i] for i in order[n_eval:]]
        else:
            held_out = []
        encode = lambda convs: encode_examples(self.tokenizer, convs, cfg.max_seq_length, cfg.train_on, cfg.overlong)
        train_features, train_stats = encode(train)
        eval_features, eval_stats = encode(held_out) if held_out else ([], None)
        if not train_features:
            raise ValueError(f"no training example fits: {train_stats.summary()}; raise max_seq_length "
                             "or use overlong: truncate")
        if train_stats.truncated or train_stats.dropped_too_long:
            self.event("warning", code="overlong",
                       message=f"{train_stats.truncated} examples truncated and {train_stats.dropped_too_long} "
                               f"dropped at max_seq_length {cfg.max_seq_length} (longest {train_stats.longest})")
        self.data_summary = {"train": train_stats.summary(), "eval": eval_stats.summary() if eval_stats else None,
                             "fingerprint": fingerprint(cfg.data)}
        self.event("state", state="data_ready", **self.data_summary)
        return train_features, eval_features

    def _make_trainer(self, precision: str) -> None:
        cfg = self.cfg
        per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world_size()
        steps_per_epoch = max(1, -(-len(self.train_features) // per_step))
        total = cfg.max_steps if cfg.max_steps > 0 else int(steps_per_epoch * cfg.num_train_epochs)
        eval_steps = cfg.eval_steps or max(1, total // 10)
        has_eval = bool(self.eval_features)
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(self.run.path / "tensorboard"))
        packing = cfg.packing if cfg.packing != "auto" else \
            self.model.config._attn_implementation in ("flash_attention_2", "flash_attention_3")
        group_by_length = cfg.group_by_length if cfg.group_by_length is not None else not packing
        self.event("state", state="batching", packing=packing, group_by_length=group_by_length,
                   attention=self.model.config._attn_implementation)
        if packing:
            collator = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
        else:
            collator = DataCollatorForSeq2Seq(self.tokenizer, padding=True, pad_to_multiple_of=8,
                                              label_pad_token_id=-100)
        args = TrainingArguments(
            output_dir=str(self.run.path / ".staging"),
            max_steps=cfg.max_steps, num_train_epochs=cfg.num_train_epochs,
            learning_rate=cfg.resolved_learning_rate(), lr_scheduler_type=cfg.lr_scheduler_type,
            warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
            optim=cfg.optim, seed=cfg.seed,
            per_device_train_batch_size=cfg.per_device_train_batch_size,
            per_device_eval_batch_size=cfg.per_device_eval_batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            train_sampling_strategy="group_by_length" if group_by_length else "random",
            logging_steps=cfg.logging_steps, logging_nan_inf_filter=False,  # NaN must reach the log
            include_num_input_tokens_seen="non_padding",
            eval_strategy="steps" if has_eval else "no", eval_steps=eval_steps,
            save_strategy="steps", save_steps=cfg.save_steps or eval_steps, save_total_limit=None,
            bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=not torch.cuda.is_available(),
            gradient_checkpointing=self.gradient_checkpointing and cfg.method != "qlora",
            gradient_checkpointing_kwargs={"use_reentrant": False},
            report_to=cfg.report_to or "none", disable_tqdm=True, remove_unused_columns=False,
            label_names=["labels"], dataloader_num_workers=0, ddp_find_unused_parameters=False,
        )
        self.callback = RunCallback(self)
        self.trainer = AtomicCheckpointTrainer(
            model=self.model, args=args, train_dataset=self.train_features,
            eval_dataset=self.eval_features or None, data_collator=collator, processing_class=self.tokenizer,
            callbacks=[self.callback], run=self.run, writes=self.writes, on_checkpoint=self._on_checkpoint)
        self.board.update(max_steps=total)

    def _on_checkpoint(self, path: Path) -> None:
        step = int(path.name.split("-")[1])
        self.event("checkpoint", step=step, path=str(path))
        self.board.update(last_checkpoint=str(path),
                          state="stopping" if self.stop_requested else "running")
        if self.callback.early.best_step == step:
            self.board.update(best_checkpoint=str(path))
        self._rotate_checkpoints()

    def _rotate_checkpoints(self) -> None:
        limit = self.cfg.save_total_limit
        if not limit:
            return
        best = self.board.fields.get("best_checkpoint")
        complete = [p for _, p, ok in self.run.checkpoints() if ok]
        for path in complete[:-limit]:
            if str(path) != best:
                shutil.rmtree(path, ignore_errors=True)

    # ---- train ------------------------------------------------------------
    def train(self) -> str:
        resume_from = None
        if self.resume:
            resume_from, skipped = self.run.resume_checkpoint()
            for reason in skipped:
                self.event("warning", code="checkpoint_skipped", message=reason)
            if resume_from is None:
                self.event("warning", code="no_checkpoint", message="no complete checkpoint; starting from step 0")
            else:
                self.start_step = int(resume_from.name.split("-")[1])
                self._restore_best(self.previous_status)
        self.set_state("running", step=self.start_step, resumed_from=str(resume_from) if resume_from else None)
        self.started_at = time.time()
        output = self.trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        step = self.trainer.state.global_step
        runtime = output.metrics.get("train_runtime") or 0
        tokens = int(self.trainer.state.num_input_tokens_seen or 0) - self.callback.tokens_at_start
        self._save_final()
        final = "stopped" if self.stop_requested else "completed"
        self.set_state(final, step=step, early_stopped=self.early_stopped, train_runtime=runtime,
                       train_tokens_per_second=round(tokens / runtime, 1) if runtime else None)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # after a clean finish ranks leave together: none exits while rank 0 saves
        return final

    def _restore_best(self, previous: dict) -> None:
        """Carry the best evaluation across a resume, so early stopping and rotation still know it."""
        best, best_step = previous.get("best_metric"), previous.get("best_step")
        if isinstance(best, (int, float)) and best_step is not None and best_step <= self.start_step:
            self.callback.early.best, self.callback.early.best_step = best, best_step
            checkpoint = previous.get("best_checkpoint")
            self.board.update(best_metric=best, best_step=best_step,
                              best_checkpoint=checkpoint if checkpoint and Path(checkpoint).is_dir() else None)

    def _save_final(self) -> None:
        best = self.board.fields.get("best_checkpoint")
        if best and self.callback.early.best_step != self.trainer.state.global_step and Path(best).is_dir():
            self.trainer._load_from_checkpoint(best)  # the final model is the best one evaluated
            self.event("state", state="best_loaded", checkpoint=best, eval_loss=self.callback.early.best)
        out = self.run.path / ("model" if self.cfg.method == "full" else "adapter")
        if self.writes:
            tmp = out.with_name(out.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            self.trainer.save_model(str(tmp))
            self.tokenizer.save_pretrained(str(tmp))
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
            self.event("state", state="saved", path=str(out))
            self.board.update(output=str(out))

    def cleanup(self) -> None:
        if self.writes:
            shutil.rmtree(self.run.path / ".staging", ignore_errors=True)  # partial saves only
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        self.board.close()
        if self.events is not None:
            self.events.close()
