"""The fits on synthetic Chinchilla studies (Hoffmann et al.'s law, E=1.69, A=406.4, B=410.7, α=0.34,
β=0.28): odd resamples, interval coverage, the outlier rule, L*(C) extrapolation, FLOPs per token beyond
6·N, and non-finite losses. Each test is a case the fits once got wrong; docs/fits.md has the measured rates
behind the thresholds."""

import math

import numpy as np
import pytest

import reports.fit
from reports.fit import fit_points
from reports.isoflop import fit_isoflop
from reports.points import Point

E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
BUDGETS = (1e18, 3e18, 1e19, 3e19, 1e20)


def law(n, d):
    return E + A / np.power(n, ALPHA) + B / np.power(d, BETA)


def true_optimum(c: float, flops_per_param: float = 6.0) -> float:
    """N minimizing the law along C = flops_per_param·N·D (closed form, Hoffmann et al. eq. 4)."""
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    return g * (c / flops_per_param) ** (BETA / (ALPHA + BETA))


def grid(k=7, noise=0.0, seed=1, budgets=BUDGETS, flops_per_param=6.0) -> list[Point]:
    """k cells per budget, N log-spaced ±1 in ln N around the budget's true optimum, C = fpp·N·D, lognormal
    noise on the loss."""
    rng = np.random.default_rng(seed)
    points = []
    for c in budgets:
        for i, x in enumerate(np.linspace(-1, 1, k)):
            n = true_optimum(c, flops_per_param) * math.exp(x)
            d = c / (flops_per_param * n)
            loss = float(law(n, d)) * math.exp(noise * rng.standard_normal())
            points.append(Point(n=n, d=d, c=c, loss=loss, budget=c, cell_id=f"{c:.0e}-{i}"))
    return points


# -------------------------------------------------------------------------- resamples that run off


def test_a_nearly_flat_resampled_parabola_does_not_overflow_the_power_laws() -> None:
    # One resample of this study makes a budget's parabola nearly flat, its N* about 1e88; the power law's
    # k once overflowed math.exp (OverflowError), which took down `nanostudy fit` and every fit of the report.
    fit = fit_isoflop(grid(k=7, noise=0.005, seed=1), n_boot=200, seed=2)
    for law_ in (fit.n_opt, fit.d_opt, fit.loss_opt):
        assert len(law_.boot) == 200
        assert law_.exponent_ci[0] <= law_.exponent <= law_.exponent_ci[1]
        low, high = law_.band(np.array([1e22]))
        assert low[0] <= law_(np.array([1e22]))[0] <= high[0]


def test_one_fit_that_fails_leaves_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise OverflowError("math range error")

    monkeypatch.setattr(reports.fit, "fit_isoflop", broken)
    fits = fit_points(grid(k=5), n_boot=10)
    assert fits.isoflop is None and fits.parametric is not None and fits.prediction is not None
    assert "isoflop fit: failed: OverflowError: math range error" in fits.problems
