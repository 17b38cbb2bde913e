"""Run records: ``metrics.jsonl`` (one JSON object per logged step and per epoch) and
``summary.json`` (one object per run).

Line types in ``metrics.jsonl`` (key ``"type"``):

- ``"step"``: ``epoch, step, batch, loss, acc, lr, grad_norm, cond_max, cond_mean,
  cond_median, cond_singular, failures, failures_total, step_time`` (and ``presvd_lr``, the Pre-SVD group's learning rate of
  that step, when NOG/OLR are on)
- ``"epoch"``: ``epoch, method, train_loss, train_acc, test_loss, test_acc, test_error, test_acc5, lr,
  cond_max, cond_mean, cond_median, cond_singular, cond_last, failures, eval_failures,
  failures_total, steps, epoch_time, wall_time``

``failures`` counts eigensolver failures (:func:`svdlib.diagnostics.failure_count`, the
"failure times" of ECCV 2022 Table 5): on a step line, this process's failures since the
previous step line; on an epoch line, the training failures of all processes in the epoch
(``eval_failures``: those of the evaluation); ``failures_total`` is the running total.

Accuracies and errors are in percent, as in the papers' tables. ``cond_*`` is the condition
number lambda_max / lambda_min of the meta-layer covariance (eq. 1 of Song et al., ECCV 2022)
of each whitening group (decorrelated BN) or each image (GCP) of the training batch: max, mean
and median (the lower middle value for an even count) over those matrices, and ``cond_singular``, the fraction of them that is singular
(lambda_min <= 0, condition number ``Infinity`` in Python's JSON spelling; a channel that ReLU
zeroes over a whole image makes a GCP covariance singular). Epoch lines aggregate the steps
(max of maxima, mean of means, median of medians, mean fraction; ``cond_last`` is the last
step's max). All are ``null`` for a model without meta layer. Fields in :data:`WALL_CLOCK_FIELDS` depend on the machine; everything
else is reproducible from the config (see the resume test).
"""
from __future__ import annotations

import json
import math
import os
from typing import Iterable

from .atomic import jsonable, write_atomic, write_json

__all__ = [
    "WALL_CLOCK_FIELDS",
    "MetricsWriter",
    "read_metrics",
    "write_json_atomic",
    "read_json",
    "strip_wall_clock",
    "number_or_none",
    "collect_summaries",
]

#: Keys whose values are timings; exclude them when comparing two runs.
WALL_CLOCK_FIELDS = ("step_time", "epoch_time", "wall_time", "time")


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (:func:`svdlib.experiments.atomic.write_json`)."""
    write_json(path, obj)


def read_json(path: str | os.PathLike):
    """Read a JSON file (accepts Python's ``Infinity``/``NaN``); a damaged (e.g. truncated)
    file raises ValueError naming it."""
    with open(path, encoding="utf-8") as fh:
        try:
            return json.load(fh)
        except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{os.fspath(path)} is not valid JSON (truncated or damaged?): {e}") from None


class MetricsWriter:
    """Append-only writer of ``metrics.jsonl``; each line is flushed when written.

    Parameters
    ----------
    path : str or PathLike
        The ``metrics.jsonl`` file.
    keep_lines : int, optional
        When resuming, keep only the first ``keep_lines`` complete lines (those written before
        the checkpoint being resumed) and drop the rest, so the file ends up exactly as in an
        uninterrupted run. ``None`` starts a new file.
    enabled : bool
        ``False`` makes every call a no-op (DDP ranks other than 0).
    """

    def __init__(self, path: str | os.PathLike, keep_lines: int | None = None, enabled: bool = True):
        self.path = os.fspath(path)
        self.enabled = enabled
        self.lines = 0
        self._fh = None
        if not enabled:
            return
        if keep_lines is None:
            kept: list[str] = []
        else:
            kept = []
            if os.path.exists(self.path):
                with open(self.path, encoding="utf-8") as fh:
                    kept = [ln for ln in fh.read().split("\n") if ln.strip()][:keep_lines]
            if len(kept) != keep_lines:
                raise ValueError(
                    f"{self.path} has {len(kept)} complete lines but the checkpoint expects "
                    f"{keep_lines}; the run directory is inconsistent (use overwrite)")
        write_atomic(self.path, "".join(ln + "\n" for ln in kept))
        self.lines = len(kept)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        """Append one record as a JSON line."""
        if not self.enabled:
            return
        self._fh.write(json.dumps(jsonable(record)) + "\n")
        self._fh.flush()
        self.lines += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(path: str | os.PathLike, type: str | None = None) -> list[dict]:
    """Records of a ``metrics.jsonl`` file (or of the run directory holding it), optionally
    only those of one ``type`` (``"step"`` or ``"epoch"``)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    out = []
    with open(path, encoding="utf-8") as fh:
        for ln in fh:
            if ln.strip():
                rec = json.loads(ln)
                if type is None or rec.get("type") == type:
                    out.append(rec)
    return out


def collect_summaries(root: str | os.PathLike) -> list[dict]:
    """Every ``summary.json`` under ``root`` (sorted by path), each with its ``run_dir`` added."""
    out = []
    for directory, _, files in sorted(os.walk(os.fspath(root))):
        if "summary.json" in files:
            summary = read_json(os.path.join(directory, "summary.json"))
            summary["run_dir"] = directory
            out.append(summary)
    return out


def strip_wall_clock(records: Iterable[dict]) -> list[dict]:
    """Copies of ``records`` without the :data:`WALL_CLOCK_FIELDS`."""
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in records]


def number_or_none(x) -> float | None:
    """``float(x)``, or ``None`` when ``x`` is None or NaN; keeps inf (a singular covariance)."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x
