"""Parametric-fit speed: reports.parametric against the same fit done naively, a loop of scipy calls, one run.

    python benchmarks/fit_speed.py [--points 250] [--boot 1000] [--json fit_speed.json]

The data: `--points` synthetic runs on isoflop curves (10 budgets, 1e18..1e22 FLOPs, each curve ±1 in ln N
around its optimum) from Hoffmann et al.'s law L = 1.69 + 406.4/N^0.34 + 410.7/D^0.28 with 0.5% log-normal
noise, fixed seed.

1. Full fit: the Huber-loss fit from the full grid of 4,500 starts. Ours: the fit phase of
   `fit_parametric` (the starts as one vectorized L-BFGS over worker processes, then the refinement of
   the best minima). Naive: `scipy.optimize.minimize(method="L-BFGS-B")` from each start in a Python loop,
   on the textbook objective (logsumexp, scipy.special.huber) with its analytic gradient (the papers' code
   uses finite differences, slower still: timed on `--naive-fd-starts` starts and extrapolated), then, as
   ours, its 8 lowest distinct end points refined at tight tolerances.
2. Bootstrap: `--boot` resamples of the points. Ours: the bootstrap phase of `fit_parametric`. Naive: for
   each resample, the same draws and the starts ours takes (the refined best, and any other refined
   minimum within 2x of it and apart from it: usually none, so one start), one scipy call per start on the
   resampled points, at the tight tolerances ours uses for resamples (scipy's defaults would not move from
   the start).

Ours runs `--repeats` times in one process pool (`ParametricFit.seconds` splits each run into its phases):
the full fit held against the target is the first, cold one (it starts the worker processes); the
bootstrap is the median. Both sides must agree: the best objective and parameters, and the bootstrap
intervals, are compared. The machine is shared: the load average is printed at the start and the end.
Targets (issue 5): full fit <= 5 s, bootstrap <= 60 s on a 2-core machine.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy
from scipy.optimize import minimize
from scipy.special import huber, logsumexp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reports.fit import Point, fit_parametric
from reports.huber import HUBER_DELTA, HuberObjective
from reports.intervals import percentile_interval
from reports.lbfgs import Workers
from reports.parametric import start_grid

TARGET_FULL_S = 5.0
TARGET_BOOT_S = 60.0
LAW = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
NAMES = ("E", "A", "B", "alpha", "beta")


def synthetic_points(num_points: int, *, seed: int = 0) -> list[Point]:
    budgets = np.logspace(18, 22, 10)
    per_budget = np.full(len(budgets), num_points // len(budgets))
    per_budget[: num_points % len(budgets)] += 1
    alpha, beta = LAW["alpha"], LAW["beta"]
    g = (alpha * LAW["A"] / (beta * LAW["B"])) ** (1 / (alpha + beta))
    rng = np.random.default_rng(seed)
    points = []
    for c, count in zip(budgets, per_budget, strict=True):
        n_opt = g * (c / 6) ** (beta / (alpha + beta))
        for n in n_opt * np.exp(np.linspace(-1.0, 1.0, count)):
            d = c / (6 * n)
            loss = (LAW["E"] + LAW["A"] / n**alpha + LAW["B"] / d**beta) * np.exp(rng.normal(0, 0.005))
            points.append(Point(n=float(n), d=float(d), c=float(c), loss=float(loss), budget=float(c)))
    return points


# ------------------------------------------------------------------------------------- the naive way


def naive_objective(theta, log_n, log_d, log_loss):
    """The textbook Huber objective on (ln A, ln B, ln E, α, β), with its gradient."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    predicted = logsumexp(terms, axis=0)
    residual = predicted - log_loss
    weights = np.exp(terms - predicted)  # d logsumexp / d term
    psi = np.clip(residual, -HUBER_DELTA, HUBER_DELTA)
    gradient = np.array(
        [
            psi @ weights[0],
            psi @ weights[1],
            psi @ weights[2],
            -(psi * weights[0]) @ log_n,
            -(psi * weights[1]) @ log_d,
        ]
    )
    return huber(HUBER_DELTA, residual).sum(), gradient


def naive_fit(starts, log_n, log_d, log_loss, *, jac: bool = True, tight: bool = False):
    """A scipy L-BFGS-B call per start; (objective, parameters) of each.

    `tight`: the tolerances ours refines with (a relative decrease of 1e-10, a gradient of 1e-10) instead
    of scipy's defaults, which, started at the full fit's minimum, stop a resample's fit before its first
    step (the gradient there is below 1e-5) and so would return intervals far too narrow.
    """
    data = (log_n, log_d, log_loss)
    results = []
    for start in starts:
        if jac:
            fun, use_jac = naive_objective, True
        else:
            fun, use_jac = (lambda t, *args: naive_objective(t, *args)[0]), None
        options = {}
        if tight:
            # scipy's ftol is relative to max(|f|, 1); ours to |f|, and f is far below 1 here.
            options = {
                "ftol": 1e-10 * min(1.0, naive_objective(start, *data)[0]),
                "gtol": 1e-10,
                "maxiter": 10_000,
            }
        result = minimize(fun, start, args=data, jac=use_jac, method="L-BFGS-B", options=options)
        results.append((result.fun if np.isfinite(result.fun) else np.inf, result.x))
    return results


def distinct_minima(results, centred, *, limit: int = 8):
    """Up to `limit` distinct end points with the lowest objective, lowest first: more than 1e-3 apart in the
    optimizer's centred coordinates (`centred`), as ours picks the minima it refines."""
    kept = []
    for f, x in sorted(results, key=lambda item: item[0]):
        if len(kept) == limit or not np.isfinite(f):
            break
        if all(np.abs(centred(x) - centred(other)).max() > 1e-3 for other in kept):
            kept.append(x)
    return np.array(kept)


def bootstrap_starts(refined, centred, *, factor: float = 2.0) -> np.ndarray:
    """Ours' bootstrap starts (reports/parametric.py) from the refined minima: the best, and the others within
    `factor` of its objective that lie more than 1e-3 from it in centred coordinates (its rival basins)."""
    best_f, best_x = min(refined, key=lambda item: item[0])
    rivals = [
        x for f, x in refined if f <= factor * best_f and np.abs(centred(x) - centred(best_x)).max() > 1e-3
    ]
    return np.array([best_x, *rivals])


def params_of(theta) -> np.ndarray:
    log_a, log_b, log_e, alpha, beta = theta
    return np.array([np.exp(log_e), np.exp(log_a), np.exp(log_b), alpha, beta])


# ------------------------------------------------------------------------------------- the run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=250)
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours (the first one cold)")
    parser.add_argument(
        "--naive-starts", type=int, default=None, help="naive full fit on every k-th start only"
    )
    parser.add_argument("--naive-fd-starts", type=int, default=100, help="finite-difference starts timed")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    points = synthetic_points(args.points, seed=args.seed)
    log_n = np.log([p.n for p in points])
    log_d = np.log([p.d for p in points])
    log_loss = np.log([p.loss for p in points])
    grid = start_grid()
    load = os.getloadavg()
    print(
        f"{len(points)} points, {len(grid)} starts, {args.boot} resamples; "
        f"{len(os.sched_getaffinity(0))} CPUs ({platform.processor() or platform.machine()}), "
        f"load {load[0]:.1f}; numpy {np.__version__}, scipy {scipy.__version__}",
        flush=True,
    )

    # Ours, `--repeats` times in one process pool: the first call starts the workers (cold).
    runs = []
    with Workers() as workers:
        for _ in range(args.repeats):
            start = time.perf_counter()
            ours_boot = fit_parametric(points, n_boot=args.boot, seed=args.seed, workers=workers)
            runs.append({**ours_boot.seconds, "total": time.perf_counter() - start})
    ours = ours_boot
    full_cold_s = runs[0]["fit"]
    full_warm_s = float(np.median([run["fit"] for run in runs[1:]])) if len(runs) > 1 else full_cold_s
    boot_s = float(np.median([run["bootstrap"] for run in runs]))
    print(
        f"ours: full fit {full_cold_s:.2f} s cold (workers starting), {full_warm_s:.2f} s warm; "
        f"bootstrap {boot_s:.2f} s (median of {len(runs)}: "
        + ", ".join(f"{run['bootstrap']:.2f}" for run in runs)
        + ")",
        flush=True,
    )

    step = args.naive_starts or 1
    start = time.perf_counter()
    naive = naive_fit(grid[::step], log_n, log_d, log_loss)
    naive_full_s = (time.perf_counter() - start) * step
    fd_starts = grid[:: max(1, len(grid) // args.naive_fd_starts)][: args.naive_fd_starts]
    start = time.perf_counter()
    naive_fit(fd_starts, log_n, log_d, log_loss, jac=False)
    naive_fd_full_s = (time.perf_counter() - start) * len(grid) / len(fd_starts)
    # As ours ends its fit: the lowest distinct end points refined at tight tolerances, the best of them
    # the fit; its bootstrap starts from that and any other refined minimum within 2x of it.
    centred = HuberObjective.of(np.exp(log_n), np.exp(log_d), np.exp(log_loss)).to_centred
    start = time.perf_counter()
    refined = naive_fit(distinct_minima(naive, centred), log_n, log_d, log_loss, tight=True)
    naive_full_s += time.perf_counter() - start
    best_f, best_x = min(refined, key=lambda item: item[0])
    how = "measured" if step == 1 else f"every {step}th start, x{step}"
    print(
        f"naive: full fit {naive_full_s:.1f} s ({how}); "
        f"with finite differences {naive_fd_full_s:.0f} s (extrapolated from {len(fd_starts)} starts)",
        flush=True,
    )

    starts = bootstrap_starts(refined, centred)
    draws = np.random.default_rng(args.seed).integers(0, len(points), size=(args.boot, len(points)))
    naive_boot = []
    start = time.perf_counter()
    for rows in draws:
        found = naive_fit(starts, log_n[rows], log_d[rows], log_loss[rows], tight=True)
        naive_boot.append(params_of(min(found, key=lambda item: item[0])[1]))
    naive_boot_s = time.perf_counter() - start
    print(f"naive: bootstrap {naive_boot_s:.1f} s ({len(starts)} starts per resample)", flush=True)

    ours_params = np.array([getattr(ours, name) for name in NAMES])
    naive_params = params_of(best_x)
    naive_ci = {name: percentile_interval(np.array(naive_boot)[:, i]) for i, name in enumerate(NAMES)}
    result = {
        "points": len(points),
        "starts": len(grid),
        "resamples": args.boot,
        "cpus": len(os.sched_getaffinity(0)),
        "load_average": [load[0], os.getloadavg()[0]],
        "ours": {"full_cold_s": full_cold_s, "full_warm_s": full_warm_s, "bootstrap_s": boot_s, "runs": runs},
        "naive": {
            "full_s": naive_full_s,
            "full_measured": step == 1,
            "full_finite_difference_s": naive_fd_full_s,
            "bootstrap_s": naive_boot_s,
            "bootstrap_starts": len(starts),
        },
        "ratio_full": naive_full_s / full_cold_s,
        "ratio_bootstrap": naive_boot_s / boot_s,
        "objective": {"ours": ours.objective, "naive": float(best_f)},
        "params": {
            name: {"ours": float(o), "naive": float(n)}
            for name, o, n in zip(NAMES, ours_params, naive_params, strict=True)
        },
        "ci": {name: {"ours": list(ours_boot.ci[name]), "naive": list(naive_ci[name])} for name in NAMES},
        "targets_met": full_cold_s <= TARGET_FULL_S and boot_s <= TARGET_BOOT_S,
    }
    print()
    print(f"{'':<22}{'ours':>10}{'naive':>10}{'ratio':>8}")
    print(f"{'full fit, s':<22}{full_cold_s:>10.2f}{naive_full_s:>10.1f}{result['ratio_full']:>7.0f}x")
    print(f"{'bootstrap, s':<22}{boot_s:>10.2f}{naive_boot_s:>10.1f}{result['ratio_bootstrap']:>7.0f}x")
    print(f"{'best objective':<22}{ours.objective:>10.4g}{best_f:>10.4g}")
    for name, o, n in zip(NAMES, ours_params, naive_params, strict=True):
        low, high = ours_boot.ci[name]
        naive_low, naive_high = naive_ci[name]
        print(f"{name:<22}{o:>10.5g}{n:>10.5g}   95% CI ours [{low:.4g}, {high:.4g}]", end="")
        print(f" naive [{naive_low:.4g}, {naive_high:.4g}]")
    print(f"load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    verdict = "met" if result["targets_met"] else "MISSED"
    print(f"\ntargets (full <= {TARGET_FULL_S:g} s, bootstrap <= {TARGET_BOOT_S:g} s): {verdict}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
