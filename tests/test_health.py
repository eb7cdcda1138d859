"""Health warnings and early stopping, fed metric sequences like a real run's."""

from __future__ import annotations

import math

from engine.training.health import EarlyStopping, HealthMonitor


def codes(warnings):
    return [code for code, _ in warnings]


def test_nan_loss_and_grad_are_flagged():
    h = HealthMonitor()
    assert codes(h.on_log(2.0, 1.0)) == []
    assert codes(h.on_log(math.nan, math.inf)) == ["nan_loss", "nan_grad"]
    assert "nan_loss" in h.active


def test_divergence_once_per_episode():
    h = HealthMonitor(divergence_factor=3.0)
    for loss in (4.0, 3.0, 2.0, 1.0):
        assert h.on_log(loss, 1.0) == []
    assert codes(h.on_log(3.5, 1.0)) == ["divergence"]
    assert h.on_log(5.0, 1.0) == []  # still the same episode: no repeat
    h.on_log(1.2, 1.0)
    assert "divergence" not in h.active
    assert codes(h.on_log(4.0, 1.0)) == ["divergence"]


def test_noisy_but_healthy_loss_is_quiet():
    h = HealthMonitor()
    warnings = []
    for i in range(200):
        warnings += h.on_log(2.0 / (1 + i / 50) + 0.1 * math.sin(i), 1.0 + 0.3 * math.sin(i / 3))
    assert warnings == []


def test_grad_norm_spike():
    h = HealthMonitor(grad_spike_factor=10)
    for g in (1.0, 1.2, 0.9, 1.1, 1.0):
        h.on_log(2.0, g)
    assert codes(h.on_log(2.0, 25.0)) == ["grad_spike"]
    assert h.on_log(2.0, 5.0) == []


def test_overfitting_needs_eval_up_while_train_down():
    h = HealthMonitor()
    for train, evl in ((2.0, 1.9), (1.5, 2.0), (1.0, 2.1)):
        h.on_log(train, 1.0)
        warnings = h.on_eval(evl)
    assert codes(warnings) == ["overfitting"]
    both_up = HealthMonitor()
    for train, evl in ((1.0, 1.9), (1.5, 2.0), (2.0, 2.1)):
        both_up.on_log(train, 1.0)
        warnings = both_up.on_eval(evl)
    assert warnings == []


def test_early_stopping_patience_and_threshold():
    e = EarlyStopping(patience=2, threshold=0.01)
    assert not e.update(1.0, 10)
    assert not e.update(0.995, 20)  # within threshold: not an improvement
    assert e.update(0.999, 30)
    assert e.best == 1.0 and e.best_step == 10
    assert not EarlyStopping(patience=None).update(5.0, 1)
