"""Mixing general examples into a task's training data, the first remedy for catastrophic forgetting.

Training only on a narrow task moves the model away from what it could do before (003's "Mix in
General Data"); keeping a share of general instruction data in every epoch holds some of it. One
function does the sampling, so `tunedeck data mix` writes exactly what a run with `general_data` trains
on. The held-out split is made before mixing and never receives general examples: the task's eval
loss stays a measure of the task.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from engine.data.load import Example

DEFAULT_RATIO = 0.3  # 003's example: 70% domain, 30% general


@dataclass
class Mix:
    examples: list  # task and general examples, shuffled with the seed
    task: int
    general: int
    wanted: int  # general examples the ratio asks for; more than `general` when the file had too few

    @property
    def capped(self) -> bool:
        return self.general < self.wanted

    def summary(self) -> str:
        share = self.general / max(1, self.task + self.general)
        text = f"{self.task} task + {self.general} general examples ({share:.0%} general)"
        return text + (f"; the ratio asks for {self.wanted}, the general file has only {self.general}"
                       if self.capped else "")


def general_wanted(task_count: int, ratio: float) -> int:
    """General examples that make general / (task + general) = ratio, to the nearest example."""
    if not 0 < ratio < 1:
        raise ValueError(f"general ratio must be between 0 and 1 (exclusive), got {ratio:g}")
    return round(task_count * ratio / (1 - ratio))


def mix_general(task: list[Example], general: list[Example], ratio: float = DEFAULT_RATIO,
                seed: int = 42) -> Mix:
    """The task examples plus a seeded sample of `general` (capped at what it holds), shuffled."""
    if not general:
        raise ValueError("the general data has no usable examples to mix in")
    wanted = general_wanted(len(task), ratio)
    rng = random.Random(seed)
    chosen = [general[i] for i in sorted(rng.sample(range(len(general)), min(wanted, len(general))))]
    mixed = list(task) + chosen
    rng.shuffle(mixed)
    return Mix(mixed, len(task), len(chosen), wanted)
