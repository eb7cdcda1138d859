"""Datasets: loading every accepted format into one example type, lint, dedup, split, statistics, the review store, dataset export, the light chat template. Light."""
