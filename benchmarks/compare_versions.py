"""Time the spine of an older svdlib checkout against this one, call by call, in one process.

A change that should not slow anything down is checked here: the older checkout's ``svdlib/``
is imported under another name (``svdlib_old``; the core modules import each other
relatively), and each pair of calls (eigh forward, eigh forward+backward, sqrtm forward+backward
with several backwards) is timed in alternation (``_timing.time_pair``), so the ratio new/old is
a median of paired ratios, robust to a busy machine. CPU, one thread.

    git worktree add /tmp/svdlib-old <commit>          # or any copy of an older checkout
    python benchmarks/compare_versions.py /tmp/svdlib-old [--sizes 32x16,32x32] [--budget 1.5]

Prints one line per case and dtype; ratio < 1: this checkout is faster.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import svdlib  # noqa: E402

from _timing import time_pair  # noqa: E402
from bench_spine import DTYPES, covariances, parse_sizes  # noqa: E402

BACKWARDS = ("taylor", "pade", "divided_difference", "exact")


def _import_old(checkout: Path):
    package = checkout / "svdlib"
    if not (package / "__init__.py").is_file():
        raise SystemExit(f"{checkout} has no svdlib/ package")
    folder = Path(tempfile.mkdtemp(prefix="svdlib-old-"))
    shutil.copytree(package, folder / "svdlib_old")
    sys.path.insert(0, str(folder))
    import svdlib_old  # noqa: F401

    return sys.modules["svdlib_old"]


def _fwd_bwd_eigh(lib, A, G):
    def run():
        a = A.detach().requires_grad_(True)
        lam, U = lib.eigh(a)
        torch.autograd.grad((U * G).sum() + lam.sum(), a)
    return run


def _fwd_bwd_sqrtm(lib, A, G, backward):
    def run():
        a = A.detach().requires_grad_(True)
        torch.autograd.grad(lib.sqrtm(a, backward=backward), a, G)
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, help="an older checkout (the folder holding svdlib/)")
    parser.add_argument("--sizes", type=parse_sizes, default=[(32, 16), (32, 32)])
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--budget", type=float, default=1.5, help="seconds of alternation per case")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    old = _import_old(args.old)
    print(f"new: {svdlib.__file__}\nold: {args.old}  (ratio new/old, median [quartiles] of paired ratios)")
    for dname in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        for batch, n in args.sizes:
            A = covariances(batch, n, DTYPES[dname], torch.device("cpu"))
            G = torch.randn(A.shape, generator=torch.Generator().manual_seed(3), dtype=A.dtype)
            cases = {"eigh fwd": (lambda: old.eigh(A), lambda: svdlib.eigh(A)),
                     "eigh fwd+bwd": (_fwd_bwd_eigh(old, A, G), _fwd_bwd_eigh(svdlib, A, G))}
            for b in BACKWARDS:
                cases[f"sqrtm {b} fwd+bwd"] = (_fwd_bwd_sqrtm(old, A, G, b), _fwd_bwd_sqrtm(svdlib, A, G, b))
            for label, (f_old, f_new) in cases.items():
                r = time_pair(f_old, f_new, "cpu", budget_s=args.budget, calls=1)
                print(f"{dname:8s} {batch}x{n:<4d} {label:28s} {r['ratio_median']:.3f} "
                      f"[{r['ratio_p25']:.3f}, {r['ratio_p75']:.3f}]  old {r['a_median_ms']:.3f} ms, "
                      f"new {r['b_median_ms']:.3f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
