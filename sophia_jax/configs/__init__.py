"""Experiment and model configs (ml_collections)."""
