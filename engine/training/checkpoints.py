"""Checkpoints that appear only when whole, and the bookkeeping around them: the checkpoint event and
status, the best evaluation's checkpoint, rotation that keeps it, and where a resume starts.

Any Trainer subclass gets atomic checkpoints by listing the mixin first:

    class MyTrainer(AtomicCheckpoints, SomeTrainer): ...
    MyTrainer(..., checkpoints=CheckpointBook(plumbing, cfg.save_total_limit, early))
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from transformers import Trainer

from engine.core.files import ensure_private_dir
from engine.runs.protocol import COMPLETE_MARKER
from engine.training.distributed import barrier
from engine.training.health import EarlyStopping
from engine.training.plumbing import RunPlumbing


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[1])


class CheckpointBook:
    """What happens to a checkpoint the Trainer wrote, and what the run knows of its checkpoints.
    `early` is the callback's early stopping, whose best step marks the checkpoint to keep."""

    def __init__(self, plumbing: RunPlumbing, save_total_limit: int | None, early: EarlyStopping):
        self.plumbing, self.save_total_limit, self.early = plumbing, save_total_limit, early
        self.best_checkpoint: str | None = None

    def commit(self, staged: Path, step: int) -> None:
        """A whole checkpoint in the staging area: marked COMPLETE (fsynced), renamed into checkpoints/,
        recorded, and older ones rotated. Every rank writes its part (its RNG state; under fsdp its shards of
        weights and optimizer state): all are waited for, then rank 0 alone marks and renames."""
        plumbing = self.plumbing
        barrier()
        if not plumbing.writes:
            return
        with open(staged / COMPLETE_MARKER, "w") as f:
            f.write(json.dumps({"step": step, "time": time.time()}))
            f.flush()
            os.fsync(f.fileno())
        final = ensure_private_dir(plumbing.run.checkpoints_dir) / staged.name
        if final.exists():
            shutil.rmtree(final)
        os.replace(staged, final)
        plumbing.event("checkpoint", step=step, path=str(final))
        plumbing.update(last_checkpoint=str(final), state="stopping" if plumbing.stop_requested else "running")
        if self.early.best_step == step:
            self._set_best(str(final))
        self._rotate()

    def _set_best(self, checkpoint: str | None) -> None:
        self.best_checkpoint = checkpoint
        self.plumbing.update(best_checkpoint=checkpoint)

    def _rotate(self) -> None:
        """Keep the newest save_total_limit complete checkpoints, and the best one besides."""
        limit = self.save_total_limit
        if not limit:
            return
        complete = [p for _, p, ok in self.plumbing.run.checkpoints() if ok]
        for path in complete[:-limit]:
            if str(path) != self.best_checkpoint:
                shutil.rmtree(path, ignore_errors=True)

    def resume_point(self) -> Path | None:
        """The newest complete checkpoint, saying which newer ones were skipped and why; the best evaluation
        recorded before it is carried over, so early stopping and rotation still know it."""
        plumbing = self.plumbing
        checkpoint, skipped = plumbing.run.resume_checkpoint()
        for reason in skipped:
            plumbing.event("warning", code="checkpoint_skipped", message=reason)
        if checkpoint is None:
            plumbing.event("warning", code="no_checkpoint", message="no complete checkpoint; starting from step 0")
            return None
        previous = plumbing.previous_status
        best, best_step = previous.get("best_metric"), previous.get("best_step")
        if isinstance(best, (int, float)) and best_step is not None and best_step <= checkpoint_step(checkpoint):
            self.early.best, self.early.best_step = best, best_step
            plumbing.update(best_metric=best, best_step=best_step)
            recorded = previous.get("best_checkpoint")
            self._set_best(recorded if recorded and Path(recorded).is_dir() else None)
        return checkpoint

    def best_to_load(self, step: int) -> str | None:
        """The best evaluated checkpoint when the model at `step` is not it: the final model is the best one."""
        best = self.best_checkpoint
        return best if best and self.early.best_step != step and Path(best).is_dir() else None


class AtomicCheckpoints:
    """Mixin for transformers.Trainer or any subclass of it: checkpoints are written to the staging area
    (args.output_dir) as usual, then committed by the CheckpointBook. Resume skips anything else."""

    def __init__(self, *args, checkpoints: CheckpointBook, **kwargs):
        super().__init__(*args, **kwargs)
        self.checkpoint_book = checkpoints

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        step = self.state.global_step
        self.checkpoint_book.commit(Path(self.args.output_dir) / f"checkpoint-{step}", step)


class AtomicCheckpointTrainer(AtomicCheckpoints, Trainer):
    """transformers' Trainer with atomic checkpoints."""
