"""Independent reference checks of the reproduction notebooks: before reading a number off the
training logs, check that the trained layer computes what the paper's formula says.

Each check reloads a finished run's checkpoint, feeds it one batch and recomputes the layer with
NumPy or SciPy (float64, no eigendecomposition of svdlib's and, where possible, none at all):

* :func:`zca_against_numpy`: decorrelated BN (eq. 2, Alg. 2 of *Robust Differentiable SVD*): the
  whitened output and the logged condition number of every group, from ``numpy.linalg.eigh``;
* :func:`gcp_against_scipy`: global covariance pooling: ``svdlib.sqrtm`` against SciPy's
  Schur-based ``scipy.linalg.sqrtm``, the pooled vector against the upper triangle of that
  root, the condition number against NumPy's eigenvalues, and the 5-step Newton-Schulz root's
  error;
* :func:`inv_sqrt_gradients`: the gradient of L = <G, A^(-1/2)> by each backward, against the
  Fréchet derivative from the block-matrix identity f([[A, E], [0, A]]) = [[f(A), L_f(A, E)],
  [0, f(A)]] evaluated with SciPy's ``sqrtm`` (Higham, *Functions of Matrices*, Thm. 3.6), at a
  trained stem's covariance and at an exact tie.
"""
from __future__ import annotations

import copy
import os
import warnings

__all__ = ["load_trained", "zca_against_numpy", "gcp_against_scipy", "inv_sqrt_gradients",
           "running_vs_batch_statistics", "stem_covariance"]


def load_trained(summary: dict):
    """(config, model with the run's final weights, train set, test set) of a finished run."""
    import torch

    from .checkpoint import load_checkpoint
    from .config import config_from_dict
    from .data import build_datasets
    from .models import build_model

    cfg = config_from_dict(summary["config"])
    train_ds, test_ds, n_classes = build_datasets(cfg)
    model = build_model(cfg, n_classes)
    path = os.path.join(summary["run_dir"], "checkpoint.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: the run left no checkpoint to check")
    model.load_state_dict(load_checkpoint(path)["model"])
    torch.manual_seed(0)
    return cfg, model, train_ds, test_ds


def _first_batch(dataset, size: int):
    import torch

    from .data import iterate_batches

    n = min(size, len(dataset))
    return next(iterate_batches(dataset, torch.arange(n), n, drop_last=False))


def zca_against_numpy(summary: dict) -> dict:
    """Decorrelated BN of a trained run against NumPy: output and logged kappa of every group.

    Returns ``{"groups", "group_size", "kappa", "output_rel_err", "kappa_rel_err"}``.
    """
    import numpy as np
    import torch

    cfg, model, train_ds, _ = load_trained(summary)
    x, _ = _first_batch(train_ds, cfg.batch_size)
    layer = copy.deepcopy(model.meta_layer).double().train()
    with torch.no_grad():
        feats = model.stem_conv(x).double()
        y = layer(feats)
    C, g = feats.shape[1], layer.group_size
    X = feats.transpose(0, 1).reshape(C, -1).numpy()
    Y = y.transpose(0, 1).reshape(C, -1).numpy()
    gamma, beta = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    errors, kappa = [], []
    for s in range(0, C, g):
        Xg = X[s:s + g] - X[s:s + g].mean(1, keepdims=True)
        sigma = Xg @ Xg.T / Xg.shape[1]
        lam = np.linalg.eigvalsh(sigma)
        kappa.append(lam[-1] / lam[0])
        w, V = np.linalg.eigh(sigma + layer.eps * np.eye(g))
        ref = gamma[s:s + g, None] * ((V / np.sqrt(w)) @ V.T @ Xg) + beta[s:s + g, None]
        errors.append(np.abs(Y[s:s + g] - ref).max() / np.abs(ref).max())
    logged = layer.last_condition_number.numpy()
    return {"groups": C // g, "group_size": g, "kappa": [float(k) for k in kappa],
            "output_rel_err": float(max(errors)),
            "kappa_rel_err": float(np.abs(logged / np.array(kappa) - 1).max())}


def _pooled_covariances(model, x):
    import torch

    captured = {}
    hook = model.pool.register_forward_pre_hook(lambda mod, args: captured.setdefault("x", args[0].detach()))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        hook.remove()
    feats = captured["x"]
    with torch.no_grad():
        return feats, model.pool.layer.covariance(feats).double()


def gcp_against_scipy(summary: dict, images: int = 16) -> dict:
    """Global covariance pooling of a trained run against SciPy / NumPy on ``images`` test images.

    Returns relative errors of ``svdlib.sqrtm`` (vs ``scipy.linalg.sqrtm``), of the pooled vector
    (vs the upper triangle of SciPy's root; the layer pools a float32 covariance), of
    ``svdlib.condition_number`` (vs NumPy, over matrices with kappa < 1e8) and of the 5-step
    Newton-Schulz root (median and max), plus the fraction of exactly singular covariances.
    """
    import numpy as np
    import scipy.linalg
    import torch

    import svdlib

    cfg, model, _, test_ds = load_trained(summary)
    x, _ = _first_batch(test_ds, images)
    feats, P = _pooled_covariances(model, x)
    with torch.no_grad():
        Q = svdlib.sqrtm(P)
        y = model.pool.layer(feats.to(torch.float32)).double()
        Q_ns = svdlib.sqrtm(P, method="newton_schulz", iterations=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SciPy warns that singular matrices may have no square root
        Q_ref = torch.from_numpy(np.stack([np.real(scipy.linalg.sqrtm(p)) for p in P.numpy()]))
    rows, cols = torch.triu_indices(P.shape[-1], P.shape[-1])

    def rel(a, b):
        return (a - b).norm(dim=tuple(range(1, a.dim()))) / b.norm(dim=tuple(range(1, b.dim())))

    kappa = svdlib.condition_number(P).numpy()
    w = np.linalg.eigvalsh(P.numpy())
    kappa_np = np.where(w[:, 0] > 0, w[:, -1] / np.where(w[:, 0] > 0, w[:, 0], 1.0), np.inf)
    ok = np.isfinite(kappa_np) & (kappa_np < 1e8) & np.isfinite(kappa)
    ns = rel(Q_ns, Q_ref)
    return {"images": int(P.shape[0]), "d": int(P.shape[-1]),
            "sqrtm_rel_err": float(rel(Q, Q_ref).max()),
            "pooled_rel_err": float(rel(y, Q_ref[:, rows, cols]).max()),
            "kappa_rel_err": float(np.max(np.abs(kappa[ok] / kappa_np[ok] - 1))) if ok.any() else float("nan"),
            "newton_schulz_rel_err_median": float(ns.median()), "newton_schulz_rel_err_max": float(ns.max()),
            "kappa_median": float(np.median(kappa_np)), "singular_fraction": float(np.mean(~np.isfinite(kappa_np)))}


def _frechet_inv_sqrt(A, E):
    """L_f(A, E) for f(A) = A^(-1/2), from the block identity, with SciPy's Schur-based sqrtm."""
    import numpy as np
    import scipy.linalg

    d = A.shape[0]
    block = np.block([[A, E], [np.zeros((d, d)), A]])
    return np.linalg.inv(np.real(scipy.linalg.sqrtm(block)))[:d, d:]


def inv_sqrt_gradients(S, eps: float, backwards: dict, seed: int = 0) -> dict:
    """Gradient of L = <G, (S + eps I)^(-1/2)> by each backward against the Fréchet derivative.

    ``backwards`` maps a label to the keyword arguments of :func:`svdlib.inv_sqrtm` (``backward``,
    remedy options). Returns per label the forward and gradient relative errors, the gradient
    norm and whether it is finite, and whether it stays finite at an exact tie
    (diag(1, 2, 3, 3, 5)); plus the spectrum's rank above 2 eps and the largest |K_ij| = 1/min gap.
    """
    import numpy as np
    import scipy.linalg
    import torch

    import svdlib

    S = S.detach().to(torch.float64)
    d = S.shape[-1]
    A = (S + eps * torch.eye(d, dtype=torch.float64)).numpy()
    lam = np.linalg.eigvalsh(A)
    G = torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    reference = torch.from_numpy(np.ascontiguousarray(_frechet_inv_sqrt(A, (0.5 * (G + G.T)).numpy())))
    exact_Q = torch.from_numpy(np.linalg.inv(np.real(scipy.linalg.sqrtm(A))))
    tie = torch.diag(torch.tensor([1.0, 2.0, 3.0, 3.0, 5.0], dtype=torch.float64))

    def gradient(M, cot, shift, options):
        Mx = M.clone().requires_grad_(True)
        Q = svdlib.inv_sqrtm(Mx, eps=shift, **options)
        (Q * cot).sum().backward()
        return Q.detach(), Mx.grad

    out = {"d": d, "eps": eps, "rank_above_eps": int((lam > 2 * eps).sum()),
           "max_abs_K": float(1.0 / np.min(np.diff(lam))), "reference_grad_norm": float(reference.norm()),
           "methods": {}}
    for label, options in backwards.items():
        Q, g = gradient(S, G, eps, options)
        _, g_tie = gradient(tie, torch.ones(5, 5, dtype=torch.float64), 0.0, options)
        out["methods"][label] = {"forward_rel_err": float((Q - exact_Q).norm() / exact_Q.norm()),
                                 "grad_rel_err": float((g - reference).norm() / reference.norm()),
                                 "grad_norm": float(g.norm()), "finite": bool(torch.isfinite(g).all()),
                                 "finite_at_tie": bool(torch.isfinite(g_tie).all())}
    return out


def running_vs_batch_statistics(summary: dict, images: int = 256) -> dict:
    """Test accuracy (%) of a trained whitening network on ``images`` test images, its whitening
    layer using the running statistics (eval mode, what the test error uses) or the test
    batch's own statistics (as in training); everything else in eval mode."""
    import torch

    _, model, _, test_ds = load_trained(summary)
    x, y = _first_batch(test_ds, images)
    acc = {}
    with torch.no_grad():
        for mode in ("running", "batch"):
            model.eval()
            model.meta_layer.train(mode == "batch")
            acc[mode] = float((model(x).argmax(1) == y).double().mean()) * 100
    return acc


def stem_covariance(summary: dict):
    """(config, covariance of the first whitening group) of a trained decorrelated-BN run's stem
    on its first training batch, float64, before eps*I: the matrix the layer whitens."""
    import torch

    import svdlib

    cfg, model, train_ds, _ = load_trained(summary)
    x, _ = _first_batch(train_ds, cfg.batch_size)
    with torch.no_grad():
        feats = model.stem_conv(x).double()
    X = feats.transpose(0, 1).reshape(feats.shape[1], -1)[:cfg.group_size]
    return cfg, svdlib.covariance(X)
