"""svdlib.experiments.summary: reports filed under the papers' tables, verdicts, orderings,
SUMMARY.md / CSV / README writing and the two-axis figures.

Every report here is SYNTHETIC test data written with write_report; paper values are read
from the stored tables so that the consistency check (paper value found in the table) is real.
"""
from __future__ import annotations

import csv

import pytest

from svdlib.experiments import summary as S
from svdlib.experiments.paper import PAPER_TABLES, paper_table
from svdlib.experiments.report import load_reports, write_report

SYNTHETIC = "SYNTHETIC test data"


def _row(table, row, paper, ours, std=None, metric="err (%)", ours_metric=None, n=3):
    return {"table": table, "row": row, "metric": metric, "paper": paper, "ours": ours, "ours_std": std,
            "ours_n": n, "ours_metric": ours_metric or metric}


def _claim(source, ours_holds, claim="c"):
    return {"claim": claim, "source": source, "paper_holds": True, "ours_holds": ours_holds, "evidence": SYNTHETIC}


@pytest.mark.parametrize("ref, row, expected", [
    ("ECCV22 Table 4", "", "decorrelated_bn"),
    ("ECCV22 Tables 1-4", "SVD + NOG", "decorrelated_bn"),
    ("ECCV22 Table 2", "SVD + NOG + OL", "decorrelated_bn_extra"),
    ("ECCV22 Table 2", "SVD + NOG", "decorrelated_bn"),  # Tables 1-3 repeat Table 4's rows
    ("ECCV 2022 orthogonality paper, Table 5", "", "gcp"),
    ("Tab. 6 (ECCV22)", "", "timing"),
    ("TPAMI Table IV", "SVD-Taylor d=4", "zca_stability"),
    ("Robust Differentiable SVD, Tables III-IV", "", "zca_stability"),
    ("TPAMI21 Table IX", "", "style_transfer"),
    ("TPAMI Table X", "", "style_transfer"),
    ("TPAMI Fig. 7", "", None),
    ("ICCV21 Table 2", "", None),
    ("ECCV22 Fig. 3", "", None),
    ("", "", None),
])
def test_match_table_reads_the_papers_references(ref, row, expected):
    assert S.match_table(ref, row) == expected


def test_every_stored_table_has_a_spec_naming_real_columns():
    assert set(S.TABLES) == set(PAPER_TABLES)
    for name, spec in S.TABLES.items():
        keys = set(paper_table(name)[0])
        assert set(spec.columns) <= keys and {e for e in spec.errors if e} <= keys, name


def test_verdict_reads_the_claim_or_its_ours_holds():
    assert [S.verdict({"ours_holds": v}) for v in (True, False, None)] == ["holds", "does not hold", "not resolved"]
    assert S.verdict({"ours_holds": None, "verdict": "too few runs"}) == "too few runs"
    with pytest.raises(ValueError, match="ours_holds.*'yes'"):
        S.verdict({"ours_holds": "yes"})
    with pytest.raises(ValueError, match="verdict must be one of"):
        S.verdict({"ours_holds": True, "verdict": "True"})


def test_ordering_agreement_counts_pairs_as_worked_out_by_hand():
    def r(name, paper, ours, std, n=5, notebook="n"):
        return dict(_row("T", name, paper, ours, std, ours_metric=f"err (%), mean of {n} seed(s)", n=n),
                    notebook=notebook, profile="quick")

    rows = [r("a", 3.0, 10.0, 0.1), r("b", 2.0, 9.0, 0.1, n=6), r("c", 1.0, 9.9, 0.1),
            r("d", 1.0, 5.0, None, n=1), r("e", 2.0, 1.0, 0.1, notebook="other")]
    # a-b: +1.0, t about 16, the paper's sign: agree (metric names differing in a number pair up)
    # a-c: +0.1, Welch p = 0.16: not resolved;  b-c: -0.9 against the paper's +1, t about -14: disagree
    # a-d, b-d: d has one seed: too few runs;  c-d: a tie in the paper: no pair;  e: another notebook
    out = S.ordering_agreement(rows)
    assert {k: out[k] for k in ("pairs", "agree", "disagree", "unresolved", "too_few")} == {
        "pairs": 5, "agree": 1, "disagree": 1, "unresolved": 1, "too_few": 2}
    assert out["disagreeing"] == [("b", "c")]


def test_ordering_pairs_are_one_holm_family():
    # Welch, 3 vs 3, sd 0.37: a difference of 1 has p = 0.030 (decided alone), of 2 p = 0.0025;
    # Holm over the three pairs: 3 x 0.0025 for a-c, then 2 x 0.030 = 0.06 for a-b and b-c
    rows = [dict(_row("T", name, paper, ours, 0.37, n=3), notebook="n", profile="quick")
            for name, paper, ours in (("a", 3.0, 2.0), ("b", 2.0, 1.0), ("c", 1.0, 0.0))]
    out = S.ordering_agreement(rows[:2])
    assert out["agree"] == 1
    assert S.ordering_agreement(rows)["agree"] == 1  # a-c (diff 2) survives Holm; a-b and b-c do not


def test_ordering_flips_when_one_metric_is_accuracy_and_the_other_error():
    acc_vs_err = [dict(_row("T", name, paper, ours, 0.1, "top-1 acc (%)", "digits error (%)"), notebook="n",
                       profile="quick") for name, paper, ours in (("a", 74.0, 5.0), ("b", 73.0, 8.0))]
    assert S.ordering_agreement(acc_vs_err)["agree"] == 1  # a better in both: higher accuracy, lower error
    same = [dict(r, ours_metric="digits acc (%)") for r in acc_vs_err]
    assert S.ordering_agreement(same)["disagree"] == 1


@pytest.fixture
def reports(tmp_path):
    gcp = paper_table("gcp")
    rows = [_row("ECCV22 Table 5", r["method"], r["top1_acc"], 90.0 - i, 0.1, "top-1 acc (%)", "digits acc (%)")
            for i, r in enumerate(gcp[:4])]
    rows.append(_row("ECCV22 Table 5", "SVD + NOG", 99.9, 80.0, 0.1, "top-1 acc (%)"))  # a misread paper value
    rows.append(_row("ECCV22 Table 2", "SVD + NOG + OL", 20.14, 11.0, 0.5))
    rows.append(_row("TPAMI Fig. 7", "taylor backward", None, 3.2, None, "time (ms)"))
    write_report(tmp_path / "11_gcp", "11_gcp", "quick", f"{SYNTHETIC} 11", rows,
                 [_claim("ECCV22 Table 5", True), _claim("TPAMI Fig. 7", None)])
    write_report(tmp_path / "12_zca", "12_zca", "paper", f"{SYNTHETIC} 12",
                 [_row("TPAMI Table IV", "SVD-Taylor d=16", 1.0, 1.0, 0.0, "success rate")],
                 [_claim("TPAMI Table IV", False)])
    return load_reports(tmp_path)


def test_summarize_files_rows_checks_paper_values_and_lists_uncovered(reports):
    s = S.summarize(reports)
    gcp = s.tables["gcp"]
    assert [r["row"] for r in gcp.rows] == [r["method"] for r in paper_table("gcp")[:4]] + ["SVD + NOG"]
    assert [r["paper_in_table"] for r in gcp.rows] == [True] * 4 + [False]
    reported = {r["method"] for r in paper_table("gcp")[:4]}  # SVD + NOG's paper value is wrong: not covered
    assert gcp.uncovered == [r["method"] for r in paper_table("gcp") if r["method"] not in reported]
    assert [r["row"] for r in s.tables["decorrelated_bn_extra"].rows] == ["SVD + NOG + OL"]
    assert s.tables["decorrelated_bn_extra"].uncovered == ["SVD + NOG + SN", "SVD + NOG + OLR", "SVD + OW + OLR"]
    zca = s.tables["zca_stability"]
    assert "SVD-Taylor (d=16)" not in zca.uncovered and "SVD-Taylor (d=8)" in zca.uncovered  # d is matched too
    assert zca.profiles == ["paper"] and zca.claims[0]["verdict"] == "does not hold"
    assert list(s.other) == ["TPAMI21"] and s.other["TPAMI21"].rows[0]["paper_table"] is None
    assert len(s.rows) == 8 and s.verdict_counts() == {
        "holds": 1, "does not hold": 1, "not resolved": 1, "too few runs": 0}
    # gcp orderings: the paper ranks the first four by top-1; ours are 90, 89, 88, 87 (by list order)
    paper = [r["top1_acc"] for r in paper_table("gcp")[:4]]
    ours = [90.0, 89.0, 88.0, 87.0]
    agree = sum((paper[i] > paper[j]) == (ours[i] > ours[j]) for i in range(4) for j in range(i + 1, 4))
    assert gcp.ordering["agree"] == agree and gcp.ordering["pairs"] == 6  # the misread row has its own metric group


def test_other_references_group_by_paper():
    rows = [dict(_row(ref, "r", None, 1.0)) for ref in ("ICCV21 abstract", "ICCV21 intro para. 4", "svdlib issue 10")]
    report = {"notebook": "14_x", "profile": "quick", "scale": SYNTHETIC, "rows": rows,
              "claims": [_claim("ECCV22 Fig. 2, sec. 4-5", None)]}
    s = S.summarize([report])
    counts = {k: len(t.rows) + len(t.claims) for k, t in s.other.items()}
    assert counts == {"ECCV22": 1, "ICCV21": 2, "svdlib issue 10": 1}
    assert not any(t.has_results for t in s.tables.values())


def test_profile_filter_keeps_one_profile_and_lists_the_rest(reports):
    s = S.summarize(reports, "paper")
    assert [r["notebook"] for r in s.reports] == ["12_zca"] and [r["notebook"] for r in s.skipped] == ["11_gcp"]
    assert not s.tables["gcp"].has_results
    with pytest.raises(ValueError, match="profile must be one of .*'full'"):
        S.summarize(reports, "full")


def test_markdown_puts_ours_beside_the_paper_with_profile_and_marks_foreign_values(reports):
    md = S.summary_markdown(S.summarize(reports), {"gcp": "16_summary/table_gcp.png"})
    gcp = md.split("### ECCV22 Table 5")[1].split("### ")[0]
    row = "| SVD | top-1 acc (%) | 73.13 | 90.00 ± 0.10 | 3 | digits acc (%) | `quick` | 11_gcp |"
    assert row in gcp
    assert "| 11_gcp | `quick` | SYNTHETIC test data 11 |" in md  # the scale, once per run
    assert "99.9 †" in gcp and "not a paper-scale reproduction" in gcp
    assert "![ECCV22 Table 5: GCP, ResNet-18 on ImageNet](16_summary/table_gcp.png)" in gcp
    assert "No run reported on this table yet" in md.split("### ECCV22 Table 6")[1].split("### ")[0]
    other = md.split("## Other results")[1]
    assert "### TPAMI21 (Robust Differentiable SVD)" in other and "| c | TPAMI Fig. 7 | holds | **not resolved** |" in other
    assert "| TPAMI Fig. 7 | taylor backward | time (ms) | — | 3.2 |" in other  # what the row cites
    empty = S.summary_markdown(S.summarize([]))
    assert "No report.json was found" in empty and empty.count("No run reported on this table yet") == len(PAPER_TABLES)
    assert "| SVD + NOG + OW + OLR | nog+ow+olr | 3.93 |" in empty


def test_write_summary_csv_round_trip(reports, tmp_path):
    s = S.summarize(reports)
    paths = S.write_summary(s, tmp_path / "out", {"gcp": tmp_path / "out" / "16_summary" / "g.png"})
    with open(paths["rows"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(S.ROW_COLUMNS) and len(rows) == len(s.rows)
    for written, original in zip(rows, s.rows):
        assert float(written["ours"]) == original["ours"] and written["profile"] == original["profile"]
        assert written["paper"] == ("" if original["paper"] is None else str(original["paper"]))
    with open(paths["claims"], newline="") as fh:
        assert [c["verdict"] for c in csv.DictReader(fh)] == [c["verdict"] for c in s.claims]
    assert "](16_summary/g.png)" in paths["markdown"].read_text()


def test_results_readme_collects_command_files(tmp_path, reports):
    notebooks = tmp_path / "notebooks"
    (notebooks / "commands").mkdir(parents=True)
    for name in ("10_decorrelated_bn", "11_gcp", "16_summary"):
        (notebooks / f"{name}.ipynb").write_text("{}")
    row = "| dbn_svd | paper | `make reproduce ONLY=10 PROFILE=paper DATA=/d` |"
    (notebooks / "commands" / "10.md").write_text(f"| config | profile | command |\n|---|---|---|\n{row}\n")
    path = S.write_results_readme(tmp_path / "results", notebooks / "commands", reports)
    text = path.read_text()
    assert path == tmp_path / "results" / "README.md" and row in text
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| `")}
    assert "not written yet" in lines["| `11_gcp`"] and "`quick`: SYNTHETIC test data 11" in lines["| `11_gcp`"]
    assert "not run here" in lines["| `10_decorrelated_bn`"]
    assert "`paper`: SYNTHETIC test data 12" in lines["| `12_zca`"]
    assert "| `16_summary`" not in lines and "`make reproduce ONLY=11 PROFILE=paper DATA=/path/to/data`" in text
    bare = S.write_results_readme(tmp_path / "r2", tmp_path / "missing", []).read_text()
    assert "No reproduction notebook found." in bare and "make reproduce PROFILE=paper" in bare


def test_figures_keep_paper_and_ours_on_separate_axes(reports):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    s = S.summarize(reports)
    fig = S.plot_table(s.tables["gcp"])
    axes = fig.axes
    assert len(axes) == 4  # two metric groups (digits acc, and the misread row's), paper | ours each
    for ax_p, ax_o in (axes[0:2], axes[2:4]):
        assert ax_p.get_xlabel().startswith("paper: ") and ax_o.get_xlabel().startswith("ours: ")
        assert "profile quick" in ax_o.get_xlabel()
        assert not ax_p.get_shared_x_axes().joined(ax_p, ax_o)
    plt.close(fig)
    alone = S.plot_table(s.tables["decorrelated_bn"])  # no run: the published values only
    assert [ax.get_xlabel().split("\n")[0] for ax in alone.axes] == ["paper: cifar10_mean", "paper: cifar100_mean"]
    plt.close(alone)
    assert S.plot_table(S.TableSummary(None, "ICCV21 Table 9", "none")) is None


def test_resolve_results_root(tmp_path):
    nb_dir = tmp_path / "repo" / "notebooks"
    assert S.resolve_results_root("results", nb_dir) == (tmp_path / "repo" / "results").resolve()
    assert S.resolve_results_root(str(tmp_path / "x"), nb_dir) == (tmp_path / "x").resolve()
    with pytest.raises(ValueError, match="results_root"):
        S.resolve_results_root("", nb_dir)
    assert S.summarize_results(tmp_path / "nowhere").reports == []


def test_verdict_changes_match_claims_by_notebook_and_text():
    def report(profile, verdicts):
        claims = [{"claim": f"c{i}", "source": "ECCV22 Table 4", "paper_holds": True, "ours_holds": None,
                   "evidence": SYNTHETIC, "verdict": v} for i, v in enumerate(verdicts)]
        return {"notebook": "10_x", "profile": profile, "scale": SYNTHETIC, "rows": [], "claims": claims}

    quick = S.summarize([report("quick", ["too few runs", "not resolved"])])
    long = S.summarize([report("long", ["not resolved", "not resolved", "too few runs"])])
    rows = S.verdict_changes(long, quick)
    assert [(r["claim"], r["other"], r["this"], r["changed"]) for r in rows] == [
        ("c0", "too few runs", "not resolved", True), ("c1", "not resolved", "not resolved", False),
        ("c2", None, "too few runs", False)]
    md = S.changes_markdown(rows, "long", "quick")
    assert "3 claims in both runs" not in md and "2 claims in both runs; 1 changed verdict" in md
    assert "| 10_x | c0 | holds | too few runs | **not resolved** |" in md
