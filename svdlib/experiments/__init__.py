"""Experiment harness: data, models, training loop, notebook runner (imported lazily)."""
