"""The scaling-law fits (reports/fit.py): known laws recovered from synthetic data, the isoflop checks,
the prediction check, bad tables, `nanostudy fit`, and a study read from a real store."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize

from reports.fit import (
    Point,
    fit_parametric,
    fit_points,
    fit_study,
    points_from_store,
    points_from_table,
    table_points,
)
from reports.huber import HuberObjective
from reports.isoflop import fit_isoflop
from reports.lbfgs import Workers, minimize_batched
from reports.parametric import start_grid
from runner import cli
from store import (
    AttemptOutcome,
    CellMode,
    CellState,
    Executor,
    NewCell,
    add_cells,
    claim,
    end_attempt,
    open_store,
    transition,
    upsert_study,
)

# Hoffmann et al.'s fitted law (approach 3), the usual ground truth of synthetic tests.
TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def true_loss(n, d, law=TRUE):
    return law["E"] + law["A"] / np.power(n, law["alpha"]) + law["B"] / np.power(d, law["beta"])


def true_optimum(c: float, law=TRUE) -> float:
    """N minimizing the law along C = 6·N·D (closed form, Hoffmann et al. eq. 4)."""
    alpha, beta = law["alpha"], law["beta"]
    g = (alpha * law["A"] / (beta * law["B"])) ** (1 / (alpha + beta))
    return g * (c / 6) ** (beta / (alpha + beta))


def isoflop_points(
    budgets, *, per_budget=9, spread=1.0, noise=0.0, seed=0, law=TRUE, depth=False
) -> list[Point]:
    """Points on isoflop curves centred on each budget's true optimum, ± `spread` in ln N, with
    multiplicative log-normal noise."""
    rng = np.random.default_rng(seed)
    points = []
    for c in budgets:
        for i, n in enumerate(true_optimum(c, law) * np.exp(np.linspace(-spread, spread, per_budget))):
            d = c / (6 * n)
            loss = (
                float(true_loss(n, d, law) * math.exp(rng.normal(0, noise)))
                if noise
                else true_loss(n, d, law)
            )
            points.append(
                Point(
                    n=n,
                    d=d,
                    c=c,
                    loss=float(loss),
                    budget=c,
                    cell_id=f"c{c:.0e}-{i}",
                    depth=i + 2 if depth else None,
                )
            )
    return points


# ------------------------------------------------------------------------------------- the optimizer


def test_batched_lbfgs_matches_scipy_on_rosenbrock() -> None:
    def rosenbrock(x, rows):
        a, b = x[:, 0], x[:, 1]
        f = (1 - a) ** 2 + 100 * (b - a * a) ** 2
        g = np.stack([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)], axis=1)
        return f, g

    starts = np.array([[-1.2, 1.0], [2.0, 2.0], [0.0, 0.0], [-3.0, 5.0]])
    result = minimize_batched(rosenbrock, starts, gtol=1e-12, ftol=0.0)
    assert result.converged.all()
    np.testing.assert_allclose(result.x, np.ones_like(starts), atol=1e-6)
    for start, found in zip(starts, result.x, strict=True):
        reference = minimize(lambda v: rosenbrock(v[None], None)[0][0], start, method="L-BFGS-B").x
        np.testing.assert_allclose(found, reference, atol=1e-3)


def test_huber_gradient_matches_finite_differences() -> None:
    points = isoflop_points([1e19, 1e20, 1e21], per_budget=5, noise=0.01)
    weights = np.random.default_rng(1).integers(0, 3, size=(3, len(points))).astype(float)
    objective = HuberObjective.of(
        [p.n for p in points], [p.d for p in points], [p.loss for p in points], weights
    )
    x = objective.to_centred(
        np.array([[6.0, 6.0, 0.5, 0.3, 0.3], [5.0, 7.0, 0.4, 0.4, 0.25], [6.5, 5.5, 0.6, 0.35, 0.3]])
    )
    rows = np.arange(3)
    f, g = objective(x, rows)
    for j in range(5):
        step = np.zeros(5)
        step[j] = 1e-7
        numeric = (objective(x + step, rows)[0] - objective(x - step, rows)[0]) / 2e-7
        np.testing.assert_allclose(g[:, j], numeric, rtol=1e-4, atol=1e-9)
    # The weighted objective is the unweighted one over the points repeated by their weights.
    repeated = np.repeat(np.arange(len(points)), weights[0].astype(int))
    plain = HuberObjective.of(
        [points[i].n for i in repeated], [points[i].d for i in repeated], [points[i].loss for i in repeated]
    )
    theta = objective.from_centred(x[:1])
    assert plain(plain.to_centred(theta), rows[:1])[0][0] == pytest.approx(f[0], rel=1e-12)


def test_start_grid_is_hoffmanns() -> None:
    grid = start_grid()
    assert grid.shape == (4500, 5)
    assert sorted(set(grid[:, 2])) == [-1.0, -0.5, 0.0, 0.5, 1.0]  # e = ln E
    assert sorted(set(grid[:, 0])) == [0, 5, 10, 15, 20, 25]  # a = ln A
    assert sorted(set(grid[:, 3])) == [0, 0.5, 1.0, 1.5, 2.0]  # alpha


# ------------------------------------------------------------------------------------- parametric


def test_parametric_fit_recovers_a_known_law_inside_its_intervals() -> None:
    points = isoflop_points(np.logspace(18, 21, 7), per_budget=9, spread=1.2, noise=0.002, seed=3)
    fit = fit_parametric(points, n_boot=100, seed=0)
    assert fit.n_points == len(points) and fit.n_boot == 100 and fit.num_starts == 4500
    assert pytest.approx(TRUE["E"], rel=0.03) == fit.E
    assert fit.alpha == pytest.approx(TRUE["alpha"], rel=0.1)
    assert fit.beta == pytest.approx(TRUE["beta"], rel=0.1)
    assert pytest.approx(TRUE["A"], rel=0.5) == fit.A and pytest.approx(TRUE["B"], rel=0.5) == fit.B
    for name, value in TRUE.items():
        low, high = fit.ci[name]
        assert low <= value <= high, f"{name}: {value} outside [{low}, {high}]"
    true_a = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    assert fit.ci["a"][0] <= true_a <= fit.ci["a"][1]
    assert fit.a + fit.b == pytest.approx(1.0)
    # Residuals are ln L − ln L̂ in input order: about the noise, nothing systematic.
    assert fit.residuals.shape == (len(points),)
    assert np.abs(fit.residuals).max() < 0.01


def test_compute_optimal_allocation_minimizes_the_law() -> None:
    points = isoflop_points(np.logspace(18, 21, 5), per_budget=7)
    fit = fit_parametric(points, n_boot=20)
    c = 1e23
    n_opt, d_opt = fit.optimal(c)
    assert 6 * n_opt * d_opt == pytest.approx(c)
    assert n_opt == pytest.approx(true_optimum(c), rel=0.02)
    for factor in (0.9, 1.1):  # any other split of the same C is worse
        assert fit.loss(n_opt, d_opt) < fit.loss(n_opt * factor, d_opt / factor)
    ci = fit.optimal_ci(c)
    assert ci["n"][0] <= n_opt <= ci["n"][1]
    assert ci["tokens_per_param"][0] <= d_opt / n_opt <= ci["tokens_per_param"][1]
    arrays = fit.optimal(np.array([1e22, 1e23]))
    assert arrays[0].shape == (2,) and arrays[0][1] == pytest.approx(n_opt)
    low, high = fit.loss_ci(np.array([1e9]), np.array([2e10]))
    assert low[0] <= fit.loss(1e9, 2e10) <= high[0]


def test_parametric_fit_refuses_too_few_points() -> None:
    with pytest.raises(ValueError, match="at least 6 points"):
        fit_parametric(isoflop_points([1e20], per_budget=5), n_boot=0)


def test_parametric_fit_refuses_points_at_one_compute_budget_or_one_tokens_per_parameter() -> None:
    # One budget makes ln D = ln C − ln 6 − ln N: the law is not identified, and the fit once returned
    # α = 4.898, A = 3.7e37 (or, in a report, α = −0.270 with recommended model sizes) with no warning.
    with pytest.raises(ValueError, match=r"N·D varies only 1\.00× over the 7 points .*one compute budget"):
        fit_parametric(isoflop_points([1e20], per_budget=7), n_boot=0)
    # Every run at 20 tokens per parameter: ln D = ln N + a constant, the same collinearity.
    n = np.geomspace(1e7, 1e9, 8)
    same_ratio = [
        Point(n=x, d=20 * x, c=120 * x * x, loss=float(true_loss(x, 20 * x)), budget=120 * x * x) for x in n
    ]
    with pytest.raises(ValueError, match=r"D/N varies only 1\.00× over the 8 points"):
        fit_parametric(same_ratio, n_boot=0)


def test_a_law_whose_loss_rises_with_n_is_not_fitted() -> None:
    # A full grid of N and D whose loss grows with N: the best fit has α ≈ −0.15, which is no scaling law,
    # and its compute-optimal allocation would be nonsense.
    points = [
        Point(n=n, d=d, c=6 * n * d, loss=1.5 + 0.02 * n**0.15 + 400 / d**0.28, budget=6 * n * d)
        for n in np.geomspace(1e7, 1e9, 4)
        for d in np.geomspace(1e9, 1e11, 4)
    ]
    with pytest.raises(ValueError, match=r"alpha = -0\.15\d* and beta = 0\.28"):
        fit_parametric(points, n_boot=0)
    fits = fit_points(points, n_boot=0)
    assert fits.parametric is None
    assert any(line.startswith("parametric fit: the best fit has alpha = -0.15") for line in fits.problems)


def test_resamples_with_a_non_positive_exponent_have_no_interior_optimum() -> None:
    # A resample with α ≤ 0 has its loss rising with N along every isoflop (N_opt = 0), one with β ≤ 0 has it
    # falling (N_opt = inf); the closed form gave them NaN, which the percentiles dropped, hiding them.
    fit = fit_parametric(isoflop_points(np.logspace(18, 21, 4), per_budget=5), n_boot=0)
    good = np.tile([fit.E, fit.A, fit.B, fit.alpha, fit.beta], (40, 1))
    for column, side in ((3, 0), (4, 1)):
        boot = good.copy()
        boot[:4, column] = -0.1  # 10% of the resamples, beyond the 2.5% of either tail
        ci = replace(fit, boot=boot).optimal_ci(1e22)
        assert ci["n"][side] == (0.0, math.inf)[side]
        assert ci["d"][1 - side] == (math.inf, 0.0)[side]
        assert ci["n"][1 - side] == pytest.approx(fit.optimal(1e22)[0])


@pytest.mark.slow
def test_parametric_fit_does_not_depend_on_the_number_of_worker_processes() -> None:
    # 4,500 starts × 100 points is enough work to run in two processes.
    points = isoflop_points(np.logspace(18, 21, 10), per_budget=10, noise=0.003)
    with Workers(2) as two:
        parallel = fit_parametric(points, n_boot=200, seed=5, workers=two)
    single = fit_parametric(points, n_boot=200, seed=5, workers=1)
    assert (parallel.E, parallel.A, parallel.B, parallel.alpha, parallel.beta) == (
        single.E,
        single.A,
        single.B,
        single.alpha,
        single.beta,
    )
    np.testing.assert_array_equal(parallel.boot, single.boot)


# ------------------------------------------------------------------------------------- isoflop


def parabola_points(budget, n_opt, *, loss_opt=3.0, curvature=0.2, n_values, depths=None, ids=None):
    return [
        Point(
            n=n,
            d=budget / (6 * n),
            c=budget,
            loss=loss_opt + curvature * math.log(n / n_opt) ** 2,
            budget=budget,
            cell_id=ids[i] if ids else f"b{budget:.0e}-{i}",
            depth=depths[i] if depths else None,
        )
        for i, n in enumerate(n_values)
    ]


def test_isoflop_minima_and_power_laws_are_recovered() -> None:
    budgets = [1e18, 1e19, 1e20, 1e21]
    points = []
    for budget in budgets:
        n_opt = 0.1 * budget**0.5  # N* ∝ C^0.5, so D* = C / (6·N*) ∝ C^0.5 too
        n_values = n_opt * np.exp(np.linspace(-1.5, 1.2, 6))
        points += parabola_points(budget, n_opt, loss_opt=10 * budget**-0.05, n_values=n_values)
    fit = fit_isoflop(points, n_boot=50)
    assert fit.skipped == [] and len(fit.parabolas) == 4
    for budget, parabola in zip(budgets, fit.parabolas, strict=True):
        assert parabola.budget == budget and parabola.interior and parabola.advice is None
        assert parabola.n_opt == pytest.approx(0.1 * budget**0.5, rel=1e-6)
        assert parabola.d_opt == pytest.approx(budget / (6 * parabola.n_opt), rel=1e-6)
        assert parabola.loss_opt == pytest.approx(10 * budget**-0.05, rel=1e-9)
        assert parabola.outlier is None and parabola.n_points == 6
        assert parabola(parabola.n_opt) == pytest.approx(parabola.loss_opt)
        low, high = parabola.n_opt_ci
        assert low <= parabola.n_opt <= high
    assert fit.n_opt.exponent == pytest.approx(0.5, abs=1e-6)
    assert fit.d_opt.exponent == pytest.approx(0.5, abs=1e-6)
    assert fit.loss_opt.exponent == pytest.approx(-0.05, abs=1e-6)
    assert fit.n_opt(1e22) == pytest.approx(0.1 * 1e11, rel=1e-5)
    low, high = fit.n_opt.band(np.array([1e22]))
    assert low[0] <= fit.n_opt(1e22) <= high[0]


def test_d_opt_follows_the_cells_own_flops_per_token() -> None:
    # Cells spending 20% more FLOPs per token than 6·N (attention): D* = C / (7.2·N*), not C / (6·N*).
    points = [
        Point(n=p.n, d=p.budget / (7.2 * p.n), c=p.budget, loss=p.loss, budget=p.budget, cell_id=p.cell_id)
        for p in parabola_points(1e20, 1e8, n_values=np.geomspace(3e7, 3e8, 5))
    ]
    (parabola,) = fit_isoflop(points, n_boot=0).parabolas
    assert parabola.d_opt == pytest.approx(1e20 / (7.2 * 1e8), rel=1e-9)


def test_a_minimum_outside_the_sampled_depths_says_which_depths_to_add() -> None:
    depths = [2, 4, 6, 8]
    n_values = [1e5 * d**3 for d in depths]  # N ∝ depth³
    above = parabola_points(1e18, 3e8, n_values=n_values, depths=depths)  # N* beyond depth 8
    below = parabola_points(1e19, 1e5, n_values=n_values, depths=depths)  # N* below depth 2
    inside = parabola_points(1e20, 1e7, n_values=n_values, depths=depths)
    fit = fit_isoflop(above + below + inside, n_boot=20)
    by_budget = {p.budget: p for p in fit.parabolas}
    assert not by_budget[1e18].interior
    assert "above the largest" in by_budget[1e18].advice
    assert "add deeper models, e.g. depth 10, 12" in by_budget[1e18].advice
    assert not by_budget[1e19].interior
    assert "below the smallest" in by_budget[1e19].advice and "depth 1" in by_budget[1e19].advice
    assert by_budget[1e20].interior and by_budget[1e20].advice is None
    fits = fit_points(above + below + inside, n_boot=20)
    assert any(line.startswith("budget 1e+18: minimum at N") for line in fits.problems)


def test_budgets_with_fewer_than_three_points_are_reported_not_fitted() -> None:
    points = parabola_points(1e18, 1e7, n_values=[1e6, 1e7])
    points += parabola_points(1e19, 1e7, n_values=[1e6, 1e6, 1e8])  # 3 points, 2 distinct N
    points += parabola_points(1e20, 1e7, n_values=[1e6, 1e7, 1e8])
    fit = fit_isoflop(points, n_boot=20)
    assert [p.budget for p in fit.parabolas] == [1e20]
    assert len(fit.skipped) == 2
    assert fit.skipped[0].startswith("budget 1e+18: 2 point(s)") and "at least 3" in fit.skipped[0]
    assert fit.skipped[1].startswith("budget 1e+19: 3 point(s), 2 distinct N")
    assert fit.n_opt is None  # one budget: no power law
    # Three points give a minimum but, with no other budget, no scatter to draw an interval from.
    assert all(math.isnan(v) for v in fit.parabolas[0].n_opt_ci)
    fits = fit_points(points, n_boot=20)
    assert fit.skipped[0] in fits.problems
    assert any("minima have no intervals: every budget has 3 points" in line for line in fits.problems)


def test_a_three_point_budget_gets_an_interval_from_the_pooled_scatter() -> None:
    # Noisy budgets of 5 points, and a smallest budget of 3 whose minimum lies off their trend (as in a
    # real study, where the smallest budget's models are undertrained). Its parabola fits its 3 points
    # exactly, but the noise's scale pooled over the other budgets gives it draws, so it has an interval and
    # its uncertainty enters the power laws' intervals, which contain their estimates.
    rng = np.random.default_rng(0)
    points = parabola_points(1e17, 1e6, loss_opt=10 * 1e17**-0.05 + 0.8, n_values=[3e5, 1e6, 3e6])
    for budget in [1e18, 1e19, 1e20]:
        n_opt = 0.1 * budget**0.5
        noisy = parabola_points(
            budget, n_opt, loss_opt=10 * budget**-0.05, n_values=n_opt * np.exp(np.linspace(-1.5, 1.5, 5))
        )
        points += [
            Point(n=p.n, d=p.d, c=p.c, loss=p.loss + rng.normal(0, 0.01), budget=p.budget, cell_id=p.cell_id)
            for p in noisy
        ]
    fit = fit_isoflop(points, n_boot=200)
    three = fit.parabolas[0]
    assert three.n_points == 3 and three.n_boot > 100 and three.n_opt_ci[0] < three.n_opt < three.n_opt_ci[1]
    for law in (fit.n_opt, fit.d_opt, fit.loss_opt):
        assert len(law.boot) == 200
        assert law.exponent_ci[0] <= law.exponent <= law.exponent_ci[1]
        assert law.k_ci[0] <= law.k <= law.k_ci[1]


def test_concave_budget_is_skipped() -> None:
    points = parabola_points(1e18, 1e7, curvature=-0.1, n_values=[1e6, 1e7, 1e8, 1e9])
    fit = fit_isoflop(points, n_boot=0)
    assert fit.parabolas == [] and "not convex" in fit.skipped[0]


def test_one_outlier_is_left_out() -> None:
    points = parabola_points(1e19, 1e7, n_values=np.geomspace(1e6, 1e8, 7))
    bad = points[2]
    points[2] = Point(n=bad.n, d=bad.d, c=bad.c, loss=bad.loss + 0.5, budget=bad.budget, cell_id="bad-cell")
    (parabola,) = fit_isoflop(points, n_boot=20).parabolas
    assert parabola.outlier == "bad-cell" and parabola.n_points == 6
    assert parabola.n_opt == pytest.approx(1e7, rel=1e-6)
    # Small noise is not an outlier.
    rng = np.random.default_rng(0)
    noisy = [
        Point(n=p.n, d=p.d, c=p.c, loss=p.loss + rng.normal(0, 0.002), budget=p.budget, cell_id=p.cell_id)
        for p in parabola_points(1e19, 1e7, n_values=np.geomspace(1e6, 1e8, 7))
    ]
    assert fit_isoflop(noisy, n_boot=0).parabolas[0].outlier is None


# ------------------------------------------------------------------------------------- prediction check


def test_prediction_check_predicts_the_held_out_budget() -> None:
    budgets = np.logspace(18, 21, 4)
    points = isoflop_points(budgets, per_budget=7, spread=0.8, noise=0.001, seed=1)
    fits = fit_points(points, n_boot=50)
    check = fits.prediction
    assert check is not None and check.budget == budgets[-1]
    true_best = float(true_loss(true_optimum(budgets[-1]), budgets[-1] / (6 * true_optimum(budgets[-1]))))
    assert check.predicted == pytest.approx(true_best, rel=0.005)
    assert check.measured == pytest.approx(true_best, rel=0.005)
    assert check.predicted_ci[0] < check.predicted < check.predicted_ci[1]
    assert check.method.startswith("parametric fit without budget 1e+21")
    assert fits.isoflop is not None and fits.parametric is not None


def test_prediction_check_needs_three_budgets() -> None:
    fits = fit_points(isoflop_points([1e19, 1e20], per_budget=5), n_boot=10)
    assert fits.prediction is None
    assert any(line.startswith("prediction check: needs 3 or more budgets") for line in fits.problems)


# ------------------------------------------------------------------------------------- tables


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


def test_points_from_table(tmp_path: Path) -> None:
    table = write_csv(
        tmp_path / "runs.csv", ["params,tokens,loss,flops", "1e8,2e9,3.1,1.3e18", "", "2e8,1e9,3.2,1.2e18"]
    )
    points = points_from_table(table, n_col="params", d_col="tokens", loss_col="loss")
    assert [(p.n, p.d, p.loss) for p in points] == [(1e8, 2e9, 3.1), (2e8, 1e9, 3.2)]
    assert points[0].c == pytest.approx(6 * 1e8 * 2e9) and points[0].budget == points[0].c
    assert [p.cell_id for p in points] == ["runs.csv:2", "runs.csv:4"]
    with_flops = points_from_table(table, n_col="params", d_col="tokens", loss_col="loss", flops_col="flops")
    # C within 1.25× of each other: one budget, their geometric mean.
    assert [p.c for p in with_flops] == [1.3e18, 1.2e18]
    assert [p.budget for p in with_flops] == [pytest.approx(math.sqrt(1.3e18 * 1.2e18))] * 2


def attention_table(path: Path, *, budget_column: bool) -> Path:
    """Isoflop curves at 1e18, 3e18 and 1e19 whose cells spend 6·N·r FLOPs per token, r from 1.20 (the
    smallest model) to 1.11 (the largest), as attention makes them do: 6·N·D spans 1.08× along a curve."""
    rows = ["N,D,loss" + (",budget_flops" if budget_column else "")]
    for budget in (1e18, 3e18, 1e19):
        sizes = true_optimum(budget) * np.exp(np.linspace(-1, 1, 5))
        for n, r in zip(sizes.tolist(), np.linspace(1.20, 1.11, 5).tolist(), strict=True):
            d = budget / (6 * n * r)
            rows.append(f"{n!r},{d!r},{float(true_loss(n, d))!r}" + (f",{budget!r}" if budget_column else ""))
    return write_csv(path, rows)


def test_table_budgets_group_an_isoflop_curve_whose_flops_per_token_vary(tmp_path: Path) -> None:
    # 6·N·D rounded to 2 significant digits broke each curve into 3 or 4 budgets (15 points into 9 on
    # docs/results/h100-isoflop), most too small for a parabola.
    columns = {"n_col": "N", "d_col": "D", "loss_col": "loss"}
    points, _, grouped = table_points(attention_table(tmp_path / "a.csv", budget_column=False), **columns)
    budgets = sorted({p.budget for p in points})
    assert len(budgets) == 3 and [sum(p.budget == b for p in points) for b in budgets] == [5, 5, 5]
    assert budgets[0] == pytest.approx(1e18 / 1.155, rel=0.01)  # the curve's 6·N·D, not its C
    assert grouped.startswith("budgets: the rows' C = 6·N·D grouped, each group the rows within 1.25×")
    # A budget column, named or the report's budget_flops, is used as it is.
    points, _, grouped = table_points(attention_table(tmp_path / "b.csv", budget_column=True), **columns)
    assert sorted({p.budget for p in points}) == [1e18, 3e18, 1e19]
    assert grouped == "budgets: from the 'budget_flops' column"
    table = write_csv(tmp_path / "c.csv", ["N,D,loss,grid", "1e8,2e9,3.1,7e17", "2e8,1e9,3.2,7e17"])
    points, _, grouped = table_points(table, **columns, budget_col="grid")
    assert [p.budget for p in points] == [7e17, 7e17] and grouped == "budgets: from the 'grid' column"
    with pytest.raises(ValueError, match=r"c.csv:1: no column named 'budget'"):
        table_points(table, **columns, budget_col="budget")


def test_table_rows_not_done_or_not_pretraining_are_left_out_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The report's cell table: a failed cell has a planned D and a partial (or no) loss, a mid-training cell
    # starts from its parent; neither is a point of the report's fit.
    table = write_csv(
        tmp_path / "cells.csv",
        [
            "id,mode,state,N,D,bpb",
            "a,pretraining,done,1e8,2e9,3.1",
            "b,pretraining,failed,1e8,2e9,",
            "c,pretraining,diverged,2e8,1e9,3.9",
            "d,mid-training,done,2e8,1e9,2.5",
            "e,pretraining,done,2e8,1e9,3.2",
            "f,pretraining,failed,3e8,1e9,3.3",
        ],
    )
    points, left_out, _ = table_points(table, n_col="N", d_col="D", loss_col="bpb")
    assert [p.cell_id for p in points] == ["cells.csv:2", "cells.csv:6"]
    assert left_out == [
        "3 row(s) of cells.csv left out by their 'state' column, not 'done': 1 diverged, 2 failed",
        "1 row(s) of cells.csv left out by their 'mode' column, not 'pretraining': 1 mid-training",
    ]
    assert cli.main(["fit", str(table), "--n", "N", "--d", "D", "--loss", "bpb", "--boot", "0"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{table}: 2 points") and f"  {left_out[0]}" in out and f"  {left_out[1]}" in out
    # Without those columns every row is a point.
    plain = write_csv(tmp_path / "plain.csv", ["N,D,bpb", "1e8,2e9,3.1", "2e8,1e9,3.9"])
    assert len(table_points(plain, n_col="N", d_col="D", loss_col="bpb")[0]) == 2


def test_bad_table_rows_name_file_line_and_column(tmp_path: Path) -> None:
    table = write_csv(
        tmp_path / "bad.csv",
        [
            "N,D,L",
            "1e8,2e9,3.1",
            "1e8,,3.0",
            "-5,2e9,3.0",
            "1e8,2e9,abc",
            "1e8,0,3",
            "1e8,2e9,inf",
            "1e8,2e9",
        ],
    )
    with pytest.raises(ValueError) as raised:
        points_from_table(table, n_col="N", d_col="D", loss_col="L")
    lines = str(raised.value).splitlines()
    assert lines == [
        f"{table}:3: column 'D': missing value",
        f"{table}:4: column 'N': must be positive, got -5",
        f"{table}:5: column 'L': not a number: 'abc'",
        f"{table}:6: column 'D': must be positive, got 0",
        f"{table}:7: column 'L': not a finite number: 'inf'",
        f"{table}:8: column 'L': missing value",
    ]


def test_bad_table_files(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "t.csv", ["N,D,loss", "1,2,3"])
    with pytest.raises(ValueError, match=r"t.csv:1: no column named 'L' \(columns: N, D, loss\)"):
        points_from_table(table, n_col="N", d_col="D", loss_col="L")
    with pytest.raises(ValueError, match="no such file"):
        points_from_table(tmp_path / "missing.csv", n_col="N", d_col="D", loss_col="L")
    with pytest.raises(ValueError, match="no data rows"):
        points_from_table(write_csv(tmp_path / "h.csv", ["N,D,L"]), n_col="N", d_col="D", loss_col="L")
    (tmp_path / "bin.csv").write_bytes(b"N,D,L\n\xff\xfe,1,2\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        points_from_table(tmp_path / "bin.csv", n_col="N", d_col="D", loss_col="L")


# ------------------------------------------------------------------------------------- nanostudy fit


def run_fit(argv: list[str]) -> int:
    """`nanostudy fit ARGV` through the real command line (runner/cli.py → reports/commands.py)."""
    return cli.main(["fit", *argv])


def table_of(points: list[Point], path: Path) -> Path:
    return write_csv(
        path,
        ["model_size,tokens,loss"] + [f"{float(p.n)!r},{float(p.d)!r},{float(p.loss)!r}" for p in points],
    )


def test_fit_command_json_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = table_of(isoflop_points(np.logspace(18, 21, 4), per_budget=6, noise=0.002), tmp_path / "t.csv")
    code = run_fit(
        [str(table), "--n", "model_size", "--d", "tokens", "--loss", "loss", "--json", "--boot", "50"]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    names = ["E", "A", "B", "alpha", "beta", "a", "b"]
    assert set(out) == {*names, "ci", "n_points"}
    assert set(out["ci"]) == set(names)
    assert all(
        len(out["ci"][name]) == 2 and out["ci"][name][0] <= out[name] <= out["ci"][name][1] for name in names
    )
    assert out["n_points"] == 24 and out["alpha"] == pytest.approx(TRUE["alpha"], rel=0.2)


def test_fit_command_json_fits_a_repeated_row_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    points = isoflop_points(np.logspace(18, 21, 4), per_budget=6, noise=0.002)
    table = table_of(points + points[:5], tmp_path / "t.csv")
    argv = [str(table), "--n", "model_size", "--d", "tokens", "--loss", "loss", "--json", "--boot", "0"]
    assert run_fit(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["n_points"] == 24
    assert "nanostudy fit: 5 point(s) repeat another exactly" in captured.err
    assert "t.csv:26 (as t.csv:2)" in captured.err


def test_fit_command_readable_output_and_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = table_of(isoflop_points(np.logspace(18, 21, 4), per_budget=6, noise=0.002), tmp_path / "t.csv")
    assert run_fit([str(table), "--n", "model_size", "--d", "tokens", "--loss", "loss", "--boot", "20"]) == 0
    out = capsys.readouterr().out
    assert "parametric: L(N, D) = E + A/N^alpha + B/D^beta" in out
    assert "isoflop minima" in out and "prediction check, budget 1e+21 held out" in out
    assert (
        out.splitlines()[1] == "  budgets: the rows' C = 6·N·D grouped, each group the rows within 1.25× of "
        "its smallest (no budget column)"
    )
    bad = write_csv(tmp_path / "bad.csv", ["model_size,tokens,loss", "1e8,2e9,", "1e8,2e9,3"])
    assert run_fit([str(bad), "--n", "model_size", "--d", "tokens", "--loss", "loss", "--json"]) == 2
    assert f"{bad}:2: column 'loss': missing value" in capsys.readouterr().err
    assert run_fit([str(bad), "--n", "size", "--d", "tokens", "--loss", "loss"]) == 2
    assert "no column named 'size'" in capsys.readouterr().err
    few = write_csv(tmp_path / "few.csv", ["model_size,tokens,loss", "1e8,2e9,3", "2e8,1e9,3"])
    assert run_fit([str(few), "--n", "model_size", "--d", "tokens", "--loss", "loss", "--json"]) == 1
    assert "at least 6 points" in capsys.readouterr().err


def test_fit_command_on_one_budget_prints_its_minimum_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Once exit 0 with α = 4.898, A = 3.7e37 and a compute-optimal allocation from them.
    table = table_of(isoflop_points([1e19], per_budget=7, noise=0.005), tmp_path / "one.csv")
    argv = [str(table), "--n", "model_size", "--d", "tokens", "--loss", "loss", "--boot", "20"]
    assert run_fit(argv) == 1
    out = capsys.readouterr().out
    assert "parametric:" not in out and "compute-optimal allocation" not in out
    assert "isoflop minima" in out and "parametric fit: N·D varies only 1.00×" in out
    assert run_fit([*argv, "--json"]) == 1
    assert "N·D varies only 1.00× over the 7 points" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- from the store


def test_fit_study_reads_done_pretraining_cells(tmp_path: Path) -> None:
    law = {"E": 0.8, "A": 60.0, "B": 300.0, "alpha": 0.33, "beta": 0.3}
    budgets = [1e15, 1e16, 1e17]
    with open_store(tmp_path / "nanostudy.db") as store:
        study = upsert_study(store, name="iso", path="iso.yaml", spec={})
        cells, losses = [], {}
        for budget in budgets:
            for depth in (2, 4, 6, 8, 10):
                n = 20_000 * depth**3
                flops_per_token = int(6.6 * n)  # attention adds 10%
                tokens = int(budget / flops_per_token)
                cell_id = f"b{budget:.0e}-d{depth}"
                cells.append(
                    NewCell(
                        id=cell_id,
                        mode=CellMode.PRETRAINING,
                        depth=depth,
                        flops_budget=budget,
                        seed=0,
                        num_params=n,
                        num_tokens=tokens,
                        flops_per_token=flops_per_token,
                        steps_total=10,
                        config={},
                    )
                )
                losses[cell_id] = float(true_loss(n, tokens, law))
        cells.append(
            NewCell(
                id="mid",
                mode=CellMode.MID_TRAINING,
                parent_cell_id="b1e+17-d10",
                depth=10,
                flops_budget=1e17,
                seed=0,
                num_params=20_000_000,
                num_tokens=1000,
                flops_per_token=132_000_000,
                steps_total=10,
                config={},
            )
        )
        add_cells(store, study.id, cells)
        for cell in cells:
            attempt = claim(store, cell.id, executor=Executor.LOCAL, host="h")
            if cell.id == "b1e+16-d4":  # failed: left out
                end_attempt(store, attempt.id, AttemptOutcome.FAILED)
            elif cell.id == "b1e+16-d6":  # done without a validation: left out, and said so
                end_attempt(store, attempt.id, AttemptOutcome.DONE)
            elif cell.id == "b1e+17-d2":  # still running: left out
                pass
            else:
                value = losses.get(cell.id, 0.5)
                end_attempt(store, attempt.id, AttemptOutcome.DONE, val_bpb=value, val_loss=3 * value)
        assert transition(store, "b1e+17-d2", CellState.RUNNING, CellState.CANCELLED)

        points = points_from_store(store, "iso")
        assert len(points) == 12 and "mid" not in {p.cell_id for p in points}
        by_id = {p.cell_id: p for p in points}
        p = by_id["b1e+15-d4"]
        assert (p.n, p.depth, p.budget, p.loss) == (20_000 * 64, 4, 1e15, losses["b1e+15-d4"])
        assert p.c == pytest.approx(p.flops_per_token * p.d) and p.flops_per_token == int(6.6 * p.n)
        assert points_from_store(store, "iso", metric="loss")[0].loss == pytest.approx(3 * points[0].loss)

        fits = fit_study(store, "iso", n_boot=30)
        assert fits.study == "iso" and fits.metric == "bpb" and len(fits.points) == 12
        assert fits.problems[0] == (
            "1 done cell(s) have no finite positive final val_bpb and are left out: b1e+16-d6"
        )
        assert [p.budget for p in fits.isoflop.parabolas] == budgets
        assert fits.parametric is not None and fits.parametric.n_points == 12
        with pytest.raises(ValueError, match="study 'nope' is not in the database"):
            fit_study(store, "nope")
        with pytest.raises(ValueError, match="metric must be one of"):
            points_from_store(store, "iso", metric="ppl")


@pytest.mark.slow
def test_default_bootstrap_is_a_thousand_resamples() -> None:
    fits = fit_points(isoflop_points(np.logspace(18, 21, 4), per_budget=7, noise=0.002))
    assert fits.parametric.n_boot == 1000
    assert all(p.n_boot > 900 for p in fits.isoflop.parabolas)


def test_the_benchmarks_naive_objective_is_ours() -> None:
    """benchmarks/fit_speed.py times a scipy loop on a textbook objective: it must be the same function."""
    from benchmarks.fit_speed import naive_objective, synthetic_points

    points = synthetic_points(40)
    log_n, log_d, log_loss = (np.log([getattr(p, k) for p in points]) for k in ("n", "d", "loss"))
    objective = HuberObjective.of([p.n for p in points], [p.d for p in points], [p.loss for p in points])
    for theta in ([6.0, 6.0, 0.5, 0.34, 0.28], [1.0, 12.0, 0.0, 0.5, 1.0]):
        f, g = naive_objective(np.array(theta), log_n, log_d, log_loss)
        ours_f, ours_g = objective(objective.to_centred(np.array([theta])), np.zeros(1, dtype=np.int64))
        assert f == pytest.approx(ours_f[0], rel=1e-9)
        # Our gradient is in centred coordinates: d/dα there = d/dα + m_N · d/da in the original ones.
        expected = g.copy()
        expected[3] += objective.mean_log_n * g[0]
        expected[4] += objective.mean_log_d * g[1]
        np.testing.assert_allclose(ours_g[0], expected, rtol=1e-7, atol=1e-12)


def test_four_points_keep_every_point() -> None:
    """The quickstart's 7.5e10 curve: 4 depths, an honest but asymmetric U. The other 3 points of any one
    fit a parabola exactly, so no point can be judged an outlier, and none is left out."""
    sizes = (4_864, 14_336, 33_024, 65_536)
    losses = (3.112, 2.940, 2.958, 3.149)
    points = [
        Point(n=n, d=7.5e10 / (6 * n), c=7.5e10, loss=loss, budget=7.5e10, cell_id=f"d{depth}")
        for depth, (n, loss) in enumerate(zip(sizes, losses, strict=True), 1)
    ]
    (parabola,) = fit_isoflop(points, n_boot=50).parabolas
    assert parabola.outlier is None and parabola.n_points == 4
    assert parabola.interior and sizes[1] < parabola.n_opt < sizes[2]
    assert parabola.n_opt_ci[0] < parabola.n_opt < parabola.n_opt_ci[1]
