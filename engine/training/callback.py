"""The one seam between a Trainer and the run directory: metrics as events and status, control commands,
pause, health warnings, early stopping, graceful stop. It talks to the run only through RunPlumbing, so
any Trainer a recipe builds (transformers' own, a TRL subclass) takes it as it is.
"""

from __future__ import annotations

import time

import torch
from transformers import TrainerCallback

from engine.training.health import EarlyStopping, HealthMonitor
from engine.training.plumbing import RunPlumbing
from engine.training.ranks import gather_ranks
from engine.training.samples import AnswerSampler
from engine.training.signals import StopNow


class RunCallback(TrainerCallback):
    """`early` is shared with the checkpoint bookkeeping, which keeps the best evaluation's checkpoint;
    `can_evaluate`: the recipe has held-out data, so an `eval` command can be honoured; `samples`: answers to
    held-out prompts written at each evaluation (rank 0's callback only), or None; `metrics`: the Trainer's own
    metrics the log events carry too, names or prefixes ending in "/" (a recipe's LOGGED_METRICS)."""

    def __init__(self, plumbing: RunPlumbing, health: HealthMonitor, early: EarlyStopping, can_evaluate: bool,
                 samples: AnswerSampler | None = None, metrics: tuple[str, ...] = ()):
        self.plumbing, self.health, self.early, self.can_evaluate = plumbing, health, early, can_evaluate
        self.samples = samples
        self.metrics = metrics
        self.paused = False
        self.early_stopped = False
        self.tokens_at_start = 0
        self._began = (time.time(), 0)  # (time, step) when this engine's training began, for the ETA
        self._last_log = (time.time(), 0)
        self._evaluating = False

    def on_train_begin(self, args, state, control, **kwargs):
        # After a resume restored the Trainer's state: count from where this engine started.
        self.tokens_at_start = int(state.num_input_tokens_seen or 0)
        self._began = (time.time(), state.global_step)
        self._record_ranks(state)

    def _record_ranks(self, state) -> None:
        """Each rank's memory and utilisation, at train begin and each training log: points every rank
        reaches alike, as the gather needs."""
        self.plumbing.update(ranks=gather_ranks(), ranks_step=state.global_step)

    # ---- control -------------------------------------------------------
    def _apply(self, wants: dict, control) -> None:
        if wants["stop_now"]:
            raise StopNow("stop_now")
        if wants["pause"] and not self.paused:
            self.paused = True
        if wants["resume"]:
            self.paused = False
        if wants["checkpoint"]:
            control.should_save = True
        if wants["eval"] and self.can_evaluate:
            control.should_evaluate = True
        if wants["stop"]:
            self.plumbing.request_stop()
            control.should_save = True
            control.should_training_stop = True

    def on_step_end(self, args, state, control, **kwargs):
        plumbing = self.plumbing
        self._apply(plumbing.requested(), control)
        if self.paused:
            plumbing.set_state("paused", step=state.global_step)
            while self.paused:
                time.sleep(0.5)
                self._apply(plumbing.requested(), control)
                if plumbing.stop_requested:
                    self.paused = False
            if not plumbing.stop_requested:
                plumbing.set_state("running", step=state.global_step)
        plumbing.update(step=state.global_step, epoch=state.epoch,
                        tokens_seen=int(state.num_input_tokens_seen or 0), eta_seconds=self._eta(state))
        if control.should_save:
            plumbing.update(state="checkpointing" if not plumbing.stop_requested else "stopping")
        return control

    def on_prediction_step(self, args, state, control, **kwargs):
        if not self._evaluating:
            self._evaluating = True
            self.plumbing.update(state="evaluating")
        self._apply(self.plumbing.requested(), control)
        return control

    def _eta(self, state) -> float | None:
        if not state.max_steps or not state.global_step:
            return None
        began, start_step = self._began
        done = state.global_step - start_step
        return round((time.time() - began) / done * (state.max_steps - state.global_step), 1) if done > 0 else None

    # ---- metrics -------------------------------------------------------
    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        if "loss" in logs:
            self._on_train_log(logs, state)
        elif "eval_loss" in logs:
            self._on_eval_log(logs, state, control, kwargs["model"])
        return control

    def _on_train_log(self, logs: dict, state) -> None:
        plumbing, step = self.plumbing, state.global_step
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
        # TRL's names as they are ("rewards/margins"): events are JSON, any key will do
        own = {k: v for k, v in logs.items() if k in self.metrics or any(
            p.endswith("/") and k.startswith(p) for p in self.metrics)}
        plumbing.event("log", step=step, **fields, **own)
        plumbing.update(**{k: v for k, v in fields.items() if v is not None or k == "loss"})
        self._record_ranks(state)
        warnings = self.health.on_log(fields["loss"], fields["grad_norm"])
        if own:
            warnings += self.health.on_rewards(own.get("rewards/margins"), own.get("rewards/accuracies"),
                                               own.get("logps/chosen"))
        for code, message in warnings:
            plumbing.event("warning", step=step, code=code, message=message)
        plumbing.update(warnings=list(self.health.active.values()))

    def _on_eval_log(self, logs: dict, state, control, model) -> None:
        plumbing, step = self.plumbing, state.global_step
        self._evaluating = False
        eval_loss = logs["eval_loss"]
        plumbing.event("eval", step=step, **{k: v for k, v in logs.items() if k.startswith("eval_")})
        if self.samples is not None:
            self._sample(model, step)
        for code, message in self.health.on_eval(eval_loss):
            plumbing.event("warning", step=step, code=code, message=message)
        stop = self.early.update(eval_loss, step)
        plumbing.update(eval_loss=eval_loss, best_metric=self.early.best, best_step=self.early.best_step,
                        warnings=list(self.health.active.values()),
                        state="stopping" if plumbing.stop_requested else "running")
        if stop and not plumbing.stop_requested:
            plumbing.event("state", step=step, state="early_stopping",
                           message=f"eval loss has not improved for {self.early.bad_evals} evaluations "
                                   f"(best {self.early.best:.4g} at step {self.early.best_step})")
            self.early_stopped = True
            control.should_training_stop = True

    def _sample(self, model, step: int) -> None:
        """While the status still says evaluating. Samples are for watching: running out of memory for them
        turns them off with a warning instead of failing the run."""
        try:
            self.plumbing.event("sample", step=step, samples=self.samples.answers(model))
        except torch.OutOfMemoryError:
            self.samples = None
            torch.cuda.empty_cache()
            self.plumbing.event("warning", step=step, code="samples_off",
                                message="answering the sample prompts ran out of memory; no more samples "
                                        "this run (lower sample_prompts or set it to 0)")
