"""The benchmark scripts run end to end on CPU with --quick and write the promised JSON.

No timing assertions (issue 9): only that the scripts pass their own correctness checks,
exit 0 and record ratios, raw medians and the environment.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest


def _run(repo_root, script, out, *extra):
    env = {**os.environ, "PYTHONPATH": str(repo_root), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(repo_root / "benchmarks" / script), "--quick", "--device", "cpu",
         "--out", str(out), *extra],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc, json.loads(out.read_text())


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_spine_quick(repo_root, tmp_path):
    proc, data = _run(repo_root, "bench_spine.py", tmp_path / "spine.json")
    ratios = data["ratios"]
    assert _positive(ratios["eigh_fwd_vs_torch"])
    assert ratios["eigh_fwd_vs_bare_xsyev"] is None  # no cuSOLVER on CPU
    for remedy in ("taylor", "pade", "divided_difference"):
        assert _positive(ratios["sqrtm_fwd_bwd_vs_newton_schulz"][remedy])
        assert _positive(ratios["sqrtm_fwd_bwd_vs_newton_schulz"][f"{remedy}_fused"])
        assert _positive(ratios["remedy_bwd_ms"][remedy]["eager"])
        assert _positive(ratios["remedy_bwd_ms"][remedy]["fused"])
    assert _positive(ratios["divided_difference_bwd_vs_taylor_bwd"])
    for key in ("device", "torch", "cuda", "date"):
        assert key in data
    assert data["torch"] == __import__("torch").__version__
    assert data["correctness"]["passed"] and len(data["correctness"]["checks"]) >= 20
    assert data["target_check"]["evaluated"] is False  # targets are GPU targets
    # raw medians behind every ratio, for every case
    assert {(c["dtype"], c["batch"], c["n"]) for c in data["cases"]} == {
        ("float32", 32, 16), ("float32", 32, 32), ("float64", 32, 16), ("float64", 32, 32)}
    for case in data["cases"]:
        times = case["times_ms"]
        assert _positive(times["torch_eigh_fwd"]) and _positive(times["newton_schulz_fwd_bwd"])
        # eigh vs torch is timed in alternation: the ratio is the median of the paired ratios
        pair = case["timing_detail"]["eigh_pair"]
        assert case["ratios"]["eigh_fwd_vs_torch"] == pair["ratio_median"]
        assert pair["ratio_p25"] <= pair["ratio_median"] <= pair["ratio_p75"] and pair["pairs"] >= 200
        assert (times["torch_eigh_fwd"], times["svdlib_eigh_fwd"]) == (pair["a_median_ms"], pair["b_median_ms"])
    lines = proc.stdout.rstrip().splitlines()  # the ratio table is printed last
    assert lines[-len(data["cases"]) - 3].startswith("ratios (")
    _renders_in_notebook_15(data)


def _renders_in_notebook_15(data):
    """Notebook 15 tabulates recorded bench_spine JSON with svdlib.experiments.speed.case_table:
    one column per case, the eigh forward ratio among the rows, whatever the mode."""
    pytest.importorskip("pandas")
    from svdlib.experiments.speed import case_table

    table = case_table(data["cases"])
    assert list(table.columns) == [f"{c['dtype']} {c['batch']}x{c['n']}" for c in data["cases"]]
    ratios = [c["ratios"]["eigh_fwd_vs_torch"] if "ratios" in c else c["eigh_fwd_vs_torch"] for c in data["cases"]]
    assert table.loc["eigh_fwd_vs_torch"].tolist() == ratios


def test_committed_results_render_in_notebook_15(repo_root):
    """Every bench_spine JSON kept in benchmarks/results/ (what `make reproduce` shows in
    notebook 15) is readable and tabulates."""
    from svdlib.experiments.speed import recorded_results

    recorded = recorded_results(repo_root / "benchmarks" / "results")
    assert recorded and not any("error" in r for r in recorded)
    for r in recorded:
        if r["benchmark"] == "bench_spine" and r["data"].get("cases"):
            _renders_in_notebook_15(r["data"])


def test_bench_spine_eigh_only(repo_root, tmp_path):
    _, data = _run(repo_root, "bench_spine.py", tmp_path / "eigh.json", "--eigh-only", "--dtypes", "float32")
    assert data["mode"] == "eigh_only" and data["correctness"]["passed"]
    assert [(c["batch"], c["n"]) for c in data["cases"]] == [(32, 16), (32, 32)]
    assert all(_positive(c["eigh_fwd_vs_torch"]) for c in data["cases"])
    _renders_in_notebook_15(data)


def test_bench_layers_quick(repo_root, tmp_path):
    _, data = _run(repo_root, "bench_layers.py", tmp_path / "layers.json")
    layer = data["ratios"]["dbn_fwd_bwd_vs_batchnorm"]
    for name in ("taylor", "divided_difference", "newton_schulz", "taylor_fused"):
        assert _positive(layer[name])
    for name in ("one_group", "groups_of_16"):
        assert _positive(data["ratios"]["dbn_eval_fwd_vs_batchnorm"][name])
        assert _positive(data["eval"]["times_ms"][f"dbn_{name}"])
    step = data["training_step"]
    if "skipped" not in step:
        assert _positive(data["ratios"]["resnet_step_vs_batchnorm"]["taylor"])
        assert _positive(step["times_ms"]["batchnorm2d"])
    assert data["device"] and data["torch"]


@pytest.mark.parametrize("name", ["_timing"])
def test_atomic_json_and_labels(repo_root, tmp_path, name):
    sys.path.insert(0, str(repo_root / "benchmarks"))
    try:
        timing = __import__(name)
    finally:
        sys.path.pop(0)
    path = timing.write_json_atomic(tmp_path / "sub" / "r.json", {"a": 1.5, "b": None})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": None}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary left behind
    with pytest.raises(ValueError):
        timing.write_json_atomic(tmp_path / "bad.json", {"x": float("nan")})
    assert not list(tmp_path.glob(".bad.json*"))
    assert timing.device_label({"device": "NVIDIA H100 80GB HBM3"}) == "nvidia-h100-80gb-hbm3"
    stats = timing.time_call(lambda: sum(range(100)), "cpu", warmup=1, min_reps=4, max_reps=4)
    assert stats["reps"] == 4 and 0 < stats["min_ms"] <= stats["median_ms"]
