"""Chinchilla approach 2: per FLOP budget, a parabola of the loss in ln N; its minimum gives N*(C), D*(C).

For each budget with at least 3 points (3 distinct N) the loss is fitted as c2·x² + c1·x + c0 with
x = ln N, by least squares.

The noise: relative residuals (loss − parabola) / the budget's median loss, pooled over budgets (seed noise
is multiplicative, and alike across budgets), with Σ(points − 3) degrees of freedom. A budget of 4 points
has 1 of its own, of 3 none; pooled, every budget's scatter informs every other's.

Outlier: with 5 or more points one may be left out: the point whose *studentized deleted residual* is
largest, its distance from the parabola of the others divided by σ·√(1 + h) (σ: the pooled scale, with
this budget's own part from the others; h: the point's leverage on the others' parabola, large at the
edges), when it exceeds Student's t at 1 − OUTLIER_ALPHA / (2·points) (so seed noise trips it in at most
OUTLIER_ALPHA of budgets) and the distance is at least OUTLIER_FRACTION of the median loss; or, whatever
the scatter, when the distance per √(1 + h) exceeds OUTLIER_GROSS of the median loss (a diverged cell at a
budget with too few points to estimate the noise). With 4 points nothing is left out: the other 3 fit a
parabola exactly, and a real curve's honest edge point would be taken for an outlier.

The minimum is at x* = −c1 / (2·c2) (only when c2 > 0 beyond round-off: _ROUND_OFF_CURVATURE), so
N* = e^x*, L* = c0 − c1² / (4·c2), and D* = C / (FLOPs per token at N*), the FLOPs per token following the
cells' own (a log-log line of C/D/N against N over every point, so attention FLOPs count; exactly 6·N when
C = 6·N·D). The minimum is
*interior* when N* lies within the smallest and largest N sampled at that budget; otherwise it is an
extrapolation, and `advice` says which depths to add.

Power laws y = k·C^exponent are fitted to N*, D* and L* by least squares in log-log over the budgets whose
minimum is interior, when there are enough of them for the law (2; 3 for L*): an extrapolated minimum is
biased, and its tight interval pulled the exponent's: with 6 fixed sizes at budgets 1e18..1e20, the largest
budget's minimum above them, the N* exponent's 95% interval held the true exponent in 53 of 100 studies at
0.2% noise, 87 without that budget. With fewer interior minima the law is fitted over every budget that has
a minimum, and says so (`PowerLaw.extrapolated`).

Intervals, a parametric bootstrap: each resample draws the noise's scale σ from its distribution given the
pooled scatter (σ² = SS / χ²_dof), then every budget's parabola coefficients as least squares gives them for
the fitted curve plus normal noise of that scale (normal about the fit, covariance σ²·(XᵀX)⁻¹), and refits
the power laws on the drawn minima. Case resampling, used before, undercovers with few points: with 4, a
resample often has 3 distinct N, which the parabola fits exactly. A draw with no minimum (c2 ≤ 0) puts it
at ±inf (and L* at −inf), widening the interval; it drops out of that resample's power laws. Without any
residual degree of freedom (every budget of 3 points) there are no intervals (NaN).
"""

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import t as student_t

from reports.intervals import Interval, percentile_interval
from reports.points import Point, flops_per_token_model

MIN_POINTS = 3
# Outlier rule (module docstring): a budget's chance of losing a point to seed noise is at most
# OUTLIER_ALPHA (Bonferroni over its points, normal noise); the point must also be OUTLIER_FRACTION of the
# median loss off the others' parabola; or, whatever the scatter, OUTLIER_GROSS of it per unit of spread.
OUTLIER_ALPHA = 0.01
OUTLIER_FRACTION = 0.02
OUTLIER_GROSS = 0.10
# L*(C) = E + k·C^e has three parameters: it needs this many budgets' minima, and is profiled over E on a
# grid of this many values, twice.
MIN_BUDGETS_WITH_OFFSET = 3
_OFFSET_GRID = 200
# A parabola whose curvature changes the loss across its sampled N by less than this fraction of the loss is
# a straight line (or flat) up to round-off: c2 is then ±1e-16 by chance, and its sign must not decide
# between "not convex" and a minimum at N ≈ 0 or inf. A real curve's is ~5% (±1 in ln N).
_ROUND_OFF_CURVATURE = 1e-9


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
    """y = offset + k·C^exponent; `boot` holds (ln k, exponent, offset) of each resample. The offset is 0
    for N*(C) and D*(C); for L*(C) it is the irreducible loss E, fitted (module docstring).

    In logs because a resample may put a budget's minimum absurdly far out (a nearly flat parabola: N* of
    1e88), and its k then overflows a float; y and its band are computed as exp(ln k + exponent·ln C), so
    such a resample gives an infinite (or zero) y rather than an error, and widens the band to it."""

    k: float
    exponent: float
    k_ci: Interval
    exponent_ci: Interval
    boot: np.ndarray = field(repr=False)  # (resamples, 3)
    offset: float = 0.0
    offset_ci: Interval = (0.0, 0.0)
    # Budgets whose minimum lies outside their sampled N: left out of the law (enough interior minima), or
    # in it (too few): one of the two is empty.
    excluded: tuple[float, ...] = ()
    extrapolated: tuple[float, ...] = ()

    def __call__(self, c):
        with np.errstate(over="ignore", divide="ignore"):
            return self.offset + np.exp(np.log(self.k) + self.exponent * np.log(c))

    def band(self, c) -> Interval:
        """95% interval of y at each C over the resamples (arrays in, arrays out)."""
        log_c = np.log(np.asarray(c, dtype=np.float64))[..., None]
        with np.errstate(over="ignore"):
            return percentile_interval(self.boot[:, 2] + np.exp(self.boot[:, 0] + self.boot[:, 1] * log_c))


@dataclass(frozen=True, kw_only=True)
class IsoflopFit:
    metric: str
    parabolas: list[Parabola]  # by budget
    skipped: list[str]  # one line per budget not fitted, with the reason
    n_opt: PowerLaw | None  # None with fewer than 2 budgets' minima finite and positive (3 for loss_opt)
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
    skipped, groups = [], {}
    for budget in sorted(by_budget):
        group = sorted(by_budget[budget], key=lambda p: p.n)
        distinct = len({p.n for p in group})
        if distinct < MIN_POINTS:
            skipped.append(
                f"budget {budget:.3g}: {len(group)} point(s), {distinct} distinct N; "
                f"a parabola needs at least {MIN_POINTS}"
            )
            continue
        groups[budget] = group
    # Each budget's relative residual sum of squares and degrees of freedom, all its points fitted: the
    # other budgets' scatter helps judge one budget's outlier (module docstring).
    scatter = {budget: _relative_scatter(group) for budget, group in groups.items()}
    curves = []
    for budget, group in groups.items():
        others_ss = sum(ss for b, (ss, _) in scatter.items() if b != budget)
        others_dof = sum(dof for b, (_, dof) in scatter.items() if b != budget)
        kept, outlier = _without_outlier(group, others_ss, others_dof)
        x = np.log([p.n for p in kept])
        y = np.array([p.loss for p in kept])
        coeffs = _solve(x, y, np.ones((1, len(kept))))[0]
        if not coeffs[0] * np.ptp(x) ** 2 > _ROUND_OFF_CURVATURE * np.median(y):
            left_out = f", {_cell_name(outlier)} left out as an outlier" if outlier is not None else ""
            skipped.append(
                f"budget {budget:.3g}: the loss is not convex in ln N (c2 = {coeffs[0]:.3g}{left_out}); "
                "no minimum"
            )
            continue
        curves.append((budget, kept, outlier, x, y, coeffs))
    # The pooled relative scatter of the kept points about their parabolas, and one draw of the noise's
    # scale per resample (its uncertainty: σ² = SS / χ²_dof).
    ss = sum(_relative_scatter(kept)[0] for _, kept, *_ in curves)
    dof = sum(len(kept) - MIN_POINTS for _, kept, *_ in curves)
    sigma = np.sqrt(ss / rng.chisquare(dof, n_boot)) if dof > 0 and n_boot > 0 else None
    parabolas, boot_minima = [], []
    for budget, kept, outlier, x, y, coeffs in curves:
        x_opt, loss_opt = _minima(coeffs[None, :])[0]
        boot = _drawn_minima(rng, x, y, sigma) if sigma is not None else np.full((n_boot, 2), np.nan)
        boot_minima.append((budget, x_opt, loss_opt, boot))
        parabolas.append(
            _parabola(budget, kept, outlier, coeffs, x_opt, loss_opt, boot, flops_per_token, depth_of)
        )
    laws = _power_laws(boot_minima, [p.interior for p in parabolas], flops_per_token)
    return IsoflopFit(metric=metric, parabolas=parabolas, skipped=skipped, **laws)


def _relative_scatter(group: list[Point]) -> tuple[float, int]:
    """(Σ ((loss − parabola) / median loss)², points − 3) of the parabola fitted to all the points."""
    x = np.log([p.n for p in group])
    y = np.array([p.loss for p in group])
    c2, c1, c0 = _solve(x, y, np.ones((1, len(group))))[0]
    residuals = (y - ((c2 * x + c1) * x + c0)) / float(np.median(y))
    return float(np.sum(residuals**2)), len(group) - MIN_POINTS


def _drawn_minima(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(x*, loss*) of the parabola refitted to the fitted curve plus normal noise of scale σ · median loss,
    one row per σ: the least-squares coefficients are then normal about the fit, with covariance
    σ²·(XᵀX)⁻¹, and are drawn as such. A draw with no minimum (c2 ≤ 0) has it at ±inf in the direction the
    curve falls, and loss* = −inf: it widens the interval rather than vanishing from it."""
    mean = x.mean()
    u = x - mean
    design = np.stack([u * u, u, np.ones_like(u)], axis=1)
    normal = design.T @ design
    fitted = np.linalg.solve(normal, design.T @ y)  # (q2, q1, q0) in x − mean
    root = np.linalg.cholesky(np.linalg.inv(normal))
    scale = (sigma * float(np.median(y)))[:, None]
    q2, q1, q0 = (fitted + scale * (rng.standard_normal((len(sigma), 3)) @ root.T)).T
    with np.errstate(divide="ignore", invalid="ignore"):
        convex = q2 > 0
        x_opt = np.where(convex, mean - q1 / (2 * q2), np.where(q1 < 0, np.inf, -np.inf))
        loss_opt = np.where(convex, q0 - q1 * q1 / (4 * q2), -np.inf)
    return np.stack([x_opt, loss_opt], axis=1)


def _parabola(budget, kept, outlier, coeffs, x_opt, loss_opt, boot, flops_per_token, depth_of) -> Parabola:
    n_range = (kept[0].n, kept[-1].n)
    interior = bool(math.log(n_range[0]) <= x_opt <= math.log(n_range[1]))
    with np.errstate(over="ignore"):  # a nearly flat parabola (fitted or resampled): N* = inf, or 0
        n_opt = float(np.exp(x_opt))
        boot_n = np.exp(boot[:, 0])
    boot_d = _tokens(budget, boot_n, flops_per_token)
    return Parabola(
        budget=budget,
        n_points=len(kept),
        coeffs=(float(coeffs[0]), float(coeffs[1]), float(coeffs[2])),
        n_opt=n_opt,
        n_opt_ci=percentile_interval(boot_n),
        d_opt=float(_tokens(budget, np.float64(n_opt), flops_per_token)),
        d_opt_ci=percentile_interval(boot_d),
        loss_opt=float(loss_opt),
        loss_opt_ci=percentile_interval(boot[:, 1]),
        interior=interior,
        advice=None if interior else _advice(n_opt, kept, depth_of),
        outlier=_cell_name(outlier) if outlier is not None else None,
        n_range=n_range,
        n_boot=int(np.isfinite(boot[:, 0]).sum()),
    )


def _cell_name(point: Point) -> str:
    return point.cell_id or f"N={point.n:.3g}"


def _tokens(budget, n: np.ndarray, flops_per_token) -> np.ndarray:
    """D = C / (FLOPs per token at N), with D = 0 at N = inf and D = inf at N = 0 (a drawn minimum that ran
    off: see `_drawn_minima`)."""
    with np.errstate(all="ignore"):
        d = budget / flops_per_token(n)
    return np.where(np.isposinf(n), 0.0, np.where(n == 0, np.inf, d))


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


def _without_outlier(
    group: list[Point], others_ss: float, others_dof: int
) -> tuple[list[Point], Point | None]:
    """The budget's points less its one outlier, if it has one (rule in the module docstring).

    `others_ss` and `others_dof`: the other budgets' relative residual sum of squares and degrees of freedom,
    pooled with this budget's own (the point in question left out) into the scale of the noise."""
    num = len(group)
    if num < MIN_POINTS + 2:  # the others need a residual degree of freedom (module docstring)
        return group, None
    x = np.log([p.n for p in group])
    y = np.array([p.loss for p in group])
    level = float(np.median(y))
    leave_one_out = 1.0 - np.eye(num)
    fits = _solve(x, y, leave_one_out)
    if not np.isfinite(fits).all():  # the others of some point have < 3 distinct N: judge none
        return group, None
    predicted = (fits[:, 0] * x + fits[:, 1]) * x + fits[:, 2]
    deleted = np.abs(y - predicted) / level  # each point's distance from the others' parabola
    fitted_all = (fits[:, 0, None] * x + fits[:, 1, None]) * x + fits[:, 2, None]  # (left out, point)
    own_ss = np.sum(((y - fitted_all) * leave_one_out) ** 2, axis=1) / level**2
    dof = num - 1 - MIN_POINTS + others_dof
    scale = np.sqrt((own_ss + others_ss) / dof)
    u = x - x.mean()
    design = np.stack([u * u, u, np.ones_like(u)], axis=1)
    # Leverage of each point on the parabola of the others: its deleted residual's variance is σ²·(1 + h).
    leverage = np.array(
        [
            design[i] @ np.linalg.solve(np.delete(design, i, 0).T @ np.delete(design, i, 0), design[i])
            for i in range(num)
        ]
    )
    spread = np.sqrt(1.0 + leverage)
    with np.errstate(divide="ignore", invalid="ignore"):
        studentized = np.nan_to_num(deleted / (scale * spread), nan=0.0, posinf=np.inf)
    worst = int(np.argmax(studentized))
    critical = float(student_t.ppf(1.0 - OUTLIER_ALPHA / (2 * num), dof))
    significant = studentized[worst] > critical and deleted[worst] > OUTLIER_FRACTION
    gross = deleted[worst] / spread[worst] > OUTLIER_GROSS
    if significant or gross:
        return [p for i, p in enumerate(group) if i != worst], group[worst]
    return group, None


def _power_laws(boot_minima, interior: list[bool], flops_per_token) -> dict[str, PowerLaw | None]:
    """N*, D*, L* power laws over the budgets with a minimum, with resampled fits: over the interior minima
    when there are enough of them for the law, else over all (module docstring)."""
    budgets = np.array([b for b, *_ in boot_minima])
    inside = np.array(interior, dtype=bool)
    loss_opt = np.array([loss for _, _, loss, _ in boot_minima])
    boot = np.stack([b for *_, b in boot_minima], axis=1) if boot_minima else np.empty((0, 0, 2))
    with np.errstate(over="ignore"):  # N* = inf: see PowerLaw
        n_opt = np.exp([x for _, x, _, _ in boot_minima])
        boot_n = np.exp(boot[..., 0])
    boot_d = _tokens(budgets, boot_n, flops_per_token)
    series = {
        "n_opt": (n_opt, boot_n),
        "d_opt": (_tokens(budgets, n_opt, flops_per_token), boot_d),
        "loss_opt": (loss_opt, boot[..., 1]),
    }
    laws = {}
    for name, (values, resampled) in series.items():
        need = MIN_BUDGETS_WITH_OFFSET if name == "loss_opt" else 2
        if len(budgets) < need:
            laws[name] = None
            continue
        used = inside if inside.sum() >= need else np.ones_like(inside)
        c, values, resampled = budgets[used], values[used], resampled[:, used]
        if name == "loss_opt":
            full = _offset_power_law(c, values[None, :])[0]
            fits = _offset_power_law(c, resampled)
        else:
            full = np.array([*_log_log_line(c, values), 0.0])
            fits = np.array([[*_log_log_line(c, row), 0.0] for row in resampled]).reshape(-1, 3)
        if np.isnan(full).any():  # too few of the minima are finite and positive (a nearly flat parabola's)
            laws[name] = None
            continue
        fits = fits[~np.isnan(fits).any(axis=1)]  # resamples with too few budgets' minima
        with np.errstate(over="ignore"):
            k, k_ci = np.exp(full[0]), np.exp(percentile_interval(fits[:, 0]))
        outside = tuple(float(b) for b in budgets[~inside])
        laws[name] = PowerLaw(
            k=float(k),
            exponent=float(full[1]),
            k_ci=(float(k_ci[0]), float(k_ci[1])),
            exponent_ci=percentile_interval(fits[:, 1]),
            boot=fits,
            offset=float(full[2]),
            offset_ci=percentile_interval(fits[:, 2]),
            excluded=outside if not used.all() else (),
            extrapolated=outside if used.all() else (),
        )
    return laws


def _offset_power_law(c: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(ln k, exponent, E) of y = E + k·C^exponent for each row of y (R, budgets), least squares in y over
    its finite values, 0 ≤ E < the row's smallest y; NaN for a row with fewer than 3 finite values.

    Profiled over E: for each E on a grid (twice, the second finer around the first's best), ln k and the
    exponent are the least-squares line of ln(y − E) against ln C, and the E with the smallest squared
    error in y is kept."""
    ok = np.isfinite(y) & (y > 0)
    ceiling = np.where(ok, y, np.inf).min(axis=1)  # (R,)
    log_c = np.log(c)
    low, high = np.zeros(len(y)), np.where(ok.sum(axis=1) >= MIN_BUDGETS_WITH_OFFSET, ceiling, np.nan)
    for _ in range(2):
        fractions = np.linspace(0.0, 1.0, _OFFSET_GRID + 2)[1:-1]
        offsets = low[:, None] + (high - low)[:, None] * fractions  # (R, G), strictly inside (low, high)
        offsets[:, 0] = np.where(low == 0, 0.0, offsets[:, 0])  # E = 0, a pure power law, is a candidate
        weights = ok[:, None, :].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            log_y = np.log(np.where(ok[:, None, :], y[:, None, :] - offsets[..., None], 1.0))
        count = weights.sum(axis=2)
        # A resample with fewer than two usable budgets divides by zero here: NaN, its error never chosen.
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_c = (weights * log_c).sum(axis=2) / count
            mean_y = (weights * log_y).sum(axis=2) / count
            slope = (weights * (log_c - mean_c[..., None]) * (log_y - mean_y[..., None])).sum(axis=2) / (
                weights * (log_c - mean_c[..., None]) ** 2
            ).sum(axis=2)
            intercept = mean_y - slope * mean_c
        with np.errstate(over="ignore", invalid="ignore"):
            fitted = offsets[..., None] + np.exp(intercept[..., None] + slope[..., None] * log_c)
            error = np.where(ok[:, None, :], (y[:, None, :] - fitted) ** 2, 0.0).sum(axis=2)
        best = np.argmin(np.where(np.isfinite(error), error, np.inf), axis=1)
        rows = np.arange(len(y))
        step = (high - low) / (_OFFSET_GRID + 1)
        chosen = offsets[rows, best]
        low, high = np.maximum(chosen - step, 0.0), np.minimum(chosen + step, ceiling * (1 - 1e-9))
    out = np.stack([intercept[rows, best], slope[rows, best], chosen], axis=1)
    out[np.isnan(high)] = np.nan
    return out


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

    def depth_of(n: float) -> float:
        with np.errstate(divide="ignore", over="ignore"):  # N* of 0 or inf (a nearly flat parabola)
            return float(np.exp((np.log(n) - intercept) / slope))

    return depth_of


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
