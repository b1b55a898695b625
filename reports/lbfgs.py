"""L-BFGS over many independent starts at once, in numpy: one array operation serves every start.

The parametric fit runs thousands of small (5-parameter) minimizations of the same objective from
different starting points, and its bootstrap thousands more on reweighted data. scipy's L-BFGS-B in a
Python loop spends most of its time in per-call overhead, not arithmetic. Here every start keeps its own
state (position, gradient, curvature pairs, step length, convergence) exactly as if it ran alone, but the
objective is evaluated for all of them in one vectorized call. So the result of each start does not depend
on which other starts share its batch.

The algorithm is Nocedal & Wright's L-BFGS (Algorithm 7.5: the two-loop recursion, the initial Hessian
scaled by s·y / y·y) with a backtracking Armijo line search (quadratic interpolation); a curvature pair
with s·y <= 0 is skipped rather than stored, which keeps every search direction a descent direction. No
bounds: the fits here use none (Hoffmann et al. 2022 and Besiroglu et al. 2024 run scipy's L-BFGS-B
without bounds), so there is no projection step.

`Workers` spreads independent batches over processes: a chunk of rows is the unit of work, and chunks are
cut the same way whatever the number of processes, so results do not depend on it.
"""

import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np

# objective(x (k, P), rows (k,)) -> (f (k,), g (k, P)): the values and gradients at k points, `rows`
# saying which of the batch's rows they belong to (the bootstrap weights its data per row).
Objective = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

_ARMIJO_C1 = 1e-4


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchResult:
    x: np.ndarray  # (S, P) the minimizer found from each start
    f: np.ndarray  # (S,) the objective there
    converged: np.ndarray  # (S,) bool: met a tolerance or its line search found nothing lower (the
    # minimum to machine precision); False: ran out of iterations, or its values overflowed
    num_iter: np.ndarray  # (S,) iterations done
    num_evals: int  # batched objective calls (each over a subset of the rows)


def minimize_batched(
    objective: Objective,
    x0: np.ndarray,
    *,
    max_iter: int = 1000,
    history: int = 10,
    gtol: float = 1e-5,
    ftol: float = 2.2e-9,
    ftol_floor: float = 1.0,
    max_backtracks: int = 40,
) -> BatchResult:
    """Minimize from every row of `x0` (S, P) independently; see the module docstring.

    A row stops when its largest gradient component is at most `gtol`, when an iteration lowers its
    objective by at most `ftol` × max(|f|, `ftol_floor`), or when its line search finds no lower point
    (the minimum to machine precision, in practice). Non-finite values count as "not lower". The defaults
    are scipy's L-BFGS-B defaults (gtol 1e-5, ftol 2.2e-9 relative to max(|f|, 1)).
    """
    x = np.array(x0, dtype=np.float64, copy=True)
    num_rows, num_params = x.shape
    rows = np.arange(num_rows)
    f, g = objective(x, rows)
    f = np.where(np.isfinite(f), f, np.inf)
    s_hist = np.zeros((history, num_rows, num_params))
    y_hist = np.zeros((history, num_rows, num_params))
    rho = np.zeros((history, num_rows))  # 0 marks an empty or skipped slot: the two loops ignore it
    gamma = np.zeros(num_rows)  # initial inverse-Hessian scale; 0 until the first stored pair
    finite = np.isfinite(f) & np.isfinite(g).all(axis=1)
    converged = finite & (np.abs(g).max(axis=1) <= gtol)
    num_iter = np.zeros(num_rows, dtype=np.int64)
    active = rows[finite & ~converged]
    num_evals = 1
    for iteration in range(max_iter):
        if active.size == 0:
            break
        slot = iteration % history
        direction = _two_loop(
            g[active], s_hist[:, active], y_hist[:, active], rho[:, active], gamma[active], newest=slot - 1
        )
        slope = np.einsum("kp,kp->k", direction, g[active])
        # A direction that is not downhill (round-off in a stale memory): forget the memory, go downhill.
        reset = ~(slope < 0)
        if reset.any():
            direction[reset] = -g[active][reset]
            rho[:, active[reset]] = 0.0
            gamma[active[reset]] = 0.0
            slope[reset] = -np.einsum("kp,kp->k", g[active][reset], g[active][reset])
        # With no curvature information yet the first step is one unit long (as scipy's L-BFGS-B does).
        with np.errstate(over="ignore", divide="ignore"):
            length = np.sqrt(np.einsum("kp,kp->k", direction, direction))
            step = np.where(gamma[active] > 0, 1.0, 1.0 / length)
        # A row whose direction cannot be scaled (an overflowing gradient) has nowhere to go: it stops.
        movable = np.isfinite(step) & (step > 0) & np.isfinite(direction).all(axis=1)
        if not movable.all():
            active, direction, slope, step = (
                active[movable],
                direction[movable],
                slope[movable],
                step[movable],
            )
            if active.size == 0:
                break
        new_x, new_f, new_g, found, evals = _backtrack(
            objective, active, x[active], f[active], direction, slope, step, max_backtracks
        )
        num_evals += evals
        num_iter[active] += 1
        old_f = f[active]
        s = new_x - x[active]
        y = new_g - g[active]
        sy = np.einsum("kp,kp->k", s, y)
        yy = np.einsum("kp,kp->k", y, y)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            new_rho, new_gamma = 1.0 / sy, sy / yy
        # Keep a pair only with positive curvature that the two loops can use without overflowing.
        keep = found & (sy > 1e-12 * np.sqrt(yy * np.einsum("kp,kp->k", s, s)))
        keep &= np.isfinite(new_rho) & np.isfinite(new_gamma) & (new_gamma > 0)
        s_hist[slot, active] = np.where(keep[:, None], s, 0.0)
        y_hist[slot, active] = np.where(keep[:, None], y, 0.0)
        rho[slot, active] = np.where(keep, new_rho, 0.0)
        gamma[active] = np.where(keep, new_gamma, gamma[active])
        moved = active[found]
        x[moved], f[moved], g[moved] = new_x[found], new_f[found], new_g[found]
        small_gradient = np.abs(g[active]).max(axis=1) <= gtol
        small_decrease = found & (old_f - f[active] <= ftol * np.maximum(np.abs(old_f), ftol_floor))
        done = small_gradient | small_decrease | ~found
        converged[active] = done
        active = active[~done]
    return BatchResult(x=x, f=f, converged=converged, num_iter=num_iter, num_evals=num_evals)


def _two_loop(
    g: np.ndarray,
    s_hist: np.ndarray,
    y_hist: np.ndarray,
    rho: np.ndarray,
    gamma: np.ndarray,
    *,
    newest: int,
) -> np.ndarray:
    """-H·g for each row, H the L-BFGS inverse-Hessian approximation (Nocedal & Wright, Algorithm 7.4).

    The history is circular with its newest pair in slot `newest` (mod its length); the first loop runs
    newest to oldest, the second back. A slot with rho = 0 (empty, or a skipped pair) changes nothing.
    """
    history = rho.shape[0]
    q = g.copy()
    alpha = np.zeros((history, g.shape[0]))
    order = [(newest - j) % history for j in range(history)]
    for i in order:
        alpha[i] = rho[i] * np.einsum("kp,kp->k", s_hist[i], q)
        q -= alpha[i][:, None] * y_hist[i]
    r = np.where(gamma[:, None] > 0, gamma[:, None], 1.0) * q
    for i in reversed(order):
        beta = rho[i] * np.einsum("kp,kp->k", y_hist[i], r)
        r += s_hist[i] * (alpha[i] - beta)[:, None]
    return -r


def _backtrack(
    objective: Objective,
    rows: np.ndarray,
    x: np.ndarray,
    f: np.ndarray,
    direction: np.ndarray,
    slope: np.ndarray,
    step: np.ndarray,
    max_backtracks: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Armijo backtracking for each row: the first step along `direction` with a sufficient decrease.

    A failed trial shrinks the step to the minimizer of the quadratic through f(0), f'(0) and f(step),
    kept within [0.1, 0.5] × step. Only the rows still searching are evaluated again.
    Returns (x, f, g) at the accepted points, which rows found one, and the objective calls made.
    """
    new_x = x.copy()
    new_f = f.copy()
    new_g = np.zeros_like(x)
    found = np.zeros(rows.size, dtype=bool)
    step = step.copy()
    pending = np.arange(rows.size)
    evals = 0
    for _ in range(max_backtracks):
        trial = x[pending] + step[pending, None] * direction[pending]
        trial_f, trial_g = objective(trial, rows[pending])
        evals += 1
        finite = np.isfinite(trial_f) & np.isfinite(trial_g).all(axis=1)
        ok = finite & (trial_f <= f[pending] + _ARMIJO_C1 * step[pending] * slope[pending])
        accepted = pending[ok]
        new_x[accepted], new_f[accepted], new_g[accepted] = trial[ok], trial_f[ok], trial_g[ok]
        found[accepted] = True
        pending, t, trial_f = pending[~ok], step[pending[~ok]], trial_f[~ok]
        if pending.size == 0:
            break
        curvature = 2.0 * (trial_f - f[pending] - slope[pending] * t)
        with np.errstate(divide="ignore", invalid="ignore"):
            quadratic = -slope[pending] * t * t / curvature
        quadratic = np.where(np.isfinite(quadratic) & (curvature > 0), quadratic, 0.1 * t)
        step[pending] = np.clip(quadratic, 0.1 * t, 0.5 * t)
    return new_x, new_f, new_g, found, evals


def minimize_chunk(task: tuple[Objective, np.ndarray, dict]) -> BatchResult:
    """`minimize_batched(objective, x0, **options)` for one chunk of rows: what a worker process runs."""
    objective, x0, options = task
    return minimize_batched(objective, x0, **options)


class Workers:
    """Runs chunks of rows in worker processes, started on first need (spawned: safe from a threaded
    caller such as the TUI) and stopped on `close()`. With one worker, or one chunk, everything runs here.

    `max_workers` defaults to the CPUs this process may use.
    """

    def __init__(self, max_workers: int | None = None):
        self.max_workers = max(1, max_workers if max_workers is not None else len(os.sched_getaffinity(0)))
        self._pool: Executor | None = None

    def map(self, fn: Callable, tasks: Sequence) -> list:
        if self.max_workers == 1 or len(tasks) <= 1:
            return [fn(task) for task in tasks]
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.max_workers, mp_context=get_context("spawn"))
        try:
            return list(self._pool.map(fn, tasks))
        except BrokenProcessPool:
            # The workers could not start, e.g. a script without `if __name__ == "__main__":`, which spawned
            # processes import again: do the work here (the result is the same, only slower).
            self.close()
            self.max_workers = 1
            return [fn(task) for task in tasks]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
