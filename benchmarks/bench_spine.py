"""Speed of svdlib's spine against its baselines, measured side by side in one run.

1. Correctness first (exit status 2 if anything is wrong): on batches with a known spectrum,
   eigenvalues, reconstruction and orthogonality of every eigensolver timed below, and the
   square-root gradient of the taylor / pade / divided_difference backwards (svdlib.sqrtm,
   compiled as chosen and eager) against a float64 reference computed independently from the
   known eigenpairs; the eigh backward stage against eq. 7 written out.
2. Timing, float32 and float64, batch x n in 256x64, 256x128, 256x256, 16x512 on a GPU
   (32x16, 32x32 on CPU or with --quick): torch.linalg.eigh forward and svdlib.eigh forward
   (solver "auto") timed in alternation, so their ratio is the median of paired ratios; bare
   cuSOLVER XsyevBatched when available; Newton-Schulz square root (5 iterations, autograd)
   forward+backward; svdlib.sqrtm forward+backward and backward alone with each backward
   ("fused": with --compile's choice); the unfolded chain of eq. 5-7 for taylor; the remedy
   backward alone, eager and with --compile's choice; forward mode (torch.func.jvp) and a
   Hessian-vector product (double backward) of sqrtm(divided_difference) against the same
   through torch.linalg.eigh's own rules.
3. A table of ratios, printed last, and JSON with ratios, raw medians and the environment:
   benchmarks/results/<device>-<date>.json, or --out.

Run from the repository root::

    python benchmarks/bench_spine.py            # full sizes on CUDA, small sizes on CPU
    python benchmarks/bench_spine.py --quick    # seconds, any machine
    python benchmarks/bench_spine.py --eigh-only --quick   # only svdlib.eigh vs torch.linalg.eigh

See benchmarks/README.md for the targets and how to run it on an H100/H200.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import svdlib  # noqa: E402
from svdlib import _cusolver, fused, remedies  # noqa: E402
from svdlib.divided_difference import divided_difference_matrix  # noqa: E402
from svdlib.matfuncs import default_floor  # noqa: E402

from _timing import (  # noqa: E402
    Timer,
    default_result_path,
    environment,
    finite_or_none,
    format_table,
    ratio,
    time_pair,
    write_json_atomic,
)

GPU_SIZES = [(256, 64), (256, 128), (256, 256), (16, 512)]
CPU_SIZES = [(32, 16), (32, 32)]
REMEDIES = ("taylor", "pade", "divided_difference")
HEADLINE = ("float32", 256, 256)
# Issue 9 / 10 targets, one H100/H200, float32, 256 x 256 x 256 (ratios to baselines timed in
# the same run; remedy backward in milliseconds).
TARGETS = {
    "eigh_fwd_vs_torch": ("<=", 0.01),
    "eigh_fwd_vs_bare_xsyev": ("<=", 1.1),
    "sqrtm_fwd_bwd_vs_newton_schulz.taylor": ("<=", 1.0),
    "sqrtm_fwd_bwd_vs_newton_schulz.pade": ("<=", 1.0),
    "remedy_bwd_ms.taylor.fused": ("<=", 1.0),
    "divided_difference_bwd_vs_taylor_bwd": ("<=", 1.0),
}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ----------------------------------------------------------------------------- inputs
def known_spectrum(batch: int, n: int, seed: int = 0):
    """A = Q diag(lam) Q^T in float64 with lam evenly spaced in [1, 4] (gap 3/(n-1)) and a
    random orthogonal Q per matrix: eigenpairs known without any eigensolver."""
    g = torch.Generator().manual_seed(seed)
    Q, R = torch.linalg.qr(torch.randn(batch, n, n, generator=g, dtype=torch.float64))
    Q = Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2)
    lam = torch.linspace(1.0, 4.0, n, dtype=torch.float64).expand(batch, n).contiguous()
    A = (Q * lam.unsqueeze(-2)) @ Q.transpose(-1, -2)
    return 0.5 * (A + A.transpose(-1, -2)), lam, Q


def covariances(batch: int, n: int, dtype, device, seed: int = 1) -> torch.Tensor:
    """Sample covariances of 2n Gaussian samples (condition number ~ 30), as a layer sees."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, n, 2 * n, generator=g, dtype=torch.float64)
    X = X - X.mean(-1, keepdim=True)
    return (X @ X.transpose(-1, -2) / (2 * n)).to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------- correctness
def _reference_sqrt_gradients(lam, Q, G, degree: int = 9):
    """float64 dL/dA of sqrt(A) from the known eigenpairs, written out independently of svdlib:
    exact (Daleckii-Krein, F_ij = 1/(sqrt(l_i) + sqrt(l_j))) and Taylor (K~ as the explicit
    power sum (1/l_max) sum_{k<=degree} (l_min/l_max)^k, F~_ij = K~_ij (sqrt(l_i) - sqrt(l_j)),
    F~_ii = 1/(2 sqrt(l_i)))."""
    s = lam.sqrt()
    si, sj = s[..., :, None], s[..., None, :]
    li, lj = lam[..., :, None], lam[..., None, :]
    F_exact = 1.0 / (si + sj)
    big, small = torch.maximum(li, lj), torch.minimum(li, lj)
    series = sum((small / big) ** k for k in range(degree + 1)) / big
    F_taylor = torch.sign(li - lj) * series * (si - sj)
    eye = torch.eye(lam.shape[-1], dtype=torch.bool)
    F_taylor = torch.where(eye, 0.5 / si, F_taylor)
    Gs = 0.5 * (G + G.transpose(-1, -2))
    M = Q.transpose(-1, -2) @ Gs @ Q
    out = {}
    for name, F in (("exact", F_exact), ("taylor", F_taylor)):
        out[name] = Q @ (F * M) @ Q.transpose(-1, -2)
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def check_correctness(device: torch.device, dtypes: list[str], compile_flag="auto", batch: int = 8,
                      n: int = 32, eigh_only: bool = False) -> dict:
    """Run every check (the eigensolvers' only with ``eigh_only``); return
    {"passed": bool, "checks": [...], "info": {...}}."""
    A64, lam64, Q64 = known_spectrum(batch, n)
    g = torch.Generator().manual_seed(2)
    G64 = torch.randn(batch, n, n, generator=g, dtype=torch.float64)
    ref = _reference_sqrt_gradients(lam64, Q64, G64)
    sqrt64 = (Q64 * lam64.sqrt().unsqueeze(-2)) @ Q64.transpose(-1, -2)
    checks, info = [], {}

    def record(name, value, tol):
        checks.append({"check": name, "value": value, "tolerance": tol,
                       "passed": bool(value == value and value <= tol)})

    for dname in dtypes:
        dtype = DTYPES[dname]
        eps = torch.finfo(dtype).eps
        A = A64.to(device=device, dtype=dtype)
        solvers = {"torch.linalg.eigh": lambda: torch.linalg.eigh(A),
                   "svdlib.eigh(solver='auto')": lambda: svdlib.eigh(A)}
        if _cusolver.is_available() and device.type == "cuda":
            solvers["bare XsyevBatched"] = lambda: _cusolver.syev_batched(A)[:2]
        for sname, solve in solvers.items():
            lam, U = solve()
            lam, U = lam.double().cpu(), U.double().cpu()
            eye = torch.eye(n, dtype=torch.float64)
            record(f"{dname} {sname}: eigenvalue error / lam_max",
                   float((lam - lam64).abs().max() / lam64.abs().max()), 50 * n * eps)
            record(f"{dname} {sname}: reconstruction ||U L U^T - A|| / ||A||",
                   _rel((U * lam.unsqueeze(-2)) @ U.transpose(-1, -2), A.double().cpu()), 50 * n * eps)
            record(f"{dname} {sname}: orthogonality max|U^T U - I|",
                   float((U.transpose(-1, -2) @ U - eye).abs().max()), 100 * n * eps)
        if eigh_only:
            continue
        G = G64.to(device=device, dtype=dtype)
        grad_tol = 1e-9 if dtype == torch.float64 else 1e-4
        for backward in REMEDIES:
            target = ref["taylor"] if backward == "taylor" else ref["exact"]
            for impl_name, flag in (("svdlib.sqrtm", compile_flag), ("svdlib.sqrtm eager", False)):
                Ar = A.detach().clone().requires_grad_(True)
                Q = svdlib.sqrtm(Ar, backward=backward, compile=flag)
                (grad,) = torch.autograd.grad(Q, Ar, G)
                record(f"{dname} {impl_name}(backward={backward!r}): forward error",
                       _rel(Q.detach(), sqrt64), 50 * n * eps)
                record(f"{dname} {impl_name}(backward={backward!r}): gradient error vs float64",
                       _rel(grad, target), grad_tol)
        # The eigen backward stage alone, against eq. 7 written out (symmetrised after the products).
        lam, U = torch.linalg.eigh(A)
        grad_lam, grad_U = torch.ones_like(lam), G @ U
        for backward, k_builder in (("taylor", remedies.k_taylor), ("pade", remedies.k_pade)):
            inner = k_builder(lam).transpose(-1, -2) * (U.transpose(-1, -2) @ grad_U) + torch.diag_embed(grad_lam)
            eq7 = U @ inner @ U.transpose(-1, -2)
            eq7 = 0.5 * (eq7 + eq7.transpose(-1, -2))
            record(f"{dname} fused.remedy_backward({backward!r}) vs eq. 7 written out",
                   _rel(fused.remedy_backward(lam, U, grad_lam, grad_U, backward, compile=compile_flag), eq7),
                   100 * n * eps)
        # Second order and forward mode (timed below) against the known eigenpairs: the HVP of
        # <G, Q o Q> through sqrtm(divided_difference) vs the same through the float64 plain
        # eigh chain, and the tangent vs the Sylvester identity Q dQ + dQ Q = sym(V).
        V = 0.5 * (G + G.transpose(-1, -2))
        hvp = _hvp(lambda X: svdlib.sqrtm(X, backward="divided_difference"), A, G, V)()[0]
        hvp_ref = _hvp(_plain_sqrtm, A64, G64, V.double().cpu())()[0]
        record(f"{dname} sqrtm(divided_difference) Hessian-vector product vs plain eigh (float64)",
               _rel(hvp.double().cpu(), hvp_ref), 1e-9 if dtype == torch.float64 else 1e-3)
        Qd, dQ = _jvp(lambda X: svdlib.sqrtm(X, backward="divided_difference"), A, V)()
        record(f"{dname} sqrtm(divided_difference) jvp: Q dQ + dQ Q = dA",
               _rel((Qd @ dQ + dQ @ Qd).double().cpu(), V.double().cpu()), 100 * n * eps)
        # Information only: how far 5 Newton-Schulz steps are from the exact root and gradient.
        Ar = A.detach().clone().requires_grad_(True)
        root, _ = svdlib.newton_schulz_sqrtm(Ar, 5)
        (grad,) = torch.autograd.grad(root, Ar, G)
        info[f"{dname} newton_schulz(5) forward error"] = _rel(root.detach(), sqrt64)
        info[f"{dname} newton_schulz(5) gradient error"] = _rel(grad, ref["exact"])
        info[f"{dname} taylor(degree 9) gradient vs exact gradient"] = _rel(ref["taylor"], ref["exact"])
    return {"passed": all(c["passed"] for c in checks), "checks": checks, "info": info}


# ----------------------------------------------------------------------------- timing
def _fwd_bwd(fn, A, G):
    def run():
        Ar = A.detach().requires_grad_(True)
        out = fn(Ar)
        return torch.autograd.grad(out, Ar, G)
    return run


def _bwd_only(fn, A, G):
    Ar = A.detach().requires_grad_(True)
    out = fn(Ar)
    return lambda: torch.autograd.grad(out, Ar, G, retain_graph=True)


def _hvp(fn, A, G, V):
    """Hessian-vector product of <G, Q o Q>, Q = fn(A), by double backward (create_graph)."""
    def run():
        Ar = A.detach().requires_grad_(True)
        Q = fn(Ar)
        (grad,) = torch.autograd.grad((Q * Q * G).sum(), Ar, create_graph=True)
        return torch.autograd.grad(grad, Ar, V)
    return run


def _jvp(fn, A, V):
    return lambda: torch.func.jvp(fn, (A,), (V,))


def _plain_sqrtm(X: torch.Tensor) -> torch.Tensor:
    """The square root through torch.linalg.eigh and its own autograd (forward and reverse)."""
    lam, U = torch.linalg.eigh(X)
    return (U * lam.clamp_min(0).sqrt().unsqueeze(-2)) @ U.transpose(-1, -2)


def _chain_sqrtm(X: torch.Tensor, backward: str) -> torch.Tensor:
    """The unfolded chain of eq. 5-7 (what backward="exact" runs): autograd through
    U diag(lam^(1/2)) U^T, then svdlib.eigh's backward stage with the remedy's K~."""
    lam, U = svdlib.eigh(X, backward=backward)
    lam = torch.maximum(lam, default_floor(lam.detach(), 0.5))
    return (U * lam.sqrt().unsqueeze(-2)) @ U.transpose(-1, -2)


def time_eigh(dname: str, batch: int, n: int, device: torch.device, timer_opts: dict) -> dict:
    """torch.linalg.eigh and svdlib.eigh forward, timed in alternation (:func:`time_pair`)."""
    A = covariances(batch, n, DTYPES[dname], device)
    pair = time_pair(lambda: torch.linalg.eigh(A), lambda: svdlib.eigh(A), device,
                     budget_s=max(timer_opts["budget_s"], 0.5))
    return {"torch_eigh_fwd": pair["a_median_ms"], "svdlib_eigh_fwd": pair["b_median_ms"],
            "eigh_fwd_vs_torch": pair["ratio_median"], "eigh_pair_detail": pair}


def time_case(dname: str, batch: int, n: int, device: torch.device, timer_opts: dict,
              compile_flag) -> dict:
    dtype = DTYPES[dname]
    A = covariances(batch, n, dtype, device)
    g = torch.Generator().manual_seed(3)
    G = torch.randn(batch, n, n, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    t = Timer(device, **timer_opts)

    eigh_pair = time_eigh(dname, batch, n, device, timer_opts)
    t.results["torch_eigh_fwd"] = {"median_ms": eigh_pair["torch_eigh_fwd"]}
    t.results["svdlib_eigh_fwd"] = {"median_ms": eigh_pair["svdlib_eigh_fwd"]}
    if device.type == "cuda" and _cusolver.is_available():
        t("bare_xsyev_fwd", lambda: _cusolver.syev_batched(A))
    t("newton_schulz_fwd_bwd", _fwd_bwd(lambda X: svdlib.newton_schulz_sqrtm(X, 5)[0], A, G))
    t("newton_schulz_bwd", _bwd_only(lambda X: svdlib.newton_schulz_sqrtm(X, 5)[0], A, G))
    for r in REMEDIES:
        ref = lambda X, r=r: svdlib.sqrtm(X, backward=r)  # noqa: E731
        fus = lambda X, r=r: svdlib.sqrtm(X, backward=r, compile=compile_flag)  # noqa: E731
        t(f"sqrtm_{r}_fwd_bwd", _fwd_bwd(ref, A, G))
        t(f"sqrtm_{r}_fused_fwd_bwd", _fwd_bwd(fus, A, G))
        t(f"sqrtm_{r}_bwd", _bwd_only(ref, A, G))
        t(f"sqrtm_{r}_fused_bwd", _bwd_only(fus, A, G))
    t("sqrtm_taylor_chain_fwd_bwd", _fwd_bwd(lambda X: _chain_sqrtm(X, "taylor"), A, G))
    # Forward mode and second order (issue 19): divided_difference against torch.linalg.eigh's
    # own rules, on the same input.
    V = 0.5 * (G + G.transpose(-1, -2))
    dd = lambda X: svdlib.sqrtm(X, backward="divided_difference")  # noqa: E731
    t("sqrtm_divided_difference_jvp", _jvp(dd, A, V))
    t("plain_eigh_sqrtm_jvp", _jvp(_plain_sqrtm, A, V))
    t("sqrtm_divided_difference_hvp", _hvp(dd, A, G, V))
    t("plain_eigh_sqrtm_hvp", _hvp(_plain_sqrtm, A, G, V))

    # The remedy backward alone, from saved eigenpairs and incoming gradients.
    lam, U = svdlib.eigh(A)
    grad_lam = torch.randn(lam.shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    grad_U = torch.randn(U.shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    lam_f = torch.maximum(lam, default_floor(lam, 0.5))
    for r in ("taylor", "pade"):
        t(f"remedy_{r}_eager", lambda r=r: fused.remedy_backward(lam, U, grad_lam, grad_U, r, compile=False))
        t(f"remedy_{r}_fused", lambda r=r: fused.remedy_backward(lam, U, grad_lam, grad_U, r,
                                                                 compile=compile_flag))
    t("remedy_divided_difference_eager",
      lambda: fused.apply_spectral_weights(U, divided_difference_matrix(lam_f, 0.5), G))
    t("remedy_divided_difference_fused",
      lambda: fused.spectral_backward(lam_f, U, G, 0.5, "divided_difference", compile=compile_flag))
    t("spectral_taylor_fused",
      lambda: fused.spectral_backward(lam_f, U, G, 0.5, "taylor", lam_k=lam, compile=compile_flag))

    m = t.median
    ns = m("newton_schulz_fwd_bwd")
    ratios = {
        "eigh_fwd_vs_torch": eigh_pair["eigh_fwd_vs_torch"],
        "eigh_fwd_vs_bare_xsyev": ratio(m("svdlib_eigh_fwd"), m("bare_xsyev_fwd")),
        "sqrtm_fwd_bwd_vs_newton_schulz": {
            **{r: ratio(m(f"sqrtm_{r}_fwd_bwd"), ns) for r in REMEDIES},
            **{f"{r}_fused": ratio(m(f"sqrtm_{r}_fused_fwd_bwd"), ns) for r in REMEDIES},
            "taylor_chain": ratio(m("sqrtm_taylor_chain_fwd_bwd"), ns),
        },
        "remedy_bwd_ms": {
            r: {"eager": m(f"remedy_{r}_eager"), "fused": m(f"remedy_{r}_fused")}
            for r in ("taylor", "pade", "divided_difference")
        },
        "sqrtm_bwd_ms": {
            r: {"reference": m(f"sqrtm_{r}_bwd"), "fused": m(f"sqrtm_{r}_fused_bwd")} for r in REMEDIES
        },
        "divided_difference_bwd_vs_taylor_bwd": ratio(m("sqrtm_divided_difference_bwd"),
                                                      m("sqrtm_taylor_bwd")),
        "divided_difference_bwd_vs_taylor_bwd_fused": ratio(m("sqrtm_divided_difference_fused_bwd"),
                                                            m("sqrtm_taylor_fused_bwd")),
        "higher_order": {
            "jvp_vs_plain_eigh": ratio(m("sqrtm_divided_difference_jvp"), m("plain_eigh_sqrtm_jvp")),
            "hvp_vs_plain_eigh": ratio(m("sqrtm_divided_difference_hvp"), m("plain_eigh_sqrtm_hvp")),
            "hvp_vs_fwd_bwd": ratio(m("sqrtm_divided_difference_hvp"), m("sqrtm_divided_difference_fwd_bwd")),
        },
    }
    return {
        "dtype": dname, "batch": batch, "n": n,
        "ratios": ratios,
        "times_ms": {k: v["median_ms"] for k, v in t.results.items()},
        "timing_detail": {**t.results, "eigh_pair": eigh_pair["eigh_pair_detail"]},
    }


def _lookup(ratios: dict, dotted: str):
    value = ratios
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def evaluate_targets(headline: dict | None, device: torch.device) -> dict:
    if device.type != "cuda":
        return {"evaluated": False, "reason": "targets are defined on one H100/H200 GPU; this run is on CPU"}
    if headline is None or (headline["dtype"], headline["batch"], headline["n"]) != HEADLINE:
        return {"evaluated": False, "reason": "the float32 256 x 256 x 256 case was not run"}
    out = {"evaluated": True}
    for key, (op, bound) in TARGETS.items():
        value = _lookup(headline["ratios"], key)
        out[key] = {"value": value, "target": f"{op} {bound}",
                    "met": None if value is None else bool(value <= bound)}
    return out


# ----------------------------------------------------------------------------- profile
def profile_backward(device: torch.device, dname: str, batch: int, n: int, compile_flag,
                     reps: int = 5, top: int = 12) -> dict:
    """torch.profiler of the square-root backward alone (graph built once, backward repeated):
    reference taylor chain, fused taylor, fused divided_difference. Returns, per variant, the
    ops sorted by self time (device time on CUDA, CPU time otherwise), in ms per backward."""
    from torch.profiler import ProfilerActivity, profile

    dtype = DTYPES[dname]
    A = covariances(batch, n, dtype, device)
    G = torch.randn(batch, n, n, dtype=dtype, device=device)
    variants = {
        "taylor (unfolded chain of eq. 5-7)": lambda X: _chain_sqrtm(X, "taylor"),
        "taylor (svdlib.sqrtm, folded)": lambda X: svdlib.sqrtm(X, backward="taylor", compile=compile_flag),
        "divided_difference (svdlib.sqrtm)": lambda X: svdlib.sqrtm(X, backward="divided_difference",
                                                                    compile=compile_flag),
    }
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    out = {}
    for name, fn in variants.items():
        run = _bwd_only(fn, A, G)
        for _ in range(3):
            run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(reps):
                run()
            if device.type == "cuda":
                torch.cuda.synchronize()
        events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
        events.sort(key=lambda e: getattr(e, attr), reverse=True)
        total = sum(getattr(e, attr) for e in events) / 1e3 / reps
        rows = [{"op": e.key[:60], "ms_per_backward": getattr(e, attr) / 1e3 / reps,
                 "calls_per_backward": e.count / reps,
                 "share": getattr(e, attr) / 1e3 / reps / total if total else None}
                for e in events[:top]]
        out[name] = {"self_time_ms_per_backward": total, "ops": rows,
                     "kernels_or_ops_per_backward": sum(e.count for e in events) / reps}
    return out


# ----------------------------------------------------------------------------- report
def ratio_rows(cases: list[dict]) -> list[dict]:
    rows = []
    for c in cases:
        r = c["ratios"]
        s = r["sqrtm_fwd_bwd_vs_newton_schulz"]
        higher = r.get("higher_order", {})  # absent from results recorded before issue 19
        rows.append({
            "dtype": c["dtype"], "batch x n": f"{c['batch']}x{c['n']}",
            "eigh/torch": r["eigh_fwd_vs_torch"], "eigh/xsyev": r["eigh_fwd_vs_bare_xsyev"],
            "taylor/NS": s["taylor"], "pade/NS": s["pade"], "dd/NS": s["divided_difference"],
            "taylor+F/NS": s["taylor_fused"], "pade+F/NS": s["pade_fused"],
            "dd+F/NS": s["divided_difference_fused"],
            "rem ms": r["remedy_bwd_ms"]["taylor"]["eager"],
            "rem+F ms": r["remedy_bwd_ms"]["taylor"]["fused"],
            "dd/taylor bwd": r["divided_difference_bwd_vs_taylor_bwd"],
            "dd jvp/eigh": higher.get("jvp_vs_plain_eigh"),
            "dd hvp/eigh": higher.get("hvp_vs_plain_eigh"),
        })
    return rows


def time_rows(cases: list[dict]) -> list[dict]:
    keys = ["torch_eigh_fwd", "svdlib_eigh_fwd", "bare_xsyev_fwd", "newton_schulz_fwd_bwd",
            "sqrtm_taylor_fwd_bwd", "sqrtm_taylor_fused_fwd_bwd", "sqrtm_divided_difference_fwd_bwd"]
    return [{"dtype": c["dtype"], "batch x n": f"{c['batch']}x{c['n']}",
             **{k: c["times_ms"].get(k) for k in keys}} for c in cases]


def _sanitize(obj):
    if isinstance(obj, dict):
        return {k: _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v) for v in obj]
    if isinstance(obj, float):
        return finite_or_none(obj)
    return obj


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        b, _, n = item.strip().lower().partition("x")
        if not (b.isdigit() and n.isdigit()):
            raise argparse.ArgumentTypeError(f"sizes must look like 256x64,16x512; got {item!r}")
        sizes.append((int(b), int(n)))
    return sizes


def _main_eigh_only(device, dtypes, sizes, timer_opts, env, out) -> int:
    """--eigh-only: correctness of the eigensolvers, then svdlib.eigh vs torch.linalg.eigh."""
    correctness = check_correctness(device, dtypes, eigh_only=True)
    if not correctness["passed"]:
        for c in correctness["checks"]:
            if not c["passed"]:
                print(f"FAILED  {c['check']}: {c['value']:.3e} > {c['tolerance']:.1e}", file=sys.stderr)
        return 2
    rows, cases = [], []
    for dname in dtypes:
        for batch, n in sizes:
            r = time_eigh(dname, batch, n, device, timer_opts)
            cases.append({"dtype": dname, "batch": batch, "n": n, **r})
            rows.append({"dtype": dname, "batch x n": f"{batch}x{n}", "torch ms": r["torch_eigh_fwd"],
                         "svdlib ms": r["svdlib_eigh_fwd"], "svdlib/torch": r["eigh_fwd_vs_torch"],
                         "pairs": r["eigh_pair_detail"]["pairs"]})
    result = {"benchmark": "bench_spine", "mode": "eigh_only", "device": env["device"], "torch": env["torch"],
              "date": env["date"], "environment": env, "correctness": correctness, "cases": cases}
    path = out or default_result_path("spine-eigh", env)
    write_json_atomic(path, _sanitize(result))
    print(f"svdlib.eigh forward vs torch.linalg.eigh, timed in alternation ({env['device']}, "
          f"svdlib {svdlib.__file__})")
    print(format_table(rows, list(rows[0])))
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and short budgets (seconds)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--sizes", type=parse_sizes, default=None,
                        help="batch x n list, e.g. 256x64,256x256 (default: by device)")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timing per measurement (default 1.0; 0.02 with --quick)")
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                        help="torch.compile the fused backward (auto: on CUDA)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the square-root backward of the headline case")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 with --quick, torch's default otherwise)")
    parser.add_argument("--eigh-only", action="store_true",
                        help="only svdlib.eigh forward vs torch.linalg.eigh (also runs against older svdlib)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/)")
    args = parser.parse_args(argv)
    threads = args.threads if args.threads is not None else (1 if args.quick else None)
    if threads is not None:
        # Tiny matrices gain nothing from threads, and on a busy machine OpenMP threads that
        # wait on each other make CPU timings 10-50x slower and meaningless.
        torch.set_num_threads(max(1, threads))

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in DTYPES:
            parser.error(f"--dtypes must be among {sorted(DTYPES)}, got {d!r}")
    sizes = args.sizes or (GPU_SIZES if device.type == "cuda" and not args.quick else CPU_SIZES)
    budget = args.budget if args.budget is not None else (0.02 if args.quick else 1.0)
    timer_opts = {"budget_s": budget, "warmup": 2, "min_reps": 3 if args.quick else 5,
                  "max_reps": 20 if args.quick else 200}
    compile_flag = {"auto": "auto", "on": True, "off": False}[args.compile]
    env = environment(device)
    env["fused_compiled"] = bool(compile_flag is True or (compile_flag == "auto"
                                                          and fused.compile_available(device)))
    env["eigh_solver_auto"] = svdlib.solvers.resolve_solver("auto", device)
    if args.eigh_only:
        return _main_eigh_only(device, dtypes, sizes, timer_opts, env, args.out)
    print(f"svdlib bench_spine on {env['device']} (torch {env['torch']}, CUDA {env['cuda']}, "
          f"solver auto = {env['eigh_solver_auto']}, fused compiled = {env['fused_compiled']})",
          flush=True)

    t0 = time.perf_counter()
    correctness = check_correctness(device, dtypes, compile_flag)
    for c in correctness["checks"]:
        if not c["passed"]:
            print(f"FAILED  {c['check']}: {c['value']:.3e} > {c['tolerance']:.1e}", file=sys.stderr)
    if not correctness["passed"]:
        print("correctness check failed: no timings taken", file=sys.stderr)
        return 2
    print(f"correctness: {len(correctness['checks'])} checks passed "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    for k, v in correctness["info"].items():
        print(f"  info: {k} = {v:.2e}")

    cases = []
    for dname in dtypes:
        for batch, n in sizes:
            t1 = time.perf_counter()
            cases.append(time_case(dname, batch, n, device, timer_opts, compile_flag))
            print(f"timed {dname} {batch}x{n} ({time.perf_counter() - t1:.1f} s)", flush=True)
    env["fused_compile_failure"] = fused._compile_broken

    key = lambda c: (c["dtype"], c["batch"], c["n"])  # noqa: E731
    headline = next((c for c in cases if key(c) == HEADLINE), None)
    if headline is None:  # CPU / quick: the largest float32 (else first dtype) case
        pool = [c for c in cases if c["dtype"] == "float32"] or cases
        headline = max(pool, key=lambda c: c["batch"] * c["n"] ** 3)
    profile_result = None
    if args.profile:
        profile_result = profile_backward(device, headline["dtype"], headline["batch"],
                                          headline["n"], compile_flag)
        for name, prof in profile_result.items():
            print(f"\nprofile of the sqrtm backward, {name}: "
                  f"{prof['self_time_ms_per_backward']:.3f} ms self time, "
                  f"{prof['kernels_or_ops_per_backward']:.0f} ops per backward")
            print(format_table(prof["ops"], ["op", "ms_per_backward", "calls_per_backward", "share"]))
    result = {
        "benchmark": "bench_spine",
        "device": env["device"],
        "torch": env["torch"],
        "cuda": env["cuda"],
        "date": env["date"],
        "environment": env,
        "headline_case": f"{headline['dtype']} {headline['batch']}x{headline['n']}",
        "ratios": headline["ratios"],
        "targets": {k: f"{op} {b}" for k, (op, b) in TARGETS.items()},
        "target_check": evaluate_targets(headline, device),
        "correctness": correctness,
        "cases": cases,
        "profile": profile_result,
        "settings": {"sizes": sizes, "dtypes": dtypes, "quick": args.quick, **timer_opts},
    }
    out = args.out or default_result_path("spine", env)
    write_json_atomic(out, _sanitize(result))

    print("\nmedian milliseconds")
    print(format_table(time_rows(cases), list(time_rows(cases)[0])))
    print(f"\nwrote {out}")
    print("\nratios (< 1 is faster than the baseline; +F = the backward stage with --compile's choice; NS = Newton-Schulz "
          "5 iterations fwd+bwd; rem = taylor remedy backward alone)")
    print(format_table(ratio_rows(cases), list(ratio_rows(cases)[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
