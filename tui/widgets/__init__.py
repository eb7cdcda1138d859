"""Reusable widgets of the tunedeck app."""
