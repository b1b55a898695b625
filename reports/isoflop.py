"""Chinchilla approach 2: per FLOP budget, a parabola of the loss in ln N; its minimum gives N*(C), D*(C).

For each budget with at least 3 points (3 distinct N) the loss is fitted as c2·x² + c1·x + c0 with
x = ln N, by least squares. With 5 or more points one outlier may be left out: the point whose deleted
residual (its distance from the parabola fitted to the others) is largest is dropped when that distance
exceeds both OUTLIER_SPREAD × the others' residual scatter and OUTLIER_FRACTION × the budget's median loss.
With 4 points the other 3 fit a parabola exactly, so there is no scatter to judge a point by, and a real
curve's honest edge point (real curves are not exact parabolas in ln N) would be taken for an outlier:
nothing is left out then.

The minimum is at x* = −c1 / (2·c2) (only when c2 > 0), so N* = e^x*, L* = c0 − c1² / (4·c2), and
D* = C / (FLOPs per token at N*), the FLOPs per token following the cells' own (a log-log line of
C/D/N against N over every point, so attention FLOPs count; exactly 6·N when C = 6·N·D). The minimum is
*interior* when N* lies within the smallest and largest N sampled at that budget; otherwise it is an
extrapolation, and `advice` says which depths to add.

Power laws y = k·C^exponent are fitted to N*, D* and L* by least squares in log-log over the budgets that
have a minimum.

Bootstrap: each resample draws, within every budget, that budget's (kept) cells with replacement, and
refits the parabolas and the power laws; a budget whose resampled cells give no minimum (fewer than 3
distinct N, or no convexity) drops out of that resample. A budget with only 3 points has no interval
(NaN): resampling 3 points can only return the same parabola or none. Its minimum still enters every
resample of the power laws, as fitted: were it dropped there, the laws' intervals would describe the
other budgets only while their estimates use all of them, and an estimate could fall outside its own
interval. The laws' intervals then leave out that budget's own uncertainty (the report says so).
"""

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from reports.intervals import Interval, percentile_interval
from reports.points import Point, flops_per_token_model

MIN_POINTS = 3
MIN_POINTS_FOR_CI = 4
OUTLIER_SPREAD = 5.0
OUTLIER_FRACTION = 0.02


@dataclass(frozen=True, kw_only=True)
class Parabola:
    """One budget's isoflop curve: loss = c2·x² + c1·x + c0 over x = ln N, and its minimum."""

    budget: float
    n_points: int  # points fitted (the outlier, if any, not counted)
    coeffs: tuple[float, float, float]  # (c2, c1, c0)
    n_opt: float
    n_opt_ci: Interval
    d_opt: float
    d_opt_ci: Interval
    loss_opt: float
    loss_opt_ci: Interval
    interior: bool  # N* within the sampled N
    advice: str | None  # which depths to add when not interior
    outlier: str | None  # the cell id left out as an outlier
    n_range: tuple[float, float]  # smallest and largest N sampled
    n_boot: int  # resamples that gave this budget a minimum

    def __call__(self, n):
        """The fitted loss at N (scalar or array)."""
        x = np.log(n)
        c2, c1, c0 = self.coeffs
        return (c2 * x + c1) * x + c0


@dataclass(frozen=True, kw_only=True)
class PowerLaw:
    """y = k·C^exponent, fitted in log-log; `boot` holds (ln k, exponent) of each resample.

    In logs because a resample may put a budget's minimum absurdly far out (a nearly flat parabola: N* of
    1e88), and its k then overflows a float; y and its band are computed as exp(ln k + exponent·ln C), so
    such a resample gives an infinite (or zero) y rather than an error, and widens the band to it."""

    k: float
    exponent: float
    k_ci: Interval
    exponent_ci: Interval
    boot: np.ndarray = field(repr=False)  # (resamples, 2)

    def __call__(self, c):
        with np.errstate(over="ignore", divide="ignore"):
            return np.exp(np.log(self.k) + self.exponent * np.log(c))

    def band(self, c) -> Interval:
        """95% interval of y at each C over the resamples (arrays in, arrays out)."""
        log_c = np.log(np.asarray(c, dtype=np.float64))[..., None]
        with np.errstate(over="ignore"):
            return percentile_interval(np.exp(self.boot[:, 0] + self.boot[:, 1] * log_c))


@dataclass(frozen=True, kw_only=True)
class IsoflopFit:
    metric: str
    parabolas: list[Parabola]  # by budget
    skipped: list[str]  # one line per budget not fitted, with the reason
    n_opt: PowerLaw | None  # None with fewer than 2 fitted budgets
    d_opt: PowerLaw | None
    loss_opt: PowerLaw | None


def fit_isoflop(
    points: Sequence[Point], *, metric: str = "bpb", n_boot: int = 1000, seed: int = 0
) -> IsoflopFit:
    """Parabolas per budget, their minima with intervals, and the power laws over budgets."""
    by_budget: dict[float, list[Point]] = defaultdict(list)
    for point in points:
        by_budget[point.budget].append(point)
    flops_per_token = flops_per_token_model(points)
    depth_of = _depth_model(points)
    rng = np.random.default_rng(seed)
    parabolas, skipped, boot_minima = [], [], []
    for budget in sorted(by_budget):
        group = sorted(by_budget[budget], key=lambda p: p.n)
        distinct = len({p.n for p in group})
        if distinct < MIN_POINTS:
            skipped.append(
                f"budget {budget:.3g}: {len(group)} point(s), {distinct} distinct N; "
                f"a parabola needs at least {MIN_POINTS}"
            )
            continue
        kept, outlier = _without_outlier(group)
        x = np.log([p.n for p in kept])
        y = np.array([p.loss for p in kept])
        coeffs = _solve(x, y, np.ones((1, len(kept))))[0]
        if not coeffs[0] > 0:
            skipped.append(
                f"budget {budget:.3g}: the loss is not convex in ln N (c2 = {coeffs[0]:.3g}); no minimum"
            )
            continue
        weights = _resample_weights(rng, len(kept), n_boot) if len(kept) >= MIN_POINTS_FOR_CI else None
        boot = _minima(_solve(x, y, weights)) if weights is not None else np.full((n_boot, 2), np.nan)
        x_opt, loss_opt = _minima(coeffs[None, :])[0]
        # A budget without resamples of its own enters every resample of the laws as fitted (docstring).
        fixed = np.tile([x_opt, loss_opt], (n_boot, 1)) if weights is None else boot
        boot_minima.append((budget, x_opt, loss_opt, fixed))
        parabolas.append(
            _parabola(budget, kept, outlier, coeffs, x_opt, loss_opt, boot, flops_per_token, depth_of)
        )
    laws = _power_laws(boot_minima, flops_per_token)
    return IsoflopFit(metric=metric, parabolas=parabolas, skipped=skipped, **laws)


def _parabola(budget, kept, outlier, coeffs, x_opt, loss_opt, boot, flops_per_token, depth_of) -> Parabola:
    n_range = (kept[0].n, kept[-1].n)
    interior = bool(math.log(n_range[0]) <= x_opt <= math.log(n_range[1]))
    n_opt = math.exp(x_opt)
    with np.errstate(over="ignore", divide="ignore"):  # a nearly flat resampled parabola: N* = inf, D* = 0
        boot_n = np.exp(boot[:, 0])
        boot_d = budget / flops_per_token(boot_n)
    return Parabola(
        budget=budget,
        n_points=len(kept),
        coeffs=(float(coeffs[0]), float(coeffs[1]), float(coeffs[2])),
        n_opt=n_opt,
        n_opt_ci=percentile_interval(boot_n),
        d_opt=float(budget / flops_per_token(n_opt)),
        d_opt_ci=percentile_interval(boot_d),
        loss_opt=float(loss_opt),
        loss_opt_ci=percentile_interval(boot[:, 1]),
        interior=interior,
        advice=None if interior else _advice(n_opt, kept, depth_of),
        outlier=(outlier.cell_id or f"N={outlier.n:.3g}") if outlier is not None else None,
        n_range=n_range,
        n_boot=int(np.isfinite(boot[:, 0]).sum()),
    )


def _solve(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least-squares (c2, c1, c0) for each row of weights (R, n) → (R, 3); NaN where the
    weighted points have fewer than 3 distinct x. Solved in x centred on its mean, then shifted back."""
    mean = x.mean()
    u = x - mean
    design = np.stack([u * u, u, np.ones_like(u)], axis=1)  # (n, 3)
    normal = np.einsum("rn,ni,nj->rij", weights, design, design)
    rhs = np.einsum("rn,ni,n->ri", weights, design, y)
    distinct = np.array([len(np.unique(x[w > 0])) for w in weights])
    ok = distinct >= MIN_POINTS
    out = np.full((len(weights), 3), np.nan)
    if ok.any():
        q2, q1, q0 = np.linalg.solve(normal[ok], rhs[ok][..., None])[..., 0].T
        # q2·(x − m)² + q1·(x − m) + q0 in powers of x
        out[ok] = np.stack([q2, q1 - 2 * q2 * mean, q2 * mean * mean - q1 * mean + q0], axis=1)
    return out


def _minima(coeffs: np.ndarray) -> np.ndarray:
    """(x*, loss*) of each row of (c2, c1, c0); NaN where c2 <= 0."""
    c2, c1, c0 = coeffs.T
    with np.errstate(divide="ignore", invalid="ignore"):
        convex = c2 > 0
        x_opt = np.where(convex, -c1 / (2 * c2), np.nan)
        loss_opt = np.where(convex, c0 - c1 * c1 / (4 * c2), np.nan)
    return np.stack([x_opt, loss_opt], axis=1)


def _resample_weights(rng: np.random.Generator, num_points: int, n_boot: int) -> np.ndarray:
    draws = rng.integers(0, num_points, size=(n_boot, num_points))
    counts = np.zeros((n_boot, num_points))
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1.0)
    return counts


def _without_outlier(group: list[Point]) -> tuple[list[Point], Point | None]:
    """The budget's points less its one outlier, if it has one (rule in the module docstring)."""
    if len(group) < MIN_POINTS + 2:  # the others need a residual degree of freedom (module docstring)
        return group, None
    x = np.log([p.n for p in group])
    y = np.array([p.loss for p in group])
    leave_one_out = 1.0 - np.eye(len(group))
    fits = _solve(x, y, leave_one_out)
    predicted = (fits[:, 0] * x + fits[:, 1]) * x + fits[:, 2]
    deleted = np.abs(y - predicted)  # NaN where the others have < 3 distinct N
    if not np.isfinite(deleted).any():
        return group, None
    worst = int(np.nanargmax(deleted))
    others = np.delete(np.arange(len(group)), worst)
    fitted_others = (fits[worst, 0] * x[others] + fits[worst, 1]) * x[others] + fits[worst, 2]
    dof = len(others) - 3
    scatter = math.sqrt(float(np.sum((y[others] - fitted_others) ** 2)) / dof)
    if deleted[worst] > max(OUTLIER_SPREAD * scatter, OUTLIER_FRACTION * float(np.median(y))):
        return [group[i] for i in others], group[worst]
    return group, None


def _power_laws(boot_minima, flops_per_token) -> dict[str, PowerLaw | None]:
    """N*, D*, L* power laws over the budgets with a minimum, with resampled fits."""
    if len(boot_minima) < 2:
        return {"n_opt": None, "d_opt": None, "loss_opt": None}
    budgets = np.array([b for b, *_ in boot_minima])
    n_opt = np.exp([x for _, x, _, _ in boot_minima])
    loss_opt = np.array([loss for _, _, loss, _ in boot_minima])
    boot = np.stack([b for *_, b in boot_minima], axis=1)  # (resamples, budgets, 2)
    with np.errstate(over="ignore", divide="ignore"):  # N* = inf, D* = 0: see PowerLaw
        boot_n = np.exp(boot[..., 0])
        boot_d = budgets / flops_per_token(boot_n)
    series = {
        "n_opt": (n_opt, boot_n),
        "d_opt": (budgets / flops_per_token(n_opt), boot_d),
        "loss_opt": (loss_opt, boot[..., 1]),
    }
    laws = {}
    for name, (values, resampled) in series.items():
        log_k, exponent = _log_log_line(budgets, values)
        fits = np.array([_log_log_line(budgets, row) for row in resampled]).reshape(-1, 2)
        fits = fits[~np.isnan(fits).any(axis=1)]  # resamples with fewer than 2 budgets' minima
        with np.errstate(over="ignore"):
            k, k_ci = np.exp(log_k), np.exp(percentile_interval(fits[:, 0]))
        laws[name] = PowerLaw(
            k=float(k),
            exponent=exponent,
            k_ci=(float(k_ci[0]), float(k_ci[1])),
            exponent_ci=percentile_interval(fits[:, 1]),
            boot=fits,
        )
    return laws


def _log_log_line(c: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(ln k, exponent) of y = k·C^exponent by least squares in logs, over the finite positive y; NaN with
    fewer than 2 of them."""
    ok = np.isfinite(y) & (y > 0)
    if ok.sum() < 2:
        return math.nan, math.nan
    log_c, log_y = np.log(c[ok]), np.log(y[ok])
    mean_c = log_c.mean()
    exponent = float(np.sum((log_c - mean_c) * (log_y - log_y.mean())) / np.sum((log_c - mean_c) ** 2))
    return float(log_y.mean() - exponent * mean_c), exponent


def _depth_model(points: Sequence[Point]):
    """Depth as a function of N (a log-log line over the points' (depth, N)), or None without depths."""
    pairs = {(p.depth, p.n) for p in points if p.depth is not None}
    depths = np.array([d for d, _ in pairs], dtype=np.float64)
    if len(np.unique(depths)) < 2:
        return None
    slope, intercept = np.polyfit(np.log(depths), np.log([n for _, n in pairs]), 1)
    return lambda n: math.exp((math.log(n) - intercept) / slope)


def _advice(n_opt: float, kept: list[Point], depth_of) -> str:
    """Where the minimum lies and which depths would bracket it."""
    low, high = kept[0], kept[-1]
    above = n_opt > high.n
    edge = high if above else low
    where = "above the largest" if above else "below the smallest"
    depths = sorted({p.depth for p in kept if p.depth is not None})
    if depth_of is None or not depths:
        more = "larger" if above else "smaller"
        return (
            f"minimum at N ≈ {n_opt:.3g}, {where} N sampled ({edge.n:.3g}): "
            f"add {more} models (N around {n_opt:.3g})"
        )
    step = min((b - a for a, b in itertools.pairwise(depths)), default=2)
    estimate = depth_of(n_opt)
    if above:
        suggested = [depths[-1] + step, depths[-1] + 2 * step]
    else:
        suggested = [d for d in (depths[0] - 2 * step, depths[0] - step) if d >= 1]
        if not suggested and depths[0] > 1:
            suggested = list(range(max(depths[0] - 2, 1), depths[0]))
    head = (
        f"minimum at N ≈ {n_opt:.3g} (about depth {estimate:.3g}), {where} model sampled "
        f"(N = {edge.n:.3g}, depth {edge.depth})"
    )
    if not suggested:
        return f"{head}: depth 1 is the shallowest; narrower models (a smaller aspect_ratio) would reach it"
    kind = "deeper" if above else "shallower"
    return f"{head}: add {kind} models, e.g. depth " + ", ".join(str(d) for d in suggested)
