"""The scaling-law fits of a study, shared by the report, the TUI and `nanostudy fit` (docs/fits.md).

    fits = fit_study(store, "isoflop")            # or fit_points(points_from_table("chinchilla.csv", ...))
    fits.isoflop.n_opt.exponent, fits.parametric.alpha, fits.parametric.ci["alpha"], fits.prediction

Both Chinchilla approaches, each with 95% bootstrap intervals over resampled cells:
- isoflop (approach 2, `reports.isoflop`): per FLOP budget a parabola of the loss in ln N, its minimum
  N*(C), D*(C), L*(C), whether it lies inside the sampled N, and power laws over budgets;
- parametric (approach 3, `reports.parametric`): L(N, D) = E + A/N^α + B/D^β by Huber loss from 4,500
  starts, and the compute-optimal allocation it implies;
- a prediction check: the law refitted without the largest budget predicts that budget's best loss.

Reads the store, never writes it. Deterministic for a given seed, whatever the number of CPUs.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reports.intervals import Interval, percentile_interval
from reports.isoflop import IsoflopFit, Parabola, PowerLaw, fit_isoflop
from reports.lbfgs import Workers
from reports.parametric import ParametricFit, fit_parametric
from reports.points import (
    METRICS,
    Point,
    check_metric,
    flops_per_token_model,
    points_from_store,
    points_from_table,
    store_points,
    table_points,
)
from store import Store

__all__ = [
    "METRICS",
    "Interval",
    "IsoflopFit",
    "Parabola",
    "ParametricFit",
    "Point",
    "PowerLaw",
    "PredictionCheck",
    "StudyFits",
    "distinct_points",
    "fit_parametric",
    "fit_points",
    "fit_study",
    "points_from_store",
    "points_from_table",
    "table_points",
]

# N grid of the law's minimum along one isoflop: this many points, this far beyond the sampled N.
_ISOFLOP_GRID_POINTS = 2001
_ISOFLOP_GRID_REACH = 1e3


@dataclass(frozen=True, kw_only=True)
class PredictionCheck:
    """The largest budget held out: its best loss as predicted by the fit without it, and as measured."""

    budget: float
    predicted: float
    predicted_ci: Interval
    measured: float
    method: str  # how each number was obtained, in words


@dataclass(frozen=True, kw_only=True)
class StudyFits:
    study: str | None  # None for points that came from elsewhere (`fit_points`)
    metric: str
    points: list[Point]
    isoflop: IsoflopFit | None
    parametric: ParametricFit | None
    prediction: PredictionCheck | None
    problems: list[str]  # what could not be fitted, and why


def fit_study(
    store: Store, study_name: str, *, metric: str = "bpb", n_boot: int = 1000, seed: int = 0
) -> StudyFits:
    """Every fit of the study's done pretraining cells (see `fit_points`)."""
    points, problems = store_points(store, study_name, metric=metric)
    fits = fit_points(points, metric=metric, n_boot=n_boot, seed=seed)
    return StudyFits(
        study=study_name,
        metric=metric,
        points=fits.points,
        isoflop=fits.isoflop,
        parametric=fits.parametric,
        prediction=fits.prediction,
        problems=problems + fits.problems,
    )


def fit_points(
    points: Sequence[Point], *, metric: str = "bpb", n_boot: int = 1000, seed: int = 0
) -> StudyFits:
    """Both approaches and the prediction check on the points; what cannot be fitted is in `problems`."""
    check_metric(metric)
    problems: list[str] = []
    points = distinct_points(_finite_points(points, problems), problems)
    isoflop = None
    if points:
        isoflop = _guarded(
            problems, "isoflop fit", fit_isoflop, points, metric=metric, n_boot=n_boot, seed=seed
        )
    if isoflop is not None:
        problems += isoflop.skipped
        problems += [f"budget {p.budget:.3g}: {p.advice}" for p in isoflop.parabolas if p.advice]
        if n_boot > 0 and isoflop.parabolas and all(p.n_boot == 0 for p in isoflop.parabolas):
            problems.append(
                "isoflop minima have no intervals: every budget has 3 points, which its parabola fits "
                "exactly, leaving no scatter to estimate the noise from (4 or more points at some budget)"
            )
        if isoflop.n_opt is None:
            problems.append("power laws over budgets need minima at 2 or more budgets")
        elif isoflop.loss_opt is None:
            problems.append("L*(C) = E + k·C^e (three parameters) needs minima at 3 or more budgets")
        problems += _extrapolation_lines(isoflop)
    with Workers() as workers:
        parametric = _try_parametric(points, n_boot, seed, workers, problems, what="parametric fit")
        args = (points, isoflop, metric, n_boot, seed, workers, problems)
        prediction = _guarded(problems, "prediction check", _prediction, *args)
    if not points:
        problems.insert(0, "no points to fit")
    return StudyFits(
        study=None,
        metric=metric,
        points=points,
        isoflop=isoflop,
        parametric=parametric,
        prediction=prediction,
        problems=problems,
    )


def _extrapolation_lines(isoflop: IsoflopFit) -> list[str]:
    """What the power laws over budgets did with the minima outside the sampled N: left them out, or (too
    few inside) kept them, which can bias the exponent and narrow its interval. One line per outcome."""
    outcomes: dict[tuple[str, tuple[float, ...]], list[str]] = {}
    for label, law in (("N*(C)", isoflop.n_opt), ("D*(C)", isoflop.d_opt), ("L*(C)", isoflop.loss_opt)):
        if law is not None and law.excluded:
            outcomes.setdefault(("excluded", law.excluded), []).append(label)
        elif law is not None and law.extrapolated:
            outcomes.setdefault(("extrapolated", law.extrapolated), []).append(label)
    lines = []
    for (outcome, budgets), labels in outcomes.items():
        laws = ", ".join(labels[:-1]) + " and " + labels[-1] if len(labels) > 1 else labels[0]
        listed = ", ".join(f"{budget:.3g}" for budget in budgets)
        if outcome == "excluded":
            lines.append(
                f"{laws}: fitted to the minima inside the sampled N only; left out: budget(s) {listed} "
                "(minimum outside the sampled N)"
            )
        else:
            lines.append(
                f"{laws}: the exponent includes minima outside the sampled sizes, at budget(s) {listed} (too "
                "few budgets have theirs inside to leave them out); an extrapolated minimum can bias the "
                "exponent and make its interval too narrow"
            )
    return lines


def _finite_points(points: Sequence[Point], problems: list[str]) -> list[Point]:
    """The points whose loss, N, D, C and budget are finite and positive numbers; one problem line names the
    others, each with its first bad value (a missing one is None)."""
    kept, bad = [], []
    for index, point in enumerate(points, start=1):
        values = {"loss": point.loss, "N": point.n, "D": point.d, "C": point.c, "budget": point.budget}
        wrong = [f"{name} {value}" for name, value in values.items() if not _finite_positive(value)]
        if wrong:
            bad.append(f"{point.cell_id or f'point {index}'} ({wrong[0]})")
        else:
            kept.append(point)
    if bad:
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        what = "point(s) with a non-finite or non-positive value left out"
        problems.append(f"{len(bad)} {what}: {', '.join(bad[:10])}{more}")
    return kept


def _finite_positive(value) -> bool:
    try:
        return 0 < value < np.inf
    except TypeError:  # None, or not a number at all
        return False


def distinct_points(points: Sequence[Point], problems: list[str]) -> list[Point]:
    """The points with each exact repeat of an earlier one's (N, D, loss) left out, and a problem line naming
    them. Seeds that did not change the result are one measurement: counted as independent replicates they
    shrank every interval (a study with each cell tripled: 2.5-3× narrower, the N*(C) exponent's excluding
    the truth)."""
    first: dict[tuple[float, float, float], Point] = {}
    repeats = []
    for point in points:
        key = (point.n, point.d, point.loss)
        if key in first:
            repeats.append(f"{_name(point)} (as {_name(first[key])})")
        else:
            first[key] = point
    if repeats:
        more = f" and {len(repeats) - 10} more" if len(repeats) > 10 else ""
        problems.append(
            f"{len(repeats)} point(s) repeat another exactly (the same N, D and loss: seeds that did not "
            f"change the result?), so each result is fitted once: {', '.join(repeats[:10])}{more}"
        )
    return list(first.values())


def _name(point: Point) -> str:
    return point.cell_id or f"N={point.n:.3g}, D={point.d:.3g}"


def _guarded(problems: list[str], what: str, fit, *args, **kwargs):
    """fit(*args, **kwargs), or None with a problem line when it fails: one fit that breaks on odd data
    must not take the others (and the report, or `nanostudy fit`) down with it."""
    try:
        return fit(*args, **kwargs)
    except Exception as error:  # any failure of one fit is reported; the rest still run
        problems.append(f"{what}: failed: {type(error).__name__}: {error}")
        return None


def _try_parametric(points, n_boot, seed, workers, problems, *, what) -> ParametricFit | None:
    try:
        return fit_parametric(points, n_boot=n_boot, seed=seed, workers=workers)
    except ValueError as error:  # the points cannot determine the law: said plainly
        problems.append(f"{what}: {error}")
        return None
    except Exception as error:  # see _guarded
        problems.append(f"{what}: failed: {type(error).__name__}: {error}")
        return None


def _prediction(points, isoflop, metric, n_boot, seed, workers, problems) -> PredictionCheck | None:
    """Refit without the largest budget and predict its best loss (the parametric law, else the isoflop
    L*(C) = E + k·C^e law); measured is that budget's parabola minimum when interior, else its lowest loss."""
    budgets = sorted({p.budget for p in points})
    if len(budgets) < 3:
        problems.append(f"prediction check: needs 3 or more budgets (one held out), got {len(budgets)}")
        return None
    held_out = budgets[-1]
    train = [p for p in points if p.budget < held_out]
    measured, measured_how = _measured_best(points, isoflop, held_out)
    law = _try_parametric(train, n_boot, seed, workers, problems, what="prediction check")
    if law is not None:
        predicted, boot = _law_minimum_along_isoflop(law, points, held_out)
        return PredictionCheck(
            budget=held_out,
            predicted=predicted,
            predicted_ci=percentile_interval(boot),
            measured=measured,
            method=(
                f"parametric fit without budget {held_out:.3g} ({len(train)} points): the law's lowest "
                f"loss along that isoflop, D = C / (FLOPs per token at N); measured: {measured_how}"
            ),
        )
    train_isoflop = fit_isoflop(train, metric=metric, n_boot=n_boot, seed=seed)
    if train_isoflop.loss_opt is None:
        problems.append("prediction check: neither law could be fitted without the largest budget")
        return None
    power_law = train_isoflop.loss_opt
    return PredictionCheck(
        budget=held_out,
        predicted=float(power_law(held_out)),
        predicted_ci=power_law.band(held_out),
        measured=measured,
        method=(
            f"isoflop L*(C) = E + k·C^e over the {len(train_isoflop.parabolas)} budgets below "
            f"{held_out:.3g}, extrapolated; measured: {measured_how}"
        ),
    )


def _measured_best(points, isoflop, budget) -> tuple[float, str]:
    parabola = next((p for p in isoflop.parabolas if p.budget == budget), None) if isoflop else None
    if parabola is not None and parabola.interior:
        return parabola.loss_opt, "the minimum of that budget's parabola"
    lowest = min(p.loss for p in points if p.budget == budget)
    return lowest, "the lowest loss among that budget's cells"


def _law_minimum_along_isoflop(law: ParametricFit, points, budget) -> tuple[float, np.ndarray]:
    """min over N of L̂(N, C / fpt(N)) for the fit and for each resample, fpt from the cells' FLOPs."""
    log_n = np.log([p.n for p in points])
    reach = np.log(_ISOFLOP_GRID_REACH)
    n = np.exp(np.linspace(log_n.min() - reach, log_n.max() + reach, _ISOFLOP_GRID_POINTS))
    d = budget / flops_per_token_model(points)(n)
    predicted = float(np.min(law.loss(n, d)))
    if len(law.boot) == 0:
        return predicted, np.array([])
    e, a, b, alpha, beta = (column[:, None] for column in law.boot.T)
    with np.errstate(over="ignore", invalid="ignore"):
        boot = np.min(e + a / np.power(n, alpha) + b / np.power(d, beta), axis=1)
    return predicted, boot
