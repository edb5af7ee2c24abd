"""The law that links stability to performance: test error eps_t = a * sqrt(R_f) (Petrini et al. 2021).

The fit is done in log space, where the law is a line of slope 1/2, so every model weighs the same whatever
its error: log eps_i = log a + (1/2) log R_i + e_i. The free-slope fit and Spearman's rank correlation say how
well the data follow the law.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EXPONENT = 0.5
"""Exponent of R_f in the law eps_t = a * R_f ** EXPONENT."""


@dataclass(frozen=True)
class SqrtLawFit:
    """Fit of eps_t = a * sqrt(R_f) over a set of models.

    Attributes:
        a: prefactor (error as a fraction in [0, 1]; the paper found about 0.2 on CIFAR-10).
        a_se: standard error of ``a`` (delta method on the log-space mean; NaN with a single model).
        n: number of models used (finite R_f > 0 and error > 0).
        excluded: models left out because R_f or the error was missing, zero or negative.
        log_residual_sd: standard deviation of log eps - log(a sqrt(R)) (natural log; NaN when n < 2).
        slope: exponent of a free power-law fit eps = b * R ** slope (NaN when n < 2 or all R equal).
        slope_se: its standard error (NaN when n < 3).
    """

    a: float
    a_se: float
    n: int
    excluded: int
    log_residual_sd: float
    slope: float
    slope_se: float

    def predict(self, relative_stability: np.ndarray | float) -> np.ndarray:
        """Error predicted by the law at the given R_f values."""
        return self.a * np.sqrt(np.asarray(relative_stability, dtype=float))

    def describe(self) -> str:
        """One line for people: the prefactor with its uncertainty, and the free exponent."""
        if self.n == 0:
            return "no model with both R_f > 0 and a test error > 0: nothing to fit"
        text = f"eps = a sqrt(R_f): a = {self.a:.3g}"
        text += (
            f" +- {self.a_se:.2g} (standard error, n = {self.n})" if math.isfinite(self.a_se) else " (n = 1)"
        )
        if math.isfinite(self.slope):
            text += f"; free exponent {self.slope:.2f}"
            if math.isfinite(self.slope_se):
                text += f" +- {self.slope_se:.2f}"
            text += " (law: 0.5)"
        if self.excluded:
            text += f"; {self.excluded} model(s) without positive R_f and error left out"
        return text


def _usable(relative_stability: Sequence[float], error: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(relative_stability, dtype=float)
    e = np.asarray(error, dtype=float)
    if r.shape != e.shape or r.ndim != 1:
        raise ValueError(f"need two 1-D sequences of equal length, got shapes {r.shape} and {e.shape}")
    keep = np.isfinite(r) & np.isfinite(e) & (r > 0) & (e > 0)
    return r[keep], e[keep]


def fit_sqrt_law(relative_stability: Sequence[float], error: Sequence[float]) -> SqrtLawFit:
    """Fit eps = a * sqrt(R) by least squares on log eps.

    Args:
        relative_stability: R_f of each model.
        error: test error of each model as a fraction (not percent).

    Returns:
        The fit; with no usable model ``a`` is NaN and ``n`` is 0.
    """
    r, e = _usable(relative_stability, error)
    n = int(r.size)
    excluded = len(relative_stability) - n
    nan = float("nan")
    if n == 0:
        return SqrtLawFit(nan, nan, 0, excluded, nan, nan, nan)
    x, y = np.log(r), np.log(e)
    residual = y - EXPONENT * x
    log_a = float(residual.mean())
    a = math.exp(log_a)
    sd = float(residual.std(ddof=1)) if n >= 2 else nan
    a_se = a * sd / math.sqrt(n) if n >= 2 else nan
    slope, slope_se = nan, nan
    sxx = float(((x - x.mean()) ** 2).sum())
    if n >= 2 and sxx > 0:
        slope = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
        if n >= 3:
            fitted = y.mean() + slope * (x - x.mean())
            s2 = float(((y - fitted) ** 2).sum()) / (n - 2)
            slope_se = math.sqrt(s2 / sxx)
    return SqrtLawFit(a, a_se, n, excluded, sd, slope, slope_se)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size, dtype=float)
    sorted_values = values[order]
    i = 0
    while i < values.size:
        j = i
        while j + 1 < values.size and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman's rank correlation between R_f and the error.

    Attributes:
        rho: Spearman's rho in [-1, 1] (NaN with fewer than 3 models or a constant variable).
        n: number of models with both values finite.
    """

    rho: float
    n: int

    def describe(self) -> str:
        """One line for people."""
        if not math.isfinite(self.rho):
            return f"Spearman rank correlation: needs at least 3 models with distinct values (have {self.n})"
        return f"Spearman rank correlation of R_f and error: rho = {self.rho:.2f} (n = {self.n})"


def spearman(x: Sequence[float], y: Sequence[float]) -> RankCorrelation:
    """Spearman's rho of two sequences (pairs with a non-finite value are dropped; ties get average ranks)."""
    a = np.asarray(x, dtype=float)
    b = np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two 1-D sequences of equal length, got shapes {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n < 3:
        return RankCorrelation(float("nan"), n)
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra**2).sum() * (rb**2).sum()))
    if denom == 0:
        return RankCorrelation(float("nan"), n)
    return RankCorrelation(float((ra * rb).sum() / denom), n)
