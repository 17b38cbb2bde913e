"""Support modules of the reproduction notebooks: atomic writer, timer, figure helpers."""
from __future__ import annotations

import csv
import json
import math

import pytest

from svdlib.experiments import atomic, plots, stats, timing

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def test_atomic_writes_replace_whole_files_and_leave_no_temporaries(tmp_path):
    path = atomic.write_json(tmp_path / "sub" / "r.json", {"a": float("nan"), "b": (1, 2)}, finite=True)
    assert json.loads(path.read_text()) == {"a": None, "b": [1, 2]}
    atomic.write_json(path, {"a": float("inf")})
    assert json.loads(path.read_text()) == {"a": math.inf}  # Python's JSON spelling, read back
    atomic.write_csv(tmp_path / "t.csv", [{"x": 1, "y": None}, {"x": 2}], ["x", "y"])
    with open(tmp_path / "t.csv", newline="") as fh:
        assert list(csv.DictReader(fh)) == [{"x": "1", "y": ""}, {"x": "2", "y": ""}]
    atomic.write_atomic(tmp_path / "w.bin", lambda fh: fh.write(b"\x00\x01"))  # a writer function
    assert (tmp_path / "w.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["r.json", "sub", "t.csv", "w.bin"]
    with pytest.raises(TypeError, match="str, bytes or a writer"):
        atomic.write_atomic(tmp_path / "x", 3)
    with pytest.raises(TypeError, match="not JSON serializable"):
        atomic.write_json(tmp_path / "strict.json", {"a": object()}, finite=True)
    assert not (tmp_path / "strict.json").exists()


def test_interleaved_runs_every_case_per_round_in_shuffled_order():
    calls = []
    cases = {name: (lambda name=name: calls.append(name) or {"fwd": 0.001 * (1 + (name == "slow"))})
             for name in ("fast", "slow", "other")}
    t = timing.interleaved(cases, repeats=5, warmup=1, seed=3)
    assert len(calls) == 18 and all(sorted(calls[3 * r: 3 * r + 3]) == ["fast", "other", "slow"] for r in range(6))
    assert calls[:3] != calls[3:6] or calls[3:6] != calls[6:9]  # reshuffled
    assert t.median("slow", "fwd") == pytest.approx(2.0) and t.quartiles("fast", "fwd") == pytest.approx((1, 1, 1))
    c = t.ratio("slow", "fast", "fwd", stats.higher())
    assert c.test == "paired t" and c.estimate == pytest.approx(math.log(2)) and c.verdict == stats.HOLDS
    assert "time ratio 2.000" in c.describe()
    with pytest.raises(KeyError, match="no timing for case"):
        t.median("missing", "fwd")


def test_ratio_across_rounds_is_unpaired_and_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    a = timing.Timings({"a": {"bwd": [1.0, 1.2, 1.1, 0.9]}}, {"a": 0})
    a.update(timing.Timings({"b": {"bwd": [2.0, 2.2, 1.9]}}, {"b": 1}))
    c = a.ratio("a", "b", "bwd", stats.lower())
    ref = scipy_stats.ttest_ind([math.log(v) for v in (1.0, 1.2, 1.1, 0.9)], [math.log(v) for v in (2.0, 2.2, 1.9)],
                                equal_var=False)
    assert c.test == "Welch t" and c.p == pytest.approx(ref.pvalue, rel=1e-10)
    with pytest.raises(ValueError, match="timed twice"):
        a.update(timing.Timings({"a": {}}, {"a": 2}))


def test_clock_reads_cpu_time_with_one_thread():
    torch = pytest.importorskip("torch")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        clock = timing.Clock("cpu")
        assert clock.name == "process CPU time" and clock() >= 0
        x, g = torch.randn(3, 3), torch.ones(3, 3)
        step = timing.forward_backward_step(lambda m: (m * m).sum(-1), x, g[:, 0], clock)
        assert set(step()) == {"fwd", "bwd"}
    finally:
        torch.set_num_threads(old)
    wall, cpu = timing.Stopwatch().seconds()
    assert wall >= 0 and cpu >= 0


def test_smooth_is_a_centred_moving_average_skipping_nan():
    assert plots.smooth([1.0, 2.0, 3.0, 4.0, 5.0], 3) == pytest.approx([1.5, 2.0, 3.0, 4.0, 4.5])
    out = plots.smooth([1.0, math.nan, 3.0, 5.0], 3)  # a gap stays a gap; its neighbours skip it
    assert out[0] == 1.0 and math.isnan(out[1]) and out[2:] == pytest.approx([4.0, 4.0])
    assert math.isnan(plots.smooth([math.nan], 1)[0])
    with pytest.raises(ValueError, match="window"):
        plots.smooth([1.0], 0)


def test_figure_helpers_draw_what_they_say(tmp_path):
    fig, axes = plt.subplots(1, 4, figsize=(12, 3))
    plots.dot_intervals(axes[0], ["a", "b"], [1.0, math.nan], [0.5, None], [1.5, None], points=[[0.8, 1.2], [2.0]],
                        reference=1.0)
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["a", "b"]
    image = plots.success_heatmap(axes[1], ["SVD", "Taylor"], [4, 64], [[3, 0], [3, 3]], [[3, 3], [3, 3]])
    assert sorted(t.get_text() for t in axes[1].texts) == ["0/3", "3/3", "3/3", "3/3"]
    assert image.get_array()[0, 1] == 0.0
    ceiling = plots.with_infinity(axes[2], [0, 1, 2], [10.0, math.inf, 1000.0], label="a")
    plots.with_infinity(axes[2], [0, 1], [math.inf, math.inf], label="b")
    assert [h.get_label() for h in axes[2].get_legend_handles_labels()[0]] == ["a", "b"]  # one entry each
    assert ceiling == 1e5 and any("∞" in t.get_text() for t in axes[2].texts)
    plots.mark_steps(axes[3], [10, 20])
    plots.smoothed_lines(axes[3], {"loss": [3.0, 2.0, 2.5, 1.0]}, 3)
    assert len(axes[3].lines) == 4
    assert plots.save(fig, "", "x.png") is None
    assert plots.save(fig, tmp_path, "x.png").stat().st_size > 5_000
    plt.close(fig)
    with pytest.raises(ValueError, match="one entry per row"):
        plots.dot_intervals(axes[0], ["a"], [1.0, 2.0])


def test_ratio_interval_is_the_exponentiated_log_interval():
    t = timing.Timings({"a": {"f": [2.0, 2.2, 1.8]}, "b": {"f": [1.0, 1.0, 1.0]}}, {"a": 0, "b": 0})
    r = t.ratio_interval("a", "b", "f")
    assert r["median_ratio"] == pytest.approx(2.0) and r["per_repetition"] == pytest.approx([2.0, 2.2, 1.8])
    logs = [math.log(v) for v in (2.0, 2.2, 1.8)]
    _, lo, hi = stats.mean_ci(logs)
    assert (r["low"], r["high"]) == pytest.approx((math.exp(lo), math.exp(hi)))
    assert r["ratio"] == pytest.approx(math.exp(sum(logs) / 3))


def test_outcomes_keep_infinite_kappa_only_when_asked():
    from svdlib.experiments import reproduction as rp

    runs = [{"diverged": False, "sweep_point": {"seed": s}, "cond_median": v}
            for s, v in enumerate((10.0, math.inf, 1000.0))] + [{"diverged": True, "sweep_point": {"seed": 3},
                                                                  "cond_median": 5.0}]
    assert list(rp.outcomes(runs, "cond_median").values()) == [10.0, 1000.0]
    assert rp.geomean(rp.outcomes(runs, "cond_median").values()) == pytest.approx(100.0)
    assert rp.geomean(rp.outcomes(runs, "cond_median", keep_infinite=True).values()) == math.inf
    assert math.isnan(rp.geomean([]))
    x, y = rp.aligned({(("seed", 0),): 1.0, (("seed", 1),): 2.0}, {(("seed", 1),): 5.0})
    assert (x, y) == ([2.0], [5.0])
