"""Data mode (3): review and prepare a dataset. Not built yet."""

from __future__ import annotations

from tui.screens.base import PlaceholderScreen


class DataScreen(PlaceholderScreen):
    MODE = "data"
    TITLE = "Data"
    WILL_DO = (
        "Will open a dataset and show its statistics (count, token lengths, roles, flags, "
        "duplicates), then one example at a time with the rendered chat template and the "
        "trained-on tokens; verdict keys (good / bad / skip), undo, notes, search, filters, "
        "spot-check mode; split into train/validation/test and export."
    )
    TODAY = (
        "  tunedeck data stats FILE      counts, lengths, roles\n"
        "  tunedeck data lint FILE       malformed or suspicious examples\n"
        "  tunedeck data dedup FILE      duplicates\n"
        "  tunedeck data split FILE      train/validation/test\n"
        "  tunedeck data export FILE     write the reviewed set"
    )
