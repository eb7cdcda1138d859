"""Training-health checks, run inside the engine so they are recorded with no UI attached.

Each check sees the logged metrics in order and returns warnings as
(code, message). Pure Python: tested without torch.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


@dataclass
class HealthMonitor:
    divergence_factor: float = 3.0  # loss this many times above its running minimum
    grad_spike_factor: float = 10.0  # grad norm this many times the recent median
    min_logs: int = 3  # losses to see before judging divergence
    _min_loss: float = math.inf
    _logs: int = 0
    _diverged: bool = False
    _grad_norms: deque = field(default_factory=lambda: deque(maxlen=50))
    _eval_history: list = field(default_factory=list)  # (eval_loss, mean train loss since previous eval)
    _train_since_eval: list = field(default_factory=list)
    active: dict = field(default_factory=dict)  # code -> message, shown in status.json

    def on_log(self, loss: float | None, grad_norm: float | None) -> list[tuple[str, str]]:
        warnings = []
        if loss is not None and not _finite(loss):
            warnings.append(("nan_loss", f"training loss is {loss}: lower the learning rate, check the data "
                                         "for empty targets, or use bf16/fp32 instead of fp16"))
        if grad_norm is not None and not _finite(grad_norm):
            warnings.append(("nan_grad", f"gradient norm is {grad_norm}: the update is not finite; "
                                         "lower the learning rate or keep max_grad_norm clipping on"))
        if _finite(loss):
            self._logs += 1
            self._train_since_eval.append(loss)
            if loss < self._min_loss:
                self._min_loss = loss
            if self._logs > self.min_logs and loss > self.divergence_factor * max(self._min_loss, 1e-3):
                if not self._diverged:
                    warnings.append(("divergence", f"loss {loss:.3g} is {loss / max(self._min_loss, 1e-3):.1f}x "
                                                   f"its minimum {self._min_loss:.3g}: training is diverging; "
                                                   "lower the learning rate or add warmup"))
                self._diverged = True
            elif loss < 1.5 * self._min_loss:
                self._diverged = False
                self.active.pop("divergence", None)
        if _finite(grad_norm):
            recent = list(self._grad_norms)
            if len(recent) >= 5:
                median = statistics.median(recent)
                if median > 0 and grad_norm > self.grad_spike_factor * median:
                    warnings.append(("grad_spike", f"gradient norm {grad_norm:.3g} is "
                                                   f"{grad_norm / median:.0f}x the recent median {median:.3g}: "
                                                   "a bad batch or too high a learning rate"))
            self._grad_norms.append(grad_norm)
        for code, message in warnings:
            self.active[code] = message
        return warnings

    def on_eval(self, eval_loss: float | None) -> list[tuple[str, str]]:
        """Overfitting: eval loss rose twice in a row while the training loss kept falling."""
        train = statistics.fmean(self._train_since_eval) if self._train_since_eval else None
        self._train_since_eval = []
        if not _finite(eval_loss):
            warning = ("nan_eval", f"evaluation loss is {eval_loss}: the model has broken down")
            self.active[warning[0]] = warning[1]
            return [warning]
        self._eval_history.append((eval_loss, train))
        h = self._eval_history[-3:]
        if (len(h) == 3 and h[0][0] < h[1][0] < h[2][0]
                and None not in (h[0][1], h[1][1], h[2][1]) and h[0][1] > h[1][1] > h[2][1]):
            warning = ("overfitting", f"eval loss rose {h[0][0]:.3g} -> {h[2][0]:.3g} while train loss fell "
                                      f"{h[0][1]:.3g} -> {h[2][1]:.3g}: stop early, use fewer epochs, "
                                      "more data or a smaller rank")
            self.active[warning[0]] = warning[1]
            return [warning]
        self.active.pop("overfitting", None)
        return []


@dataclass
class EarlyStopping:
    """Patience on eval loss. Ours, not transformers' EarlyStoppingCallback: that one
    requires load_best_model_at_end, which needs checkpoint paths the Trainer chose."""

    patience: int | None
    threshold: float = 0.0
    best: float = math.inf
    best_step: int | None = None
    bad_evals: int = 0

    def update(self, eval_loss: float, step: int) -> bool:
        """Record an evaluation; True when training should stop."""
        if _finite(eval_loss) and eval_loss < self.best - self.threshold:
            self.best, self.best_step, self.bad_evals = eval_loss, step, 0
            return False
        self.bad_evals += 1
        return self.patience is not None and self.bad_evals >= self.patience
