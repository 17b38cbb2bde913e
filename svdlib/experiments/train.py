"""Training loop of the experiment harness, callable from notebooks and from the command line.

::

    python -m svdlib.experiments.train --config configs/dbn_nog.yaml --out runs/dbn_nog \\
        [--profile quick|paper] [--set key=value ...] [--resume] [--overwrite] [--sweep]
    torchrun --nproc_per_node=K -m svdlib.experiments.train --config ... --out ...

or, from Python, ``train(load_config("configs/dbn_nog.yaml"), "runs/dbn_nog", resume=True)``, or
``run_sweep("configs/dbn_nog.yaml", "runs/quick/dbn_nog")`` for every seed of the config's sweep.

One loop serves both papers' experiment families: SGD with momentum and step decays; the
orthogonal treatments of the Pre-SVD layer (Song et al., ECCV 2022: SN, OL, OW, NOG, OLR); the
hybrid protocol (Song et al., ICCV 2021: Newton-Schulz until ``hybrid_switch_epoch``, then
SVD); metrics per logged step and per epoch (:mod:`.metrics`); an atomic checkpoint after
every epoch that ``resume=True`` continues from, producing the same metrics as an
uninterrupted run; divergence (a non-finite loss, gradient or meta-layer input) ends the run
cleanly with ``diverged: true`` so success rates (Wang et al., TPAMI 2021, Table IV) can be
counted. Results are never overwritten silently.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import random
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from . import distributed as D
from .config import (RUNTIME_ONLY_FIELDS, ExperimentConfig, PROFILES, apply_overrides,
                     config_from_dict, config_help, load_config)
from .data import build_datasets, epoch_indices, iterate_batches, num_batches
from .lock import run_lock
from .metrics import MetricsWriter, number_or_none, read_json, write_json_atomic
from .models import build_model

__all__ = ["train", "run_sweep", "main", "RUN_FILES", "DivergedRun", "scheduled_lr", "environment"]

#: Files a run writes in its output directory.
RUN_FILES = ("metrics.jsonl", "summary.json", "checkpoint.pt", "config.yaml")


class DivergedRun(Exception):
    """Internal signal: the current step diverged (caught by :func:`train`)."""


# ------------------------------------------------------------------------------------------
# output directory handling
# ------------------------------------------------------------------------------------------
def _config_differences(stored: dict, cfg: ExperimentConfig) -> list[str]:
    current = cfg.to_dict()
    keys = (set(stored) | set(current)) - set(RUNTIME_ONLY_FIELDS)
    return sorted(k for k in keys if stored.get(k) != current.get(k))


def _check_same_config(stored: dict, cfg: ExperimentConfig, out_dir: str) -> None:
    diff = _config_differences(stored, cfg)
    if diff:
        detail = ", ".join(f"{k}: {stored.get(k)!r} -> {cfg.to_dict().get(k)!r}" for k in diff[:8])
        raise ValueError(
            f"the run in {out_dir} was made with a different config ({detail}); use another "
            f"output directory, or overwrite=True (--overwrite) to replace it")


def _prepare_out_dir(cfg: ExperimentConfig, out_dir: str, resume: bool, overwrite: bool):
    """Decide what to do with ``out_dir``: ("finished", summary) / ("resume", None) / ("fresh", None).
    Called with the folder's lock held, so temporaries of killed checkpoint saves are stale."""
    os.makedirs(out_dir, exist_ok=True)
    ckpt.remove_stale_temporaries(os.path.join(out_dir, "checkpoint.pt"))
    present = [f for f in RUN_FILES if os.path.exists(os.path.join(out_dir, f))]
    if overwrite:
        for f in RUN_FILES:
            path = os.path.join(out_dir, f)
            if os.path.exists(path):
                os.unlink(path)
        return "fresh", None
    summary_path = os.path.join(out_dir, "summary.json")
    if os.path.exists(summary_path):
        if not resume:
            raise FileExistsError(
                f"{out_dir} holds a finished run (summary.json); pass resume=True (--resume) to "
                f"reuse it or overwrite=True (--overwrite) to replace it")
        hint = "start the run again with overwrite=True (--overwrite)"
        try:
            summary = read_json(summary_path)
        except ValueError as e:
            raise ValueError(f"{e}; {hint}") from None
        if not isinstance(summary, dict):
            raise ValueError(f"{summary_path} is not a run summary (a JSON object); {hint}")
        _check_same_config(summary.get("config", {}), cfg, out_dir)
        return "finished", summary
    if os.path.exists(os.path.join(out_dir, "checkpoint.pt")):
        if not resume:
            raise FileExistsError(
                f"{out_dir} holds an interrupted run (checkpoint.pt); pass resume=True (--resume) "
                f"to continue it or overwrite=True (--overwrite) to start again")
        return "resume", None
    if present:
        if not resume:
            raise FileExistsError(
                f"{out_dir} holds a run that stopped before its first checkpoint ({', '.join(present)}); "
                f"pass resume=True (--resume) to restart it or overwrite=True (--overwrite)")
        return "fresh", None
    return "fresh", None


# ------------------------------------------------------------------------------------------
# environment, seeds, determinism
# ------------------------------------------------------------------------------------------
def environment(device: torch.device, world_size: int = 1) -> dict:
    """Versions and hardware the run used (recorded in summary.json)."""
    import svdlib

    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": str(device),
        "world_size": world_size,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "svdlib": getattr(svdlib, "__version__", None),
    }


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _threads(n: int):
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(previous)


@contextlib.contextmanager
def _determinism(enabled: bool, device: torch.device):
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if enabled:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = previous[2]
        torch.backends.cudnn.deterministic = previous[3]


def _progress_enabled(cfg: ExperimentConfig, info: D.DistInfo) -> bool:
    flag = os.environ.get("TQDM_DISABLE", "").strip().lower()
    return cfg.progress and info.is_main and flag in ("", "0", "false", "no")


# ------------------------------------------------------------------------------------------
# pieces of the loop
# ------------------------------------------------------------------------------------------
def scheduled_lr(cfg: ExperimentConfig, epoch: int) -> float:
    """Learning rate of (0-based) ``epoch``: ``lr * lr_gamma ** #(milestones <= epoch)``
    (StepLR(100, 0.1) of the ECCV code is ``lr_milestones: [100, 200, 300]``)."""
    return cfg.lr * cfg.lr_gamma ** sum(1 for m in cfg.lr_milestones if m <= epoch)


def _apply_treatments(model: nn.Module, cfg: ExperimentConfig) -> None:
    """Weight treatments (sn, ow) parametrize the Pre-SVD layer in place, before the optimizer."""
    if not ({"sn", "ow"} & set(cfg.treatments)):
        return
    import svdlib.ortho as ortho

    if "sn" in cfg.treatments:
        ortho.spectral_norm(model.pre_svd)
    if "ow" in cfg.treatments:
        ortho.orthogonal_weight(model.pre_svd)


def _build_optimizer(model: nn.Module, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    """SGD with the Pre-SVD layer in its own (second) parameter group (ECCV 2022, sec. 5)."""
    import svdlib.ortho as ortho

    groups = ortho.presvd_param_groups(model, model.pre_svd)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)


def _attach_presvd(model: nn.Module, opt: torch.optim.Optimizer, cfg: ExperimentConfig):
    """NOG/OLR step hooks on the Pre-SVD group, or None. PreSVD looks its group up at every
    step, so it may be attached before or after ``opt.load_state_dict`` (done after here)."""
    if "nog" not in cfg.treatments and "olr" not in cfg.treatments:
        return None
    import svdlib.ortho as ortho

    return ortho.PreSVD(opt, model.pre_svd, nog="nog" in cfg.treatments, olr="olr" in cfg.treatments)


def _condition(model) -> dict | None:
    """Condition numbers lambda_max / lambda_min of the meta layer's last training covariances
    (one per whitening group, or per image for GCP): max, mean, median and the fraction that is
    singular (inf), or None for a model without meta layer."""
    layer = model.meta_layer
    k = getattr(layer, "last_condition_number", None) if layer is not None else None
    if k is None or k.numel() == 0:
        return None
    k = k.detach().double().reshape(-1).cpu()
    return {"cond_max": number_or_none(k.max()), "cond_mean": number_or_none(k.mean()),
            "cond_median": number_or_none(k.median()),
            "cond_singular": float(torch.isinf(k).double().mean())}


COND_FIELDS = ("cond_max", "cond_mean", "cond_median", "cond_singular")


def _epoch_condition(conds: list[dict]) -> dict:
    """Epoch aggregate of the per-step condition numbers: max of the maxima, mean of the means,
    median of the medians, mean singular fraction, and the last step's maximum."""
    if not conds:
        return {**dict.fromkeys(COND_FIELDS), "cond_last": None}

    def col(key):
        return [c[key] for c in conds if c[key] is not None]

    def agg(fn, key):
        values = col(key)
        return float(fn(values)) if values else None

    return {"cond_max": agg(max, "cond_max"), "cond_mean": agg(np.mean, "cond_mean"),
            "cond_median": agg(np.median, "cond_median"),
            "cond_singular": agg(np.mean, "cond_singular"), "cond_last": conds[-1]["cond_max"]}


def _grad_norm(params) -> torch.Tensor:
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.double()) for g in grads]))


def _failure_count() -> int:
    import svdlib

    return int(svdlib.diagnostics.failure_count())


def _autocast(cfg: ExperimentConfig, device: torch.device):
    if not cfg.amp:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _evaluate(model, ds, cfg, info: D.DistInfo, device) -> dict:
    """Test loss / accuracy (%) over the whole test set, the shards of all ranks summed."""
    model.eval()
    idx = epoch_indices(len(ds), seed=cfg.seed, epoch=0, shuffle=False, rank=info.rank,
                        world_size=info.world_size)
    guard = model.meta_guard
    if guard is not None:
        guard.tripped = False
    totals = torch.zeros(5, dtype=torch.float64)  # loss sum, correct, count, non-finite, top-5
    with torch.no_grad():
        for x, y in iterate_batches(ds, idx, cfg.test_batch_size, drop_last=False,
                                    num_workers=cfg.num_workers, seed=cfg.seed):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(cfg, device):
                out = model(x)
            loss = F.cross_entropy(out.float(), y, reduction="sum")
            totals[0] += float(loss)
            totals[1] += float((out.argmax(1) == y).sum())
            totals[2] += y.numel()
            k = min(5, out.shape[1])
            totals[4] += float((out.topk(k, dim=1).indices == y.unsqueeze(1)).any(1).sum())
    totals[3] = float(guard is not None and guard.tripped) + float(not math.isfinite(totals[0]))
    D.all_reduce_sum(totals, info)
    n = max(totals[2].item(), 1.0)
    acc = 100.0 * totals[1].item() / n
    return {"test_loss": totals[0].item() / n, "test_acc": acc, "test_error": 100.0 - acc,
            "test_acc5": 100.0 * totals[4].item() / n, "nonfinite": totals[3].item() > 0}


# ------------------------------------------------------------------------------------------
# the public entry point
# ------------------------------------------------------------------------------------------
def train(config: ExperimentConfig | dict, out_dir: str | os.PathLike, resume: bool = False,
          overwrite: bool = False, *, stop_after_epoch: int | None = None) -> dict:
    """Train one configuration and return its summary.

    Parameters
    ----------
    config : ExperimentConfig or dict
        The run (see :class:`~svdlib.experiments.config.ExperimentConfig`; a dict is validated).
    out_dir : str or PathLike
        Directory for ``metrics.jsonl``, ``summary.json``, ``checkpoint.pt`` and
        ``config.yaml``. Created if missing.
    resume : bool, default False
        Continue an interrupted run from its last checkpoint; for a finished run (its
        ``summary.json`` exists and its config matches) return that summary without training,
        so notebooks can skip finished configs.
    overwrite : bool, default False
        Delete an existing run's files in ``out_dir`` and start again. Without ``resume`` or
        ``overwrite`` an existing run is an error: results are never overwritten silently.
    stop_after_epoch : int, optional
        Stop (as if interrupted) once this many epochs are complete, leaving the checkpoint but
        no summary; a later call with ``resume=True`` continues. For time-sliced jobs and for
        the resume test.

    Returns
    -------
    dict
        The summary (also written to ``summary.json``): ``name, profile, status ("finished",
        "diverged" or "stopped"), finished, diverged, divergence, epochs, epochs_completed,
        steps, final_test_error, best_test_error, final_test_acc, best_test_acc,
        final_test_acc5, best_test_acc5, final_train_loss, failures, cond_max, cond_mean,
        cond_median, cond_singular,
        wall_time, config, environment``. Errors and accuracies are in percent (``acc5``:
        top-5, as in Table 5 of the ECCV paper; ``best_*`` at the epoch of the lowest test
        error); ``cond_*`` are of the last completed epoch.
    """
    cfg = config if isinstance(config, ExperimentConfig) else config_from_dict(dict(config))
    cfg.validate()
    out_dir = os.fspath(out_dir)
    info, device = D.setup(cfg.device)
    held = contextlib.ExitStack()  # rank 0 holds the folder's lock for the whole run
    try:
        decision, error = None, None
        if info.is_main:
            try:
                os.makedirs(out_dir, exist_ok=True)
                held.enter_context(run_lock(out_dir))
                decision = _prepare_out_dir(cfg, out_dir, resume, overwrite)
            except (OSError, ValueError) as e:
                decision, error = ("error", isinstance(e, FileExistsError), str(e)), e
        decision = D.broadcast_object(decision, info)
        if decision[0] == "error":
            raise error or (FileExistsError if decision[1] else ValueError)(decision[2])
        if decision[0] == "finished":
            return decision[1]
        with _determinism(cfg.deterministic, device), _threads(cfg.num_threads):
            return _run(cfg, out_dir, decision[0] == "resume", stop_after_epoch, info, device)
    finally:
        held.close()
        D.cleanup(info)


def run_sweep(config: str | os.PathLike | ExperimentConfig, out_dir: str | os.PathLike, *,
              profile: str = "quick", overrides=(), resume: bool = True,
              overwrite: bool = False) -> list[dict]:
    """Train every combination of a config's ``sweep`` (seeds, group sizes, ...).

    Parameters
    ----------
    config : path or ExperimentConfig
        A YAML file (loaded at ``profile`` with ``overrides``) or a config.
    out_dir : str or PathLike
        Each combination runs in ``out_dir/<suffix>`` (``"seed=0"``, ``"group_size=8,seed=1"``;
        ``out_dir`` itself without a sweep).
    resume : bool, default True
        Finished runs are returned without training, interrupted ones continue, so calling this
        again after an interruption (or from a re-executed notebook) only does what is missing.
    overwrite : bool, default False
        Retrain everything.

    Returns
    -------
    list of dict
        The summaries, each with two extra keys (not written to disk): ``run_dir`` and
        ``sweep_point`` (the swept values of that run).
    """
    from .config import expand_sweep

    if isinstance(config, ExperimentConfig):
        cfg = apply_overrides(config, overrides)
    else:
        cfg = load_config(config, profile=profile, overrides=overrides)
    keys = list(cfg.sweep)
    out = []
    for suffix, c in expand_sweep(cfg):
        run_dir = _sweep_run_dir(os.fspath(out_dir), suffix)
        summary = dict(train(c, run_dir, resume=resume and not overwrite, overwrite=overwrite))
        summary["run_dir"] = run_dir
        summary["sweep_point"] = {k: getattr(c, k) for k in keys}
        out.append(summary)
    return out


def _check_steps(cfg: ExperimentConfig, n_train: int, local_batch: int, info) -> None:
    """Refuse a run whose epochs would hold no training step (it would report a train loss of
    0 and an untrained model as finished)."""
    idx = epoch_indices(n_train, seed=cfg.seed, epoch=0, shuffle=True, rank=info.rank,
                        world_size=info.world_size)
    if num_batches(len(idx), local_batch, cfg.drop_last) == 0:
        per_process = f" ({local_batch} per process)" if info.distributed else ""
        raise ValueError(
            f"no training step per epoch: batch_size {cfg.batch_size}{per_process} is larger than "
            f"the {n_train} training images and drop_last is true, so every batch is dropped; "
            "lower batch_size, use more training images (train_subset) or set drop_last: false")


def _sweep_run_dir(out_dir: str, suffix: str) -> str:
    """``out_dir/suffix``, refused unless it resolves (symbolic links followed) to a folder
    inside ``out_dir``: a run of a sweep never writes, or deletes with overwrite, elsewhere."""
    if not suffix:
        return out_dir
    run_dir = os.path.join(out_dir, suffix)
    root, target = os.path.realpath(out_dir), os.path.realpath(run_dir)
    if os.path.dirname(target) != root:
        raise ValueError(f"sweep run folder {run_dir} resolves to {target}, outside the output "
                         f"folder {root}; remove that link or choose another output folder")
    return run_dir


def _run(cfg: ExperimentConfig, out_dir: str, resuming: bool, stop_after_epoch, info, device) -> dict:
    import yaml

    t_start = time.perf_counter()
    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size must be divisible by the number of processes "
                         f"({info.world_size}), got {cfg.batch_size}")
    local_batch = cfg.batch_size // info.world_size

    # data: rank 0 first (a download happens once), then the others
    if info.is_main:
        train_ds, test_ds, num_classes = build_datasets(cfg)
    D.barrier(info)
    if not info.is_main:
        train_ds, test_ds, num_classes = build_datasets(cfg)
    _check_steps(cfg, len(train_ds), local_batch, info)

    if info.is_main and not resuming:
        cfg_path = os.path.join(out_dir, "config.yaml")
        tmp = cfg_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)
        os.replace(tmp, cfg_path)

    _seed_all(cfg.seed)
    model = build_model(cfg, num_classes)
    _apply_treatments(model, cfg)
    model.to(device)
    if info.distributed and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    opt = _build_optimizer(model, cfg)
    net = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if info.rank:
        _seed_all(cfg.seed + 1_000_003 * info.rank)  # different augmentation per rank
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    use_ol = "ol" in cfg.treatments
    if use_ol:
        import svdlib.ortho as ortho
        from torch.nn.utils import parametrize

    state = {"epoch": 0, "global_step": 0, "best_test_error": None, "best_test_acc": None,
             "best_test_acc5": None,
             "failures_total": 0, "failures_since_log": 0, "wall_time": 0.0, "last_epoch": None,
             "metrics_lines": 0}
    if resuming:
        c = _load_run_checkpoint(out_dir, device)
        _check_same_config(c["config"], cfg, out_dir)
        model.load_state_dict(c["model"])
        opt.load_state_dict(c["optimizer"])
        scaler.load_state_dict(c["scaler"])
        rng = c["rng"]
        if len(rng) == info.world_size:
            ckpt.set_rng_state(rng[info.rank])
        else:
            warnings.warn(f"checkpoint in {out_dir} was written by {len(rng)} processes, resuming "
                          f"with {info.world_size}: random augmentation will not continue exactly "
                          f"as in an uninterrupted run", RuntimeWarning, stacklevel=2)
        state.update(c["state"])
    presvd = _attach_presvd(model, opt, cfg)
    writer = MetricsWriter(os.path.join(out_dir, "metrics.jsonl"),
                           keep_lines=state["metrics_lines"] if resuming else None,
                           enabled=info.is_main)
    from tqdm import tqdm

    progress = _progress_enabled(cfg, info)
    divergence = None
    failures_seen = _failure_count()
    epoch_failures = 0  # eigensolver failures of this rank in the current epoch so far
    stopped = False
    try:
        for epoch in range(state["epoch"], cfg.epochs):
            t_epoch = time.perf_counter()
            lr = scheduled_lr(cfg, epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            meta = model.meta_layer
            if meta is not None and cfg.hybrid_switch_epoch is not None:
                meta.method = "newton_schulz" if epoch < cfg.hybrid_switch_epoch else cfg.method
            method = getattr(meta, "method", None)

            net.train()
            idx = epoch_indices(len(train_ds), seed=cfg.seed, epoch=epoch, shuffle=True,
                                rank=info.rank, world_size=info.world_size)
            n_steps = num_batches(len(idx), local_batch, cfg.drop_last)
            if cfg.max_steps_per_epoch:
                n_steps = min(n_steps, cfg.max_steps_per_epoch)
            sums = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
            epoch_failures = 0
            conds: list[dict] = []
            bar = tqdm(total=n_steps, disable=not progress, leave=False, dynamic_ncols=True,
                       desc=f"{cfg.name} {epoch + 1}/{cfg.epochs}")
            batches = iterate_batches(train_ds, idx, local_batch, drop_last=cfg.drop_last,
                                      num_workers=cfg.num_workers, seed=cfg.seed * 100_003 + epoch)
            for b, (x, y) in enumerate(batches):
                if b >= n_steps:
                    break
                t_step = time.perf_counter()
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                guard = model.meta_guard
                if guard is not None:
                    guard.tripped = False
                opt.zero_grad(set_to_none=True)
                with (parametrize.cached() if use_ol else contextlib.nullcontext()):
                    with _autocast(cfg, device):
                        out = net(x)
                        loss = F.cross_entropy(out.float(), y)
                    total = loss
                    if use_ol:
                        total = loss + cfg.ol_weight * ortho.orthogonal_loss(model.pre_svd.weight)
                    flags = torch.tensor([float(guard is not None and guard.tripped),
                                          float(not torch.isfinite(total.detach()).item())])
                    D.all_reduce_sum(flags, info)
                    if flags.sum() > 0:
                        reason = ("non-finite or overflowing meta-layer input" if flags[0] > 0
                                  else "non-finite loss")
                        raise DivergedRun(reason)
                    scaler.scale(total).backward()
                scaler.unscale_(opt)
                gnorm = _grad_norm(params)
                if not torch.isfinite(gnorm) and not scaler.is_enabled():
                    raise DivergedRun("non-finite gradient")
                if cfg.grad_clip_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)
                scaler.step(opt)
                scaler.update()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                step_time = time.perf_counter() - t_step

                n = y.numel()
                loss_v = float(loss.detach())
                correct = float((out.detach().argmax(1) == y).sum())
                sums += torch.tensor([loss_v * n, correct, n], dtype=torch.float64)
                failures_now = _failure_count()
                epoch_failures += failures_now - failures_seen
                state["failures_since_log"] += failures_now - failures_seen
                failures_seen = failures_now
                cond = _condition(model)
                if cond is not None:
                    conds.append(cond)
                state["global_step"] += 1
                step = state["global_step"]
                if step == 1 or step % cfg.log_every == 0:
                    rec = {"type": "step", "epoch": epoch, "step": step, "batch": b,
                           "loss": loss_v, "acc": 100.0 * correct / n,
                           "lr": [float(g["lr"]) for g in opt.param_groups],
                           "grad_norm": float(gnorm),
                           **(cond or dict.fromkeys(COND_FIELDS)),
                           "failures": state["failures_since_log"],
                           "failures_total": state["failures_total"] + epoch_failures,
                           "step_time": step_time}
                    if presvd is not None and presvd.last is not None:
                        rec["presvd_lr"] = presvd.last.eta
                    state["failures_since_log"] = 0
                    writer.write(rec)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_v:.3f}")
            bar.close()

            D.all_reduce_sum(sums, info)
            count = max(sums[2].item(), 1.0)
            ev = _evaluate(model, test_ds, cfg, info, device)
            failures_now = _failure_count()  # the evaluation's solves (running statistics)
            fails = torch.tensor([epoch_failures, failures_now - failures_seen], dtype=torch.float64)
            failures_seen, epoch_failures = failures_now, 0
            D.all_reduce_sum(fails, info)
            state["failures_total"] += int(fails.sum().item())
            if ev.pop("nonfinite"):
                raise DivergedRun("non-finite test loss")
            best = state["best_test_error"]
            if best is None or ev["test_error"] < best:
                state["best_test_error"], state["best_test_acc"] = ev["test_error"], ev["test_acc"]
                state["best_test_acc5"] = ev["test_acc5"]
            rec = {"type": "epoch", "epoch": epoch, "method": method,
                   "train_loss": sums[0].item() / count, "train_acc": 100.0 * sums[1].item() / count,
                   **ev, "lr": [lr for _ in opt.param_groups],
                   **_epoch_condition(conds), "failures": int(fails[0].item()),
                   "eval_failures": int(fails[1].item()),
                   "failures_total": state["failures_total"], "steps": state["global_step"],
                   "epoch_time": time.perf_counter() - t_epoch,
                   "wall_time": state["wall_time"] + time.perf_counter() - t_start}
            writer.write(rec)
            state["last_epoch"] = {k: rec[k] for k in ("train_loss", "test_error", "test_acc",
                                                       "test_acc5", *COND_FIELDS)}
            state["epoch"] = epoch + 1
            state["metrics_lines"] = writer.lines
            _save(out_dir, model, opt, scaler, cfg, state, info, t_start)
            if stop_after_epoch is not None and state["epoch"] >= stop_after_epoch \
                    and state["epoch"] < cfg.epochs:
                stopped = True
                break
    except DivergedRun as e:
        # every rank stops at the same step (the flags are all-reduced, DDP gradients agree)
        fails = torch.tensor([float(epoch_failures)], dtype=torch.float64)
        D.all_reduce_sum(fails, info)
        state["failures_total"] += int(fails.item())
        divergence = {"epoch": state["epoch"], "step": state["global_step"] + 1, "reason": str(e)}
    finally:
        writer.close()
        if presvd is not None:
            presvd.detach()

    state["wall_time"] += time.perf_counter() - t_start
    summary = _summary(cfg, state, divergence, stopped, device, info)
    if info.is_main and not stopped:
        write_json_atomic(os.path.join(out_dir, "summary.json"), summary)
    return summary


_CHECKPOINT_KEYS = ("model", "optimizer", "scaler", "rng", "state", "config")


def _load_run_checkpoint(out_dir: str, device) -> dict:
    """The run's checkpoint.pt; CheckpointError (a ValueError) naming the file and the way out
    when it is damaged or not a checkpoint of this harness."""
    path = os.path.join(out_dir, "checkpoint.pt")
    hint = "start the run again with --overwrite (overwrite=True)"
    try:
        c = ckpt.load_checkpoint(path, map_location=device)
    except ckpt.CheckpointError as e:
        raise ckpt.CheckpointError(f"{e}; {hint}") from None
    missing = [k for k in _CHECKPOINT_KEYS if k not in c] if isinstance(c, dict) else list(_CHECKPOINT_KEYS)
    if missing:
        raise ckpt.CheckpointError(
            f"{path} is not a training checkpoint of this harness (no {', '.join(missing)}); {hint}")
    return c


def _save(out_dir, model, opt, scaler, cfg, state, info, t_start) -> None:
    rng = D.all_gather_object(ckpt.get_rng_state(), info)
    if not info.is_main:
        return
    saved_state = dict(state)
    saved_state["wall_time"] = state["wall_time"] + time.perf_counter() - t_start
    ckpt.save_checkpoint(os.path.join(out_dir, "checkpoint.pt"), {
        "format": 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(), "rng": rng, "state": saved_state, "config": cfg.to_dict(),
    })


def _summary(cfg, state, divergence, stopped, device, info) -> dict:
    last = state["last_epoch"] or {}
    status = "stopped" if stopped else ("diverged" if divergence else "finished")
    return {
        "name": cfg.name,
        "profile": cfg.profile,
        "reference": cfg.reference,
        "status": status,
        "finished": status != "stopped",
        "diverged": divergence is not None,
        "divergence": divergence,
        "epochs": cfg.epochs,
        "epochs_completed": state["epoch"],
        "steps": state["global_step"],
        "final_test_error": last.get("test_error"),
        "best_test_error": state["best_test_error"],
        "final_test_acc": last.get("test_acc"),
        "best_test_acc": state["best_test_acc"],
        "final_test_acc5": last.get("test_acc5"),
        "best_test_acc5": state["best_test_acc5"],
        "final_train_loss": last.get("train_loss"),
        "failures": state["failures_total"],
        **{k: last.get(k) for k in COND_FIELDS},
        "wall_time": state["wall_time"],
        "config": cfg.to_dict(),
        "environment": environment(device, info.world_size),
    }


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m svdlib.experiments.train",
        description="Train one svdlib experiment config (also under torchrun --nproc_per_node=K).",
        epilog="config fields (override any with --set key=value; dict fields take dotted keys, "
               "e.g. --set remedy_options.degree=19):\n" + config_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config file (configs/NAME.yaml)")
    p.add_argument("--out", required=True, help="output directory of the run (runs/NAME)")
    p.add_argument("--profile", choices=PROFILES, default="quick",
                   help="'quick' (digits, tiny model, CPU minutes; default) or 'paper' (the papers' "
                        "protocol: CIFAR/ImageNet, GPU, datasets on disk)")
    p.add_argument("--set", dest="overrides", action="append", nargs="+", default=[],
                   metavar="KEY=VALUE", help="override config fields (values parsed as YAML)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint; a finished run is returned unchanged")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--sweep", action="store_true",
                   help="train every combination of the config's sweep into OUT/<suffix> "
                        "(finished runs are skipped with --resume)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def main(argv=None) -> int:
    """CLI entry point; returns the process exit code (0 also for a diverged run: it is a result)."""
    args = _parser().parse_args(argv)
    overrides = [o for group in args.overrides for o in group]
    try:
        cfg = load_config(args.config, profile=args.profile, overrides=overrides)
    except (ValueError, TypeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    try:
        info, _ = D.setup(cfg.device)  # one process group for every run of a sweep (torchrun)
    except RuntimeError as e:  # device='cuda' without CUDA
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if args.sweep:
            summaries = run_sweep(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
        else:
            summaries = [dict(train(cfg, args.out, resume=args.resume, overwrite=args.overwrite),
                              run_dir=args.out)]
    except (ValueError, OSError) as e:  # bad run folder, damaged files, refused runs
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        D.cleanup(info)
    if info.is_main:
        for summary in summaries:
            err = summary.get("final_test_error")
            err_s = "n/a" if err is None else f"{err:.2f}%"
            print(f"{summary['name']} [{summary['profile']}]: {summary['status']}, "
                  f"{summary['epochs_completed']}/{summary['epochs']} epochs, test error {err_s}, "
                  f"failures {summary['failures']}, wall {summary['wall_time']:.1f}s -> "
                  f"{summary['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
