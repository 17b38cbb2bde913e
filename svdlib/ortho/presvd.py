"""Attach NOG and OLR to an optimizer for the Pre-SVD layer (Song et al., ECCV 2022, sec. 5).

Order of operations in one training step, as in the ECCV code (``main_cifar100.py``)::

    loss.backward()            # (DDP has averaged the gradients by now)
    optimizer.step()
      -> step pre-hook:  G <- U V^T of G                    (NOG, eq. 17)
                         group lr <- OLR(W, G, scheduled lr) (eq. 20-21, with the post-NOG G)
      -> the optimizer's own update (momentum, weight decay act on the modified gradient)
      -> step post-hook: group lr <- scheduled lr (restored), diagnostics recorded
    scheduler.step()           # sees the scheduled lr, never the OLR one

The Pre-SVD layer lives in its own parameter group, found by parameter *identity* (the ECCV code
matched parameter names, which silently fails under ``DataParallel``'s ``module.`` prefix).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._matrix import as_matrix, gram_identity_error
from .nog import NOG_METHODS, _nearest_orthogonal
from .olr import _eta_star

__all__ = ["PreSVD", "PreSVDRecord", "presvd_param_groups"]

# optimizer -> ids of the parameters some PreSVD already treats (no double application)
_ATTACHED: "weakref.WeakKeyDictionary[torch.optim.Optimizer, set[int]]" = weakref.WeakKeyDictionary()


@dataclass
class PreSVDRecord:
    """What :class:`PreSVD` did in one optimizer step (its diagnostics).

    Attributes
    ----------
    step : int
        1-based count of optimizer steps seen by this PreSVD.
    lr : float
        The learning rate the group would otherwise have had (the scheduled lr, or the reference
        group's lr) - the ``lr`` of eq. 21.
    eta : float
        The learning rate actually used for the Pre-SVD group in this step.
    eta_star : float
        The raw eq. 20 value (NaN when OLR is off or the gradient was zero).
    olr_applied : bool
        True when ``0 < eta_star < lr`` and ``eta_star`` was used.
    nog_applied : bool
        True when the gradient was replaced by its nearest orthogonal matrix.
    skipped : str or None
        Why nothing was done ("no gradient", "non-finite gradient"), else None.
    """

    step: int
    lr: float
    eta: float
    eta_star: float = float("nan")
    olr_applied: bool = False
    nog_applied: bool = False
    skipped: str | None = None
    _ortho_error: torch.Tensor | None = field(default=None, repr=False)

    @property
    def orthogonality_error(self) -> float:
        """``||W W^T - I||_F`` (``W^T W`` when tall) of the treated parameter after the step.

        Kept as a device tensor until read, so recording it costs no host synchronisation.
        """
        return float("nan") if self._ortho_error is None else float(self._ortho_error)


def _target_parameter(module: nn.Module, name: str) -> nn.Parameter:
    """The leaf parameter the optimizer updates for ``module.<name>``.

    For a parametrized weight (:func:`svdlib.ortho.orthogonal_weight`, ``spectral_norm``) that
    is ``module.parametrizations.<name>.original``, the unconstrained tensor.
    """
    if parametrize.is_parametrized(module, name):
        p = module.parametrizations[name].original
    else:
        p = getattr(module, name, None)
    if not isinstance(p, nn.Parameter):
        raise ValueError(
            f"PreSVD: module.{name} must be an nn.Parameter (or a parametrized one), "
            f"got {type(p).__name__}"
        )
    if p.dim() < 2:
        raise ValueError(
            f"PreSVD: module.{name} must have at least 2 dimensions (out, in, *kernel), "
            f"got shape {tuple(p.shape)}"
        )
    return p


def presvd_param_groups(model: nn.Module, module: nn.Module, **group_opts) -> list[dict]:
    """Parameter groups with the Pre-SVD layer on its own, for building an optimizer.

    Parameters
    ----------
    model : torch.nn.Module
        The whole network.
    module : torch.nn.Module
        The Pre-SVD layer, a submodule of ``model``.
    **group_opts
        Options of the Pre-SVD group only (e.g. ``lr=0.1``); the other group uses the
        optimizer's defaults.

    Returns
    -------
    list of dict
        ``[{"params": <all other parameters>}, {"params": <module's parameters>, **group_opts}]``
        (the first group is omitted when ``module`` holds every parameter).

    Examples
    --------
    >>> import torch
    >>> from svdlib.ortho import PreSVD, presvd_param_groups
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.Flatten())
    >>> opt = torch.optim.SGD(presvd_param_groups(model, model[0]), lr=0.1, momentum=0.9)
    >>> hook = PreSVD(opt, model[0], nog=True, olr=True)
    """
    if not isinstance(model, nn.Module) or not isinstance(module, nn.Module):
        raise TypeError(
            f"model and module must be torch.nn.Module, got {type(model).__name__} and "
            f"{type(module).__name__}"
        )
    mine = list(module.parameters())
    mine_ids = {id(p) for p in mine}
    all_ids = {id(p) for p in model.parameters()}
    if not mine:
        raise ValueError(f"module {type(module).__name__} has no parameters")
    if not mine_ids <= all_ids:
        raise ValueError("module must be a submodule of model: some of its parameters are not model's")
    others = [p for p in model.parameters() if id(p) not in mine_ids]
    groups = [{"params": others}] if others else []
    groups.append({"params": mine, **group_opts})
    return groups


class PreSVD:
    r"""Apply NOG and/or OLR to the Pre-SVD layer inside ``optimizer.step()``.

    NOG (eq. 16-17) replaces the layer's weight gradient ``G`` by ``U V^T``; OLR (eq. 20-21) sets
    the learning rate of the layer's parameter group to ``eta*`` when ``0 < eta* < lr``, where
    ``lr`` is the learning rate the group would otherwise have; with both, OLR sees the post-NOG
    gradient. Both act in an optimizer step pre-hook, i.e. after ``backward`` (and after DDP's
    gradient averaging, or ``GradScaler``'s unscaling) and before the optimizer's update, so
    momentum and weight decay act on the modified gradient.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    module : torch.nn.Module
        The Pre-SVD layer (the one whose output feeds the covariance), with a weight of at least 2
        dimensions; a convolution weight is the matrix ``out x (in*kh*kw)``.
    nog : bool, default True
        Apply the nearest orthogonal gradient.
    olr : bool, default True
        Apply the optimal learning rate.
    name : str, default "weight"
        Which tensor of ``module`` is the Pre-SVD weight.
    nog_method : {"auto", "svd", "newton_schulz"}, default "auto"
        Passed to :func:`svdlib.ortho.nearest_orthogonal`: the SVD on CPU, Newton-Schulz on CUDA
        (exact to rounding for gradients with condition number up to about 1e3 with 30
        iterations; use ``"svd"`` or more ``nog_iterations`` for worse-conditioned gradients).
    nog_iterations : int, default 30
        Newton-Schulz iterations when that method is used.
    reference_group : int, optional
        Index of the parameter group whose *current* lr is the ``lr`` of eq. 21. Default: the
        Pre-SVD group's own scheduled lr (equal to the other layers' lr when the group was created
        with the same base lr and is scheduled with them, the ECCV setting).
    history : bool, default False
        Keep every step's :class:`PreSVDRecord` in ``self.history`` (``self.last`` is always kept).

    Attributes
    ----------
    parameter : torch.nn.Parameter
        The tensor treated: ``module.weight``, or for a parametrized weight
        (:func:`orthogonal_weight`, :func:`spectral_norm`) the underlying
        ``module.parametrizations.weight.original``.
    group_index : int
        Index of the Pre-SVD group in ``optimizer.param_groups``.
    group : dict
        The Pre-SVD parameter group, looked up in ``optimizer.param_groups`` on every access
        (see "Resuming" below).
    last : PreSVDRecord or None
        Diagnostics of the latest step: the eta used, eta*, whether OLR/NOG applied, and the
        treated parameter's orthogonality error after the step.
    history : list of PreSVDRecord

    Notes
    -----
    **Parameter group.** If the weight is already in a group, that group must hold only
    parameters of ``module`` (OLR changes the lr of the whole group; the bias, if any, therefore
    takes the same eta, while NOG only touches the weight); otherwise a ``ValueError`` says to
    build the optimizer with :func:`presvd_param_groups`. If ``module``'s parameters are in no
    group, a group is added with the optimizer's defaults - create the LR scheduler *after*
    PreSVD then, so that it knows the new group.

    **Learning-rate mechanism.** LR schedulers write ``group["lr"]``. The pre-hook reads that
    scheduled value, stores it, writes the OLR eta for the update, and the post-hook writes the
    stored value back. Schedulers and ``ReduceLROnPlateau`` therefore never see eta, and
    ``optimizer.state_dict()`` saved between steps holds the scheduled lr. If a step raises
    between the two hooks, the next pre-hook (or :meth:`detach`) restores the lr first.

    **With orthogonal_weight.** The optimizer updates the unconstrained parameter ``X`` of
    ``exp(X - X^T)``, so that is what NOG and OLR act on: NOG makes ``dL/dX`` nearest-orthogonal
    and OLR chooses eta so that ``X - eta dL/dX`` is nearest-orthogonal (the ECCV code does the
    same with its skew convolution's parameter). The effective weight is orthogonal in any case.
    Likewise, with :func:`spectral_norm` they act on the unnormalised weight.

    **Resuming.** ``optimizer.load_state_dict`` replaces every param-group dict by a new one, so
    PreSVD never keeps a group: each step (and :attr:`group`) takes
    ``optimizer.param_groups[group_index]`` and checks, by identity, that it still holds the
    Pre-SVD parameter. PreSVD may therefore be attached before or after loading an optimizer
    state; if the group at that index no longer holds the parameter (e.g. a state dict of an
    optimizer whose groups were ordered differently was loaded), the step raises a
    ``RuntimeError`` instead of silently treating the wrong group or none.

    **Skipped steps.** A missing gradient, or one with NaN/Inf, is left untouched and the group
    keeps its scheduled lr (recorded in ``last.skipped``); NOG never produces NaN (see
    :func:`nearest_orthogonal` for zero and rank-deficient gradients).

    Examples
    --------
    >>> import torch
    >>> from svdlib.ortho import PreSVD, presvd_param_groups
    >>> model = torch.nn.Sequential(torch.nn.Linear(6, 4, bias=False), torch.nn.Tanh(),
    ...                             torch.nn.Linear(4, 1))
    >>> opt = torch.optim.SGD(presvd_param_groups(model, model[0]), lr=0.1, momentum=0.9)
    >>> presvd = PreSVD(opt, model[0])
    >>> model(torch.randn(16, 6)).pow(2).mean().backward()
    >>> opt.step()
    >>> presvd.last.eta <= 0.1 and opt.param_groups[1]["lr"] == 0.1
    True
    >>> presvd.detach()
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        module: nn.Module,
        nog: bool = True,
        olr: bool = True,
        *,
        name: str = "weight",
        nog_method: str = "auto",
        nog_iterations: int = 30,
        reference_group: int | None = None,
        history: bool = False,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if nog_method not in NOG_METHODS:
            raise ValueError(f"nog_method must be one of {NOG_METHODS}, got {nog_method!r}")
        if not isinstance(nog_iterations, int) or nog_iterations < 1:
            raise ValueError(f"nog_iterations must be a positive int, got {nog_iterations!r}")
        self.optimizer = optimizer
        self.module = module
        self.nog = bool(nog)
        self.olr = bool(olr)
        self.nog_method = nog_method
        self.nog_iterations = nog_iterations
        self.parameter = _target_parameter(module, name)
        self.group_index = self._find_or_create_group()
        if reference_group is not None:
            n = len(optimizer.param_groups)
            if not isinstance(reference_group, int) or not 0 <= reference_group < n:
                raise ValueError(f"reference_group must be an int in [0, {n}), got {reference_group!r}")
        self.reference_group = reference_group
        attached = _ATTACHED.setdefault(optimizer, set())
        if id(self.parameter) in attached:
            raise ValueError("PreSVD is already attached to this optimizer for this parameter; detach() it first")
        attached.add(id(self.parameter))
        self.last: PreSVDRecord | None = None
        self.history: list[PreSVDRecord] | None = [] if history else None
        self._keep_history = bool(history)
        self._steps = 0
        self._saved_lr: float | torch.Tensor | None = None
        self._saved_group: dict | None = None
        self._pending: PreSVDRecord | None = None
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_hook),
            optimizer.register_step_post_hook(self._post_hook),
        ]

    # ------------------------------------------------------------------ setup
    def _find_or_create_group(self) -> int:
        module_ids = {id(p) for p in self.module.parameters()}
        for i, group in enumerate(self.optimizer.param_groups):
            if any(p is self.parameter for p in group["params"]):
                foreign = sum(1 for p in group["params"] if id(p) not in module_ids)
                if foreign:
                    raise ValueError(
                        f"PreSVD: the Pre-SVD weight shares param group {i} with {foreign} parameters "
                        "of other layers, but OLR sets the learning rate of the whole group. Put the "
                        "layer in its own group, e.g. torch.optim.SGD(svdlib.ortho.presvd_param_groups"
                        "(model, pre_svd_layer), lr=..., momentum=...)"
                    )
                return i
        present = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        new = [p for p in self.module.parameters() if id(p) not in present]
        self.optimizer.add_param_group({"params": new})
        return len(self.optimizer.param_groups) - 1

    @property
    def group(self) -> dict:
        """The Pre-SVD param group, looked up now (``load_state_dict`` replaces the group dicts).

        Raises
        ------
        RuntimeError
            If ``optimizer.param_groups[group_index]`` no longer holds the Pre-SVD parameter.
        """
        groups = self.optimizer.param_groups
        i = self.group_index
        if i < len(groups) and any(p is self.parameter for p in groups[i]["params"]):
            return groups[i]
        where = [j for j, g in enumerate(groups) if any(p is self.parameter for p in g["params"])]
        found = f"it is now in group {where[0]}" if where else "it is in no group"
        raise RuntimeError(
            f"PreSVD: optimizer.param_groups[{i}] (of {len(groups)} groups) no longer holds the "
            f"Pre-SVD parameter (shape {tuple(self.parameter.shape)}); {found}. The optimizer's "
            "groups were changed after PreSVD was attached (e.g. load_state_dict of a differently "
            "ordered optimizer): detach() this PreSVD and attach a new one"
        )

    # ------------------------------------------------------------------ hooks
    def _restore_lr(self) -> None:
        # into the dict that received eta; if load_state_dict replaced it since, the new group
        # holds the loaded (scheduled) lr already and the stale dict is no longer used
        if self._saved_lr is None:
            return
        group, saved = self._saved_group, self._saved_lr
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].copy_(saved)
        else:
            group["lr"] = saved
        self._saved_group = self._saved_lr = None

    def _reference_lr(self, group: dict) -> float:
        if self.reference_group is not None:
            group = self.optimizer.param_groups[self.reference_group]
        return float(group["lr"])

    @torch.no_grad()
    def _pre_hook(self, optimizer, args, kwargs) -> None:
        self._restore_lr()  # a previous step that raised between the hooks
        group = self.group  # looked up each step: load_state_dict replaces the group dicts
        self._steps += 1
        lr = self._reference_lr(group)
        rec = PreSVDRecord(step=self._steps, lr=lr, eta=float(group["lr"]))
        self._pending = rec
        p = self.parameter
        G = p.grad
        if G is None:
            rec.skipped = "no gradient"
            return
        if G.is_sparse or not bool(torch.isfinite(G).all()):
            rec.skipped = "sparse gradient" if G.is_sparse else "non-finite gradient"
            return
        if self.nog:
            # validated once here (finite, weight-shaped), so the unchecked kernels are used
            G.copy_(_nearest_orthogonal(G, self.nog_method, self.nog_iterations, None))
            rec.nog_applied = True
        if self.olr:
            star = float(_eta_star(p, G))
            rec.eta_star = star
            if 0.0 < star < lr:
                rec.eta, rec.olr_applied = star, True
            else:
                rec.eta = lr
            current = group["lr"]
            self._saved_group = group
            if isinstance(current, torch.Tensor):
                self._saved_lr = current.clone()
                current.fill_(rec.eta)
            else:
                self._saved_lr = current
                group["lr"] = rec.eta

    @torch.no_grad()
    def _post_hook(self, optimizer, args, kwargs) -> None:
        self._restore_lr()
        rec, self._pending = self._pending, None
        if rec is None:
            return
        rec._ortho_error = gram_identity_error(as_matrix(self.parameter.detach()))
        self.last = rec
        if self._keep_history:
            self.history.append(rec)

    # ------------------------------------------------------------------ teardown
    def detach(self) -> None:
        """Remove the hooks and restore the group's scheduled lr. A group that PreSVD added to the
        optimizer stays (removing it would drop the layer from training and its optimizer state)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._restore_lr()
        attached = _ATTACHED.get(self.optimizer)
        if attached is not None:
            attached.discard(id(self.parameter))

    def __enter__(self) -> "PreSVD":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def __repr__(self) -> str:
        return (
            f"PreSVD(nog={self.nog}, olr={self.olr}, group={self.group_index}, "
            f"parameter shape={tuple(self.parameter.shape)}, steps={self._steps})"
        )
