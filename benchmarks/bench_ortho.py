"""Overhead of NOG and OLR (svdlib.ortho.PreSVD) relative to a plain optimizer step and backward.

The ECCV 2022 paper (app. C, Table 6) reports +2% (NOG) and +1% (OLR) of the backward pass of a
ResNet-50 on CIFAR100 with an RTX A6000. Here a small CNN whose first convolution (3 -> 64, 3x3,
the paper's Pre-SVD layer: a 64 x 27 matrix) feeds the rest of the network is timed in one run:
each repetition times backward and ``optimizer.step()`` for every configuration in turn (so drift
affects all alike) and medians are reported. Ratios are only comparable within one run and one
machine. The extra time of NOG/OLR is a fixed cost per step (an SVD of the 64 x 27 gradient, three
dot products), independent of the rest of the network, while the backward of this small model is
far cheaper than a ResNet-50's: its "% of backward" is an upper bound of what a real network shows
(scale the model with --width/--size/--batch to see it fall).

Usage::

    python benchmarks/bench_ortho.py                 # prints the table
    python benchmarks/bench_ortho.py --json          # also writes benchmarks/results/<device>-<date>-ortho.json
    python benchmarks/bench_ortho.py --device cuda --repeats 200
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._timing import default_result_path, environment, format_table, write_json_atomic  # noqa: E402
from svdlib.ortho import PreSVD, nearest_orthogonal, presvd_param_groups  # noqa: E402

CONFIGS = {"plain": (False, False), "NOG": (True, False), "OLR": (False, True), "NOG+OLR": (True, True)}


def _model(width: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1, bias=False),  # the Pre-SVD layer
        nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, width, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def run(repeats: int, batch: int, width: int, size: int, device: torch.device, nog_method: str) -> dict:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(10, (batch,), generator=gen).to(device)
    setups = {}
    for name, (nog, olr) in CONFIGS.items():
        model = _model(width).to(device)
        opt = torch.optim.SGD(presvd_param_groups(model, model[0]), lr=0.1, momentum=0.9, weight_decay=5e-4)
        hook = PreSVD(opt, model[0], nog=nog, olr=olr, nog_method=nog_method) if (nog or olr) else None
        setups[name] = (model, opt, hook)
    times = {name: {"backward": [], "step": []} for name in CONFIGS}
    for rep in range(repeats + 3):  # 3 warm-up repetitions are discarded
        for name, (model, opt, _) in setups.items():
            opt.zero_grad(set_to_none=False)
            loss = nn.functional.cross_entropy(model(x), y)
            tb = _timed(loss.backward, device)
            ts = _timed(opt.step, device)
            if rep >= 3:
                times[name]["backward"].append(tb)
                times[name]["step"].append(ts)
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    plain_step = med["plain"]["step"]
    # NOG/OLR act inside step(), so backward is the same computation in every configuration:
    # its median over all of them is the least noisy denominator
    plain_bwd = statistics.median([x for t in times.values() for x in t["backward"]])
    rows = {}
    for name in CONFIGS:
        extra = med[name]["step"] - plain_step
        rows[name] = {
            "step_ms": 1e3 * med[name]["step"],
            "extra_ms": 1e3 * extra,
            "backward_ms": 1e3 * med[name]["backward"],
            "step_ratio_vs_plain_step": med[name]["step"] / plain_step,
            "overhead_pct_of_backward": 100.0 * extra / plain_bwd,
        }
    # the NOG kernel alone, SVD vs Newton-Schulz, on the 64 x 27 gradient
    G = torch.randn(64, 3, 3, 3, generator=gen).to(device)
    kernel = {}
    for method in ("svd", "newton_schulz"):
        samples = [_timed(lambda: nearest_orthogonal(G, method=method), device) for _ in range(repeats + 3)][3:]
        kernel[method + "_ms"] = 1e3 * statistics.median(samples)
    return {"configs": rows, "backward_ms_all_configs": 1e3 * plain_bwd, "nog_kernel_64x27": kernel}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=20, help="timed repetitions per configuration (default 20)")
    ap.add_argument("--batch", type=int, default=8, help="images per batch (default 8)")
    ap.add_argument("--size", type=int, default=16, help="image side in pixels (default 16; CIFAR is 32)")
    ap.add_argument("--width", type=int, default=32, help="channels of the later convolutions (default 32)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--nog-method", default="auto", choices=("auto", "svd", "newton_schulz"))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op CPU threads (default 1: small ops, and stable timings on a shared CPU)")
    ap.add_argument("--json", action="store_true", help="write benchmarks/results/bench_ortho.json")
    args = ap.parse_args(argv)
    if min(args.repeats, args.batch, args.width, args.size) < 1:
        ap.error(f"--repeats, --batch, --width and --size must be positive, got "
                 f"{args.repeats}, {args.batch}, {args.width}, {args.size}")
    if args.threads < 1:
        ap.error(f"--threads must be positive, got {args.threads}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda requested but CUDA is not available")
    result = run(args.repeats, args.batch, args.width, args.size, device, args.nog_method)
    print(f"PreSVD overhead, {args.device}, batch {args.batch}, medians of {args.repeats} "
          "(paper, ResNet-50 on an A6000: NOG +2%, OLR +1% of backward)")
    rows = [{"config": name, **r} for name, r in result["configs"].items()]
    columns = ["config", "step_ms", "extra_ms", "backward_ms", "step_ratio_vs_plain_step", "overhead_pct_of_backward"]
    print(format_table(rows, columns))
    k = result["nog_kernel_64x27"]
    print(f"nearest_orthogonal 64x27: svd {k['svd_ms']:.3f} ms, newton_schulz {k['newton_schulz_ms']:.3f} ms")
    if args.json:
        env = environment(device)
        target = write_json_atomic(
            default_result_path("ortho", env),
            {"benchmark": "bench_ortho", "environment": env, "args": vars(args), **result},
        )
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
