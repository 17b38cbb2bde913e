"""Support code of the reproduction notebooks (10-15): where runs go, how their outcomes are read.

A notebook opens a :class:`Study` (its name, profile and folders), loads and trains
configurations through it (finished runs are skipped, so a second ``make reproduce`` only does
what is missing), reads the outcomes of the runs as replicates keyed by their sweep point
(:func:`outcomes`, :func:`aligned`: the same seed under two treatments is one pair), and writes
its tables, figures and ``report.json`` through it (nothing is written when ``results_dir`` is
empty, e.g. under nbval or in a smoke test).
"""
from __future__ import annotations

import math
import os
import statistics
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from . import plots
from .atomic import write_csv, write_json
from .report import PROFILES, ClaimTable, write_report
from .timing import Stopwatch

__all__ = ["Study", "repository_configs", "overrides", "seed_sweep", "outcomes", "by_point", "aligned", "finished",
           "epoch_values",
           "mean_sd", "geomean", "step_values", "curve", "lr_decay_steps", "dataset_sizes",
           "describe_data"]


def repository_configs() -> Path:
    """``configs/`` of the svdlib checkout (notebooks run from ``notebooks/``, tests from elsewhere)."""
    import svdlib

    for base in (Path.cwd(), *Path.cwd().parents, Path(svdlib.__file__).resolve().parents[1]):
        if (base / "configs" / "_base").is_dir():
            return base / "configs"
    raise FileNotFoundError("configs/ not found: run the notebook from a checkout of the svdlib repository")


def overrides(**values) -> dict:
    """The given config overrides without the unset ones (0, "", None mean "the profile's value")."""
    return {k: v for k, v in values.items() if v not in (0, "", None)}


def seed_sweep(seeds: int, **fixed) -> dict:
    """``{"sweep": {..fixed, "seed": [0..seeds-1]}}``, or ``{}`` when ``seeds`` is 0 (the profile's sweep)."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 0:
        raise ValueError(f"seeds must be an integer >= 0, got {seeds!r}")
    return {"sweep": {**fixed, "seed": list(range(seeds))}} if seeds else {}


class Study:
    """One reproduction notebook's runs and outputs.

    Parameters
    ----------
    notebook : str
        The notebook's name (``"10_decorrelated_bn"``), written into its report.
    profile : {"quick", "long", "paper"}
    results_dir : str
        Where tables, figures and ``report.json`` go; "" writes nothing.
    runs_dir : str
        Where training runs go; "" means ``results_dir/runs``, or a temporary folder (removed by
        :meth:`close`) when ``results_dir`` is "" too.
    data_root : str
        The dataset folder; ``profile="paper"`` with ``needs_data`` requires it.
    """

    def __init__(self, notebook: str, profile: str, results_dir: str = "", runs_dir: str = "",
                 data_root: str = "", needs_data: str = ""):
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
        if profile == "paper" and needs_data and not data_root:
            raise ValueError(f"profile='paper' trains on {needs_data}: pass data_root=<its folder>")
        self.notebook, self.profile, self.results_dir = notebook, profile, results_dir
        self.tag = f"[profile: {profile}]"
        self.stopwatch = Stopwatch()
        self._tmp = None
        if runs_dir:
            self.runs = Path(runs_dir)
        elif results_dir:
            self.runs = Path(results_dir) / "runs"
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"{notebook}-runs-")
            self.runs = Path(self._tmp.name)
        if results_dir:
            os.makedirs(results_dir, exist_ok=True)

    @property
    def configs(self) -> Path:
        """``configs/`` of the checkout (looked up when first needed)."""
        return repository_configs()

    def load(self, name: str, changes: Mapping | None = None):
        """``configs/<name>.yaml`` at this profile with ``changes`` applied."""
        from .config import load_config

        return load_config(self.configs / f"{name}.yaml", profile=self.profile, overrides=dict(changes or {}))

    def train(self, name: str, cfg, subdir: str | None = None, quiet: bool = False) -> list[dict]:
        """Every run of ``cfg``'s sweep into ``runs/<subdir or name>`` (finished ones are read back)."""
        from .train import run_sweep

        watch = Stopwatch()
        summaries = run_sweep(cfg, self.runs / (subdir or name), resume=True)
        if not quiet:
            done = sum(not s["diverged"] for s in summaries)
            print(f"{self.tag} {name:26s} {done}/{len(summaries)} runs finished without diverging, "
                  f"{sum(s['failures'] for s in summaries)} eigensolver failures ({watch})")
        return summaries

    # ------------------------------------------------------------------------- outputs
    def write_csv(self, name: str, rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> Path | None:
        if not self.results_dir or not rows:
            return None
        return write_csv(Path(self.results_dir) / name, [{"profile": self.profile, **r} for r in rows],
                         None if columns is None else ["profile", *columns])

    def write_json(self, name: str, obj) -> Path | None:
        return write_json(Path(self.results_dir) / name, obj, finite=True) if self.results_dir else None

    def save(self, fig, name: str) -> Path | None:
        return plots.save(fig, self.results_dir, name)

    def write_report(self, scale: str, rows: list[dict], claims: ClaimTable) -> Path | None:
        """``report.json`` for notebook 16: ``rows`` (our values beside the paper's) and the claims."""
        return write_report(self.results_dir, self.notebook, self.profile, scale, rows, claims.claims())

    def close(self) -> None:
        """Print the notebook's time and remove a temporary runs folder."""
        print(f"{self.tag} {self.notebook}: {self.stopwatch}")
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# ----------------------------------------------------------------------------- outcomes
def finished(summaries: Iterable[dict]) -> list[dict]:
    """The runs that did not diverge."""
    return [s for s in summaries if not s["diverged"]]


def _point(summary: dict) -> tuple:
    point = summary.get("sweep_point") or {"seed": summary["config"]["seed"]}
    return tuple(sorted(point.items()))


def outcomes(summaries: Iterable[dict], key, where: Mapping | None = None,
             keep_infinite: bool = False) -> dict[tuple, float]:
    """``{sweep point: value}`` of the finished runs whose value is a finite number.

    ``key`` is a summary field (``"final_test_error"``) or a function of the summary. ``where``
    keeps the runs whose sweep point has these values (``{"group_size": 16}``).
    ``keep_infinite`` keeps +inf values too (a condition number of a singular covariance); the
    statistics need finite values, a printout does not.
    """
    out = {}
    for s in finished(summaries):
        if where and any(s.get("sweep_point", {}).get(k) != v for k, v in where.items()):
            continue
        v = key(s) if callable(key) else s.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and (
                math.isfinite(v) or (keep_infinite and v == math.inf)):
            out[_point(s)] = float(v)
    return out


def by_point(summaries: Iterable[dict]) -> dict[tuple, dict]:
    """``{sweep point: summary}`` of the finished runs (the keys of :func:`outcomes`)."""
    return {_point(s): s for s in finished(summaries)}


def aligned(a: Mapping[tuple, float], b: Mapping[tuple, float]) -> tuple[list[float], list[float]]:
    """Values of ``a`` and ``b`` at the sweep points both have, in one order: the pairs."""
    keys = sorted(set(a) & set(b))
    return [a[k] for k in keys], [b[k] for k in keys]


def mean_sd(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, n); NaN where undefined."""
    v = [float(x) for x in values]
    if not v:
        return math.nan, math.nan, 0
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else math.nan), len(v)


def geomean(values: Iterable[float]) -> float:
    """Geometric mean of the positive values: inf if one is +inf, NaN if there is none."""
    values = [x for x in values if isinstance(x, (int, float)) and x > 0]
    if any(x == math.inf for x in values):
        return math.inf
    v = [math.log(x) for x in values if math.isfinite(x)]
    return math.exp(statistics.fmean(v)) if v else math.nan


def step_values(summary: dict, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` on the logged step lines of one run (missing values skipped;
    infinite ones kept: a singular covariance has kappa = inf)."""
    from .metrics import read_metrics

    steps, values = [], []
    for rec in read_metrics(summary["run_dir"], "step"):
        v = rec.get(key)
        if v is not None:
            steps.append(rec["step"])
            values.append(float(v[0] if isinstance(v, list) else v))
    return steps, values


def epoch_values(summary: dict, key: str) -> list[float]:
    """``key`` of every epoch line of one run, in order (missing values as NaN)."""
    from .metrics import read_metrics

    return [math.nan if rec.get(key) is None else float(rec[key]) for rec in read_metrics(summary["run_dir"], "epoch")]


def curve(summaries: Iterable[dict], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Per logged step over the finished runs: (steps, median, min, max) of ``key`` (infinite
    values count: a median can be inf when most runs saw a singular covariance)."""
    table: dict[int, list[float]] = {}
    for s in finished(summaries):
        for step, v in zip(*step_values(s, key)):
            if not math.isnan(v):
                table.setdefault(step, []).append(v)
    steps = sorted(table)
    return (steps, [statistics.median(table[t]) for t in steps], [min(table[t]) for t in steps],
            [max(table[t]) for t in steps])


def lr_decay_steps(summary: dict) -> list[int]:
    """Logged steps at which the learning rate had just decreased (the decays of the schedule)."""
    steps, lrs = step_values(summary, "lr")
    return [s for s, prev, cur in zip(steps[1:], lrs, lrs[1:]) if cur < prev]


def dataset_sizes(cfg) -> tuple[int, int]:
    """(training images, test images) of the configuration's dataset (builds it)."""
    from .data import build_datasets

    train, test, _ = build_datasets(cfg)
    return len(train), len(test)


def describe_data(cfg) -> str:
    """"digits 16x16 (1348 train / 449 test images)" for in-memory datasets, the dataset name otherwise."""
    if cfg.dataset in ("digits", "synthetic"):
        train, test = dataset_sizes(cfg)
        return f"{cfg.dataset} {cfg.image_size}x{cfg.image_size} ({train} train / {test} test images)"
    return cfg.dataset + (f" (subset of {cfg.train_subset} training images)" if cfg.train_subset else "")
