"""Plan mode (2): choose a method and write a run configuration. Not built yet."""

from __future__ import annotations

from tui.screens.base import PlaceholderScreen


class PlanScreen(PlaceholderScreen):
    MODE = "plan"
    TITLE = "Plan"
    WILL_DO = (
        "Will walk through the decision: has prompting been tried and measured, does the task "
        "need fresh knowledge (RAG), how many good examples exist. Then the method (LoRA by "
        "default, QLoRA when memory is short, full fine-tuning only with large data and memory), "
        "a memory breakdown against the free GPU memory, hyperparameters with reasons, an "
        "estimate of time and cost, and a key that writes the run configuration."
    )
    TODAY = (
        "  tunedeck plan MODEL DATA      recommend a method and write a config\n"
        "  tunedeck estimate MODEL       memory needed per method\n"
        "  tunedeck gpu                  what the GPUs have free"
    )
