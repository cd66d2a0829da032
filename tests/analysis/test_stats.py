"""The statistics of the attention analyses: intervals that cover, NaN kept per column, pairing, slopes, AUC, logit."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from pointcopy.analysis.stats import (
    auc,
    auc_ci,
    bootstrap_mean_ci,
    logistic_ci,
    logistic_regression,
    ols_slope,
    paired_difference_ci,
    seed_interval,
    t_quantile,
    wilson,
)

# ------------------------------------------------------------------------------------------------ bootstrap means


def test_bootstrap_ci_covers_the_true_mean_of_a_skewed_distribution_at_about_the_nominal_rate():
    # An interval built from the SD instead of the SE, a wrong percentile pair or a level mix-up lands far outside.
    rng = np.random.default_rng(12345)
    covered = 0
    for k in range(300):
        data = rng.exponential(scale=2.0, size=60)  # true mean 2.0
        _, lo, hi = bootstrap_mean_ci(data, n_boot=500, seed=k)
        covered += lo <= 2.0 <= hi
    assert 0.90 <= covered / 300 <= 0.985


def test_bootstrap_ci_columns_are_independent_and_reproducible():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(80, 3)) * np.array([0.1, 1.0, 10.0]) + np.array([0.0, 5.0, -3.0])
    mean, lo, hi = bootstrap_mean_ci(v, n_boot=400, seed=3)
    np.testing.assert_allclose(mean, v.mean(axis=0))
    width = hi - lo
    assert np.all(lo < mean) and np.all(mean < hi)
    assert width[0] < width[1] < width[2]  # widths follow each column's spread
    se = v.std(axis=0, ddof=1) / math.sqrt(80)
    np.testing.assert_allclose(width, 2 * 1.96 * se, rtol=0.25)  # about a normal interval for a symmetric variable
    again = bootstrap_mean_ci(v, n_boot=400, seed=3)
    np.testing.assert_array_equal(np.stack(again), np.stack((mean, lo, hi)))
    assert not np.array_equal(bootstrap_mean_ci(v, n_boot=400, seed=4)[1], lo)


def test_bootstrap_ci_handles_nan_per_column_and_shapes():
    v = np.array([
        [1.0, 5.0, np.nan, 2.0],
        [2.0, np.nan, np.nan, 4.0],
        [3.0, np.nan, np.nan, np.nan],
        [4.0, np.nan, np.nan, 6.0],
    ])
    mean, lo, hi = bootstrap_mean_ci(v, n_boot=300)
    assert mean.shape == lo.shape == hi.shape == (4,)
    np.testing.assert_allclose(mean, [2.5, 5.0, np.nan, 4.0])  # NaN excluded per column, not per row
    assert np.isnan(lo[1]) and np.isnan(hi[1])  # one value: no interval
    assert np.isnan(lo[2]) and np.isnan(hi[2])  # no value at all
    assert 1.0 <= lo[0] < 2.5 < hi[0] <= 4.0
    assert 2.0 <= lo[3] < 4.0 < hi[3] <= 6.0  # the NaN in row 2 does not drag a zero in

    m1, l1, h1 = bootstrap_mean_ci(v[:, 0], n_boot=300)  # 1-d in, 0-d out
    assert np.shape(m1) == np.shape(l1) == np.shape(h1) == ()
    assert m1 == 2.5 and l1 < m1 < h1
    m, lo, hi = bootstrap_mean_ci([7.0])
    assert m == 7.0 and np.isnan(lo) and np.isnan(hi)


def test_bootstrap_ci_is_fast_enough_for_a_full_analysis():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(300, 50))
    v[rng.random(v.shape) < 0.3] = np.nan
    start = time.perf_counter()
    mean, lo, hi = bootstrap_mean_ci(v, n_boot=2000)
    assert time.perf_counter() - start < 0.5
    assert mean.shape == (50,) and np.all(lo < mean) and np.all(mean < hi)


# ------------------------------------------------------------------------------------------------ paired difference


def test_paired_difference_identical_inputs_give_zero_width_zero():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(40, 5))
    mean, lo, hi = paired_difference_ci(a, a.copy(), n_boot=200)
    np.testing.assert_array_equal(mean, 0.0)
    np.testing.assert_array_equal(lo, 0.0)
    np.testing.assert_array_equal(hi, 0.0)


def test_paired_difference_recovers_a_shift_and_drops_items_missing_in_either():
    rng = np.random.default_rng(2)
    b = rng.normal(size=(50, 4))
    a = b + 0.3 + rng.normal(scale=0.01, size=b.shape)
    a[0, 0] = np.nan
    b[1, 0] = np.nan
    b[:, 3] = np.nan  # the second model has nothing at this step
    mean, lo, hi = paired_difference_ci(a, b, n_boot=300)
    np.testing.assert_allclose(mean[:3], 0.3, atol=0.01)
    assert np.all(lo[:3] < 0.3) and np.all(0.3 < hi[:3]) and np.all(hi[:3] - lo[:3] < 0.02)
    assert np.isnan(mean[3]) and np.isnan(lo[3]) and np.isnan(hi[3])
    with pytest.raises(ValueError):
        paired_difference_ci(a, b[:-1])


def test_pairing_matters_when_items_vary_more_than_the_difference():
    # Items differ a lot in difficulty; model a is 0.1 better on every one. Resampling a and b independently
    # (an unpaired comparison) would give an interval wider than 1 around 0.1; the paired one is exact.
    rng = np.random.default_rng(3)
    difficulty = rng.normal(scale=5.0, size=100)
    a, b = difficulty + 0.1, difficulty
    mean, lo, hi = paired_difference_ci(a, b, n_boot=500)
    assert math.isclose(mean, 0.1, abs_tol=1e-12) and hi - lo < 1e-9
    _, lo_a, hi_a = bootstrap_mean_ci(a, n_boot=500)
    _, lo_b, hi_b = bootstrap_mean_ci(b, n_boot=500, seed=1)
    unpaired_half = math.hypot((hi_a - lo_a) / 2, (hi_b - lo_b) / 2)
    assert unpaired_half > 1.0  # what forgetting the pairing would report


# ------------------------------------------------------------------------------------------------ t and slopes


@pytest.mark.parametrize("dof, expected", [(1, 12.706), (2, 4.303), (3, 3.182), (5, 2.571), (9, 2.262), (10, 2.228),
                                           (30, 2.042), (100, 1.984), (1e6, 1.960)])
def test_t_quantile_matches_the_table(dof, expected):
    assert abs(t_quantile(0.975, dof) - expected) < 1e-3


def test_t_quantile_other_levels_symmetry_and_fractional_dof():
    assert abs(t_quantile(0.995, 1) - 63.657) < 1e-3
    assert abs(t_quantile(0.995, 4) - 4.604) < 1e-3
    assert abs(t_quantile(0.95, 20) - 1.725) < 1e-3
    assert abs(t_quantile(0.9995, 5) - 6.869) < 1e-3
    assert t_quantile(0.5, 7) == 0.0
    assert t_quantile(0.025, 6) == -t_quantile(0.975, 6)
    assert abs(t_quantile(0.975, 2.5) - 3.5747) < 1e-3  # between the integer rows (a Welch-type dof)
    for dof in (4, 40, 20000):  # the branches (bisection, Cornish-Fisher) agree with dof -> their neighbours
        assert t_quantile(0.975, dof) > t_quantile(0.975, dof * 1.01) > 1.959963


def test_ols_slope_hand_computed():
    # x = 0..4, y = 1, 3, 2, 5, 4: xbar 2, ybar 3, Sxx 10, Sxy 4 + 0 + 0 + 2 + 2 = 8 -> slope 0.8, line 1.4 + 0.8x;
    # residuals -0.4, 0.8, -1.0, 1.2, -0.6 -> SSR 3.6, se sqrt(3.6 / 3 / 10), t(0.975, 3) = 3.182446
    x = [0, 1, 2, 3, 4]
    y = [1, 3, 2, 5, 4]
    slope, lo, hi = ols_slope(x, y)
    half = 3.182446 * math.sqrt(3.6 / 3 / 10)
    assert math.isclose(slope, 0.8)
    assert math.isclose(lo, 0.8 - half, rel_tol=1e-6) and math.isclose(hi, 0.8 + half, rel_tol=1e-6)


def test_ols_slope_matches_polyfit_and_drops_nan_pairs():
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 10, size=40)
    y = -1.5 * x + 2 + rng.normal(size=40)
    slope, lo, hi = ols_slope(x, y)
    fit, cov = np.polyfit(x, y, 1, cov="unscaled")
    resid = y - np.polyval(fit, x)
    se = math.sqrt(resid @ resid / 38 * cov[0, 0])
    assert math.isclose(slope, fit[0], rel_tol=1e-10)
    assert math.isclose(hi - slope, t_quantile(0.975, 38) * se, rel_tol=1e-8)
    assert abs(slope - -1.5) < 0.2 and lo < slope < hi
    xn, yn = np.append(x, [np.nan, 3.0]), np.append(y, [100.0, np.nan])
    assert np.allclose(ols_slope(xn, yn), (slope, lo, hi))


def test_ols_slope_with_too_few_points():
    s, lo, hi = ols_slope([0, 1, np.nan], [1, 3, 5])
    assert s == 2.0 and np.isnan(lo) and np.isnan(hi)
    assert all(np.isnan(ols_slope([1.0], [2.0])))
    assert all(np.isnan(ols_slope([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])))  # constant x: no slope


# ------------------------------------------------------------------------------------------------ AUC


def test_auc_extremes_and_ties():
    labels = [0, 0, 0, 1, 1, 1]
    assert auc([1, 2, 3, 4, 5, 6], labels) == 1.0
    assert auc([6, 5, 4, 3, 2, 1], labels) == 0.0
    assert auc([3, 3, 3, 3, 3, 3], labels) == 0.5
    assert np.isnan(auc([1, 2], [1, 1])) and np.isnan(auc([1, 2], [0, 0]))


def test_auc_hand_computed_with_ties_and_nan():
    # positives 0.3, 0.5, 0.5; negatives 0.1, 0.5, 0.7 (+ one NaN score, dropped). Pairs: 0.3 beats 0.1 (1), loses
    # to 0.5 and 0.7; each 0.5 beats 0.1 (1), ties 0.5 (0.5), loses to 0.7 -> (1 + 1.5 + 1.5) / 9 = 4/9
    scores = [0.3, 0.5, 0.5, 0.1, 0.5, 0.7, np.nan]
    labels = [1, 1, 1, 0, 0, 0, 1]
    assert math.isclose(auc(scores, labels), 4 / 9)
    assert math.isclose(auc(scores, np.array(labels, dtype=bool)), 4 / 9)


def test_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(5)
    s = rng.integers(0, 6, size=70).astype(float)  # many ties
    lab = rng.random(70) < 0.4
    pos, neg = s[lab], s[~lab]
    diff = pos[:, None] - neg[None, :]
    assert math.isclose(auc(s, lab), ((diff > 0) + 0.5 * (diff == 0)).mean())


def test_auc_ci_contains_the_auc_and_stays_in_the_unit_interval():
    rng = np.random.default_rng(6)
    lab = rng.random(200) < 0.3
    s = rng.normal(size=200) + 0.8 * lab
    a, lo, hi = auc_ci(s, lab, n_boot=500)
    assert a == auc(s, lab)
    assert 0.0 <= lo < a < hi <= 1.0
    assert 0.05 < hi - lo < 0.3
    a, lo, hi = auc_ci(np.arange(20.0), np.arange(20) >= 10, n_boot=200)  # perfectly separated: stays at 1
    assert a == lo == hi == 1.0
    # stratified: every resample keeps both classes, so there is no NaN replicate even with one rare positive pair
    a, lo, hi = auc_ci([0.9, 0.8, *np.linspace(0, 1, 30)], [1, 1, *[0] * 30], n_boot=300)
    assert 0.0 <= lo <= a <= hi <= 1.0


# ------------------------------------------------------------------------------------------------ logistic link


def test_logistic_regression_recovers_known_coefficients():
    rng = np.random.default_rng(7)
    x = rng.normal(size=5000)
    y = (rng.random(5000) < 1 / (1 + np.exp(-(-0.5 + 2.0 * x)))).astype(int)
    a, b = logistic_regression(x, y)
    assert abs(a - -0.5) < 0.15 and abs(b - 2.0) < 0.15


def test_logistic_regression_separable_data_stays_finite():
    x = np.linspace(-1, 1, 20)
    a, b = logistic_regression(x, x > 0)
    assert math.isfinite(a) and math.isfinite(b) and b > 20
    assert abs(a) < 1.0  # the boundary stays at 0
    a, b = logistic_regression(x, x < 0)
    assert math.isfinite(b) and b < -20


def test_logistic_ci_covers_the_coefficient():
    rng = np.random.default_rng(8)
    x = rng.normal(size=400)
    y = (rng.random(400) < 1 / (1 + np.exp(-(0.3 + 1.0 * x)))).astype(float)
    x[:5] = np.nan
    res = logistic_ci(x, y, n_boot=300)
    assert set(res) == {"intercept", "coef", "coef_ci", "n"} and res["n"] == 395
    lo, hi = res["coef_ci"]
    assert lo < res["coef"] < hi and lo < 1.0 < hi and hi - lo < 1.0
    assert (res["intercept"], res["coef"]) == logistic_regression(x, y)


# ------------------------------------------------------------------------------------------------ moved from ablation


def test_wilson_same_values_as_before_the_move():
    # numbers computed with pointcopy.embedded.ablation.wilson before it moved here
    assert wilson(50, 100) == (0.40382982859014716, 0.5961701714098528)
    assert wilson(0, 10) == (0.0, 0.2775401687666166)
    assert wilson(10, 10) == (0.7224598312333834, 1.0)
    assert wilson(3, 7) == (0.15821692226262685, 0.7495457695909742)
    assert wilson(17.5, 40) == (0.29602809418250353, 0.5899249732237956)
    assert wilson(30, 80, z=2.576) == (0.2502486226555639, 0.5188998639927233)
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_seed_interval_same_values_as_before_the_move():
    # numbers computed with the T95 table in pointcopy.embedded.ablation before the move (dof 1..9)
    assert seed_interval([0.5]) == (0.5, 0.5, 0.5)
    assert seed_interval([0.5, 0.6]) == (0.55, 0.0, 1.0)
    assert seed_interval([0.5, 0.6, 0.7]) == (0.6, 0.35156617916770405, 0.8484338208322959)
    assert seed_interval([0.1, 0.9, 0.4, 0.3]) == (0.425, 0.0, 0.9664856561658244)
    assert seed_interval([0.71, 0.74, 0.69, 0.73, 0.7, 0.72]) == (0.715, 0.6953636631471142, 0.7346363368528858)
    ten = [0.2, 0.3, 0.25, 0.22, 0.28, 0.31, 0.24, 0.27, 0.26, 0.29]
    assert seed_interval(ten) == (0.262, 0.236811434022557, 0.287188565977443)
    # beyond the old table (dof >= 10) the interval now uses t (2.228 at dof 10), not the normal 1.96
    eleven = [*ten, 0.23]
    mean, lo, hi = seed_interval(eleven)
    assert math.isclose(hi - mean, 2.228 * np.std(eleven, ddof=1) / math.sqrt(11), rel_tol=1e-12)


def test_ablation_still_exports_the_moved_functions():
    from pointcopy.embedded import ablation

    assert ablation.wilson is wilson and ablation.seed_interval is seed_interval
