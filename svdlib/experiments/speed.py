"""What notebook 15 times: its settings per profile, the cases it times, and the benchmark scripts.

* :data:`PROFILES`, :func:`speed_settings`: sizes and repetition counts of ``quick`` (CPU,
  small), ``long`` (the same sizes, more repetitions) and ``paper`` (the papers' sizes, GPU).
* :func:`covariances`: full-rank sample covariances to time the meta-layers on.
* :func:`training_step_case`: one SGD step of a ResNet whose stem BN is decorrelated BN, with the
  Pre-SVD treatments of the orthogonality paper (Table 6), split into forward and backward.
* :class:`LoopedZCA`: one decorrelated-BN layer per group in a Python loop, as the papers' code
  processed the groups (Fig. 7 of *Robust Differentiable SVD*).
* :func:`wct_case`: WCT inference (Table X).
* :func:`run_benchmark`, :func:`recorded_results`, :func:`lookup`, :func:`case_table`: run a
  script of ``benchmarks/`` as a subprocess with ``--out`` and read its JSON; read the JSON files
  recorded in ``benchmarks/results/`` (the GPU runs, and CPU runs kept for the record) and tabulate
  them. The notebook never imports the scripts.

Every case returns ``{phase: seconds}`` for :func:`svdlib.experiments.timing.interleaved`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import svdlib

__all__ = ["PROFILES", "speed_settings", "covariances", "training_step_case", "LoopedZCA", "wct_case",
           "run_benchmark", "recorded_results", "lookup", "case_table"]

#: quick: CPU, one thread, small sizes; long: the same sizes with more repetitions; paper: the
#: papers' sizes on a GPU (ResNet-50 at batch 128, 64 channels at 32x32, 256x256 covariances).
PROFILES = {
    "quick": dict(device="cpu", repeats=15, remedy_batch=16, remedy_n=32, fig7_channels=64, fig7_batch=16,
                  fig7_hw=8, fig7_repeats=3, net_batch=8, net_size=16, classes=10,
                  net=dict(block="basic", blocks=[1, 1, 1, 1], width=16, stem_width=32),
                  wct_channels=256, wct_hw=16, benchmark_args=["--quick", "--device", "cpu"]),
    "long": dict(device="cpu", repeats=40, remedy_batch=16, remedy_n=32, fig7_channels=64, fig7_batch=16,
                 fig7_hw=8, fig7_repeats=10, net_batch=8, net_size=16, classes=10,
                 net=dict(block="basic", blocks=[1, 1, 1, 1], width=16, stem_width=32),
                 wct_channels=256, wct_hw=16, benchmark_args=["--quick", "--device", "cpu"]),
    "paper": dict(device="cuda", repeats=50, remedy_batch=256, remedy_n=256, fig7_channels=64, fig7_batch=128,
                  fig7_hw=32, fig7_repeats=20, net_batch=128, net_size=32, classes=100,
                  net=dict(block="bottleneck", blocks=[3, 4, 6, 3], width=64, stem_width=64),
                  wct_channels=256, wct_hw=64, benchmark_args=["--device", "cuda", "--dtypes", "float32"]),
}


def speed_settings(profile: str, **overrides) -> dict:
    """The settings of ``profile`` with the given values replaced (0, "", None keep the profile's)."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    S = {**PROFILES[profile]}
    unknown = sorted(set(overrides) - set(S))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; expected some of {sorted(S)}")
    S.update({k: v for k, v in overrides.items() if v not in (0, "", None)})
    if S["fig7_channels"] < 4 or S["fig7_channels"] & (S["fig7_channels"] - 1):
        raise ValueError(f"fig7_channels must be a power of two >= 4, got {S['fig7_channels']}")
    if S["wct_channels"] % 8:
        raise ValueError(f"wct_channels must be a multiple of 8 (8 groups), got {S['wct_channels']}")
    if S["device"] not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {S['device']!r}")
    return S


def covariances(batch: int, n: int, seed: int = 0, dtype=None):
    """``batch`` sample covariances of ``2n`` Gaussian samples of ``n`` features (full rank)."""
    g = torch.Generator().manual_seed(seed)
    return svdlib.covariance(torch.randn(batch, n, 2 * n, generator=g, dtype=dtype or torch.float64))


def training_step_case(treatments: str, kind: str, layer_options: dict, settings: dict, images, labels, clock,
                       seed: int = 0):
    """One SGD step of the Table 6 network: ``{"fp": forward + loss, "bp": backward + optimizer step}``.

    ``treatments`` is "+"-separated among ``ow``, ``nog``, ``olr`` ("" for plain SVD); ``kind``
    is ``"zca"`` (decorrelated BN with ``layer_options``) or ``"bn"`` (BatchNorm2d). NOG and OLR
    act inside ``optimizer.step()`` (:class:`svdlib.ortho.PreSVD`), OW re-parametrises the stem.
    """
    from svdlib.ortho import PreSVD, orthogonal_weight, presvd_param_groups

    from .models import ResNet

    torch.manual_seed(seed)
    factory = None
    if kind == "zca":
        def factory(c):
            return svdlib.nn.DecorrelatedBatchNorm2d(c, track_condition_number=False, **layer_options), None
    model = ResNet(settings["classes"], stem="cifar", kind=kind, meta_factory=factory, **settings["net"])
    model = model.to(images.device).train()
    parts = set(filter(None, treatments.split("+")))
    if "ow" in parts:
        orthogonal_weight(model.pre_svd)
    opt = torch.optim.SGD(presvd_param_groups(model, model.pre_svd), lr=0.1, momentum=0.9, weight_decay=5e-4)
    hook = PreSVD(opt, model.pre_svd, nog="nog" in parts, olr="olr" in parts) if parts & {"nog", "olr"} else None

    def step():
        opt.zero_grad(set_to_none=False)
        t0 = clock()
        loss = nn.functional.cross_entropy(model(images), labels)
        t1 = clock()
        loss.backward()
        opt.step()
        t2 = clock()
        return {"fp": t1 - t0, "bp": t2 - t1}

    step.keep = (model, opt, hook)  # the hook lives as long as the step
    return step


class LoopedZCA(nn.Module):
    """One :class:`svdlib.nn.DecorrelatedBatchNorm2d` per group of ``d`` channels, called in a loop."""

    def __init__(self, channels: int, d: int, **options):
        super().__init__()
        if channels % d:
            raise ValueError(f"d must divide channels ({channels}), got d={d}")
        self.d = d
        self.parts = nn.ModuleList(svdlib.nn.DecorrelatedBatchNorm2d(d, **options) for _ in range(channels // d))

    def forward(self, x):
        return torch.cat([part(chunk) for part, chunk in zip(self.parts, x.split(self.d, dim=1))], dim=1)


def wct_case(content, style, clock, groups: int = 8, **options):
    """WCT inference (no gradient) of ``content`` with ``style``: ``{"fwd": seconds}``."""
    def step():
        with torch.no_grad():
            t0 = clock()
            svdlib.nn.wct(content, style, groups=groups, **options)
            return {"fwd": clock() - t0}

    return step


# ----------------------------------------------------------------------------- benchmark scripts
def _benchmarks_folder() -> Path:
    for base in (Path.cwd(), *Path.cwd().parents):
        if (base / "benchmarks" / "bench_spine.py").is_file():
            return base / "benchmarks"
    raise FileNotFoundError(f"benchmarks/bench_spine.py not found in {Path.cwd()} or above; "
                            "run from a checkout of svdlib")


def run_benchmark(script: str, args: list[str], out: str | os.PathLike, timeout: float = 1800) -> dict:
    """Run ``benchmarks/<script>.py <args> --out <out>`` with this interpreter and return its JSON.

    The script runs in its own process (so its timings and torch settings do not leak into the
    caller's); a non-zero exit (a failed correctness check, say) raises with its output.
    """
    path = _benchmarks_folder() / f"{script}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark script {path}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, str(path), *args, "--out", str(out)], capture_output=True, text=True,
                          timeout=timeout, cwd=path.parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"{path.name} {' '.join(args)} exited with {done.returncode}:\n"
                           f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(out.read_text(encoding="utf-8"))


def recorded_results(folder: str | os.PathLike | None = None) -> list[dict]:
    """The benchmark JSON files in ``folder`` (default ``benchmarks/results`` of the checkout).

    Each entry: ``file, benchmark, device_type ("cuda", "cpu" or "unknown"), device, date,
    torch, data``; unreadable files are reported with ``error`` instead of ``data``.
    """
    folder = Path(folder) if folder else _benchmarks_folder() / "results"
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            out.append({"file": path.name, "error": str(exc)})
            continue
        env = data.get("environment", {})
        kind = env.get("device_type") or ("cuda" if env.get("cuda_available") else "unknown")
        out.append({"file": path.name, "benchmark": data.get("benchmark", "unknown"), "device_type": kind,
                    "device": data.get("device") or env.get("device"), "date": data.get("date") or env.get("date"),
                    "torch": data.get("torch") or env.get("torch"), "data": data})
    return out


def lookup(tree, dotted: str):
    """``tree["a"]["b"]`` for ``"a.b"``; None where a key is missing or the value is not a number."""
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree if isinstance(tree, (int, float)) and not isinstance(tree, bool) else None


_CASE_KEYS = ("dtype", "batch", "n")


def case_table(cases: list[dict]):
    """A pandas DataFrame of a bench_spine JSON's ``cases``: one column per case (dtype, batch x
    n), one row per number. A full run's case holds its ``ratios`` (nested keys become dotted
    rows); an ``--eigh-only`` run's case holds the eigh forward times and their ratio directly
    (its per-pair details are left out)."""
    import pandas as pd

    columns = {}
    for case in cases:
        values = case["ratios"] if "ratios" in case else {
            key: value for key, value in case.items() if key not in _CASE_KEYS and not isinstance(value, dict)}
        columns[f"{case['dtype']} {case['batch']}x{case['n']}"] = pd.json_normalize(values).iloc[0]
    return pd.DataFrame(columns)
