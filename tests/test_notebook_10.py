"""Papermill smoke run of notebooks/10_decorrelated_bn.ipynb with the smallest overrides.

One seed, one epoch of six steps, two configurations (SVD and SVD + NOG). Checks what the
notebook writes to ``results_dir``: the report.json that notebook 16 aggregates (labelled with
the profile, the paper's Table 4 numbers beside ours, our numbers equal to the runs' own
summaries), the training runs and their condition numbers, the tables and figures.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("papermill")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from _notebook_outputs import image_outputs  # noqa: E402
from svdlib.experiments.metrics import read_json, read_metrics  # noqa: E402
from svdlib.experiments.notebook import run_notebook  # noqa: E402
from svdlib.experiments.paper import paper_table  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "10_decorrelated_bn.ipynb"
SMALLEST = {"seeds": 1, "epochs": 1, "configs": "dbn_svd,dbn_nog", "train_subset": 384,
            "test_subset": 128, "max_steps_per_epoch": 6}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nb10")
    return run_notebook(NOTEBOOK, out, parameters=SMALLEST, timeout=300)


@pytest.fixture(scope="module")
def report(run):
    return json.loads((run.results_dir / "report.json").read_text())


def _summary(run, config):
    return read_json(run.results_dir / "runs" / config / "seed=0" / "summary.json")


def test_report_is_labelled_with_profile_and_scale(report):
    assert report["notebook"] == "10_decorrelated_bn" and report["profile"] == "quick"
    assert "digits" in report["scale"] and "1 epochs" in report["scale"] and "1 seed(s)" in report["scale"]
    for row in report["rows"]:
        assert "quick" in row["ours_metric"] and "digits" in row["ours_metric"]
        assert row["metric"].startswith("CIFAR100")


def test_rows_put_the_paper_beside_our_runs(run, report):
    paper = {r["method"]: r for r in paper_table("decorrelated_bn")}
    rows = {r["row"]: r for r in report["rows"]}
    assert sorted(rows) == ["SVD", "SVD + NOG"]
    for method, config in (("SVD", "dbn_svd"), ("SVD + NOG", "dbn_nog")):
        row, summary = rows[method], _summary(run, config)
        assert row["table"] == "ECCV22 Table 4" and row["config"] == config
        assert (row["paper"], row["paper_std"], row["paper_min"]) == (
            paper[method]["cifar100_mean"], paper[method]["cifar100_std"], paper[method]["cifar100_min"])
        assert summary["profile"] == "quick" and summary["status"] == "finished"
        assert summary["epochs_completed"] == 1 and summary["steps"] == 6
        assert row["ours"] == pytest.approx(summary["final_test_error"]) and 0 <= row["ours"] <= 100
        assert row["ours_std"] is None and row["seeds"] == 1 and row["diverged"] == 0 and row["ours_n"] == 1
        # the logged kappa summary is the geometric mean of the step lines' largest group kappa
        ks = [s["cond_max"] for s in read_metrics(run.results_dir / "runs" / config / "seed=0", "step")]
        assert [1 < k < math.inf for k in ks] == [True, True]
        assert row["kappa_geomean"] == pytest.approx(math.exp(sum(math.log(k) for k in ks) / len(ks)), rel=1e-9)


def test_nog_changes_the_training_only_after_the_first_step(run):
    steps = {c: read_metrics(run.results_dir / "runs" / c / "seed=0", "step") for c in ("dbn_svd", "dbn_nog")}
    assert [s["step"] for s in steps["dbn_svd"]] == [s["step"] for s in steps["dbn_nog"]] == [1, 5]
    # same seed, same first batch: identical covariance before any update
    assert steps["dbn_nog"][0]["cond_max"] == pytest.approx(steps["dbn_svd"][0]["cond_max"], rel=1e-12)
    # NOG replaces the stem conv's gradient by U V^T: the weights, hence the covariance, differ after
    assert steps["dbn_nog"][1]["cond_max"] != pytest.approx(steps["dbn_svd"][1]["cond_max"], rel=1e-6)
    assert "presvd_lr" in steps["dbn_nog"][1] and "presvd_lr" not in steps["dbn_svd"][1]


def test_one_seed_is_too_few_runs_for_every_claim(report):
    paper = {r["method"]: r for r in paper_table("decorrelated_bn")}
    claims = {c["claim"]: c for c in report["claims"]}
    error_claim = claims["SVD + NOG has a lower error than SVD"]
    assert error_claim["paper_holds"] == (paper["SVD + NOG"]["cifar100_mean"] < paper["SVD"]["cifar100_mean"])
    assert "NOG lowers the condition number of SVD" in claims
    for c in report["claims"]:
        assert c["verdict"] == "too few runs" and c["ours_holds"] is None, c
        assert c["stats"]["test"] == "paired t" and c["stats"]["n"] == [1], c


def test_tables_and_figures_are_written(run):
    with open(run.results_dir / "errors.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["config"] for r in rows] == ["dbn_svd", "dbn_nog"]
    assert all(r["profile"] == "quick" and r["paper_mean"] and r["finished"] == "1" for r in rows)
    for name in ("errors.png", "condition_number_curves.png", "conditioning_vs_error.png"):
        assert (run.results_dir / name).stat().st_size > 10_000, name
    assert image_outputs(run.output) == 3  # the executed notebook shows them inline
