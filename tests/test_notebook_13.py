"""Papermill smoke run of notebooks/13_style_transfer.ipynb with the smallest overrides.

Checks the metrics the notebook writes to ``results_dir``: labelled with the profile, one row
per treatment, the colour-transfer identities, the paper's Table IX beside ours, the figures.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("papermill")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from svdlib.experiments.notebook import run_notebook  # noqa: E402
from svdlib.experiments.paper import paper_table  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "13_style_transfer.ipynb"
TREATMENTS = ["exact", "taylor", "clip", "power_iteration", "divided_difference", "newton_schulz"]
SMALLEST = {"ae_steps": 20, "finetune_steps": 2, "n_pairs": 2, "pair_size": 32, "n_directions": 1}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nb13")
    return run_notebook(NOTEBOOK, out, parameters=SMALLEST, timeout=300)


def test_metrics_are_written_and_labelled_with_the_profile(run):
    metrics = json.loads((run.results_dir / "metrics.json").read_text())
    assert metrics["profile"] == "quick" and metrics["comparable_to_paper"] is False
    assert "not the paper's protocol" in metrics["protocol"]
    settings = metrics["settings"]
    overridden = tuple(settings[k] for k in ("ae_steps", "finetune_steps", "n_pairs", "pair_size"))
    assert overridden == (20, 2, 2, 32)
    assert settings["width"] == 32  # the profile's value where no override was given
    # colour transfer on pixels: exact moments (numpy reference in the notebook), one forward
    ct = metrics["color_transfer"]
    assert ct["rgb_mean_error"] < 1e-10 and ct["rgb_cov_rel_error"] < 1e-10
    assert ct["forward_max_diff_between_remedies"] < 1e-6
    assert ct["newton_schulz_cov_rel_error"] > ct["rgb_cov_rel_error"]


def test_one_row_per_treatment_with_finite_scores(run):
    metrics = json.loads((run.results_dir / "metrics.json").read_text())
    assert list(metrics["methods"]) == TREATMENTS
    for label, row in metrics["methods"].items():
        assert row["steps"] == 2 and 0 <= row["skipped_steps"] <= 2, label
        assert row["sharpness"] > 0 and math.isfinite(row["sharpness"]), label
        assert metrics["sharpness"][label] == pytest.approx(row["sharpness"], rel=1e-6)
        assert len(metrics["sharpness_per_pair"][label]) == 2
    for label in ("taylor", "clip", "power_iteration", "divided_difference", "newton_schulz"):
        assert metrics["methods"][label]["skipped_steps"] == 0, label  # every remedy is finite
    assert metrics["methods"]["taylor"]["backward"] == "taylor"
    assert metrics["methods"]["newton_schulz"]["method"] == "newton_schulz"
    # divided differences are the exact gradient: closer to the finite difference than clipping
    errors = {k: metrics["methods"][k]["directional_error"] for k in ("divided_difference", "clip")}
    assert errors["divided_difference"] < errors["clip"]


def test_paper_numbers_beside_ours_and_figures(run):
    metrics = json.loads((run.results_dir / "metrics.json").read_text())
    assert metrics["paper_table9"]["rows"] == paper_table("style_transfer")
    assert metrics["paper_table9"]["paper_method_of_backward"]["taylor"] == "SVD-WCT"
    claims = metrics["what_we_showed"]
    assert len(claims) >= 8 and all(set(c) == {"claim", "paper value", "our value"} for c in claims)
    for name in ("color_transfer.png", "feature_wct.png", "finetune_curves.png",
                 "stylised_per_method.png", "sharpness_vs_table9.png"):
        assert (run.results_dir / name).stat().st_size > 10_000, name
    csv = (run.results_dir / "methods.csv").read_text().splitlines()
    assert csv[0].startswith("profile,treatment,") and len(csv) == 1 + len(TREATMENTS)
    assert all(line.startswith("quick,") for line in csv[1:])
