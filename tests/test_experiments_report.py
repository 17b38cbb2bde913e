import json

import pytest

from svdlib.experiments.report import load_reports, write_report

ROW = {"table": "T4", "row": "SVD", "metric": "err", "paper": 4.35, "ours": float("nan")}
CLAIM = {"claim": "c", "source": "T4", "paper_holds": True, "ours_holds": None, "evidence": "noise"}


def test_round_trip_and_nan_becomes_null(tmp_path):
    write_report(tmp_path / "10_x", "10_x", "quick", "tiny", [ROW], [CLAIM])
    (report,) = load_reports(tmp_path)
    assert report["rows"][0]["ours"] is None and report["profile"] == "quick"
    json.loads((tmp_path / "10_x" / "report.json").read_text())


def test_validation_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="profile"):
        write_report(tmp_path, "x", "full", "s", [], [])
    with pytest.raises(ValueError, match="lacks keys"):
        write_report(tmp_path, "x", "quick", "s", [{"table": "T"}], [])
    with pytest.raises(ValueError, match="ours_holds"):
        write_report(tmp_path, "x", "quick", "s", [], [{**CLAIM, "ours_holds": "yes"}])
    assert write_report("", "x", "quick", "s", [ROW], [CLAIM]) is None
