"""Statistics of the attention analyses (numpy only).

Conventions: an "item" is one evaluated example; a value array is ``(n_items,)`` or ``(n_items, T)`` (T steps,
layers, ...), and NaN means "this item has no value here": it is left out of that column only. Intervals are 95%
by default and come back as ``(estimate, lo, hi)``; an interval that cannot be formed is NaN, never a zero width.

- ``bootstrap_mean_ci``: percentile bootstrap over items of the per-column mean.
- ``paired_difference_ci``: the same for a matched comparison (two models on the same items), per-item a - b.
- ``ols_slope`` / ``t_quantile``: a least-squares slope with its Student-t interval.
- ``auc`` / ``auc_ci``: Mann-Whitney AUC with a stratified bootstrap.
- ``logistic_regression`` / ``logistic_ci``: a one-predictor logistic link with a bootstrap on the coefficient.
- ``wilson`` / ``seed_interval``: a binomial proportion's interval and a t-interval over a few seed means.
"""

from __future__ import annotations

import functools
import math
import statistics

import numpy as np

__all__ = [
    "auc", "auc_ci", "bootstrap_mean_ci", "logistic_ci", "logistic_regression", "ols_slope", "paired_difference_ci",
    "seed_interval", "t_quantile", "wilson",
]


# ---------------------------------------------------------------------------------------------------------------
# bootstrap of means


def _resample_counts(rng: np.random.Generator, n_boot: int, n: int) -> np.ndarray:
    """(n_boot, n) matrix: how often each item is drawn in each of n_boot resamples of n items with replacement."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = (idx + (np.arange(n_boot) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _percentiles(reps: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval per column of reps (n_boot, T); replicates that are NaN are left out."""
    alpha = (1.0 - level) / 2.0
    lo = np.full(reps.shape[1], np.nan)
    hi = np.full(reps.shape[1], np.nan)
    ok = np.isfinite(reps).any(axis=0)
    if ok.any():
        q = np.nanquantile(reps[:, ok], [alpha, 1.0 - alpha], axis=0)
        lo[ok], hi[ok] = q[0], q[1]
    return lo, hi


def bootstrap_mean_ci(values, n_boot: int = 2000, level: float = 0.95,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over items and its percentile-bootstrap interval, per column.

    values: (n_items,) or (n_items, T); NaN = no value for that item in that column (excluded there).
    Returns (mean, lo, hi), each of shape () for 1-d input or (T,) for 2-d input.

    The items (rows) are resampled with replacement, the same resample for all columns (one (n_boot, n_items)
    count matrix), and each column's mean is taken over the finite values drawn. Columns with fewer than 2
    finite values: mean as is (NaN if none), lo = hi = NaN. Replicates that drew no finite value of a column are
    left out of that column's percentiles.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim not in (1, 2):
        raise ValueError(f"values must be (n_items,) or (n_items, T), got shape {v.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    one_d = v.ndim == 1
    v2 = v[:, None] if one_d else v
    n, t = v2.shape
    finite = np.isfinite(v2)
    count = finite.sum(axis=0)
    filled = np.where(finite, v2, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=0) / count  # NaN where count == 0
    lo = np.full(t, np.nan)
    hi = np.full(t, np.nan)
    cols = count >= 2
    if cols.any() and n_boot > 0:
        w = _resample_counts(np.random.default_rng(seed), n_boot, n)
        sums = w @ filled[:, cols]
        counts = w @ finite[:, cols].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            reps = np.where(counts > 0, sums / counts, np.nan)
        lo[cols], hi[cols] = _percentiles(reps, level)
    if one_d:
        return mean[0], lo[0], hi[0]
    return mean, lo, hi


def paired_difference_ci(a, b, n_boot: int = 2000, level: float = 0.95,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean of the per-item difference a - b and its percentile-bootstrap interval, per column.

    a, b: (n_items,) or (n_items, T), the SAME items in the same row order (e.g. two models on one test set).
    An item missing (NaN) in either is missing in the difference. Returns (mean, lo, hi), each () or (T,).
    Resampling items (not a and b separately) keeps the pairing, so between-item variation cancels.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape (same items, same order): {a.shape} vs {b.shape}")
    return bootstrap_mean_ci(a - b, n_boot=n_boot, level=level, seed=seed)


# ---------------------------------------------------------------------------------------------------------------
# Student t quantile and the OLS slope


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(ln_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, dof: float) -> float:
    """P(T <= t) for Student's t with dof degrees of freedom."""
    tail = 0.5 * _betainc(dof / 2.0, 0.5, dof / (dof + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def _norm_quantile(p: float) -> float:
    """Standard normal quantile (Acklam's rational approximation, one Newton step on erfc: ~1e-15)."""
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
         -3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
         -1.328068155288572e01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
         4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    plow = 0.02425
    if p < plow:
        q = math.sqrt(-2 * math.log(p))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    elif p <= 1 - plow:
        q = p - 0.5
        r = q * q
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    else:
        q = math.sqrt(-2 * math.log1p(-p))
        x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    e = 0.5 * math.erfc(-x / math.sqrt(2)) - p
    u = e * math.sqrt(2 * math.pi) * math.exp(x * x / 2)
    return x - u / (1 + x * u / 2)


@functools.lru_cache(maxsize=8192)  # pure, and called once per item and curve with a few distinct dofs
def t_quantile(p: float, dof: float) -> float:
    """Quantile of Student's t distribution: the t with P(T <= t) = p, for dof > 0 (not necessarily integer).

    Exact closed forms for dof 1 and 2; otherwise bisection on the CDF written with the regularized incomplete
    beta function (to ~1e-10); for dof > 1e4 the Cornish-Fisher expansion around the normal quantile (error far
    below 1e-6 there). E.g. t_quantile(0.975, 1) = 12.706, (.., 10) = 2.228, (.., 1e6) = 1.960.
    """
    p = float(p)
    dof = float(dof)
    if not 0.0 < p < 1.0:
        if p == 0.0:
            return -math.inf
        if p == 1.0:
            return math.inf
        raise ValueError(f"p must be in [0, 1], got {p}")
    if not dof > 0:
        raise ValueError(f"dof must be positive, got {dof}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    if dof == 1.0:
        return math.tan(math.pi * (p - 0.5))
    if dof == 2.0:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    if dof > 1e4 or math.isinf(dof):
        z = _norm_quantile(p)
        if math.isinf(dof):
            return z
        z2 = z * z
        g1 = (z2 + 1) * z / 4
        g2 = ((5 * z2 + 16) * z2 + 3) * z / 96
        g3 = (((3 * z2 + 19) * z2 + 17) * z2 - 15) * z / 384
        g4 = ((((79 * z2 + 776) * z2 + 1482) * z2 - 1920) * z2 - 945) * z / 92160
        return z + g1 / dof + g2 / dof ** 2 + g3 / dof ** 3 + g4 / dof ** 4
    lo, hi = 0.0, max(1.0, _norm_quantile(p))
    while _t_cdf(hi, dof) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, dof) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _finite_pairs(x, y, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) as float arrays of one length with pairs holding a NaN (or inf) dropped; ValueError naming them
    when their lengths differ."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same length: {x.shape} vs {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def ols_slope(x, y) -> tuple[float, float, float]:
    """Least-squares slope of y on x (with intercept) and its 95% t-interval (n - 2 dof).

    x, y: (n,) each; pairs with a NaN in either are dropped. Returns (slope, lo, hi): with fewer than 2 points
    (or constant x) all NaN; with exactly 2 points the slope and NaN, NaN.
    """
    x, y = _finite_pairs(x, y, ("x", "y"))
    n = x.size
    nan = float("nan")
    if n < 2:
        return nan, nan, nan
    dx = x - x.mean()
    sxx = float(dx @ dx)
    if sxx == 0.0:
        return nan, nan, nan
    slope = float(dx @ (y - y.mean())) / sxx
    if n < 3:
        return slope, nan, nan
    resid = y - y.mean() - slope * dx
    se = math.sqrt(float(resid @ resid) / (n - 2) / sxx)
    half = t_quantile(0.975, n - 2) * se
    return slope, slope - half, slope + half


# ---------------------------------------------------------------------------------------------------------------
# AUC


def _binary_pairs(x, y, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """`_finite_pairs` with y checked to be 0/1 (ValueError naming it)."""
    x, y = _finite_pairs(x, y, names)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"{names[1]} must be 0/1 (or booleans)")
    return x, y


def _auc_split(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Dense integer ranks (ties share one) of the positives' and the negatives' scores; NaN scores dropped."""
    s, lab = _binary_pairs(scores, labels, ("scores", "labels"))
    uniq = np.unique(s)
    r = np.searchsorted(uniq, s)
    return r[lab == 1.0], r[lab == 0.0]


def _auc_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUC per row of pos (m, n_pos) against neg (m, n_neg): integer ranks, rows are independent samples."""
    m, n_pos = pos.shape
    n_neg = neg.shape[1]
    span = int(max(pos.max(), neg.max())) + 1
    off = (np.arange(m, dtype=np.int64) * span)[:, None]
    flat_neg = (np.sort(neg, axis=1).astype(np.int64) + off).ravel()  # globally sorted: rows are shifted apart
    q = (pos.astype(np.int64) + off).ravel()
    base = (np.arange(m, dtype=np.int64) * n_neg).repeat(n_pos)
    below = np.searchsorted(flat_neg, q, side="left") - base
    at_or_below = np.searchsorted(flat_neg, q, side="right") - base
    wins = (below + 0.5 * (at_or_below - below)).reshape(m, n_pos).sum(axis=1)
    return wins / (n_pos * n_neg)


def auc(scores, labels) -> float:
    """Mann-Whitney AUC: P(score of a positive > score of a negative) + 0.5 P(tie).

    scores: (n,) floats, NaN dropped; labels: (n,) in {0, 1}. NaN if either class is empty.
    """
    pos, neg = _auc_split(scores, labels)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    return float(_auc_rows(pos[None, :], neg[None, :])[0])


def auc_ci(scores, labels, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """AUC and a stratified percentile-bootstrap interval (positives and negatives resampled separately).

    Returns (auc, lo, hi); all NaN if a class is empty, lo = hi = NaN if a class has a single item.
    """
    pos, neg = _auc_split(scores, labels)
    nan = float("nan")
    if pos.size == 0 or neg.size == 0:
        return nan, nan, nan
    point = float(_auc_rows(pos[None, :], neg[None, :])[0])
    if pos.size < 2 or neg.size < 2 or n_boot <= 0:
        return point, nan, nan
    rng = np.random.default_rng(seed)
    reps = _auc_rows(pos[rng.integers(0, pos.size, (n_boot, pos.size))],
                     neg[rng.integers(0, neg.size, (n_boot, neg.size))])
    lo, hi = _percentiles(reps[:, None], level)
    return point, float(lo[0]), float(hi[0])


# ---------------------------------------------------------------------------------------------------------------
# logistic link


def _logistic_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float, max_iter: int,
                  start: np.ndarray | None = None) -> np.ndarray:
    """Weighted ridge logistic fits, one per row of w (m, n) (bootstrap counts): returns (m, 2) [intercept, coef].

    Minimises  sum_i w_i [log(1 + e^{a + b x_i}) - y_i (a + b x_i)] / sum_i w_i  +  l2/2 (a^2 + b^2)
    by Newton-Raphson with step halving (the objective never increases), all rows at once, from start (2,)
    (default 0, 0; the bootstrap starts from the full-data fit).
    """
    m = w.shape[0]
    wn = w / w.sum(axis=1, keepdims=True)
    theta = np.zeros((m, 2)) if start is None else np.tile(np.asarray(start, dtype=np.float64), (m, 1))
    f = _objective_rows(theta, x, y, wn, l2)
    active = np.ones(m, dtype=bool)
    for _ in range(max_iter):
        if not active.any():
            break
        th = theta[active]
        ww = wn[active]
        eta = th[:, :1] + th[:, 1:] * x[None, :]
        p = 0.5 * (1.0 + np.tanh(0.5 * eta))  # stable sigmoid
        r = ww * (p - y[None, :])
        g = np.stack([r.sum(axis=1), r @ x], axis=1) + l2 * th
        h = ww * p * (1.0 - p)
        h00 = h.sum(axis=1) + l2
        h01 = h @ x
        h11 = h @ (x * x) + l2
        det = h00 * h11 - h01 * h01
        step = np.stack([(h11 * g[:, 0] - h01 * g[:, 1]) / det, (h00 * g[:, 1] - h01 * g[:, 0]) / det], axis=1)
        f_old = f[active]
        scale = np.ones(th.shape[0])
        new = th - step
        f_new = _objective_rows(new, x, y, ww, l2)
        for _ in range(60):  # step halving where the objective went up
            worse = ~(f_new <= f_old)
            if not worse.any():
                break
            scale[worse] *= 0.5
            new[worse] = th[worse] - scale[worse, None] * step[worse]
            f_new[worse] = _objective_rows(new[worse], x, y, ww[worse], l2)
        idx = np.flatnonzero(active)
        theta[idx] = new
        f[idx] = f_new
        moved = np.abs(scale[:, None] * step).max(axis=1)
        active[idx[moved <= 1e-10 * (1.0 + np.abs(new).max(axis=1))]] = False
    return theta


def _objective_rows(th: np.ndarray, x: np.ndarray, y: np.ndarray, wn: np.ndarray, l2: float) -> np.ndarray:
    """The penalised objective of _logistic_fit for each row of th (m, 2) with normalised weights wn (m, n)."""
    eta = th[:, :1] + th[:, 1:] * x[None, :]
    return (wn * (np.logaddexp(0.0, eta) - y[None, :] * eta)).sum(axis=1) + 0.5 * l2 * (th ** 2).sum(axis=1)


def _logistic_data(x, y) -> tuple[np.ndarray, np.ndarray]:
    return _binary_pairs(x, y, ("x", "y"))


def logistic_regression(x, y, l2: float = 1e-6, max_iter: int = 100) -> tuple[float, float]:
    """(intercept a, coefficient b) of P(y = 1) = sigmoid(a + b x), by Newton-Raphson (IRLS).

    x: (n,), y: (n,) in {0, 1}; pairs with a NaN dropped. A tiny ridge l2 on (a, b) (objective: mean negative
    log-likelihood + l2/2 (a^2 + b^2)) keeps separable data finite: the coefficient is then large, not infinite.
    NaN, NaN without data.
    """
    x, y = _logistic_data(x, y)
    if x.size == 0:
        return float("nan"), float("nan")
    a, b = _logistic_fit(x, y, np.ones((1, x.size)), l2, max_iter)[0]
    return float(a), float(b)


def logistic_ci(x, y, n_boot: int = 1000, level: float = 0.95, seed: int = 0, l2: float = 1e-6,
                max_iter: int = 100) -> dict:
    """Logistic fit and a percentile-bootstrap interval (items resampled) for its coefficient.

    Returns {"intercept": a, "coef": b, "coef_ci": [lo, hi], "n": items used (NaN pairs dropped)}.
    """
    x, y = _logistic_data(x, y)
    n = int(x.size)
    nan = float("nan")
    if n == 0:
        return {"intercept": nan, "coef": nan, "coef_ci": [nan, nan], "n": 0}
    a, b = _logistic_fit(x, y, np.ones((1, n)), l2, max_iter)[0]
    lo = hi = nan
    if n >= 2 and n_boot > 0:
        w = _resample_counts(np.random.default_rng(seed), n_boot, n)
        coefs = _logistic_fit(x, y, w, l2, max_iter, start=np.array([a, b]))[:, 1]
        q_lo, q_hi = _percentiles(coefs[:, None], level)
        lo, hi = float(q_lo[0]), float(q_hi[0])
    return {"intercept": float(a), "coef": float(b), "coef_ci": [lo, hi], "n": n}


# ---------------------------------------------------------------------------------------------------------------
# proportions and seeds


def wilson(correct: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (lo, hi) for a proportion correct/n (correct may be fractional); NaN, NaN if n == 0."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def seed_interval(values) -> tuple[float, float, float]:
    """Mean and 95% t-interval over seeds, clipped to [0, 1] (accuracies); half-width 0 with one seed.

    The t quantile is taken to three decimals, as in printed tables (12.706, 4.303, ...), so that intervals
    reported before this function moved here are reproduced exactly.
    """
    values = list(values)
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    t = round(t_quantile(0.975, len(values) - 1), 3)
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    return mean, max(0.0, mean - half), min(1.0, mean + half)  # accuracies live in [0, 1]
