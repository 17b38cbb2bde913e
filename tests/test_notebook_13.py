"""Papermill smoke run of notebooks/13_style_transfer.ipynb with the smallest overrides.

Checks the metrics the notebook writes to ``results_dir``: labelled with the profile, one record
per treatment and fine-tuning seed, the colour-transfer identities, the paper's Table IX beside
ours, the claims against an independent paired t interval (scipy), the figures in the executed
notebook.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("papermill")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from _notebook_outputs import image_outputs  # noqa: E402
from svdlib.experiments.notebook import run_notebook  # noqa: E402
from svdlib.experiments.paper import paper_table  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "13_style_transfer.ipynb"
TREATMENTS = ["exact", "taylor", "clip", "power_iteration", "divided_difference", "newton_schulz"]
SMALLEST = {"ae_steps": 20, "finetune_steps": 2, "n_pairs": 2, "pair_size": 32, "n_directions": 1}  # 3 seeds


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nb13")
    return run_notebook(NOTEBOOK, out, parameters=SMALLEST, timeout=300)


def test_metrics_are_written_and_labelled_with_the_profile(run):
    metrics = json.loads((run.results_dir / "metrics.json").read_text())
    assert metrics["profile"] == "quick" and metrics["comparable_to_paper"] is False
    assert "not the paper's protocol" in metrics["protocol"]
    settings = metrics["settings"]
    overridden = tuple(settings[k] for k in ("ae_steps", "finetune_steps", "n_pairs", "pair_size", "seeds"))
    assert overridden == (20, 2, 2, 32, 3) and metrics["seeds"] == [0, 1, 2]
    assert settings["width"] == 32  # the profile's value where no override was given
    # colour transfer on pixels: exact moments (numpy reference in the notebook), one forward
    ct = metrics["color_transfer"]
    assert ct["rgb_mean_error"] < 1e-10 and ct["rgb_cov_rel_error"] < 1e-10
    assert ct["forward_max_diff_between_remedies"] < 1e-6
    assert ct["newton_schulz_cov_rel_error"] > ct["rgb_cov_rel_error"]


def test_one_record_per_treatment_and_seed(run):
    metrics = json.loads((run.results_dir / "metrics.json").read_text())
    assert list(metrics["methods"]) == TREATMENTS
    for label, records in metrics["methods"].items():
        assert [r["seed"] for r in records] == [0, 1, 2], label
        for r in records:
            assert r["steps"] == 2 and 0 <= r["skipped_steps"] <= 2, label
            assert r["sharpness"] > 0 and len(r["sharpness_per_pair"]) == 2
            assert r["sharpness"] == pytest.approx(sum(r["sharpness_per_pair"]) / 2, rel=1e-6)
        assert metrics["sharpness_per_seed"][label] == pytest.approx([r["sharpness"] for r in records])
    for label in ("taylor", "clip", "power_iteration", "divided_difference", "newton_schulz"):
        assert all(r["skipped_steps"] == 0 for r in metrics["methods"][label]), label  # every remedy is finite
    assert metrics["methods"]["newton_schulz"][0]["method"] == "newton_schulz"
    # divided differences are the exact gradient: closer to the finite difference than clipping, every seed
    for dd, clip in zip(metrics["methods"]["divided_difference"], metrics["methods"]["clip"]):
        assert dd["directional_error"] < clip["directional_error"]


def test_paper_numbers_beside_ours_and_figures(run):
    metrics = json.loads((run.results_dir / "metrics.json").read_text())
    assert metrics["paper_table9"]["rows"] == paper_table("style_transfer")
    assert metrics["paper_table9"]["paper_method_of_backward"]["taylor"] == "SVD-WCT"
    names = ("color_transfer.png", "feature_wct.png", "finetune_curves.png", "stylised_per_method.png",
             "sharpness_vs_table9.png")
    for name in names:
        assert (run.results_dir / name).stat().st_size > 10_000, name
    assert image_outputs(run.output) == len(names)
    csv = (run.results_dir / "methods.csv").read_text().splitlines()
    assert csv[0].startswith("profile,treatment,") and len(csv) == 1 + len(TREATMENTS)
    assert all(line.startswith("quick,") for line in csv[1:])


# --------------------------------------------------------------------------- report.json
PAPER_NAME = {"taylor": "SVD-WCT", "clip": "Clip-WCT", "power_iteration": "PI-WCT", "newton_schulz": "GD-WCT"}
STYLES = ("cezanne", "monet", "ukiyoe", "vangogh")


@pytest.fixture(scope="module")
def report(run):
    return json.loads((run.results_dir / "report.json").read_text())


def test_report_rows_sit_beside_table9_per_style(run, report):
    from svdlib.experiments.summary import match_table, summarize

    metrics = json.loads((run.results_dir / "metrics.json").read_text())
    assert report["notebook"] == "13_style_transfer" and report["profile"] == "quick"
    assert "2 held-out pairs of 32x32" in report["scale"] and "3 fine-tuning seed(s)" in report["scale"]
    paper = {row["method"]: row for row in paper_table("style_transfer")}
    rows = report["rows"]
    assert all(match_table(r["table"]) == "style_transfer" for r in rows)
    for label in TREATMENTS:
        mine = [r for r in rows if r["treatment"] == label]
        per_seed = metrics["sharpness_per_seed"][label]
        mean = sum(per_seed) / len(per_seed)
        std = math.sqrt(sum((x - mean) ** 2 for x in per_seed) / (len(per_seed) - 1))
        for r in mine:  # one score per treatment: the same on every style row
            assert r["ours"] == pytest.approx(mean, rel=1e-9) and r["ours_std"] == pytest.approx(std, rel=1e-9)
            assert r["ours_n"] == 3
        if label in PAPER_NAME:
            assert [r["style"] for r in mine] == list(STYLES), label
            assert [r["paper"] for r in mine] == [paper[PAPER_NAME[label]][s] for s in STYLES], label
        else:  # exact and divided_difference: no paper value
            assert len(mine) == 1 and mine[0]["paper"] is None, label
    assert any("Newton-Schulz" in r["row"] and "GD-WCT" in r["row"] for r in rows)  # the stand-in says so
    table = summarize([report]).tables["style_transfer"]
    assert all(r["paper_in_table"] for r in table.rows if r["paper"] is not None)
    assert table.uncovered == ["GD-WCT"]


def test_report_claims_follow_an_independent_paired_interval(run, report):
    scipy_stats = pytest.importorskip("scipy.stats")
    metrics = json.loads((run.results_dir / "metrics.json").read_text())
    sharp = metrics["sharpness_per_seed"]
    claims = {c["claim"]: c for c in report["claims"]}
    assert all(c["verdict"] in ("holds", "does not hold", "not resolved", "too few runs") for c in claims.values())
    c = claims["SVD-WCT (taylor) gives sharper images than Clip-WCT (clip)"]
    d = [math.log(a) - math.log(b) for a, b in zip(sharp["taylor"], sharp["clip"])]
    ref = scipy_stats.ttest_1samp(d, 0.0)
    assert c["paper_holds"] is True and c["stats"]["test"] == "paired t" and c["stats"]["n"] == [3]
    assert c["stats"]["estimate"] == pytest.approx(sum(d) / 3, rel=1e-9, abs=1e-15)
    if math.isfinite(ref.pvalue):
        assert c["stats"]["p"] == pytest.approx(ref.pvalue, rel=1e-6)
    assert c["stats"]["p_holm"] >= c["stats"]["p"]  # one Holm family over the notebook's claims
    nearer = claims["the Taylor gradient is nearer the true gradient than clipping's"]
    assert nearer["stats"]["region"] == "< 0" and nearer["source"].startswith("TPAMI21")
    fails = claims["SVD with the exact gradient fails in WCT training (most steps non-finite)"]
    exact_failed = sum(r["skipped_steps"] > 1 for r in metrics["methods"]["exact"])
    assert fails["stats"]["estimate"] == pytest.approx(exact_failed / 3)
    similar = next(c for k, c in claims.items() if k.startswith("PI-WCT has similar sharpness"))
    assert similar["stats"]["region"].startswith("within ±0.0487")  # log(1.05)
