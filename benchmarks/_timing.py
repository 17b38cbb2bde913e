"""Shared helpers of the benchmark scripts: timing, environment, tables, atomic JSON.

Timing: warm up first (this also triggers torch.compile and cuSOLVER handle creation), then
time many repetitions and keep the median. On CUDA every repetition is bracketed by CUDA
events on the current stream (GPU time, host launches included); on CPU by
``time.perf_counter``. The number of repetitions adapts to a time budget so a 1.5 s call and
a 50 us call are both measured in bounded time. Two functions whose ratio is a target
(svdlib.eigh vs torch.linalg.eigh) are timed in alternation instead (:func:`time_pair`).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = [
    "Timer",
    "time_call",
    "time_pair",
    "environment",
    "device_label",
    "default_result_path",
    "write_json_atomic",
    "format_table",
    "ratio",
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], Any],
    device: torch.device | str,
    *,
    warmup: int = 2,
    min_reps: int = 5,
    max_reps: int = 200,
    budget_s: float = 1.0,
) -> dict:
    """Median time of ``fn()`` in milliseconds, after ``warmup`` untimed calls.

    The repetition count is ``budget_s`` divided by the last warm-up call's duration,
    clamped to [``min_reps``, ``max_reps``]. Returns ``{"median_ms", "min_ms", "p25_ms",
    "p75_ms", "reps"}``.
    """
    device = torch.device(device)
    last = 0.0
    for _ in range(max(1, warmup)):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        last = time.perf_counter() - t0
    reps = int(min(max_reps, max(min_reps, budget_s / max(last, 1e-6))))
    samples: list[float] = []
    if device.type == "cuda":
        stream = torch.cuda.current_stream(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(reps)]
        for start, end in events:
            start.record(stream)
            fn()
            end.record(stream)
        torch.cuda.synchronize(device)
        samples = [start.elapsed_time(end) for start, end in events]
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [samples[0]] * 3
    return {
        "median_ms": statistics.median(samples),
        "min_ms": min(samples),
        "p25_ms": q[0],
        "p75_ms": q[2],
        "reps": len(samples),
    }


def time_pair(fn_a: Callable[[], Any], fn_b: Callable[[], Any], device: torch.device | str, *,
              warmup: int = 10, min_pairs: int = 200, max_pairs: int = 5000, budget_s: float = 1.0,
              calls: int = 3) -> dict:
    """Time ``fn_a`` and ``fn_b`` in alternation and return the median of the paired ratios b/a.

    Each pair runs ``calls`` calls of one function then ``calls`` of the other, alternating
    which goes first, so slow drifts of a shared machine (other jobs, clock changes) hit both
    alike; the ratio of a pair is taken before the median. On CUDA each block is bracketed by
    CUDA events; on CPU it is the CPU time of this thread (``time.thread_time``), so time the
    thread spends descheduled does not count. Returns ``{"a_median_ms", "b_median_ms",
    "ratio_median", "ratio_p25", "ratio_p75", "pairs", "clock"}``.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"

    def block(fn):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / calls
        t0 = time.thread_time_ns()
        for _ in range(calls):
            fn()
        return (time.thread_time_ns() - t0) / 1e6 / calls

    for _ in range(warmup):
        fn_a()
        fn_b()
    _sync(device)
    t_a, t_b, ratios = [], [], []
    deadline = time.perf_counter() + budget_s
    while len(ratios) < max_pairs and (len(ratios) < min_pairs or time.perf_counter() < deadline):
        if len(ratios) % 2:
            b = block(fn_b)
            a = block(fn_a)
        else:
            a = block(fn_a)
            b = block(fn_b)
        t_a.append(a)
        t_b.append(b)
        ratios.append(b / a if a > 0 else math.inf)
    q = statistics.quantiles(ratios, n=4)
    return {"a_median_ms": statistics.median(t_a), "b_median_ms": statistics.median(t_b),
            "ratio_median": statistics.median(ratios), "ratio_p25": q[0], "ratio_p75": q[2],
            "pairs": len(ratios), "clock": "cuda events" if cuda else "thread CPU time"}


class Timer:
    """Collects named measurements of one benchmark case: ``timer("name", fn)``."""

    def __init__(self, device: torch.device, **kwargs):
        self.device = torch.device(device)
        self.kwargs = kwargs
        self.results: dict[str, dict] = {}

    def __call__(self, name: str, fn: Callable[[], Any], **overrides) -> float:
        self.results[name] = time_call(fn, self.device, **{**self.kwargs, **overrides})
        return self.results[name]["median_ms"]

    def median(self, name: str) -> float | None:
        r = self.results.get(name)
        return None if r is None else r["median_ms"]


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0 or not math.isfinite(a) or not math.isfinite(b):
        return None
    return a / b


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device: torch.device | str) -> dict:
    """Device name, torch / CUDA / cuSOLVER-binding versions, host, threads, git commit."""
    device = torch.device(device)
    env: dict[str, Any] = {
        "device_type": device.type,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,  # the CUDA torch was built with (also on a CPU-only host)
        "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # a busy host makes CPU timings noisy: record how busy it was when the run started
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "commit": _git_commit(Path(__file__).resolve().parents[1]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    try:
        import nvmath  # noqa: F401

        env["nvmath_python"] = getattr(nvmath, "__version__", "unknown")
    except Exception:
        env["nvmath_python"] = None
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = None
    return env


def device_label(env: dict) -> str:
    """A file-name-safe device name, e.g. ``nvidia-h100-80gb-hbm3``."""
    label = re.sub(r"[^a-z0-9]+", "-", str(env.get("device", "unknown")).lower()).strip("-")
    return label[:60] or "unknown"


def default_result_path(script: str, env: dict) -> Path:
    """benchmarks/results/<device>-<date>[-<script>].json (bench_spine has no suffix)."""
    date = env["date"][:10]
    suffix = "" if script == "spine" else f"-{script}"
    return Path(__file__).resolve().parent / "results" / f"{device_label(env)}-{date}{suffix}.json"


def write_json_atomic(path: str | os.PathLike, obj: dict) -> Path:
    """Write ``obj`` as strict JSON (NaN is an error) with svdlib's atomic writer."""
    from svdlib.experiments.atomic import write_atomic

    return write_atomic(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False, default=str) + "\n")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e4:
            return f"{value:.3g}"
        return f"{value:.2e}"
    return str(value)


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table of ``rows`` (dicts) with the given ``columns``."""
    cells = [[c for c in columns]] + [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def finite_or_none(x: float | None) -> float | None:
    """JSON has no NaN/Inf: map them to None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
