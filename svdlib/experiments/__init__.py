"""Experiment harness: data, models, training loop, notebook runner (imported lazily).

``import svdlib.experiments`` imports nothing heavy; the names below load their module on
first use. The training function lives in :mod:`svdlib.experiments.train` (a package-level
``train`` would be shadowed by the submodule of the same name, which ``python -m`` needs)::

    from svdlib.experiments import load_config, expand_sweep, read_metrics, run_sweep
    from svdlib.experiments.train import train   # the function (``.train`` is also the module)
    cfg = load_config("configs/dbn_nog.yaml", profile="quick", overrides=["epochs=2"])
    for suffix, c in expand_sweep(cfg):
        summary = train(c, f"runs/quick/dbn_nog/{suffix}", resume=True)  # finished runs are skipped
    # or, the same loop in one call:
    summaries = run_sweep("configs/dbn_nog.yaml", "runs/quick/dbn_nog", profile="quick")

Submodules: :mod:`.config` (ExperimentConfig, YAML + profiles + overrides), :mod:`.data`,
:mod:`.models`, :mod:`.train` (training loop and CLI), :mod:`.metrics` (metrics.jsonl and
summary.json), :mod:`.checkpoint`, :mod:`.distributed` (torchrun / DDP).
"""
from __future__ import annotations

import importlib

_LAZY = {
    "ExperimentConfig": "config",
    "load_config": "config",
    "apply_overrides": "config",
    "config_from_dict": "config",
    "expand_sweep": "config",
    "config_help": "config",
    "PROFILES": "config",
    "RUN_FILES": "train",
    "build_model": "models",
    "build_datasets": "data",
    "read_metrics": "metrics",
    "strip_wall_clock": "metrics",
    "read_json": "metrics",
    "collect_summaries": "metrics",
    "run_sweep": "train",
    "WALL_CLOCK_FIELDS": "metrics",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'svdlib.experiments' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
