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


def test_claims_carry_one_verdict_word_consistent_with_ours_holds(tmp_path):
    write_report(tmp_path / "a", "10_a", "long", "s", [ROW], [CLAIM, {**CLAIM, "verdict": "too few runs"}])
    (report,) = load_reports(tmp_path)
    assert [c["verdict"] for c in report["claims"]] == ["not resolved", "too few runs"]
    with pytest.raises(ValueError, match="verdict must be one of"):
        write_report(tmp_path, "x", "quick", "s", [], [{**CLAIM, "verdict": "True"}])
    with pytest.raises(ValueError, match="contradicts"):
        write_report(tmp_path, "x", "quick", "s", [], [{**CLAIM, "verdict": "holds"}])


def test_claim_table_is_one_holm_family():
    from svdlib.experiments import stats
    from svdlib.experiments.report import ClaimTable

    table = ClaimTable("quick")
    # Welch p = 0.030 each (3 vs 3 runs, sd 0.37, difference 1): decided alone, not after Holm over two
    for name in ("first", "second"):
        table.add(name, "T4", True, stats.unpaired([1.0, 1.37, 0.63], [0.0, 0.37, -0.37], stats.higher()))
    table.add("nothing run", "T4", True, None)
    table.add("two seeds", "T4", True, stats.unpaired([1.0, 1.1], [0.0, 0.1], stats.higher()))
    claims = table.claims()
    assert [c["verdict"] for c in claims] == ["not resolved", "not resolved", "not resolved", "too few runs"]
    assert all(c["ours_holds"] is None for c in claims) and claims[0]["stats"]["p_holm"] > 0.05 > claims[0]["stats"]["p"]
    assert "Holm" in claims[0]["evidence"] and claims[0]["evidence"].endswith("[quick]")
    assert claims[2]["stats"] is None and "not run" in claims[2]["evidence"]
    assert "| first | T4 | holds | **not resolved** |" in table.markdown()
    assert table.reversals() == []
