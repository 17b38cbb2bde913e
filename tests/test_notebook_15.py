"""Papermill smoke run of notebooks/15_speed.ipynb with the smallest overrides.

Checks the metrics the notebook writes to ``results_dir``: labelled with the profile and the
device, the accuracy of every remedy against the notebook's numpy reference, one row per
treatment with its ratio to the baseline of the same run, the papers' Table 6 / Table X ratios
beside ours, and the rendering of recorded GPU results. No timing assertions (timings vary with
the machine); only structure, baselines equal to 1 and the mathematics.

The recorded-results folder is a temporary one holding SYNTHETIC benchmark files written by
this test (a fake GPU run of bench_spine and bench_layers, a CPU run, an unreadable file): they
exercise the rendering path only and are not measurements.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("papermill")
pytest.importorskip("matplotlib")

from _notebook_outputs import image_outputs  # noqa: E402
from svdlib.experiments.notebook import run_notebook  # noqa: E402
from svdlib.experiments.paper import paper_table  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "15_speed.ipynb"
TREATMENTS = ["taylor", "pade", "clip", "power_iteration", "divided_difference", "exact", "newton_schulz"]
SMALLEST = {"repeats": 3, "remedy_batch": 4, "remedy_n": 8, "fig7_channels": 8, "fig7_batch": 4,
            "fig7_repeats": 3, "net_batch": 2, "wct_channels": 16}
SYNTHETIC_GPU = "SYNTHETIC test GPU (fixture of tests/test_notebook_15.py, not a measurement)"


def _synthetic_spine_ratios() -> dict:
    """Every key bench_spine.ratio_rows reads; values are made up."""
    per_remedy = {"taylor": 0.91, "pade": 0.97, "divided_difference": 0.88}
    return {
        "eigh_fwd_vs_torch": 0.0123,
        "eigh_fwd_vs_bare_xsyev": 1.04,
        "sqrtm_fwd_bwd_vs_newton_schulz": {**per_remedy, **{f"{k}_fused": v - 0.1 for k, v in per_remedy.items()}},
        "remedy_bwd_ms": {k: {"eager": 2.5, "fused": 0.75} for k in per_remedy},
        "sqrtm_bwd_ms": {k: {"reference": 3.0, "fused": 1.0} for k in per_remedy},
        "divided_difference_bwd_vs_taylor_bwd": 0.93,
        "divided_difference_bwd_vs_taylor_bwd_fused": 0.92,
    }


def _write_synthetic_results(folder: Path) -> None:
    ratios = _synthetic_spine_ratios()
    gpu_env = {"device_type": "cuda", "device": SYNTHETIC_GPU, "cuda_available": True}
    spine = {"benchmark": "bench_spine", "device": SYNTHETIC_GPU, "torch": "0.0-synthetic",
             "date": "2000-01-01T00:00:00+00:00", "environment": gpu_env, "ratios": ratios,
             "cases": [{"dtype": "float32", "batch": 256, "n": 256, "ratios": ratios}],
             "target_check": {"evaluated": True, "eigh_fwd_vs_torch": {"value": 0.0123, "met": False}}}
    layers = {"benchmark": "bench_layers", "device": SYNTHETIC_GPU, "torch": "0.0-synthetic",
              "date": "2000-01-01T00:00:00+00:00", "environment": gpu_env,
              "ratios": {"dbn_fwd_bwd_vs_batchnorm": {"taylor": 1.7, "newton_schulz": 1.5},
                         "resnet_step_vs_batchnorm": {"taylor": 1.02}}}
    cpu = {**spine, "device": "synthetic CPU run", "environment": {"device_type": "cpu", "device": "synthetic CPU run"}}
    (folder / "synthetic-gpu-2000-01-01.json").write_text(json.dumps(spine))
    (folder / "synthetic-gpu-2000-01-01-layers.json").write_text(json.dumps(layers))
    (folder / "synthetic-cpu-2000-01-01.json").write_text(json.dumps(cpu))
    # the layout `bench_spine.py --eigh-only` writes (cases without "ratios"), as in benchmarks/results/
    eigh_only = {"benchmark": "bench_spine", "mode": "eigh_only", "device": "synthetic CPU run",
                 "torch": "0.0-synthetic", "date": "2000-01-01T00:00:00+00:00",
                 "environment": {"device_type": "cpu", "device": "synthetic CPU run"},
                 "cases": [{"batch": 32, "dtype": "float32", "n": 16, "eigh_fwd_vs_torch": 1.0271,
                            "torch_eigh_fwd": 0.37, "svdlib_eigh_fwd": 0.38,
                            "eigh_pair_detail": {"ratio_median": 1.0271, "pairs": 600}}]}
    (folder / "synthetic-cpu-2000-01-01-eigh-only.json").write_text(json.dumps(eigh_only))
    (folder / "broken.json").write_text("{ not json")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    recorded = tmp_path_factory.mktemp("synthetic_benchmark_results")
    _write_synthetic_results(recorded)
    out = tmp_path_factory.mktemp("nb15")
    return run_notebook(NOTEBOOK, out, parameters={**SMALLEST, "gpu_results": str(recorded)}, timeout=300)


@pytest.fixture(scope="module")
def metrics(run):
    return json.loads((run.results_dir / "metrics.json").read_text())


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_labelled_with_profile_and_device(metrics):
    assert metrics["profile"] == "quick" and metrics["comparable_to_paper"] is False
    assert metrics["device"]["type"] == "cpu" and metrics["device"]["threads"] == 1
    assert metrics["device"]["clock"] == "process CPU time"
    assert "not the papers' GPU measurements" in metrics["protocol"]
    settings = metrics["settings"]
    assert (settings["remedy_n"], settings["fig7_channels"], settings["wct_channels"]) == (8, 8, 16)
    assert settings["wct_hw"] == 16 and settings["device"] == "cpu"  # profile values where not overridden
    assert metrics["correctness"]["passed"] is True and metrics["correctness"]["checks"] >= 20


def test_every_remedy_timed_against_newton_schulz_and_checked_against_numpy(metrics):
    rows = metrics["ratios"]["remedies"]
    assert list(rows) == TREATMENTS
    assert rows["newton_schulz"]["fwd_vs_newton_schulz"] == 1.0
    assert rows["newton_schulz"]["bwd_vs_newton_schulz"] == 1.0
    for name, row in rows.items():
        assert _positive(row["fwd_ms"]) and _positive(row["bwd_ms"]), name
        assert row["bwd_vs_newton_schulz"] == pytest.approx(row["bwd_ms"] / rows["newton_schulz"]["bwd_ms"])
        if name != "newton_schulz":  # one eigendecomposition forward, exact to rounding
            assert row["forward_error"] < 1e-10, name
    for name in ("exact", "pade", "divided_difference"):  # the exact gradient (Daleckii-Krein in numpy)
        assert rows[name]["gradient_error"] < 1e-9, name
    assert rows["taylor"]["gradient_error"] > 1e-3  # degree-9 series: biased by design
    assert rows["power_iteration"]["gradient_error"] > 1e-3
    assert rows["newton_schulz"]["forward_error"] > 1e-2  # 5 iterations are an approximation


def test_presvd_rows_beside_paper_table6(metrics):
    rows = metrics["ratios"]["presvd_table6"]
    paper = {r["treatments"] or "svd": r for r in paper_table("timing")}
    assert set(rows) == set(paper)
    for key, row in rows.items():
        assert _positive(row["fp_ms"]) and _positive(row["bp_ms"]), key
        assert row["paper_fp_vs_svd"] == pytest.approx(paper[key]["fp_ms"] / paper["svd"]["fp_ms"])
        assert row["paper_bp_vs_svd"] == pytest.approx(paper[key]["bp_ms"] / paper["svd"]["bp_ms"])
    assert rows["svd"]["fp_vs_svd"] == 1.0 and rows["svd"]["bp_vs_svd"] == 1.0
    assert rows["nog"]["paper_bp_vs_svd"] == pytest.approx(97 / 95)


def test_fig7_group_sizes_and_table_x(metrics):
    fig7 = metrics["ratios"]["fig7"]
    assert fig7["channels"] == 8 and fig7["d"] == [4, 8]
    for row in fig7["rows"]:
        assert row["groups"] == 8 // row["d"]
        for label in ("taylor", "power_iteration", "divided_difference", "taylor, looped", "power_iteration, looped"):
            assert _positive(row[f"{label} bwd_ms"]) and _positive(row[f"{label} fwd_ms"]), (row["d"], label)
        assert row["pi_vs_taylor_bwd"] == pytest.approx(row["power_iteration bwd_ms"] / row["taylor bwd_ms"])
    wct = metrics["ratios"]["wct_table_x"]
    assert metrics["ratios"]["wct_forward_max_diff_clip_vs_taylor"] == 0.0  # same forward, bit for bit
    assert wct["taylor"]["vs_svd_wct"] == 1.0 and _positive(wct["power_iteration"]["fwd_ms"])
    assert wct["power_iteration"]["paper_vs_svd_wct"] == pytest.approx(184 / 122)
    assert wct["gd"]["paper_vs_svd_wct"] == pytest.approx(53 / 122) and wct["gd"]["fwd_ms"] is None
    assert wct["newton_schulz"]["paper_vs_svd_wct"] is None


def test_recorded_results_rendered_and_cpu_runs_not_counted_as_gpu(run, metrics):
    gpu = metrics["gpu_results"]
    kinds = {f["file"]: f["device_type"] for f in gpu["files"]}
    assert kinds == {"synthetic-gpu-2000-01-01.json": "cuda", "synthetic-gpu-2000-01-01-layers.json": "cuda",
                     "synthetic-cpu-2000-01-01.json": "cpu",
                     "synthetic-cpu-2000-01-01-eigh-only.json": "cpu"}  # broken.json skipped
    assert gpu["message"].startswith("2 GPU result file(s)")
    headline = {row["quantity"]: row for row in metrics["headline"]}
    spine_col = f"{SYNTHETIC_GPU} (synthetic-gpu-2000-01-01.json)"
    layers_col = f"{SYNTHETIC_GPU} (synthetic-gpu-2000-01-01-layers.json)"
    assert headline["svdlib.eigh fwd / torch.linalg.eigh"][spine_col] == 0.0123
    assert headline["sqrtm taylor fwd+bwd / Newton-Schulz"][spine_col] == 0.91
    assert headline["ResNet-50 step / BatchNorm2d step"][layers_col] == 1.02
    assert not any("synthetic CPU run" in column for row in metrics["headline"] for column in row)
    text = run.output.read_text()
    assert "[CPU (not a GPU result)]" in text and "broken.json: unreadable" in text
    assert "0.0123" in text  # the recorded bench_spine case rendered
    assert "1.0271" in text  # and an --eigh-only one (its cases hold no "ratios")
    # the live benchmark scripts ran as subprocesses and left their JSON beside the notebook's
    assert json.loads((run.results_dir / "bench_spine_live.json").read_text())["correctness"]["passed"] is True
    assert "dbn_fwd_bwd_vs_batchnorm" in metrics["ratios"]["layers"]


def test_figures_tables_and_claims_written(run, metrics):
    for name in ("remedy_ratios.png", "table6_presvd.png", "fig7_group_size.png", "tableX_wct.png"):
        assert (run.results_dir / name).stat().st_size > 5_000, name
    assert image_outputs(run.output) == 4
    for name, rows in (("remedies.csv", 7), ("table6_presvd.csv", 7), ("fig7_group_size.csv", 2), ("tableX_wct.csv", 5)):
        lines = (run.results_dir / name).read_text().splitlines()
        assert lines[0].startswith("profile,device,") and len(lines) == 1 + rows, name
        assert all(line.startswith("quick,cpu,") for line in lines[1:]), name
    claims = metrics["claims"]
    assert len(claims) == 8 and all(c["evidence"].endswith("[quick]") for c in claims)


# --------------------------------------------------------------------------- report.json
# What notebook 16 aggregates: our ratios beside ECCV22 Table 6, TPAMI Table X and Fig. 7,
# checked against metrics.json of the same run and the stored paper tables; the verdicts of the
# claims must agree in direction with the medians (the spreads they also use are not in metrics).


@pytest.fixture(scope="module")
def report(run):
    return json.loads((run.results_dir / "report.json").read_text())


def test_report_rows_beside_table6_table_x_and_fig7(metrics, report):
    from svdlib.experiments.summary import match_table, summarize

    assert report["notebook"] == "15_speed" and report["profile"] == "quick"
    assert "cpu, 1 thread(s)" in report["scale"] and "Fig. 7: 8 channels" in report["scale"]
    rows = report["rows"]
    t6 = [r for r in rows if r["table"] == "ECCV22 Table 6"]
    paper6 = {r["treatments"] or "svd": r for r in paper_table("timing")}
    ours6 = metrics["ratios"]["presvd_table6"]
    assert len(t6) == 2 * len(paper6)
    for r in t6:
        phase = "fp" if r["metric"].startswith("FP") else "bp"
        assert "RTX A6000" in r["metric"] and f"{phase.upper()} time, ratio to SVD row, CPU quick" in r["ours_metric"]
        assert r["paper"] == paper6[r["treatments"]][f"{phase}_ms"]
        assert r["paper_ratio_to_svd"] == pytest.approx(r["paper"] / paper6["svd"][f"{phase}_ms"])
        assert r["ours"] == pytest.approx(ours6[r["treatments"]][f"{phase}_vs_svd"]) and r["ours_n"] == 8
        low, high = r["ours_ci"]
        assert (low, high) == (1.0, 1.0) if r["treatments"] == "svd" else low <= high
    assert {r["ours"] for r in t6 if r["treatments"] == "svd"} == {1.0}
    tx = {r["treatment"]: r for r in rows if r["table"] == "TPAMI Table X"}
    assert {k: r["paper"] for k, r in tx.items()} == {"taylor": 122, "clip": 122, "power_iteration": 184,
                                                      "newton_schulz": None}
    for key, r in tx.items():
        assert r["ours"] == pytest.approx(metrics["ratios"]["wct_table_x"][key]["vs_svd_wct"])
    fig7 = [r for r in rows if r["table"] == "TPAMI Fig. 7"]
    by_d = {row["d"]: row for row in metrics["ratios"]["fig7"]["rows"]}
    assert len(fig7) == 5 * len(by_d) and all(r["paper"] is None for r in fig7)
    for r in fig7:
        assert r["ours"] == pytest.approx(by_d[r["d"]][f"{r['variant']} bwd_ms"])
    # notebook 16 files them under the stored tables; every paper value is a stored cell
    assert {match_table(r["table"]) for r in rows} == {"timing", "style_transfer", None}
    summary = summarize([report])
    assert summary.tables["timing"].uncovered == []
    assert all(r["paper_in_table"] for t in ("timing", "style_transfer") for r in summary.tables[t].rows
               if r["paper"] is not None)


def test_report_claims_agree_with_their_intervals(metrics, report):
    claims = {c["claim"]: c for c in report["claims"]}
    assert len(claims) == 8 and all(c["paper_holds"] is True for c in claims.values())
    for c in claims.values():  # a decided verdict reads off its own interval (log time ratios)
        st = c["stats"]
        assert st["verdict"] == c["verdict"] and "t" in st["test"]
        if c["verdict"] == "holds" and st["region"].startswith(">"):
            assert st["ci_low"] > 0, c
        if c["verdict"] == "holds" and st["region"].startswith("<="):
            assert st["ci_high"] <= float(st["region"].split()[-1]), c
    for name, limit in (("NOG", 0.03), ("OLR", 0.02)):
        claim = claims[f"{name} adds at most about {2 if name == 'NOG' else 1}% to the backward pass (BP)"]
        assert claim["source"] == "ECCV22 Table 6" and claim["stats"]["region"] == f"<= {math.log(1 + limit):g}"
        assert claim["stats"]["test"] == "paired t" and claim["stats"]["n"] == [8]
    faster = claims["SVD-Taylor backward is faster than SVD-PI backward at every group size d"]
    assert faster["stats"]["test"] == "all of 4 (Welch t)"  # 2 group sizes x batched/looped, across rounds
    same = claims["Clip-WCT and SVD-WCT take the same inference time (the same forward pass), within 10%"]
    assert same["stats"]["region"].startswith("within ±0.0953")
    assert all(c["evidence"].endswith("[quick]") for c in claims.values())
