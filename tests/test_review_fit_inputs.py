"""The fits on hostile input: a point with a missing (None) value or a bad budget is left out and named,
never a traceback or a prediction check made on a budget of inf."""

import math
from dataclasses import replace

import numpy as np
import pytest

from reports.fit import fit_points
from reports.points import Point

E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
BUDGETS = (1e18, 3e18, 1e19, 3e19, 1e20)


def grid(k: int = 5) -> list[Point]:
    """k noise-free cells per budget, N log-spaced ±1 in ln N around the budget's optimum, C = 6·N·D."""
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    points = []
    for c in BUDGETS:
        for i, x in enumerate(np.linspace(-1, 1, k)):
            n = g * (c / 6) ** (BETA / (ALPHA + BETA)) * math.exp(x)
            d = c / (6 * n)
            loss = E + A / n**ALPHA + B / d**BETA
            points.append(Point(n=n, d=d, c=c, loss=loss, budget=c, cell_id=f"{c:.0e}-{i}"))
    return points


@pytest.mark.parametrize("field", ["loss", "n", "d", "c"])
def test_a_missing_value_is_left_out_by_name(field: str) -> None:
    # Once: TypeError: '<' not supported between instances of 'int' and 'NoneType', out of fit_points.
    points = grid()
    points[3] = replace(points[3], **{field: None})
    fits = fit_points(points, n_boot=0)
    name = {"loss": "loss", "n": "N", "d": "D", "c": "C"}[field]
    assert fits.problems[0] == (
        f"1 point(s) with a non-finite or non-positive value left out: {points[3].cell_id} ({name} None)"
    )
    assert len(fits.points) == len(points) - 1 and fits.parametric is not None


@pytest.mark.parametrize("budget", [math.inf, math.nan, 0.0, -1e19])
def test_a_point_with_a_bad_budget_is_left_out_by_name(budget: float) -> None:
    # Once: a budget of inf became the prediction check's held-out budget, "predicted 1.718, measured 2.643"
    # for a perfect law; one of NaN failed it with "ValueError: min() arg is an empty sequence".
    points = grid()
    points[-1] = replace(points[-1], budget=budget)
    fits = fit_points(points, n_boot=0)
    assert fits.problems == [
        f"1 point(s) with a non-finite or non-positive value left out: {points[-1].cell_id} (budget {budget})"
    ]
    assert fits.prediction.budget == 1e20
    assert fits.prediction.predicted == pytest.approx(fits.prediction.measured, abs=0.002)


def test_a_point_without_a_cell_id_is_named_by_its_place() -> None:
    points = [replace(p, cell_id=None) for p in grid()]
    points[4] = replace(points[4], n=0.0)
    fits = fit_points(points, n_boot=0)
    assert fits.problems[0] == "1 point(s) with a non-finite or non-positive value left out: point 5 (N 0.0)"
