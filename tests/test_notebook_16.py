"""Papermill smoke run of notebooks/16_summary.ipynb on a results tree of SYNTHETIC reports.

The reports below are made-up test data (scale "SYNTHETIC ..."), never results: they exercise
how notebook 16 files rows and claims under the papers' tables, labels profiles, counts the
orderings and writes SUMMARY.md, the CSV files, the figures and the results README. A second
run on an empty results root must say so and show the paper tables alone.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("papermill")
pytest.importorskip("matplotlib")

from _notebook_outputs import image_outputs  # noqa: E402
from svdlib.experiments.notebook import run_notebook  # noqa: E402
from svdlib.experiments.paper import paper_table  # noqa: E402
from svdlib.experiments.report import write_report  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "16_summary.ipynb"
SYNTHETIC = "SYNTHETIC test data, not a run"


def _paper(name, method, column, d=None):
    return next(r[column] for r in paper_table(name) if r["method"] == method and (d is None or r["d"] == d))


def _row(table, row, metric, paper, ours, std, ours_metric, n=3):
    return {"table": table, "row": row, "metric": metric, "paper": paper, "ours": ours, "ours_std": std,
            "ours_n": n, "ours_metric": ours_metric}


def _synthetic_tree(root: Path) -> None:
    err = "CIFAR100 error (%)"
    write_report(root / "10_decorrelated_bn", "10_decorrelated_bn", "quick", f"{SYNTHETIC} (10)", [
        _row("ECCV22 Table 4", "SVD", err, _paper("decorrelated_bn", "SVD", "cifar100_mean"), 12.0, 0.3,
             "digits error (%)"),
        _row("ECCV22 Table 4", "SVD + NOG", err, _paper("decorrelated_bn", "SVD + NOG", "cifar100_mean"), 11.0, 0.2,
             "digits error (%)"),
        _row("ECCV22 Table 4", "SVD + NOG + OW + OLR", err,
             _paper("decorrelated_bn", "SVD + NOG + OW + OLR", "cifar100_mean"), 12.9, 0.1, "digits error (%)"),
    ], [
        {"claim": "NOG lowers the error of plain SVD", "source": "ECCV22 Table 4", "paper_holds": True,
         "ours_holds": True, "evidence": "synthetic"},
        {"claim": "NOG + OW + OLR is best", "source": "ECCV22 Table 4", "paper_holds": True,
         "ours_holds": None, "evidence": "synthetic", "verdict": "too few runs"},
    ])
    write_report(root / "12_zca_stability", "12_zca_stability", "quick", f"{SYNTHETIC} (12)", [
        _row("TPAMI Table IV", "SVD-Taylor d=4", "success rate",
             _paper("zca_stability", "SVD-Taylor", "success_rate", 4.0), 1.0, 0.0, "success rate"),
        _row("TPAMI Table IV", "SVD d=8", "success rate", _paper("zca_stability", "SVD", "success_rate", 8.0),
             0.5, 0.0, "success rate"),
    ], [
        {"claim": "plain SVD fails for d >= 8", "source": "TPAMI Table IV", "paper_holds": True,
         "ours_holds": False, "evidence": "synthetic"},
    ])
    write_report(root / "14_hybrid_protocol", "14_hybrid_protocol", "paper", f"{SYNTHETIC} (14)", [
        _row("ICCV21 Table 2", "NS then SVD", "top-1 acc (%)", 73.0, 72.5, 0.2, "top-1 acc (%)"),
    ], [
        {"claim": "hybrid beats SVD-only", "source": "ICCV21 Table 2", "paper_holds": True,
         "ours_holds": None, "evidence": "synthetic"},
    ])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root, earlier = tmp_path_factory.mktemp("results16"), tmp_path_factory.mktemp("earlier16")
    _synthetic_tree(root)
    write_report(earlier / "10_decorrelated_bn", "10_decorrelated_bn", "quick", f"{SYNTHETIC} (earlier)", [], [
        {"claim": "NOG lowers the error of plain SVD", "source": "ECCV22 Table 4", "paper_holds": True,
         "ours_holds": None, "evidence": "synthetic", "verdict": "too few runs"}])
    run = run_notebook(NOTEBOOK, root, parameters={"results_root": str(root), "compare_root": str(earlier)},
                       timeout=120)
    return root, run


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_rows_are_filed_under_their_tables_with_profile_and_scale(synthetic):
    root, _ = synthetic
    rows = _csv(root / "summary_rows.csv")
    assert len(rows) == 6
    tables = {r["row"]: r["paper_table"] for r in rows}
    assert tables == {"SVD": "decorrelated_bn", "SVD + NOG": "decorrelated_bn",
                      "SVD + NOG + OW + OLR": "decorrelated_bn", "SVD-Taylor d=4": "zca_stability",
                      "SVD d=8": "zca_stability", "NS then SVD": ""}
    svd = next(r for r in rows if r["row"] == "SVD")
    assert (float(svd["paper"]), float(svd["ours"]), float(svd["ours_std"])) == (19.99, 12.0, 0.3)
    assert svd["profile"] == "quick" and svd["scale"] == f"{SYNTHETIC} (10)" and svd["paper_in_table"] == "True"
    assert next(r for r in rows if r["row"] == "NS then SVD")["profile"] == "paper"
    claims = {c["claim"]: c["verdict"] for c in _csv(root / "summary_claims.csv")}
    assert claims == {"NOG lowers the error of plain SVD": "holds", "NOG + OW + OLR is best": "too few runs",
                      "plain SVD fails for d >= 8": "does not hold", "hybrid beats SVD-only": "not resolved"}


def test_orderings_coverage_and_figures(synthetic):
    root, run = synthetic
    data = json.loads((run.results_dir / "summary.json").read_text())
    assert [r["notebook"] for r in data["reports"]] == ["10_decorrelated_bn", "12_zca_stability", "14_hybrid_protocol"]
    assert data["verdicts"] == {"holds": 1, "does not hold": 1, "not resolved": 1, "too few runs": 1}
    dbn = data["tables"]["decorrelated_bn"]
    # Welch, 3 vs 3: SVD - NOG = 1.0 (p = 0.012), with the paper; NOG+OW+OLR ranks last in ours, first in
    # the paper: SVD - best = -0.9 (p = 0.026) and NOG - best = -1.9 (p = 8e-4) disagree; Holm keeps all three
    assert dbn["ordering"] == {"pairs": 3, "agree": 1, "disagree": 2, "unresolved": 0, "too_few": 0}
    assert dbn["uncovered"] == ["SVD + SN", "SVD + OL", "SVD + OW", "SVD + OLR", "SVD + NOG + OW",
                                "Newton-Schulz iteration"]
    zca = data["tables"]["zca_stability"]
    assert zca["rows"] == 2 and len(zca["uncovered"]) == 23 and "SVD-Taylor (d=4)" not in zca["uncovered"]
    assert data["tables"]["gcp"]["rows"] == 0 and data["tables"]["ICCV21"]["claims"] == 1
    for name in data["figures"].values():
        assert (run.results_dir / name).stat().st_size > 5_000, name
    assert set(data["figures"]) >= {"decorrelated_bn", "zca_stability", "gcp", "ICCV21"}
    assert image_outputs(run.output) == len(data["figures"])  # each table's figure, inline


def test_summary_markdown_and_results_readme(synthetic):
    root, _ = synthetic
    md = (root / "SUMMARY.md").read_text()
    assert "No report.json" not in md and "not a paper-scale reproduction" in md
    assert "| SVD + NOG | CIFAR100 error (%) | 19.43 | 11.00 ± 0.20 | 3 | digits error (%) | `quick` |" in md
    assert "1 agree, 2 disagree, 0 not resolved, 0 too few runs" in md
    assert "| 10_decorrelated_bn | NOG lowers the error of plain SVD | holds | too few runs | **holds** |" in md
    assert "1 claims in both runs; 1 changed verdict" in md
    gcp = md.split("### ECCV22 Table 5")[1].split("###")[0]
    assert "No run reported on this table yet" in gcp and "73.82" in gcp
    assert "## Other results" in md and "ICCV21 Table 2" in md and "16_summary/table_" in md
    readme = (root / "README.md").read_text()
    assert "make reproduce ONLY=10 PROFILE=paper DATA=/path/to/data" in readme
    assert f"`paper`: {SYNTHETIC} (14)" in readme


def test_empty_results_root_shows_the_paper_tables_alone(tmp_path):
    run = run_notebook(NOTEBOOK, tmp_path, parameters={"results_root": str(tmp_path)}, timeout=120)
    md = (tmp_path / "SUMMARY.md").read_text()
    assert "No report.json was found" in md
    assert md.count("No run reported on this table yet") == 6  # every stored paper table
    assert "19.05" in md and "73.82" in md  # paper values shown alone
    assert _csv(tmp_path / "summary_rows.csv") == [] and _csv(tmp_path / "summary_claims.csv") == []
    data = json.loads((run.results_dir / "summary.json").read_text())
    assert data["reports"] == [] and len(data["figures"]) == 6
