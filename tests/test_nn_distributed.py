"""DecorrelatedBatchNorm2d under torch.distributed: 2 gloo processes, each with half of the
batch, must reproduce a single process on the concatenated batch (outputs, input and
parameter gradients, running statistics) to 1e-10 in float64 (svdlib.nn._sync)."""
from __future__ import annotations

import os
import socket
import sys
import time

import pytest
import torch
import torch.distributed as dist

import svdlib
from svdlib.nn import DecorrelatedBatchNorm2d

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
)

WORLD = 2
F64 = torch.float64
STEPS = 2
C, GROUP = 6, 4                                   # groups of 4 and 2 channels


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _problem():
    """Deterministic data shared by every process: STEPS batches, loss weights, eval input."""
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(C, C, generator=g, dtype=F64) + 2 * torch.eye(C, dtype=F64)
    xs = [torch.einsum("dc,bchw->bdhw", mix, torch.randn(8, C, 3, 3, generator=g, dtype=F64)) + 1.5
          for _ in range(STEPS)]
    Rs = [torch.randn(8, C, 3, 3, generator=g, dtype=F64) for _ in range(STEPS)]
    x_eval = torch.randn(3, C, 3, 3, generator=g, dtype=F64)
    return xs, Rs, x_eval


def _make_bn(**kw) -> DecorrelatedBatchNorm2d:
    bn = DecorrelatedBatchNorm2d(C, group_size=GROUP, eps=1e-3, **kw).double()
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 1.5, C, dtype=F64))
        bn.bias.copy_(torch.linspace(-1.0, 1.0, C, dtype=F64))
    return bn


def _run(bn, xs, Rs, x_eval, part=slice(None)):
    """Train steps on xs[part] with loss sum(y * R[part]), then one eval forward."""
    out = {}
    for step, (x, R) in enumerate(zip(xs, Rs)):
        xl = x[part].clone().requires_grad_(True)
        y = bn(xl)
        (y * R[part]).sum().backward()
        out[f"y{step}"], out[f"gx{step}"] = y.detach(), xl.grad
        out[f"kappa{step}"] = bn.last_condition_number.clone()
    out["gw"], out["gb"] = bn.weight.grad.clone(), bn.bias.grad.clone()
    out.update({k: v.clone() for k, v in bn.state_dict().items() if "running" in k})
    bn.eval()
    out["y_eval"] = bn(x_eval).detach()
    return out


def _worker(rank: int, port: int, outdir: str) -> None:
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        xs, Rs, x_eval = _problem()
        half = xs[0].shape[0] // WORLD
        part = slice(rank * half, (rank + 1) * half)
        synced = _run(_make_bn(), xs, Rs, x_eval, part)
        for key in ("gw", "gb"):                 # parameter gradients: sum over ranks
            dist.all_reduce(synced[key])
        local = _run(_make_bn(sync=False), xs, Rs, x_eval, part)
        torch.save({"synced": synced, "local": local, "part": (part.start, part.stop)},
                   os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _spawn(outdir: str, timeout: float = 90.0) -> None:
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_worker, args=(_free_port(), outdir), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"distributed workers did not finish within {timeout} s")


def test_two_gloo_processes_match_one_process_on_the_full_batch(tmp_path):
    _spawn(str(tmp_path))
    xs, Rs, x_eval = _problem()
    full = _run(_make_bn(), xs, Rs, x_eval)
    for rank in range(WORLD):
        res = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        part = slice(*res["part"])
        synced = res["synced"]
        for step in range(STEPS):
            assert torch.allclose(synced[f"y{step}"], full[f"y{step}"][part], rtol=0, atol=1e-10)
            assert torch.allclose(synced[f"gx{step}"], full[f"gx{step}"][part], rtol=0, atol=1e-10)
            assert torch.allclose(synced[f"kappa{step}"], full[f"kappa{step}"], rtol=1e-10, atol=0)
        for key in ("gw", "gb", "running_mean", "running_covariance", "running_covariance_tail",
                    "y_eval"):
            assert torch.allclose(synced[key], full[key], rtol=0, atol=1e-10), key

        # sync=False under the same process group: each rank whitens with its own half only
        local_ref = _run(_make_bn(), xs, Rs, x_eval, part)
        for key in ("y0", "gx0", "y1", "running_covariance"):
            assert torch.allclose(res["local"][key], local_ref[key], rtol=0, atol=1e-10), key
        assert not torch.allclose(res["local"]["y0"], synced["y0"], atol=1e-3)


def test_global_moments_without_communication_match_covariance(monkeypatch):
    """The one-pass float64 moments (count, sum, outer products) equal svdlib.covariance,
    checked with the all-reduce replaced by the identity (a world of one)."""
    from svdlib.nn import _sync

    monkeypatch.setattr(_sync, "all_reduce_sum", lambda t, group=None: t)
    g = torch.Generator().manual_seed(1)
    blocks = [torch.randn(2, 3, 50, generator=g, dtype=F64) + 4.0,
              torch.randn(1, 2, 50, generator=g, dtype=F64) - 2.0]
    count, means, covs = _sync.global_moments(blocks)
    assert count.item() == 50
    for b, m, c in zip(blocks, means, covs):
        assert torch.allclose(m, b.mean(-1), atol=1e-13)
        assert torch.allclose(c, svdlib.covariance(b), atol=1e-12)
