"""The Pre-SVD toy of eq. 10 (Song et al., ECCV 2022, sec. 4.1), used by tests and notebook 05.

Two consecutive training steps of the layer before the SVD meta-layer:

    C = (W - eta G) Y Y^T (W - eta G)^T                                   (eq. 10)

:func:`two_step_covariance` computes ``C`` after one step of a given treatment with the real
svdlib machinery (the weight parametrizations, the orthogonal loss, :class:`PreSVD`), and
:func:`simulate` iterates it: a small Global-Covariance-Pooling classifier (Pre-SVD linear layer,
covariance of the positions of each "image", ``svdlib.sqrtm``, linear head) trained by SGD, with
the condition number of the next step's covariance recorded at every step.

Treatments are named by strings joined with ``+``: ``"plain"``, ``"SN"``, ``"OL"``, ``"OW"``,
``"NOG"``, ``"OLR"``, e.g. ``"NOG+OW+OLR"``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from svdlib._registry import DEFAULT_BACKWARD

from ._matrix import gram_identity_error
from .presvd import PreSVD, presvd_param_groups
from .weight import add_orthogonal_loss, orthogonal_weight, spectral_norm

__all__ = ["TREATMENTS", "parse_treatment", "two_step_covariance", "spiked_gradient_draws", "simulate"]

#: The single treatments a name can combine.
TREATMENTS = ("SN", "OL", "OW", "NOG", "OLR")


def parse_treatment(name: str) -> frozenset[str]:
    """``"NOG+OW"`` -> ``{"NOG", "OW"}``; ``"plain"`` (or ``""``) -> the empty set."""
    if not isinstance(name, str):
        raise TypeError(f"treatment must be a str such as 'NOG+OW', got {type(name).__name__}")
    if name.strip().lower() in ("", "plain", "svd"):
        return frozenset()
    parts = frozenset(p.strip().upper() for p in name.split("+"))
    unknown = sorted(parts - set(TREATMENTS))
    if unknown:
        raise ValueError(
            f"treatment {name!r}: unknown parts {unknown}; expected '+'-joined names from {TREATMENTS} or 'plain'"
        )
    if {"SN", "OW"} <= parts:
        raise ValueError(f"treatment {name!r}: SN and OW are both weight parametrizations; use one")
    return parts


def _treat_layer(layer: nn.Module, parts: frozenset[str], sn_iterations: int) -> nn.Module:
    if "SN" in parts:
        spectral_norm(layer, n_power_iterations=sn_iterations)
    if "OW" in parts:
        orthogonal_weight(layer)
    return layer


def two_step_covariance(
    W: torch.Tensor,
    G: torch.Tensor,
    Y: torch.Tensor,
    lr: float,
    treatment: str = "plain",
    *,
    ol_coefficient: float = 1.0,
    sn_iterations: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The covariance of eq. 10 after one step of ``treatment``.

    The Pre-SVD layer's raw parameter is ``W`` (``d x n``); the loss of the first step is the
    linear function whose gradient with respect to the layer's *effective* weight is ``G``
    (``sum(G * weight)``), so plain SGD gives exactly ``W - lr G``. Each treatment then acts as it
    does in training:

    * SN: the effective weight is ``W / sigma_max(W)`` and ``G`` is back-propagated through the
      normalisation (torch's parametrization, power iteration converged);
    * OL: ``coefficient * ||W W^T - I||_F`` is added to the loss;
    * OW: the effective weight is ``exp(W - W^T)`` (rectangular form, orthonormal rows) and ``G``
      is back-propagated to ``W`` through the exponential;
    * NOG / OLR: :class:`PreSVD` on a plain SGD optimizer (NOG by SVD).

    Returns
    -------
    (C, W1) : tuple of torch.Tensor
        ``C = W1 Y Y^T W1^T`` (eq. 10, uncentred as written there) and the effective weight
        ``W1`` after the step.
    """
    parts = parse_treatment(treatment)
    d, n = W.shape
    layer = nn.Linear(n, d, bias=False, dtype=W.dtype, device=W.device)
    with torch.no_grad():
        layer.weight.copy_(W)
    _treat_layer(layer, parts, sn_iterations)
    optimizer = torch.optim.SGD(layer.parameters(), lr=lr)
    presvd = None
    if parts & {"NOG", "OLR"}:
        presvd = PreSVD(optimizer, layer, nog="NOG" in parts, olr="OLR" in parts, nog_method="svd")
    weight = layer.weight
    loss = (G * weight).sum()
    if "OL" in parts:
        loss = add_orthogonal_loss(loss, weight, ol_coefficient)
    loss.backward()
    optimizer.step()
    if presvd is not None:
        presvd.detach()
    layer.eval()
    with torch.no_grad():
        W1 = layer.weight.detach().clone()
    return W1 @ Y @ Y.mT @ W1.mT, W1


def spiked_gradient_draws(
    sign: int,
    count: int,
    *,
    d: int = 16,
    n: int = 32,
    samples: int = 256,
    lr: float = 0.1,
    seed: int = 0,
):
    r"""Random ``(W, G, Y)`` for :func:`two_step_covariance` with an ill-conditioned gradient.

    ``W`` is a Kaiming-scaled ``d x n`` weight (``sigma_max ~ 1 + sqrt(d/n)``), ``Y`` are ``samples``
    fresh inputs, and ``G = sign * beta * u_1 v_1^T + noise`` is dominated by a rank-1 spike on
    ``W``'s leading singular pair with ``lr * beta`` uniform in ``[5, 10]``: the kind of
    ill-conditioned gradient the paper's sec. 4.1 blames for an ill-conditioned covariance.
    ``sign = -1``: the plain step reinforces the leading direction (``s_1`` grows by
    ``lr * beta``); ``sign = +1``: it overshoots it (``s_1 - lr * beta < -s_1``).
    Yields ``count`` triples in float64.
    """
    if sign not in (-1, 1):
        raise ValueError(f"sign must be -1 or +1, got {sign!r}")
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.float64
    for _ in range(count):
        W = torch.randn(d, n, generator=gen, dtype=dtype) / math.sqrt(n)
        U, _, Vh = torch.linalg.svd(W, full_matrices=False)
        Y = torch.randn(n, samples, generator=gen, dtype=dtype)
        beta = (5.0 + 5.0 * float(torch.rand((), generator=gen, dtype=dtype))) / lr
        noise = 0.05 * torch.randn(d, n, generator=gen, dtype=dtype) / math.sqrt(n)
        yield W, sign * beta * torch.outer(U[:, 0], Vh[0]) + noise, Y


def _make_task(n: int, classes: int, signal: float, generator: torch.Generator, dtype) -> torch.Tensor:
    """Class-conditional mixing matrices: class c draws positions y = A_c e, e ~ N(0, I), with
    A_c = B (I + (sqrt(1 + signal) - 1) u_c u_c^T): the classes differ in one variance direction
    u_c on top of a mildly anisotropic base B (eigenvalues of B B^T in [0.5, 2])."""
    u = torch.nn.functional.normalize(torch.randn(classes, n, generator=generator, dtype=dtype), dim=1)
    Qb, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=dtype))
    B = Qb @ torch.diag(torch.linspace(0.5, 2.0, n, dtype=dtype).sqrt()) @ Qb.mT
    eye = torch.eye(n, dtype=dtype)
    bump = math.sqrt(1.0 + signal) - 1.0
    return torch.stack([B @ (eye + bump * torch.outer(uc, uc)) for uc in u])


def simulate(
    treatment: str = "plain",
    *,
    steps: int = 200,
    d: int = 8,
    n: int = 16,
    positions: int = 32,
    batch: int = 16,
    classes: int = 4,
    signal: float = 3.0,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    ol_coefficient: float = 0.1,
    seed: int = 0,
    backward: str = DEFAULT_BACKWARD,
) -> dict[str, np.ndarray]:
    r"""Train the toy GCP classifier with ``treatment`` and record the covariance conditioning.

    Each "image" is ``positions`` samples ``y`` in ``R^n`` of its class (see :func:`_make_task`);
    the Pre-SVD layer maps them to ``x = W y`` in ``R^d``; the meta-layer computes
    ``Q = sqrtm(covariance(X))`` (``svdlib.sqrtm``, remedy ``backward``), and a linear head
    classifies ``vec(Q)``. SGD with momentum and weight decay as in the paper's recipe; NOG/OLR
    through :class:`PreSVD`; SN/OW as parametrizations; OL added with ``ol_coefficient``.

    After every step the updated weight is applied to the next batch and the condition number of
    each image's covariance is taken (eq. 10 with the next step's ``Y``); the median over the
    batch is recorded. Everything is float64 and seeded, so a run is deterministic on one machine.

    Returns
    -------
    dict of numpy arrays, one entry per step
        ``condition`` (median cond(C)), ``loss``, ``accuracy`` (of the step's batch), ``eta`` (the
        Pre-SVD group's learning rate used), ``eta_star`` (eq. 20's raw value, NaN without OLR),
        ``olr_applied`` (bool), ``orthogonality_error`` (``||W W^T - I||_F``, or ``W^T W`` when
        tall, of the effective weight).
    """
    import svdlib  # the spine; imported here so svdlib.ortho itself stays importable first

    parts = parse_treatment(treatment)
    dtype = torch.float64
    gen = torch.Generator().manual_seed(seed)
    mixing = _make_task(n, classes, signal, gen, dtype)
    torch.manual_seed(seed)
    layer = nn.Linear(n, d, bias=False, dtype=dtype)
    head = nn.Linear(d * d, classes, dtype=dtype)
    _treat_layer(layer, parts, sn_iterations=1)
    model = nn.ModuleList([layer, head])
    optimizer = torch.optim.SGD(
        presvd_param_groups(model, layer), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    presvd = None
    if parts & {"NOG", "OLR"}:
        presvd = PreSVD(optimizer, layer, nog="NOG" in parts, olr="OLR" in parts, nog_method="svd")

    def draw():
        labels = torch.randint(classes, (batch,), generator=gen)
        noise = torch.randn(batch, n, positions, generator=gen, dtype=dtype)
        return mixing[labels] @ noise, labels

    out = {k: np.empty(steps) for k in ("condition", "loss", "accuracy", "eta", "orthogonality_error")}
    out["eta_star"] = np.full(steps, np.nan)
    out["olr_applied"] = np.zeros(steps, dtype=bool)
    Y, labels = draw()
    for t in range(steps):
        Q = svdlib.sqrtm(svdlib.covariance(layer.weight @ Y), backward=backward)
        logits = head(Q.reshape(batch, d * d))
        loss = nn.functional.cross_entropy(logits, labels)
        out["loss"][t] = float(loss.detach())
        out["accuracy"][t] = float((logits.argmax(1) == labels).double().mean())
        if "OL" in parts:
            loss = add_orthogonal_loss(loss, layer, ol_coefficient)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if presvd is not None:
            out["eta"][t] = presvd.last.eta
            out["eta_star"][t] = presvd.last.eta_star
            out["olr_applied"][t] = presvd.last.olr_applied
        else:
            out["eta"][t] = optimizer.param_groups[-1]["lr"]
        Y, labels = draw()
        with torch.no_grad():
            W = layer.weight
            out["condition"][t] = float(svdlib.condition_number(svdlib.covariance(W @ Y)).median())
            out["orthogonality_error"][t] = float(gram_identity_error(W))
    if presvd is not None:
        presvd.detach()
    return out
