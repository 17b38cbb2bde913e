"""Figure helpers of the reproduction notebooks: figures that read at a glance.

* :func:`dot_intervals`: one row per treatment, a dot at the estimate, a bar for its 95 %
  interval and the individual replicates as small marks. No bars from a truncated axis: the
  eye compares positions and interval overlaps, not bar lengths.
* :func:`mark_steps`: vertical lines at the learning-rate decays (or any event) of a curve.
* :func:`success_heatmap`: a method x d grid coloured by success rate, each cell annotated
  "k/n" so that overlapping 100 % lines cannot hide each other.
* :func:`smooth` / :func:`smoothed_lines`: noisy per-step curves drawn faint, their moving
  average bold.
* :func:`with_infinity`: a log-scale curve whose infinite values (singular covariances,
  kappa = inf) are drawn on a band above the finite ones instead of being dropped.
* :func:`save`: write a figure into ``results_dir`` (nothing when it is empty).

matplotlib is imported by the caller's figure; these functions only draw on given axes.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["save", "dot_intervals", "mark_steps", "success_heatmap", "smooth", "smoothed_lines",
           "with_infinity", "plain_log_axis", "show_image"]


def save(fig, results_dir: str | os.PathLike, name: str, dpi: int = 110) -> Path | None:
    """Save ``fig`` as ``results_dir/name`` (PNG); returns the path, or None when results_dir is ""."""
    if not results_dir:
        return None
    path = Path(results_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def dot_intervals(ax, labels: Sequence[str], estimates: Sequence[float], lows: Sequence[float] | None = None,
                  highs: Sequence[float] | None = None, *, points: Sequence[Sequence[float]] | None = None,
                  color="C0", marker="o", reference: float | None = None, log: bool = False,
                  xlabel: str = "", offset: float = 0.0, label: str | None = None) -> None:
    """Horizontal dot plot: row i shows ``estimates[i]`` with the interval [lows[i], highs[i]].

    ``points[i]`` are the replicates of row i, drawn as small marks on the same row. ``reference``
    draws a dashed vertical line (e.g. 1 for ratios, the baseline's value). ``offset`` shifts the
    rows vertically (to put two series, e.g. paper and ours, side by side); rows with a missing
    estimate stay empty. The first row is at the top.
    """
    n = len(labels)
    if len(estimates) != n or (lows is not None and len(lows) != n) or (highs is not None and len(highs) != n):
        raise ValueError(f"labels, estimates, lows and highs must have one entry per row ({n})")
    ys = [i + offset for i in range(n)]
    for i, (y, est) in enumerate(zip(ys, estimates)):
        if points is not None and points[i]:
            ax.plot(list(points[i]), [y] * len(points[i]), "|", color=color, alpha=0.55, ms=9, mew=1.2)
        if not _finite(est):
            continue
        lo = lows[i] if lows is not None else None
        hi = highs[i] if highs is not None else None
        if _finite(lo) and _finite(hi):
            ax.plot([lo, hi], [y, y], "-", color=color, lw=2.2, alpha=0.8, solid_capstyle="butt")
        ax.plot([est], [y], marker, color=color, ms=7, label=label if i == 0 or label is None else None)
    if reference is not None:
        ax.axvline(reference, color="0.3", ls="--", lw=0.9)
    if log:
        plain_log_axis(ax, "x")
    ax.set_yticks(range(n), labels)
    ax.set_ylim(n - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3)
    if xlabel:
        ax.set_xlabel(xlabel)


def mark_steps(ax, positions: Sequence[float], label: str = "learning-rate decay", color="0.35") -> None:
    """Dotted vertical lines at ``positions`` (one legend entry for all)."""
    for k, x in enumerate(positions):
        ax.axvline(x, color=color, ls=":", lw=1.2, label=label if k == 0 else None)


def success_heatmap(ax, methods: Sequence[str], columns: Sequence, successes, trials, *,
                    column_label: str = "group dimension d", cmap: str = "RdYlGn"):
    """Method x column grid of success rates, each cell annotated ``k/n`` (blank: not run).

    ``successes[i][j]`` and ``trials[i][j]`` are counts for ``methods[i]`` at ``columns[j]``.
    Returns the image (for a colour bar).
    """
    import numpy as np

    rate = np.full((len(methods), len(columns)), np.nan)
    for i in range(len(methods)):
        for j in range(len(columns)):
            if trials[i][j]:
                rate[i, j] = successes[i][j] / trials[i][j]
    image = ax.imshow(np.ma.masked_invalid(rate), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(len(methods)):
        for j in range(len(columns)):
            if trials[i][j]:
                dark = 0.25 < rate[i, j] < 0.75
                ax.text(j, i, f"{successes[i][j]}/{trials[i][j]}", ha="center", va="center", fontsize=9,
                        color="black" if dark or rate[i, j] >= 0.75 else "white")
    ax.set_xticks(range(len(columns)), [str(c) for c in columns])
    ax.set_yticks(range(len(methods)), methods)
    ax.set_xlabel(column_label)
    return image


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Centred moving average over ``window`` points of the finite values; NaN where the value
    itself is not finite (a gap, e.g. a skipped step, stays a gap)."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    half = window // 2
    out = []
    for i in range(len(values)):
        part = [v for v in values[max(0, i - half): i + half + 1] if _finite(v)]
        out.append(sum(part) / len(part) if part and _finite(values[i]) else math.nan)
    return out


def smoothed_lines(ax, curves: Mapping[str, Sequence[float]], window: int, *, x: Sequence[float] | None = None,
                   colors: Mapping[str, str] | None = None) -> None:
    """Each curve faint as measured and bold as its :func:`smooth` moving average (one legend entry)."""
    for k, (name, ys) in enumerate(curves.items()):
        xs = list(x) if x is not None else list(range(len(ys)))
        color = (colors or {}).get(name, f"C{k % 10}")
        ax.plot(xs, list(ys), color=color, alpha=0.22, lw=0.8)
        ax.plot(xs, smooth(list(ys), window), color=color, lw=2.0, label=name)


def with_infinity(ax, x: Sequence[float], y: Sequence[float], *, color="C0", label: str | None = None,
                  ceiling: float | None = None, **style) -> float | None:
    """Plot ``y`` against ``x`` on a log axis, drawing infinite values on a band above the finite ones.

    The band sits at ``ceiling`` (default: 100 x the largest finite value seen on ``ax``'s data)
    and is labelled "inf" on the y axis. Returns the ceiling used (None when nothing was infinite).
    """
    xs, ys = list(x), [float(v) for v in y]
    finite = [v for v in ys if math.isfinite(v) and v > 0]
    infinite = [i for i, v in enumerate(ys) if math.isinf(v) and v > 0]
    ax.plot([xi for xi, v in zip(xs, ys) if math.isfinite(v) and v > 0], finite, color=color,
            label=label if finite else None, **style)
    ax.set_yscale("log")
    if not infinite:
        return None
    if ceiling is None:
        top = max(finite) if finite else 1.0
        ceiling = 10 ** (math.ceil(math.log10(top)) + 2)
    ax.plot([xs[i] for i in infinite], [ceiling] * len(infinite), "^", color=color, ms=5,
            label=None if finite else label)
    ax.axhspan(ceiling / 3, ceiling * 3, color="0.92", zorder=0)
    ax.text(0.01, ceiling, "κ = ∞ (singular)", transform=ax.get_yaxis_transform(), va="center", fontsize=7,
            color="0.3")
    return ceiling


def plain_log_axis(ax, axis: str = "x", ticks: Sequence[float] | None = None) -> None:
    """Log scale on ``axis`` labelled with plain numbers (4, 16, 64), no minor-tick labels."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    if ticks is not None:
        (ax.set_xticks if axis == "x" else ax.set_yticks)(list(ticks), [f"{t:g}" for t in ticks])
    else:
        target.set_major_formatter(ScalarFormatter())
    target.set_minor_formatter(NullFormatter())


def show_image(ax, img, title: str = "") -> None:
    """An RGB image tensor (3, H, W) in [0, 1] on ``ax``, without ticks."""
    ax.imshow(img.detach().float().permute(1, 2, 0).clamp(0, 1).cpu().numpy())
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
