"""Chinchilla approach 3: L(N, D) = E + A/N^α + B/D^β fitted to every point, with bootstrap intervals.

The fit follows Hoffmann et al. (2022, appendix D.2) as replicated by Besiroglu et al. (2024): minimize the
Huber loss (δ = 1e-3) of ln L against logsumexp(a − α ln N, b − β ln D, e) summed over the points
(`reports.huber`), with L-BFGS from every point of the grid

    α, β ∈ {0, 0.5, …, 2},  e ∈ {−1, −0.5, …, 1},  a, b ∈ {0, 5, …, 25}      (5·5·5·6·6 = 4,500 starts)

and keep the best. The 4,500 minimizations run together, vectorized (`reports.lbfgs`) and split over
worker processes, and stop at scipy's default tolerances; the `BOOT_STARTS` best distinct minima are then
refined at tight tolerances, and the best of them polished once more with scipy's L-BFGS-B.

Bootstrap: each resample draws the points (cells) with replacement, as weights on the same points, and is
refitted from a few starts rather than 4,500: the full fit's best and every other refined minimum whose
objective is at most `_RIVAL_FACTOR` (2) times the best's, a basin a resample might prefer. The 95%
intervals are the 2.5th and 97.5th percentiles over the resamples.

Compute-optimal allocation at a FLOP budget C, with the cells' own FLOPs per token κ·N^(1+s)
(`reports.points.flops_per_token_law`; attention counts, so C/(6·N·D) is 1.1-1.2 for small models), so
D = C / (κ·N^(1+s)); minimizing A/N^α + B/D^β along it:
    N_opt(C) = (αA / (β(1+s)·B·κ^β))^(1/(α+β(1+s))) · C^(β/(α+β(1+s))),   D_opt = C / (κ·N_opt^(1+s)).
With κ = 6, s = 0 (C = 6·N·D) this is Hoffmann et al.'s eq. 4: N_opt = G·(C/6)^a, D_opt = G⁻¹·(C/6)^b,
G = (αA / (βB))^(1/(α+β)), a = β/(α+β), b = α/(α+β).

What the law cannot be fitted to: the points must vary in compute and in allocation. At one compute
budget ln D = ln C − ln κ − ln N, so ln N and ln D move together and A/N^α cannot be told from B/D^β (the
fit then returns any exponents, a negative one included); at one tokens-per-parameter ratio D/N, likewise.
So N·D and D/N must each vary by at least `MIN_SPREAD`× over the points. A best fit with α ≤ 0 or β ≤ 0
(the loss not falling with N or with D) is no scaling law, and is refused too. A resample with such an
exponent has no compute-optimal allocation in the interior: its N_opt is 0 (α ≤ 0: the loss only rises with
N) or infinite (β ≤ 0), widening the interval to that end.
"""

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from reports.huber import HuberObjective
from reports.intervals import Interval, percentile_interval
from reports.lbfgs import BatchResult, Workers, minimize_chunk
from reports.points import Point, flops_per_token_law

# Hoffmann et al. (2022), appendix D.2; Besiroglu et al. (2024) use the same grid.
GRID_ALPHA = GRID_BETA = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_A = GRID_B = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
BOOT_STARTS = 8
MIN_POINTS = 6  # five parameters; fewer points cannot pin them down
# N·D (compute) and D/N (allocation) must each vary by this factor over the points (module docstring).
MIN_SPREAD = 2.0
CI_NAMES = ("E", "A", "B", "alpha", "beta", "a", "b")
# Below this many (rows × points), one process is faster than starting workers.
_PARALLEL_MIN_WORK = 400_000
# The 4,500 starts stop at scipy's default tolerances, as the papers' fits do; the few best distinct
# minima are then refined at tight ones (a relative decrease of 1e-10 per iteration, or a gradient of
# 1e-10), and so is every bootstrap resample, which starts at those minima.
_GRID_TOLERANCES = {"ftol": 2.2e-9, "ftol_floor": 1.0, "gtol": 1e-5}
_TIGHT_TOLERANCES = {"ftol": 1e-10, "ftol_floor": 1e-300, "gtol": 1e-10}
# A distinct minimum is a bootstrap start when its objective is at most this many times the best's.
_RIVAL_FACTOR = 2.0


def start_grid() -> np.ndarray:
    """The 4,500 starting points as rows (ln A, ln B, ln E, α, β)."""
    grid = itertools.product(GRID_A, GRID_B, GRID_E, GRID_ALPHA, GRID_BETA)
    return np.array(list(grid), dtype=np.float64)


@dataclass(frozen=True, kw_only=True)
class ParametricFit:
    """L(N, D) = E + A/N^α + B/D^β fitted by Huber loss on ln L, with 95% bootstrap intervals."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    ci: dict[str, Interval]  # each of CI_NAMES → (low, high)
    n_points: int
    n_boot: int  # resamples fitted
    residuals: np.ndarray = field(repr=False)  # ln L − ln L̂ per point, in input order
    boot: np.ndarray = field(repr=False)  # (n_boot, 5): E, A, B, alpha, beta of each resample
    objective: float  # the Huber loss at the optimum
    num_starts: int  # starting points of the full fit
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of "fit" and "bootstrap"
    # (κ, s): FLOPs per token = κ·N^(1+s), from the points; the allocation spends C on it
    flops_per_token: tuple[float, float] = (6.0, 0.0)

    @property
    def a(self) -> float:
        """The exponent of N_opt ∝ C^a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """The exponent of D_opt ∝ C^b."""
        return self.alpha / (self.alpha + self.beta)

    def loss(self, n, d):
        """L̂(N, D) for scalars or arrays."""
        return _loss(np.array([self.E, self.A, self.B, self.alpha, self.beta]), n, d)

    def loss_ci(self, n, d) -> Interval:
        """95% interval of L̂(N, D) over the resamples (arrays in, arrays out)."""
        return percentile_interval(_loss(self.boot.T, np.asarray(n)[..., None], np.asarray(d)[..., None]))

    def optimal(self, c):
        """(N_opt, D_opt) minimizing L̂ at C FLOPs, D = C / FLOPs per token at N (floats for a scalar C, else
        arrays)."""
        params = np.array([self.E, self.A, self.B, self.alpha, self.beta])
        n_opt, d_opt = _optimal(params, c, self.flops_per_token)
        return (float(n_opt), float(d_opt)) if np.ndim(n_opt) == 0 else (n_opt, d_opt)

    def optimal_ci(self, c) -> dict[str, Interval]:
        """95% intervals of N_opt, D_opt and D_opt / N_opt at C over the resamples."""
        n_opt, d_opt = _optimal(self.boot.T, np.asarray(c, dtype=np.float64)[..., None], self.flops_per_token)
        return {
            "n": percentile_interval(n_opt),
            "d": percentile_interval(d_opt),
            "tokens_per_param": percentile_interval(d_opt / n_opt),
        }

    def to_json(self) -> dict:
        """The parameters, their intervals and the number of points (`nanostudy fit --json`)."""
        values = {name: float(getattr(self, name)) for name in CI_NAMES}
        return {
            **values,
            "ci": {name: [float(x) for x in self.ci[name]] for name in CI_NAMES},
            "n_points": self.n_points,
        }


def fit_parametric(
    points: Sequence[Point], *, n_boot: int = 1000, seed: int = 0, workers: Workers | int | None = None
) -> ParametricFit:
    """Fit the law to the points from the full start grid, then bootstrap it `n_boot` times.

    `workers`: a `Workers` to share, or the number of processes (default: the CPUs available). The result
    does not depend on it. Raises ValueError when the points cannot determine five parameters (too few,
    or at one compute budget or one tokens per parameter) or the best fit has α ≤ 0 or β ≤ 0.
    """
    n = np.array([p.n for p in points], dtype=np.float64)
    d = np.array([p.d for p in points], dtype=np.float64)
    loss = np.array([p.loss for p in points], dtype=np.float64)
    if len(points) < MIN_POINTS or len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        raise ValueError(
            f"the parametric fit needs at least {MIN_POINTS} points with 2 or more distinct N and D "
            f"(got {len(points)} points, {len(np.unique(n))} distinct N, {len(np.unique(d))} distinct D)"
        )
    _check_spread(n, d)
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    pool = workers if isinstance(workers, Workers) else Workers(workers)
    try:
        objective = HuberObjective.of(n, d, loss)
        grid = start_grid()
        started = time.perf_counter()
        found = _minimize(objective, objective.to_centred(grid), pool, **_GRID_TOLERANCES)
        candidates = _distinct_minima(found)
        if len(candidates) == 0:
            raise ValueError(
                f"none of the {len(grid):,} starts reached a finite objective (a loss that is not finite "
                "and positive?)"
            )
        polished = _minimize(objective, candidates, pool, **_TIGHT_TOLERANCES)
        best = _polish(objective, polished.x[int(np.argmin(polished.f))])
        best_f = _value(objective, best)
        _check_exponents(objective.from_centred(best))
        # Other basins whose minimum is close enough to the best that a resample might prefer them.
        rivals = polished.x[
            (polished.f <= _RIVAL_FACTOR * best_f) & (np.abs(polished.x - best).max(axis=1) > 1e-3)
        ]
        fitted = time.perf_counter()
        boot = _bootstrap(objective, np.vstack([best, rivals]), n_boot, seed, pool)
        seconds = {"fit": fitted - started, "bootstrap": time.perf_counter() - fitted}
    finally:
        if not isinstance(workers, Workers):
            pool.close()
    theta = objective.from_centred(best)
    params = np.array([math.exp(theta[2]), math.exp(theta[0]), math.exp(theta[1]), theta[3], theta[4]])
    boot_rows = np.column_stack([boot, _derived(boot.T).T]) if len(boot) else np.empty((0, 7))
    ci = {name: percentile_interval(boot_rows[:, i]) for i, name in enumerate(CI_NAMES)}
    return ParametricFit(
        E=float(params[0]),
        A=float(params[1]),
        B=float(params[2]),
        alpha=float(params[3]),
        beta=float(params[4]),
        ci=ci,
        n_points=len(points),
        n_boot=len(boot),
        residuals=np.log(loss) - objective.predict_log(theta),
        boot=boot,
        objective=best_f,
        num_starts=len(grid),
        seconds=seconds,
        flops_per_token=flops_per_token_law(points),
    )


def _check_spread(n: np.ndarray, d: np.ndarray) -> None:
    """Raise ValueError when N·D or D/N varies by less than MIN_SPREAD× over the points: ln N and ln D are
    then (nearly) collinear, and the law's N and D terms cannot be told apart (module docstring)."""
    for name, values, alike in (
        ("N·D", n * d, "one compute budget? There ln D = ln C − ln 6 − ln N"),
        ("D/N", d / n, "one ratio of tokens to parameters? There ln D = ln N + a constant"),
    ):
        low, high = float(values.min()), float(values.max())
        if high / low < MIN_SPREAD:
            raise ValueError(
                f"{name} varies only {high / low:.2f}× over the {len(n)} points ({low:.3g} to {high:.3g}: "
                f"{alike}), so A/N^alpha and B/D^beta cannot be told apart; the law needs {name} to vary by "
                f"at least {MIN_SPREAD:g}×"
            )


def _check_exponents(theta: np.ndarray) -> None:
    """Raise ValueError when the best fit's α or β is ≤ 0: the loss would not fall with N or with D."""
    alpha, beta = float(theta[3]), float(theta[4])
    if alpha <= 0 or beta <= 0:
        raise ValueError(
            f"the best fit has alpha = {alpha:.4g} and beta = {beta:.4g}: an exponent <= 0 means the loss "
            "does not fall with N (alpha) or D (beta): no scaling law, and no allocation, is given"
        )


def _minimize(objective: HuberObjective, x0: np.ndarray, pool: Workers, **options) -> BatchResult:
    """Every row of x0 minimized, in chunks over the workers (per-row weights travel with their chunk)."""
    work = len(x0) * len(objective.log_loss)
    num_chunks = min(pool.max_workers, len(x0)) if work >= _PARALLEL_MIN_WORK else 1
    bounds = np.linspace(0, len(x0), num_chunks + 1).astype(int)
    tasks = []
    for start, stop in itertools.pairwise(bounds):
        weights = None if objective.weights is None else objective.weights[start:stop]
        tasks.append((objective.with_weights(weights), x0[start:stop], options))
    results = pool.map(minimize_chunk, tasks)
    return BatchResult(
        x=np.concatenate([r.x for r in results]),
        f=np.concatenate([r.f for r in results]),
        converged=np.concatenate([r.converged for r in results]),
        num_iter=np.concatenate([r.num_iter for r in results]),
        num_evals=sum(r.num_evals for r in results),
    )


def _value(objective: HuberObjective, x: np.ndarray) -> float:
    return float(objective(x[None, :], np.zeros(1, dtype=np.int64))[0][0])


def _polish(objective: HuberObjective, x: np.ndarray) -> np.ndarray:
    """scipy's L-BFGS-B from the best end point at tight tolerances; kept only if lower."""
    row = np.zeros(1, dtype=np.int64)

    def value_and_gradient(v: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = objective(v[None, :], row)
        return float(f[0]), g[0]

    result = minimize(
        value_and_gradient,
        x,
        jac=True,
        method="L-BFGS-B",
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000},
    )
    return result.x if np.isfinite(result.fun) and result.fun < _value(objective, x) else x


def _distinct_minima(found: BatchResult) -> np.ndarray:
    """Up to BOOT_STARTS distinct end points with the lowest objective, lowest first."""
    order = np.argsort(found.f)
    kept: list[np.ndarray] = []
    for i in order:
        if not np.isfinite(found.f[i]) or len(kept) == BOOT_STARTS:
            break
        # Distinct: more than 1e-3 apart in some centred coordinate (ln terms or exponents).
        if all(np.abs(found.x[i] - other).max() > 1e-3 for other in kept):
            kept.append(found.x[i])
    return np.array(kept)


def _bootstrap(
    objective: HuberObjective, starts: np.ndarray, n_boot: int, seed: int, pool: Workers
) -> np.ndarray:
    """(n_boot, 5) rows of E, A, B, alpha, beta, one per resample (see the module docstring)."""
    if n_boot == 0:
        return np.empty((0, 5))
    num_points = len(objective.log_loss)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_points, size=(n_boot, num_points))
    counts = np.zeros((n_boot, num_points))
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1.0)
    per_resample = len(starts)
    x0 = np.tile(starts, (n_boot, 1))
    weights = np.repeat(counts, per_resample, axis=0)
    found = _minimize(objective.with_weights(weights), x0, pool, **_TIGHT_TOLERANCES)
    f = found.f.reshape(n_boot, per_resample)
    x = found.x.reshape(n_boot, per_resample, 5)
    chosen = x[np.arange(n_boot), np.argmin(f, axis=1)]
    theta = objective.from_centred(chosen)
    with np.errstate(over="ignore"):  # a resample whose law runs off to infinity keeps its infinity
        return np.column_stack([np.exp(theta[:, 2]), np.exp(theta[:, 0]), np.exp(theta[:, 1]), theta[:, 3:]])


def _derived(params: np.ndarray) -> np.ndarray:
    """(a, b) = (β/(α+β), α/(α+β)) for params (5, ...) → (2, ...)."""
    alpha, beta = params[3], params[4]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.array([beta / (alpha + beta), alpha / (alpha + beta)])


def _loss(params, n, d):
    e, a, b, alpha, beta = params
    return e + a / np.power(n, alpha) + b / np.power(d, beta)


def _optimal(params, c, flops_per_token=(6.0, 0.0)):
    """(N_opt, D_opt) at C for params (5, ...); N_opt = 0 where α ≤ 0 (the loss only rises with N along the
    isoflop), inf where β ≤ 0 < α (it only falls), NaN where both (module docstring)."""
    _, a, b, alpha, beta = params
    factor, extra = flops_per_token
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        power = alpha + beta * (1.0 + extra)
        g = np.power(alpha * a / (beta * (1.0 + extra) * b * factor**beta), 1.0 / power)
        n_opt = g * np.power(np.asarray(c), beta / power)
        n_opt = np.where(alpha <= 0, np.where(beta <= 0, np.nan, 0.0), np.where(beta <= 0, np.inf, n_opt))
        d_opt = np.asarray(c) / (factor * np.power(n_opt, 1.0 + extra))
    return n_opt, d_opt
