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
    # preference runs (TRL's rewards/margins, rewards/accuracies, logps/chosen), judged on means of `window` logs
    window: int = 5
    _rewards: dict = field(default_factory=dict)  # name -> deque of the last `window` values
    _first: dict = field(default_factory=dict)  # name -> mean of the first `window` values
    _peak: dict = field(default_factory=dict)  # name -> highest mean of `window` values so far

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

    def on_rewards(self, margin: float | None, accuracy: float | None,
                   chosen_logps: float | None) -> list[tuple[str, str]]:
        """Two ways preference tuning goes wrong while its loss looks fine, each warned once until it recovers:
        - margin collapse: the reward margin falls back to about 0, or the reward accuracy to about 0.5, after
          having risen: the policy no longer tells chosen from rejected (too high a learning rate, too low a beta,
          contradictory pairs);
        - likelihood displacement (Razin et al. 2024, "Unintentional Unalignment"): the chosen answers' log-
          probability falls while the margin rises: the margin is won by pushing both answers down."""
        now = {}
        for name, value in (("margin", margin), ("accuracy", accuracy), ("chosen", chosen_logps)):
            if not _finite(value):
                continue
            recent = self._rewards.setdefault(name, deque(maxlen=self.window))
            recent.append(value)
            if len(recent) == self.window:
                now[name] = statistics.fmean(recent)
                self._first.setdefault(name, now[name])
                self._peak[name] = max(self._peak.get(name, -math.inf), now[name])
        warnings = []
        m, a, c = now.get("margin"), now.get("accuracy"), now.get("chosen")
        peak_m, peak_a = self._peak.get("margin", 0.0), self._peak.get("accuracy", 0.0)
        margin_gone = m is not None and peak_m >= 0.1 and m <= 0.2 * peak_m
        accuracy_gone = a is not None and peak_a >= 0.7 and a <= 0.55
        if margin_gone or accuracy_gone:
            if "margin_collapse" not in self.active:
                said = f"reward margin {m:.3g} (peak {peak_m:.3g})" if m is not None else ""
                said += (", " if said else "") + (f"reward accuracy {a:.0%} (peak {peak_a:.0%})" if a is not None else "")
                warnings.append(("margin_collapse", f"{said}: the policy no longer tells chosen from rejected "
                                                    "answers; lower the learning rate or raise beta, and look for "
                                                    "contradictory pairs"))
        elif m is not None and (m > 0.5 * peak_m) and (a is None or a > 0.6):
            self.active.pop("margin_collapse", None)
        first_m, first_c = self._first.get("margin"), self._first.get("chosen")
        if None not in (m, c, first_m, first_c):
            fall = max(1.0, 0.1 * abs(first_c))  # nats of the summed log-probability of an answer
            if first_c - c >= fall and m - first_m >= 0.1:
                if "likelihood_displacement" not in self.active:
                    warnings.append(("likelihood_displacement",
                                     f"chosen log-probability fell {first_c:.3g} -> {c:.3g} while the reward margin "
                                     f"rose {first_m:.3g} -> {m:.3g}: chosen answers get less likely too (likelihood "
                                     "displacement, Razin et al. 2024); lower the learning rate or raise beta, or "
                                     "add an SFT term (dpo: loss_type: [sigmoid, sft])"))
            elif first_c - c < fall / 2:
                self.active.pop("likelihood_displacement", None)
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
