"""svdlib.experiments.stats against scipy.stats and published worked examples.

Known data: Student's sleep data (Cushny & Peebles 1905, R's ``sleep``; the paired and Welch t
results R prints are quoted), Newcombe (1998) example (a) for the difference of two rates,
and a hand-worked Holm example. Every other number is checked against scipy.stats computed
independently in the test.
"""
from __future__ import annotations

import math

import pytest

scipy_stats = pytest.importorskip("scipy.stats")

from svdlib.experiments import stats as S  # noqa: E402

# R: sleep$extra by group (10 patients, two drugs)
G1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
G2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_paired_t_matches_r_and_scipy_on_the_sleep_data():
    c = S.paired(G1, G2, S.lower())
    # R: t.test(extra ~ group, sleep, paired = TRUE): p = 0.002833, CI -2.4598858 -0.7001142
    assert c.estimate == pytest.approx(-1.58)
    assert c.ci == pytest.approx((-2.4598858, -0.7001142), abs=1e-7)
    assert c.p == pytest.approx(0.002833, abs=1e-6)
    ref = scipy_stats.ttest_rel(G1, G2)
    assert c.p == pytest.approx(ref.pvalue, rel=1e-12)
    assert c.ci == pytest.approx(tuple(ref.confidence_interval(0.95)), rel=1e-12)
    assert c.verdict == S.HOLDS and c.ours_holds is True
    assert S.paired(G1, G2, S.higher()).verdict == S.FAILS  # the same interval, the other claim


def test_welch_t_matches_r_and_scipy_on_the_sleep_data():
    c = S.unpaired(G1, G2, S.lower(), unit="h")
    # R: t.test(extra ~ group, sleep): Welch, df 17.776, p = 0.07939, CI -3.3654832 0.2054832
    assert c.ci == pytest.approx((-3.3654832, 0.2054832), abs=1e-7)
    assert c.p == pytest.approx(0.07939, abs=1e-5)
    ref = scipy_stats.ttest_ind(G1, G2, equal_var=False)
    assert c.p == pytest.approx(ref.pvalue, rel=1e-12)
    assert c.ci == pytest.approx(tuple(ref.confidence_interval(0.95)), rel=1e-12)
    assert c.verdict == S.UNRESOLVED and c.ours_holds is None
    assert "Welch t" in c.describe() and "10 vs 10 runs" in c.describe()


def test_unpaired_from_summary_equals_scipy_from_stats():
    c = S.unpaired_from_summary(19.43, 0.19, 10, 19.99, 0.16, 10, S.lower())
    ref = scipy_stats.ttest_ind_from_stats(19.43, 0.19, 10, 19.99, 0.16, 10, equal_var=False)
    assert c.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert c.verdict == S.HOLDS


@pytest.mark.parametrize("margin", [0.5, 1.0, 2.5])
def test_equivalence_is_tost_at_2_5_percent_per_side(margin):
    a = [10.1, 9.8, 10.3, 10.0, 9.9, 10.2]
    b = [10.0, 10.1, 10.0, 9.7, 10.2, 10.0]
    c = S.paired(a, b, S.within(margin))
    d = [x - y for x, y in zip(a, b)]
    p_low = scipy_stats.ttest_1samp(d, -margin, alternative="greater").pvalue
    p_high = scipy_stats.ttest_1samp(d, margin, alternative="less").pvalue
    assert c.p_in == pytest.approx(min(1.0, 2 * max(p_low, p_high)), rel=1e-10)
    # holds exactly when the 95% interval lies inside the margin
    assert (c.verdict == S.HOLDS) == (-margin < c.ci[0] and c.ci[1] < margin)


def test_equivalence_fails_when_the_interval_lies_outside_the_margin():
    c = S.unpaired([5.0, 5.2, 5.1, 4.9], [1.0, 1.1, 0.9, 1.0], S.within(1.0))
    assert c.ci[0] > 1.0 and c.verdict == S.FAILS
    ref = scipy_stats.ttest_ind([5.0, 5.2, 5.1, 4.9], [x + 1.0 for x in [1.0, 1.1, 0.9, 1.0]],
                                equal_var=False, alternative="greater")
    assert c.p_out == pytest.approx(2 * ref.pvalue, rel=1e-10)


def test_at_most_is_the_upper_bound_of_the_interval():
    overhead = [0.010, 0.012, 0.008, 0.011, 0.009]
    assert S.paired(overhead, [0.0] * 5, S.at_most(0.03)).verdict == S.HOLDS
    assert S.paired(overhead, [0.0] * 5, S.at_most(0.005)).verdict == S.FAILS


def test_too_few_runs_is_never_decided():
    huge = S.unpaired([1.0, 1.01], [100.0, 100.01], S.lower())
    assert huge.p < 1e-4 and huge.verdict == S.TOO_FEW and huge.ours_holds is None
    assert "fewer than 3" in huge.describe()
    one = S.paired([1.0], [2.0], S.lower())
    assert one.verdict == S.TOO_FEW and math.isnan(one.ci[0])
    assert S.rate(2, 2, S.at_least(0.5)).verdict == S.TOO_FEW


def test_identical_replicates_give_a_point_interval():
    c = S.paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], S.within(0.1))
    assert c.ci == (0.0, 0.0) and c.verdict == S.HOLDS
    assert S.paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], S.lower()).verdict == S.UNRESOLVED
    assert S.paired([2.0, 3.0, 4.0], [1.0, 2.0, 3.0], S.lower()).verdict == S.FAILS


@pytest.mark.parametrize("k,n", [(0, 3), (0, 15), (7, 15), (12, 12), (3, 45)])
def test_clopper_pearson_rate_matches_scipy_binomtest(k, n):
    c = S.rate(k, n, S.between(0.25, 0.75))
    ci = scipy_stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    # binomtest finds the bounds with a root finder, we take beta quantiles: measured apart by
    # up to 3e-13 (k = 0 or n); 1e-10 leaves 300x for another scipy or CPU
    assert c.ci == pytest.approx((ci.low, ci.high), abs=1e-10)
    ge = scipy_stats.binomtest(k, n, 0.25, alternative="greater").pvalue
    le = scipy_stats.binomtest(k, n, 0.75, alternative="less").pvalue
    assert c.p_in == pytest.approx(min(1.0, 2 * max(ge, le)), rel=1e-10)
    below = scipy_stats.binomtest(k, n, 0.25, alternative="less").pvalue
    above = scipy_stats.binomtest(k, n, 0.75, alternative="greater").pvalue
    assert c.p_out == pytest.approx(min(1.0, 2 * min(below, above)), rel=1e-10)


def test_rate_verdicts_follow_the_interval():
    assert S.rate(12, 12, S.at_least(0.5)).verdict == S.HOLDS   # CI (0.735, 1]
    assert S.rate(3, 3, S.at_least(0.5)).verdict == S.UNRESOLVED  # CI (0.292, 1]
    assert S.rate(0, 15, S.at_least(0.5)).verdict == S.FAILS
    assert S.rate(0, 45, S.at_most(0.1)).verdict == S.HOLDS  # CI [0, 0.079)


def test_two_rates_newcombe_example_and_fisher():
    # Newcombe (1998), example (a): 56/70 - 48/80, method 10 (hybrid score): 0.0524 to 0.3339
    c = S.two_rates(56, 70, 48, 80, S.higher())
    assert c.estimate == pytest.approx(0.2)
    assert c.ci == pytest.approx((0.0524, 0.3339), abs=1e-4)
    assert c.p == pytest.approx(scipy_stats.fisher_exact([[56, 14], [48, 32]]).pvalue, rel=1e-12)
    assert c.verdict == S.HOLDS
    with pytest.raises(ValueError, match="lower\\(\\) and higher\\(\\)"):
        S.two_rates(1, 3, 2, 3, S.within(0.1))


def test_holm_adjusts_a_family_and_skips_untested_members():
    def fake(p):
        return S.Comparison("paired t", -1.0, (-2.0, 0.0), (5,), S.lower(), p, 1.0)

    family = [fake(0.01), fake(0.04), None, fake(0.03), fake(0.005), S.measured(1.0, S.lower(2.0)),
              S.paired([1.0, 2.0], [3.0, 4.5], S.lower())]
    out = S.holm(family)
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 0.02, 0.03, max(0.03, 0.06) = 0.06, max(0.06, 0.04) = 0.06
    assert [c.p_adjusted for c in (out[0], out[1], out[3], out[4])] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert out[2] is None and out[5].p_adjusted is None and out[6].p_adjusted is None
    assert out[1].verdict == S.UNRESOLVED and fake(0.04).verdict == S.HOLDS
    assert "Holm 0.06" in out[1].describe()


def test_vocabulary_and_bad_input():
    assert S.VERDICTS == ("holds", "does not hold", "not resolved", "too few runs")
    assert [S.ours_holds(v) for v in S.VERDICTS] == [True, False, None, None]
    assert [S.verdict_of(v) for v in (True, False, None)] == ["holds", "does not hold", "not resolved"]
    with pytest.raises(ValueError, match="finite"):
        S.unpaired([1.0, float("nan"), 2.0], [1.0, 2.0, 3.0], S.lower())
    with pytest.raises(ValueError, match="same non-zero number"):
        S.paired([1.0, 2.0], [1.0], S.lower())
    with pytest.raises(ValueError, match="margin"):
        S.within(0)
    with pytest.raises(ValueError, match="k <= n"):
        S.rate(4, 3, S.at_most(0.5))
    assert S.measured(0.3, S.at_most(1.0)).verdict == S.HOLDS
    assert S.measured(float("nan"), S.at_most(1.0)).verdict == S.FAILS


def test_mean_ci_is_the_one_sample_t_interval():
    m, lo, hi = S.mean_ci(G1)
    ref = scipy_stats.ttest_1samp(G1, 0.0).confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-12) and m == pytest.approx(0.75)


def test_all_of_is_an_intersection_union_test():
    strong = S.paired([1.0, 1.1, 0.9, 1.0], [2.0, 2.1, 2.0, 1.9], S.lower())
    weak = S.paired([1.0, 1.5, 0.6, 1.2], [1.3, 1.4, 1.2, 1.5], S.lower())
    both = S.all_of([strong, weak])
    assert both.p_in == max(strong.p_in, weak.p_in) and both.estimate == weak.estimate
    assert both.verdict == (S.HOLDS if weak.verdict == S.HOLDS else S.UNRESOLVED)
    worse = S.paired([3.0, 3.1, 2.9, 3.0], [1.0, 1.1, 1.0, 0.9], S.lower())
    assert S.all_of([strong, worse]).verdict == S.FAILS
    assert S.all_of([strong, worse]).p_out == pytest.approx(min(1.0, 2 * worse.p_out))
    assert S.all_of([strong, S.paired([1.0, 2.0], [2.0, 3.0], S.lower())]).verdict == S.TOO_FEW
