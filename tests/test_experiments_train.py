"""The training loop: metrics and summary, conditioning read-out, treatments, hybrid protocol,
resume equality, divergence handling, no silent overwrite, and the CLI."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from svdlib.experiments.checkpoint import load_checkpoint
from svdlib.experiments.config import ExperimentConfig, load_config
from svdlib.experiments.metrics import WALL_CLOCK_FIELDS, read_json, read_metrics, strip_wall_clock
from svdlib.experiments.models import MetaLayerGuard, build_model
from svdlib.experiments.train import (_apply_treatments, _attach_presvd, _build_optimizer, _condition,
                                      main, train)

from test_experiments_data import write_cifar10

REPO = os.path.join(os.path.dirname(__file__), "..")


def tiny(**kw) -> ExperimentConfig:
    """A digits run that takes about a second on a CPU."""
    base = dict(name="tiny", kind="zca", width=8, stem_width=16, group_size=8, image_size=16,
                batch_size=32, epochs=1, train_subset=256, test_subset=128, log_every=2,
                progress=False, num_threads=1)
    return ExperimentConfig(**{**base, **kw})


def _finite(x) -> bool:
    return x is not None and np.isfinite(x)


# --------------------------------------------------------------------------- one epoch
@pytest.mark.parametrize("kind", ["zca", "gcp"])
def test_one_epoch_writes_metrics_and_summary(tmp_path, kind):
    extra = dict(image_size=32, width=8, last_stride=1, gcp_reduced_dim=8) if kind == "gcp" else {}
    summary = train(tiny(kind=kind, **extra), tmp_path)
    assert summary["status"] == "finished" and not summary["diverged"] and summary["finished"]
    assert summary == read_json(tmp_path / "summary.json")
    assert summary["epochs_completed"] == 1 and summary["steps"] == 256 // 32
    assert summary["profile"] == "quick" and summary["config"]["kind"] == kind
    assert summary["environment"]["torch"] == torch.__version__ and summary["environment"]["gpu"] is None
    assert isinstance(summary["failures"], int) and summary["failures"] >= 0
    assert 0 <= summary["final_test_error"] <= 100 and summary["best_test_error"] <= summary["final_test_error"]
    steps, epochs = read_metrics(tmp_path, "step"), read_metrics(tmp_path, "epoch")
    assert [s["step"] for s in steps] == [1, 2, 4, 6, 8] and len(epochs) == 1
    for rec in steps + epochs:
        assert all(_finite(rec[k]) for k in ("cond_max", "cond_mean", "cond_median"))
        assert rec["cond_max"] >= rec["cond_mean"] >= 1 and rec["cond_max"] >= rec["cond_median"] >= 1
        assert rec["cond_singular"] == 0.0
    ep = epochs[0]
    assert ep["lr"] == [0.1, 0.1] and ep["method"] == "eigh" and ep["steps"] == 8
    assert ep["cond_max"] >= max(s["cond_max"] for s in steps) and ep["cond_last"] == steps[-1]["cond_max"]
    assert np.isfinite(ep["train_loss"]) and abs(ep["test_error"] - summary["final_test_error"]) < 1e-12
    assert 0 <= ep["test_acc"] <= ep["test_acc5"] <= 100
    assert set(WALL_CLOCK_FIELDS) & set(ep) == {"epoch_time", "wall_time"}
    assert os.path.exists(tmp_path / "checkpoint.pt") and os.path.exists(tmp_path / "config.yaml")


@pytest.mark.parametrize("kind", ["zca", "gcp"])
def test_condition_number_is_that_of_the_meta_layer_covariance(kind):
    """The metric equals lambda_max / lambda_min of the covariances the layer whitens / pools,
    computed independently with numpy (float64 eigvalsh)."""
    extra = dict(width=8, last_stride=1, gcp_reduced_dim=6) if kind == "gcp" else {}
    cfg = tiny(kind=kind, **extra)
    model = build_model(cfg, 10).train()
    captured = {}
    target = model.stem_conv if kind == "zca" else model.meta_layer.reduce
    target.register_forward_hook(lambda m, i, o: captured.__setitem__("x", o.detach().double()))
    model(torch.randn(16, 3, 16, 16))
    x = captured["x"]
    if kind == "zca":  # channel groups of 8 over B*H*W samples
        feats = x.transpose(0, 1).reshape(16, -1).reshape(2, 8, -1).numpy()
    else:  # one covariance per image over its H*W positions
        feats = x.reshape(16, 6, -1).numpy()
    kappas = []
    for f in feats:
        f = f - f.mean(axis=1, keepdims=True)
        lam = np.linalg.eigvalsh(f @ f.T / f.shape[1])
        kappas.append(lam[-1] / lam[0])
    cond = _condition(model)
    # The ZCA covariance is formed in float64 (measured relative difference <= 1.2e-15 under
    # every perturbation of `make test-perturbed`); the GCP covariance in the network's float32,
    # whose rounding moves kappa by up to ~kappa * eps32 = 1.2e-5 here (measured 6e-8 to 1.2e-7).
    rel = 1e-10 if kind == "zca" else 1e-4
    assert cond["cond_max"] == pytest.approx(max(kappas), rel=rel)
    assert cond["cond_mean"] == pytest.approx(np.mean(kappas), rel=rel)
    lower_median = np.sort(kappas)[(len(kappas) - 1) // 2]  # torch.median's convention
    assert cond["cond_median"] == pytest.approx(lower_median, rel=rel)
    assert cond["cond_singular"] == 0.0


def test_meta_layer_guard_trips_on_overflow():
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen["dtype"] = x.dtype
            return x * 2

    guard = MetaLayerGuard(Probe(), torch.float64)
    x = torch.randn(2, 3, 4, 4)
    y = guard(x)
    assert not guard.tripped and y.dtype == torch.float32 and seen["dtype"] == torch.float64
    torch.testing.assert_close(y, 2 * x)
    x[0, 1, 2, 3] = float("inf")
    assert torch.equal(guard(x), torch.zeros_like(x)) and guard.tripped
    guard.tripped = False
    guard(torch.full((2, 3, 4, 4), 1e200, dtype=torch.float64).float())  # inf after the cast
    assert guard.tripped


# --------------------------------------------------------------------------- treatments, hybrid
def test_treatments_reach_the_pre_svd_layer(tmp_path):
    cfg = tiny(treatments=["nog", "ow", "olr"], epochs=1, max_steps_per_epoch=4, log_every=1)
    model = build_model(cfg, 10)
    _apply_treatments(model, cfg)
    opt = _build_optimizer(model, cfg)
    presvd = _attach_presvd(model, opt, cfg)
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in model.pre_svd.parameters()}
    assert presvd is not None and presvd.nog and presvd.olr
    presvd.detach()
    summary = train(cfg, tmp_path)
    steps = read_metrics(tmp_path, "step")
    assert all(0 < s["presvd_lr"] <= 0.1 for s in steps)
    # OW: the trained stem weight (16 filters x 27 inputs) has orthonormal rows
    fresh = build_model(cfg, 10)
    _apply_treatments(fresh, cfg)
    fresh.load_state_dict(load_checkpoint(tmp_path / "checkpoint.pt")["model"])
    W = fresh.pre_svd.weight.detach().reshape(16, -1).double()
    torch.testing.assert_close(W @ W.T, torch.eye(16, dtype=torch.float64), atol=1e-5, rtol=0)
    assert summary["status"] == "finished"


def test_hybrid_protocol_switches_method(tmp_path):
    cfg = tiny(epochs=2, hybrid_switch_epoch=1, max_steps_per_epoch=2, lr_milestones=[1])
    train(cfg, tmp_path)
    epochs = read_metrics(tmp_path, "epoch")
    assert [e["method"] for e in epochs] == ["newton_schulz", "eigh"]
    assert [e["lr"][0] for e in epochs] == pytest.approx([0.1, 0.01])


# --------------------------------------------------------------------------- resume
def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    """Interrupt after epoch 1 of 2, resume: metrics and weights equal the uninterrupted run.
    CIFAR-format fixture with random crop + flip, so the RNG state must be restored too."""
    write_cifar10(str(tmp_path / "data"), n_train=(8, 8, 8, 8, 8), n_test=8)
    cfg = ExperimentConfig(name="resume", dataset="cifar10", data_root=str(tmp_path / "data"),
                           kind="zca", width=4, stem_width=8, group_size=4, batch_size=8,
                           epochs=2, lr_milestones=[1], treatments=["sn", "nog", "olr"],
                           log_every=1, progress=False, num_threads=1)
    full = train(cfg, tmp_path / "full")
    part = train(cfg, tmp_path / "part", stop_after_epoch=1)
    assert part["status"] == "stopped" and not os.path.exists(tmp_path / "part" / "summary.json")
    assert len(read_metrics(tmp_path / "part", "epoch")) == 1
    with pytest.raises(FileExistsError, match="interrupted run"):
        train(cfg, tmp_path / "part")
    resumed = train(cfg, tmp_path / "part", resume=True)
    assert resumed["status"] == "finished" and resumed["epochs_completed"] == 2
    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    assert len(a) == len(b) == 2 * 5 + 2
    assert strip_wall_clock(a) == strip_wall_clock(b)
    for key in ("final_test_error", "best_test_error", "final_train_loss", "steps", "failures"):
        assert full[key] == resumed[key]
    ma = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    mb = load_checkpoint(tmp_path / "part" / "checkpoint.pt")["model"]
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    # a finished run with resume=True is a no-op returning its summary
    before = os.path.getmtime(tmp_path / "part" / "metrics.jsonl")
    assert train(cfg, tmp_path / "part", resume=True) == read_json(tmp_path / "part" / "summary.json")
    assert os.path.getmtime(tmp_path / "part" / "metrics.jsonl") == before


def test_results_are_never_overwritten_silently(tmp_path):
    cfg = tiny(max_steps_per_epoch=2)
    first = train(cfg, tmp_path)
    with pytest.raises(FileExistsError, match="finished run"):
        train(cfg, tmp_path)
    with pytest.raises(ValueError, match="different config .*seed"):
        train(cfg.replace(seed=1), tmp_path, resume=True)
    # runtime-only fields do not make a finished run stale
    assert train(cfg.replace(progress=True, description="x"), tmp_path, resume=True) == first
    again = train(cfg.replace(seed=1), tmp_path, overwrite=True)
    assert again["config"]["seed"] == 1 and read_json(tmp_path / "summary.json")["config"]["seed"] == 1


# --------------------------------------------------------------------------- divergence
def test_divergence_ends_the_run_cleanly(tmp_path):
    cfg = tiny(lr=1e6, backward="exact", log_every=1, epochs=2)
    summary = train(cfg, tmp_path)
    assert summary["diverged"] and summary["status"] == "diverged" and summary["finished"]
    assert summary["divergence"]["reason"] in ("non-finite loss", "non-finite gradient",
                                               "non-finite or overflowing meta-layer input")
    assert summary["epochs_completed"] < 2
    assert read_json(tmp_path / "summary.json")["diverged"] is True
    steps = read_metrics(tmp_path, "step")
    assert len(steps) == summary["divergence"]["step"] - 1
    assert all(np.isfinite(s["loss"]) for s in steps)
    # a diverged run counts as finished: resume returns it, the success rate can be counted
    assert train(cfg, tmp_path, resume=True)["diverged"] is True


# --------------------------------------------------------------------------- CLI and configs
def test_cli_runs_resumes_and_refuses_to_overwrite(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: cli\nkind: gcp\nwidth: 8\nimage_size: 32\nlast_stride: 1\ngcp_reduced_dim: 8\n"
                   "profiles:\n  quick: {epochs: 1, train_subset: 64, test_subset: 64, batch_size: 32}\n")
    out = str(tmp_path / "run")
    args = ["--config", str(cfg), "--out", out, "--set", "progress=false", "log_every=1", "num_threads=1"]
    assert main(args) == 0
    assert "cli [quick]: finished, 1/1 epochs" in capsys.readouterr().out
    assert main(args) == 2 and "finished run" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    assert main(["--config", str(cfg), "--out", out, "--set", "epochz=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    assert main(["--config", str(cfg), "--out", out, "--print-config", "--profile", "paper"]) == 0
    assert "profile: paper" in capsys.readouterr().out
    swept = str(tmp_path / "swept")
    assert main(args[:2] + ["--out", swept, "--sweep"] + args[4:] + ["sweep={seed: [0, 1]}"]) == 0
    assert capsys.readouterr().out.count("cli [quick]: finished") == 2
    assert sorted(os.listdir(swept)) == ["seed=0", "seed=1"]


@pytest.mark.parametrize("name", ["dbn_nog_ow_olr", "zca_batchnorm"])
def test_a_shipped_config_trains_at_the_quick_profile(tmp_path, name):
    cfg = load_config(os.path.join(REPO, "configs", f"{name}.yaml"), "quick",
                      overrides=["max_steps_per_epoch=2", "epochs=1", "test_subset=64", "progress=false"])
    summary = train(cfg, tmp_path)
    assert summary["status"] == "finished" and summary["profile"] == "quick" and summary["reference"]
    rec = json.loads(open(tmp_path / "metrics.jsonl").readline())
    assert rec["type"] == "step" and rec["lr"][0] == rec["lr"][1] == 0.1
    if name == "zca_batchnorm":  # no meta layer: no condition number
        assert summary["cond_max"] is None and rec["cond_max"] is None
    else:
        assert _finite(summary["cond_max"]) and 0 < rec["presvd_lr"] <= 0.1


def test_run_sweep_skips_finished_runs(tmp_path):
    from svdlib.experiments import collect_summaries, run_sweep

    cfg = tiny(max_steps_per_epoch=1, test_subset=32, sweep={"seed": [0, 1]})
    first = run_sweep(cfg, tmp_path)
    assert [s["sweep_point"] for s in first] == [{"seed": 0}, {"seed": 1}]
    assert [os.path.basename(s["run_dir"]) for s in first] == ["seed=0", "seed=1"]
    assert first[0]["final_train_loss"] != first[1]["final_train_loss"]  # different seeds
    stamps = [os.path.getmtime(os.path.join(s["run_dir"], "metrics.jsonl")) for s in first]
    again = run_sweep(cfg, tmp_path)  # everything finished: nothing is retrained
    assert [os.path.getmtime(os.path.join(s["run_dir"], "metrics.jsonl")) for s in again] == stamps
    assert [s["final_train_loss"] for s in again] == [s["final_train_loss"] for s in first]
    found = collect_summaries(tmp_path)
    assert [s["config"]["seed"] for s in found] == [0, 1] and all(s["profile"] == "quick" for s in found)


def test_eigensolver_failures_are_counted(tmp_path, monkeypatch):
    """A solver that reports one failed matrix per call: the harness's failure counts equal the
    number of eigendecompositions the whitening layer ran (2 groups -> 1 batched call per step)."""
    import svdlib.solvers as solvers

    calls = {"n": 0}
    real = solvers.SOLVERS["torch"]

    def flaky(A):
        lam, U, _ = real(A)
        calls["n"] += 1
        ok = torch.ones(A.shape[:-2], dtype=torch.bool)
        ok.view(-1)[0] = False  # the first matrix of every call "fails" and gets repaired
        return lam, U, ok

    monkeypatch.setitem(solvers.SOLVERS, "torch", flaky)
    cfg = tiny(max_steps_per_epoch=3, log_every=1, epochs=1)
    summary = train(cfg, tmp_path)
    steps, (epoch,) = read_metrics(tmp_path, "step"), read_metrics(tmp_path, "epoch")
    assert summary["failures"] == calls["n"] > 0
    assert epoch["failures"] == sum(s["failures"] for s in steps) >= 3
    assert epoch["failures"] + epoch["eval_failures"] == epoch["failures_total"] == calls["n"]
    assert [s["failures_total"] for s in steps] == list(np.cumsum([s["failures"] for s in steps]))
