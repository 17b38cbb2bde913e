"""One way to decide whether a difference between runs is real: the reproduction notebooks'
and the summary's statistics.

Every claim a reproduction notebook checks ("NOG lowers the error of SVD", "PI-WCT is as
sharp as SVD-WCT", "plain SVD fails in most trials at d >= 8") is put as a statement about
one **effect** (a difference of means, a rate, a difference of rates) and a **region** the
claim says the effect lies in. The effect is estimated with a confidence interval and

* the claim **holds** when the whole interval lies inside the region,
* it **does not hold** when the whole interval lies outside the region,
* it is **not resolved** otherwise (the interval straddles a border of the region),
* and it is **too few runs** when a group has fewer than :data:`MIN_REPLICATES` replicates:
  such a claim is never decided, whatever the numbers.

The words are :data:`VERDICTS`; notebooks, ``report.json`` and ``SUMMARY.md`` use no others.

Intervals (all two-sided, level 1 - :data:`ALPHA` = 95 %):

* unpaired replicates (different seeds of two treatments): **Welch's t interval** for the
  difference of means (no equal-variance assumption; seeds are independent draws);
* paired replicates (the same seed or the same input under two treatments, or one timing
  repetition that ran both): the **paired t interval** of the mean difference;
* a rate k/n (runs that diverged): the exact **Clopper-Pearson** interval;
* two rates: the difference with **Newcombe's hybrid score interval** (method 10 of Newcombe
  1998); its p-value is Fisher's exact test.

No bootstrap: with 3-15 replicates a bootstrap interval is too narrow (it cannot see beyond the
few values it resamples), while the t intervals are exact for normal errors and robust to
moderate departures at these sizes.

Regions: :func:`lower` / :func:`higher` ("a < b", the effect a - b below / above 0),
:func:`within` (an **equivalence** claim, "similar", "competitive", "matches": |a - b| below a
stated margin), :func:`at_most` / :func:`at_least` (a bound), :func:`between`. For a direction
claim the rule is the two-sided t-test at 5 %. For an equivalence claim it is TOST (two one-sided
tests) at 2.5 % per side, i.e. the 95 % interval inside the margin: every verdict reads off the
same 95 % interval. Each :class:`Comparison` carries the p-value of that decision
(:attr:`Comparison.p`): the smallest level at which the interval would lie wholly inside or
wholly outside the region.

Multiple comparisons (Holm): the claims of one report (one notebook run) are one family, and
so are the pairwise orderings of one table in the summary. :func:`holm` adjusts the family's
p-values by Holm's step-down procedure (family-wise error 5 %); the verdict then uses the adjusted
p-value, while the interval shown stays the unadjusted 95 % one (so a claim can show an
interval that excludes 0 and still be "not resolved" after the adjustment; the evidence
string says so).

References: Welch (1947); Schuirmann (1987) for TOST; Clopper & Pearson (1934); Newcombe,
"Interval estimation for the difference between independent proportions", Stat. Med. 17 (1998),
method 10; Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Stat. 6
(1979).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

__all__ = [
    "ALPHA",
    "MIN_REPLICATES",
    "HOLDS",
    "FAILS",
    "UNRESOLVED",
    "TOO_FEW",
    "VERDICTS",
    "Region",
    "lower",
    "higher",
    "within",
    "at_most",
    "at_least",
    "between",
    "Comparison",
    "unpaired",
    "unpaired_from_summary",
    "paired",
    "rate",
    "two_rates",
    "measured",
    "all_of",
    "holm",
    "ours_holds",
    "verdict_of",
    "mean_ci",
]

#: Level of every test (two-sided intervals are at 1 - ALPHA).
ALPHA = 0.05
#: Fewest replicates per group (pairs for a paired comparison, trials for a rate) for a verdict.
MIN_REPLICATES = 3

HOLDS = "holds"
FAILS = "does not hold"
UNRESOLVED = "not resolved"
TOO_FEW = "too few runs"
#: The verdict vocabulary shared by the notebooks, report.json and SUMMARY.md.
VERDICTS = (HOLDS, FAILS, UNRESOLVED, TOO_FEW)

_INF = math.inf


# ----------------------------------------------------------------------------- regions
@dataclass(frozen=True)
class Region:
    """The interval ``(lo, hi)`` a claim says the effect lies in; ``text`` reads it out."""

    lo: float
    hi: float
    text: str

    def __post_init__(self):
        if not self.lo < self.hi:
            raise ValueError(f"region must have lo < hi, got ({self.lo}, {self.hi})")

    def contains(self, x: float) -> bool:
        return self.lo < x < self.hi


def lower(than: float = 0.0) -> Region:
    """The effect (a - b, or a rate) is below ``than``: "a is lower than b"."""
    return Region(-_INF, float(than), f"< {than:g}")


def higher(than: float = 0.0) -> Region:
    """The effect is above ``than``: "a is higher than b"."""
    return Region(float(than), _INF, f"> {than:g}")


def within(margin: float, around: float = 0.0) -> Region:
    """Equivalence: ``|effect - around| < margin`` ("similar", "competitive", "matches")."""
    margin = _positive("margin", margin)
    return Region(around - margin, around + margin, f"within ±{margin:g} of {around:g}")


def at_most(bound: float) -> Region:
    """The effect is at most ``bound`` (e.g. an overhead of at most 3 %)."""
    return Region(-_INF, float(bound), f"<= {bound:g}")


def at_least(bound: float) -> Region:
    """The effect is at least ``bound``."""
    return Region(float(bound), _INF, f">= {bound:g}")


def between(lo: float, hi: float) -> Region:
    """The effect lies in ``(lo, hi)``."""
    return Region(float(lo), float(hi), f"in ({lo:g}, {hi:g})")


def _positive(name: str, value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------- result
@dataclass(frozen=True)
class Comparison:
    """One effect with its interval and the claim's decision.

    Attributes
    ----------
    test : str
        The interval and test used ("Welch t", "paired t", "Clopper-Pearson", ...).
    estimate : float
        The effect: mean(a) - mean(b), the mean paired difference, a rate, or a rate difference.
    ci : (float, float)
        Its two-sided 1 - ALPHA interval (NaN when it cannot be computed).
    n : tuple of int
        Replicates per group (one entry for paired data and single rates).
    region : Region
        What the claim says about the effect.
    p_in, p_out : float
        Smallest level at which the interval lies wholly inside / wholly outside the region
        (1.0 when it never does).
    p_adjusted : float or None
        The Holm-adjusted :attr:`p` once :func:`holm` has seen this comparison's family.
    means : tuple
        Mean of each group (or the rates), for the evidence text.
    unit : str
        Unit of the effect, for the evidence text.
    min_n : int
        Replicates each group needs for a verdict.
    """

    test: str
    estimate: float
    ci: tuple[float, float]
    n: tuple[int, ...]
    region: Region
    p_in: float
    p_out: float
    p_adjusted: float | None = None
    means: tuple[float, ...] = ()
    unit: str = ""
    min_n: int = MIN_REPLICATES
    alpha: float = ALPHA
    note: str = field(default="", compare=False)

    @property
    def p(self) -> float:
        """p-value of the decision (the smaller of :attr:`p_in` and :attr:`p_out`)."""
        return min(self.p_in, self.p_out)

    @property
    def enough(self) -> bool:
        return min(self.n) >= self.min_n if self.n else True

    @property
    def verdict(self) -> str:
        """One of :data:`VERDICTS`."""
        if not self.enough:
            return TOO_FEW
        p = self.p if self.p_adjusted is None else self.p_adjusted
        if not p < self.alpha:
            return UNRESOLVED
        return HOLDS if self.p_in < self.p_out else FAILS

    @property
    def ours_holds(self) -> bool | None:
        """True / False / None, the ``ours_holds`` field of a report claim."""
        return ours_holds(self.verdict)

    def describe(self, digits: int = 3) -> str:
        """Evidence text: effect, interval, test, replicates, p-values."""
        unit = f" {self.unit}" if self.unit else ""
        if self.test == "measured":
            return f"measured {_g(self.estimate, digits)}{unit} (deterministic computation; claim {self.region.text})"
        ns = " vs ".join(str(k) for k in self.n)
        what = "pairs" if self.test == "paired t" else ("trials" if "rate" in self.test or "Clopper" in self.test else "runs")
        text = f"effect {_g(self.estimate, digits)}{unit}"
        if all(math.isfinite(c) for c in self.ci):
            text += f" [95% CI {_g(self.ci[0], digits)}, {_g(self.ci[1], digits)}]"
        text += f" ({self.test}, {ns} {what}; claim {self.region.text})"
        if not self.enough:
            return text + f": fewer than {self.min_n} {what} per group"
        text += f", p = {_g(self.p, 2)}"
        if self.p_adjusted is not None:
            text += f", Holm {_g(self.p_adjusted, 2)}"
        return text + (f"; {self.note}" if self.note else "")

    def as_dict(self) -> dict:
        """JSON-ready record (stored with each claim in ``report.json``)."""
        return {"test": self.test, "estimate": _num(self.estimate), "ci_low": _num(self.ci[0]),
                "ci_high": _num(self.ci[1]), "n": list(self.n), "region": self.region.text,
                "means": [_num(m) for m in self.means], "unit": self.unit,
                "p": _num(self.p), "p_holm": _num(self.p_adjusted), "verdict": self.verdict}


def _num(x):
    return None if x is None or not math.isfinite(x) else float(x)


def _g(x: float, digits: int) -> str:
    if x is None or not math.isfinite(x):
        return "nan" if x is None or math.isnan(x) else ("inf" if x > 0 else "-inf")
    return f"{x:.{digits}g}"


def ours_holds(verdict: str) -> bool | None:
    """``report.json``'s ``ours_holds`` of a verdict: True, False, or None (undecided)."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    return {HOLDS: True, FAILS: False}.get(verdict)


def verdict_of(ours_holds_value) -> str:
    """The verdict word of a report's ``ours_holds`` when the report gives none (older reports)."""
    if ours_holds_value is True:
        return HOLDS
    if ours_holds_value is False:
        return FAILS
    if ours_holds_value is None:
        return UNRESOLVED
    raise ValueError(f"ours_holds must be True, False or None, got {ours_holds_value!r}")


# ----------------------------------------------------------------------------- t intervals
def _values(name: str, x) -> list[float]:
    try:
        values = [float(v) for v in x]
    except TypeError:
        raise TypeError(f"{name} must be a sequence of numbers, got {type(x).__name__}") from None
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{name} must hold finite numbers (filter diverged runs first), got {bad[:3]}")
    return values


def _mean_var(x: list[float]) -> tuple[float, float]:
    n = len(x)
    m = sum(x) / n if n else math.nan
    v = sum((xi - m) ** 2 for xi in x) / (n - 1) if n > 1 else math.nan
    return m, v


def _t_region(estimate: float, se: float, df: float, region: Region, alpha: float):
    """(ci, p_in, p_out) of a t statistic."""
    from scipy import stats as sps

    if not (math.isfinite(se) and math.isfinite(df)) or df <= 0:
        return (math.nan, math.nan), 1.0, 1.0
    if se == 0.0:  # every replicate agrees exactly: the interval is the point
        inside = region.contains(estimate)
        outside = estimate < region.lo or estimate > region.hi
        return (estimate, estimate), (0.0 if inside else 1.0), (0.0 if outside else 1.0)
    half = float(sps.t.ppf(1 - alpha / 2, df)) * se
    ci = (estimate - half, estimate + half)
    t_in = min((estimate - region.lo) / se, (region.hi - estimate) / se)
    t_out = max((estimate - region.hi) / se, (region.lo - estimate) / se)
    p_in = min(1.0, 2 * float(sps.t.sf(t_in, df)))
    p_out = min(1.0, 2 * float(sps.t.sf(t_out, df)))
    return ci, p_in, p_out


def unpaired(a: Sequence[float], b: Sequence[float], region: Region, *, unit: str = "",
             alpha: float = ALPHA, min_n: int = MIN_REPLICATES) -> Comparison:
    """Welch's comparison of two independent groups: the effect is mean(a) - mean(b).

    Examples
    --------
    >>> c = unpaired([1.0, 1.2, 0.9, 1.1], [2.0, 2.3, 2.1, 1.9], lower())
    >>> c.verdict, round(c.estimate, 2)
    ('holds', -1.0)
    """
    a, b = _values("a", a), _values("b", b)
    if not a or not b:
        raise ValueError(f"a and b must each hold at least one value, got {len(a)} and {len(b)}")
    ma, va = _mean_var(a)
    mb, vb = _mean_var(b)
    return unpaired_from_summary(ma, math.sqrt(va) if len(a) > 1 else math.nan, len(a),
                                 mb, math.sqrt(vb) if len(b) > 1 else math.nan, len(b),
                                 region, unit=unit, alpha=alpha, min_n=min_n)


def unpaired_from_summary(mean_a: float, sd_a: float, n_a: int, mean_b: float, sd_b: float, n_b: int,
                          region: Region, *, unit: str = "", alpha: float = ALPHA,
                          min_n: int = MIN_REPLICATES) -> Comparison:
    """:func:`unpaired` from each group's mean, sample standard deviation and size."""
    for name, n in (("n_a", n_a), ("n_b", n_b)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
    estimate = mean_a - mean_b
    if n_a > 1 and n_b > 1 and math.isfinite(sd_a) and math.isfinite(sd_b):
        qa, qb = sd_a ** 2 / n_a, sd_b ** 2 / n_b
        se = math.sqrt(qa + qb)
        if se > 0:
            df = (qa + qb) ** 2 / (qa ** 2 / (n_a - 1) + qb ** 2 / (n_b - 1))
        else:
            df = float(n_a + n_b - 2)
        ci, p_in, p_out = _t_region(estimate, se, df, region, alpha)
    else:
        ci, p_in, p_out = (math.nan, math.nan), 1.0, 1.0
    return Comparison("Welch t", estimate, ci, (n_a, n_b), region, p_in, p_out,
                      means=(mean_a, mean_b), unit=unit, min_n=min_n, alpha=alpha)


def paired(a: Sequence[float], b: Sequence[float], region: Region, *, unit: str = "",
           alpha: float = ALPHA, min_n: int = MIN_REPLICATES) -> Comparison:
    """Paired comparison: ``a[i]`` and ``b[i]`` share seed, input or repetition; effect mean(a - b)."""
    a, b = _values("a", a), _values("b", b)
    if len(a) != len(b) or not a:
        raise ValueError(f"a and b must hold the same non-zero number of paired values, got {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    m, v = _mean_var(d)
    n = len(d)
    if n > 1:
        ci, p_in, p_out = _t_region(m, math.sqrt(v / n), n - 1, region, alpha)
    else:
        ci, p_in, p_out = (math.nan, math.nan), 1.0, 1.0
    return Comparison("paired t", m, ci, (n,), region, p_in, p_out,
                      means=(sum(a) / n, sum(b) / n), unit=unit, min_n=min_n, alpha=alpha)


def mean_ci(x: Sequence[float], alpha: float = ALPHA) -> tuple[float, float, float]:
    """Mean of ``x`` and its t interval ``(mean, lo, hi)`` (NaN bounds for fewer than 2 values)."""
    from scipy import stats as sps

    x = _values("x", x)
    if not x:
        return math.nan, math.nan, math.nan
    m, v = _mean_var(x)
    if len(x) < 2:
        return m, math.nan, math.nan
    half = float(sps.t.ppf(1 - alpha / 2, len(x) - 1)) * math.sqrt(v / len(x))
    return m, m - half, m + half


# ----------------------------------------------------------------------------- rates
def _count(name: str, k, n) -> tuple[int, int]:
    for what, v in ((f"{name} count", k), (f"{name} trials", n)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{what} must be an integer >= 0, got {v!r}")
    if n < 1 or k > n:
        raise ValueError(f"{name}: need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    return k, n


def _clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    from scipy import stats as sps

    lo = 0.0 if k == 0 else float(sps.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(sps.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def rate(k: int, n: int, region: Region, *, alpha: float = ALPHA, min_n: int = MIN_REPLICATES,
         unit: str = "") -> Comparison:
    """A rate k/n (e.g. runs that diverged) with its exact Clopper-Pearson interval.

    ``p_in``/``p_out`` invert the exact binomial test: the interval at level 1 - p lies inside
    the region when both one-sided tests at the region's borders reject at p/2.
    """
    from scipy import stats as sps

    k, n = _count("rate", k, n)
    ci = _clopper_pearson(k, n, alpha)
    # P(X >= k | p) and P(X <= k | p): the one-sided exact tests at a border p
    def ge(p):
        return float(sps.binom.sf(k - 1, n, p))

    def le(p):
        return float(sps.binom.cdf(k, n, p))

    lo_finite, hi_finite = region.lo > 0.0, region.hi < 1.0
    in_parts = ([ge(region.lo)] if lo_finite else []) + ([le(region.hi)] if hi_finite else [])
    p_in = min(1.0, 2 * max(in_parts)) if in_parts else 0.0
    out_parts = ([le(region.lo)] if lo_finite else []) + ([ge(region.hi)] if hi_finite else [])
    p_out = min(1.0, 2 * min(out_parts)) if out_parts else 1.0
    # a border at or beyond 0 / 1 cannot be crossed: "rate < 1.2" always holds, etc.
    if region.lo >= 1.0 or region.hi <= 0.0:
        p_in, p_out = 1.0, 0.0
    return Comparison("Clopper-Pearson rate", k / n, ci, (n,), region, p_in, p_out,
                      means=(k / n,), unit=unit, min_n=min_n, alpha=alpha)


def _wilson(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def two_rates(k_a: int, n_a: int, k_b: int, n_b: int, region: Region, *, alpha: float = ALPHA,
              min_n: int = MIN_REPLICATES, unit: str = "") -> Comparison:
    """Difference of two rates k_a/n_a - k_b/n_b: Newcombe's hybrid score interval, Fisher's exact test.

    Only direction regions (:func:`lower`, :func:`higher` of 0) are supported: the p-value is
    Fisher's two-sided exact test, assigned to "inside" when the estimate lies in the region.
    """
    from scipy import stats as sps

    k_a, n_a = _count("a", k_a, n_a)
    k_b, n_b = _count("b", k_b, n_b)
    if not (region.lo == 0.0 and region.hi == _INF) and not (region.lo == -_INF and region.hi == 0.0):
        raise ValueError(f"two_rates supports the regions lower() and higher() only, got {region.text}")
    z = float(sps.norm.ppf(1 - alpha / 2))
    pa, pb = k_a / n_a, k_b / n_b
    la, ua = _wilson(k_a, n_a, z)
    lb, ub = _wilson(k_b, n_b, z)
    d = pa - pb
    ci = (d - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2), d + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2))
    p = float(sps.fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]]).pvalue)
    p = min(1.0, p)
    p_in, p_out = (p, 1.0) if region.contains(d) else ((1.0, p) if d != 0 else (1.0, 1.0))
    return Comparison("rate difference (Newcombe, Fisher)", d, ci, (n_a, n_b), region, p_in, p_out,
                      means=(pa, pb), unit=unit, min_n=min_n, alpha=alpha)


def measured(value: float, region: Region, *, unit: str = "", note: str = "") -> Comparison:
    """A deterministic computation (a float64 identity, an error against a reference), no replicates.

    Only for numbers that do not vary from seed to seed; the verdict is whether ``value`` lies
    in ``region``. Never use it for training outcomes.
    """
    if not math.isfinite(value):
        return Comparison("measured", value, (value, value), (), region, 1.0, 0.0, unit=unit, note=note)
    inside = region.contains(value)
    return Comparison("measured", value, (value, value), (), region, 0.0 if inside else 1.0,
                      1.0 if inside else 0.0, unit=unit, note=note)


def all_of(comparisons: Sequence[Comparison]) -> Comparison:
    """A claim made of several that must all hold ("A is the best of all treatments").

    An intersection-union test: it holds when every part holds at the level (p = the largest
    p_in; no adjustment is needed), and does not hold when some part does not (p = Bonferroni
    over the parts' p_out). Its effect and interval are those of the weakest part (largest p_in).
    """
    parts = list(comparisons)
    if not parts or any(c is None for c in parts):
        raise ValueError("all_of needs at least one comparison and no None")
    weakest = max(parts, key=lambda c: c.p_in)
    fewest = min(min(c.n) if c.n else math.inf for c in parts)
    n = weakest.n if fewest == (min(weakest.n) if weakest.n else math.inf) else (int(fewest),)
    return Comparison(f"all of {len(parts)} ({weakest.test})", weakest.estimate, weakest.ci, n, weakest.region,
                      max(c.p_in for c in parts), min(1.0, len(parts) * min(c.p_out for c in parts)),
                      means=weakest.means, unit=weakest.unit, min_n=weakest.min_n, alpha=weakest.alpha,
                      note=f"weakest of {len(parts)} comparisons shown")


# ----------------------------------------------------------------------------- Holm
def holm(comparisons: Iterable[Comparison | None], alpha: float = ALPHA) -> list[Comparison | None]:
    """Holm-adjust a family of comparisons; returns copies with :attr:`~Comparison.p_adjusted` set.

    Comparisons that are not tested (too few replicates, ``measured`` ones) and ``None`` entries
    are returned unchanged and do not count in the family. Adjusted p-values follow Holm (1979):
    with the m tested p-values sorted, p_(i) becomes max_{j <= i} min(1, (m - j + 1) p_(j)).
    """
    items = list(comparisons)
    tested = [i for i, c in enumerate(items) if c is not None and c.enough and c.test != "measured"]
    order = sorted(tested, key=lambda i: items[i].p)
    m = len(order)
    out = list(items)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * items[i].p))
        out[i] = replace(items[i], p_adjusted=running, alpha=alpha)
    return out
