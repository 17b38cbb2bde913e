"""One timer for the notebooks' speed measurements, and timing comparisons with intervals.

* :class:`Clock`: process CPU time on a CPU with one torch thread (it counts the work done, not
  the time the process waited while other processes held the core, so a busy shared machine
  does not flip medians), the wall clock after ``torch.cuda.synchronize`` otherwise.
* :func:`interleaved`: every repetition runs every case once, in a freshly shuffled (seeded)
  order, so drift of a shared machine and the position in a round affect all cases alike.
* :class:`Timings`: the samples, medians and quartiles, and :meth:`Timings.ratio`: the ratio of
  two cases as a :class:`svdlib.experiments.stats.Comparison` on log times (repetitions of one
  interleaved round are paired; cases from different rounds are compared unpaired).
* :class:`Stopwatch`: wall and CPU time of a block (what a notebook took).

The benchmark scripts in ``benchmarks/`` keep their own timer (CUDA events, adaptive repetition
counts); these functions serve the notebooks.
"""
from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

from . import stats

__all__ = ["Clock", "interleaved", "Timings", "forward_backward_step", "Stopwatch"]


class Clock:
    """Seconds, read after the device has finished its queued work (see the module docstring)."""

    def __init__(self, device="cpu"):
        import torch

        self.device = torch.device(device)
        self.cpu_time = self.device.type == "cpu" and torch.get_num_threads() == 1
        self.name = "process CPU time" if self.cpu_time else "wall clock"
        self._read = time.process_time if self.cpu_time else time.perf_counter

    def __call__(self) -> float:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        return self._read()


def forward_backward_step(fn: Callable, x, grad, clock: Clock) -> Callable[[], dict]:
    """A case for :func:`interleaved`: ``fn(x)`` with autograd on ("fwd"), then its gradient ("bwd")."""
    import torch

    def step():
        xr = x.detach().requires_grad_(True)
        t0 = clock()
        out = fn(xr)
        t1 = clock()
        torch.autograd.grad(out, xr, grad)
        t2 = clock()
        return {"fwd": t1 - t0, "bwd": t2 - t1}

    return step


@dataclass
class Timings:
    """Samples in ms: ``samples[case][phase]`` is a list over repetitions; ``round[case]`` says
    which :func:`interleaved` call timed it (repetitions of one round are paired)."""

    samples: dict = field(default_factory=dict)
    round: dict = field(default_factory=dict)

    def values(self, case: Hashable, phase: str) -> list[float]:
        try:
            return self.samples[case][phase]
        except KeyError:
            raise KeyError(f"no timing for case {case!r}, phase {phase!r}; cases: {list(self.samples)}") from None

    def median(self, case: Hashable, phase: str) -> float:
        return statistics.median(self.values(case, phase))

    def quartiles(self, case: Hashable, phase: str) -> tuple[float, float, float]:
        """(25th percentile, median, 75th percentile) in ms."""
        v = self.values(case, phase)
        if len(v) < 2:
            return v[0], v[0], v[0]
        q = statistics.quantiles(v, n=4, method="inclusive")
        return q[0], q[1], q[2]

    def ratio(self, a: Hashable, b: Hashable, phase: str, region: stats.Region) -> stats.Comparison:
        """Time of ``a`` over time of ``b`` as a comparison of log times.

        The effect is the mean of log(t_a / t_b) over paired repetitions (same round), or the
        difference of mean log times (Welch) across rounds. ``region`` is on the **log ratio**:
        ``stats.at_most(math.log(1.03))`` claims "a takes at most 3 % longer than b". The
        evidence text names the ratio and its interval.
        """
        la = [math.log(t) for t in self.values(a, phase)]
        lb = [math.log(t) for t in self.values(b, phase)]
        same_round = self.round.get(a) == self.round.get(b) and len(la) == len(lb)
        c = (stats.paired if same_round else stats.unpaired)(la, lb, region, unit="log ratio")
        lo, hi = c.ci
        note = f"time ratio {math.exp(c.estimate):.3f}"
        if math.isfinite(lo) and math.isfinite(hi):
            note += f" [95% CI {math.exp(lo):.3f}, {math.exp(hi):.3f}]"
        return stats.Comparison(c.test, c.estimate, c.ci, c.n, c.region, c.p_in, c.p_out, means=c.means,
                                unit=c.unit, min_n=c.min_n, alpha=c.alpha, note=note)

    def ratio_interval(self, a: Hashable, b: Hashable, phase: str) -> dict:
        """``{"median_ratio", "ratio", "low", "high", "per_repetition"}``: the ratio of medians,
        the geometric-mean ratio with its 95% interval (see :meth:`ratio`), and, for cases of
        one round, the ratio of each repetition (the spread a figure shows)."""
        c = self.ratio(a, b, phase, stats.lower())
        lo, hi = c.ci
        paired = c.test == "paired t"
        return {"median_ratio": self.median(a, phase) / self.median(b, phase), "ratio": math.exp(c.estimate),
                "low": math.exp(lo) if math.isfinite(lo) else math.nan,
                "high": math.exp(hi) if math.isfinite(hi) else math.nan,
                "per_repetition": [x / y for x, y in zip(self.values(a, phase), self.values(b, phase))] if paired else []}

    def update(self, other: "Timings") -> "Timings":
        """Add another round's cases (keys must not repeat)."""
        clash = set(self.samples) & set(other.samples)
        if clash:
            raise ValueError(f"cases timed twice: {sorted(map(str, clash))}")
        self.samples.update(other.samples)
        self.round.update(other.round)
        return self


_ROUNDS = iter(range(1 << 62))


def interleaved(cases: Mapping[Hashable, Callable[[], dict]], repeats: int, *, warmup: int = 2,
                seed: int = 0) -> Timings:
    """Time every case ``repeats`` times, one of each per round in shuffled order.

    ``cases`` maps a name to a step function returning ``{phase: seconds}``. The first
    ``warmup`` rounds are discarded. Returns :class:`Timings` (milliseconds).
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    if not cases:
        raise ValueError("cases must name at least one case")
    rid = next(_ROUNDS)
    samples: dict = {name: {} for name in cases}
    order, rng = list(cases), random.Random(seed)
    for rep in range(warmup + repeats):
        rng.shuffle(order)
        for name in order:
            for phase, seconds in cases[name]().items():
                if rep >= warmup:
                    samples[name].setdefault(phase, []).append(1e3 * seconds)
    return Timings(samples, {name: rid for name in cases})


class Stopwatch:
    """Wall-clock and process CPU seconds since creation: ``Stopwatch().seconds()``."""

    def __init__(self):
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def seconds(self) -> tuple[float, float]:
        """(wall, CPU) seconds elapsed."""
        return time.perf_counter() - self.wall0, time.process_time() - self.cpu0

    def __str__(self) -> str:
        wall, cpu = self.seconds()
        return f"{wall:.0f} s wall, {cpu:.0f} s CPU"
