"""Eval mode (5): compare the base and tuned models. Not built yet."""

from __future__ import annotations

from tui.screens.base import PlaceholderScreen


class EvalScreen(PlaceholderScreen):
    MODE = "eval"
    TITLE = "Eval"
    WILL_DO = (
        "Will put the baseline and the tuned model side by side on the held-out set: loss and "
        "perplexity, exact match or the task metric, format compliance, forgetting probes "
        "before and after; a blind A/B review by keyboard; and export of the report."
    )
    TODAY = (
        "  tunedeck eval RUN             evaluate a run's adapter on its test split\n"
        "  tunedeck export RUN           write the adapter or merged model"
    )
