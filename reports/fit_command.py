"""`nanostudy fit`: the scaling-law fits of any table (papers' data, other tools' results).

    nanostudy fit TABLE.csv --n COL --d COL --loss COL [--flops COL] [--budget COL] [--json] [--boot N]
                            [--seed S]

Without --json, a readable summary: how the rows were grouped into budgets (--budget, else a budget_flops
column, else C grouped within 1.25×; C = 6·N·D without --flops), the parametric law with 95% intervals, the
compute-optimal allocation it implies, the isoflop minima per budget and the power laws over them, the
prediction check, and what could not be fitted. With --json,
one JSON object: E, A, B, alpha, beta, a, b, `ci` ({name: [low, high]} for each of those) and n_points
(the parametric fit only). Exit codes: 0 a law was fitted (the parametric law, or the isoflop N*(C) over 2
or more budgets; with --json, the parametric law); 1 none could be (what could, such as one budget's
minimum, is still printed, with why the rest was not); 2 bad input.

This module is imported to register its parser with every `nanostudy` command: scipy is loaded only when
the command runs.
"""

import dataclasses
import json
import math
import sys
from pathlib import Path

_PARAMS = ("E", "A", "B", "alpha", "beta", "a", "b")


def register_fit(subparsers) -> None:
    fit = subparsers.add_parser(
        "fit",
        help="fit scaling laws to a CSV table (N, D, loss columns): parametric L(N, D) and isoflop minima",
        description=(
            "Fit L(N, D) = E + A/N^alpha + B/D^beta (Huber loss, 4,500 starts, bootstrap intervals) and "
            "the isoflop parabolas of a CSV table with a header row."
        ),
    )
    fit.add_argument("table", type=Path, help="CSV file with a header row")
    fit.add_argument("--n", required=True, dest="n_col", metavar="COL", help="column of N (parameters)")
    fit.add_argument("--d", required=True, dest="d_col", metavar="COL", help="column of D (tokens)")
    fit.add_argument("--loss", required=True, dest="loss_col", metavar="COL", help="column of the loss")
    fit.add_argument("--flops", dest="flops_col", metavar="COL", help="column of C (default: 6·N·D)")
    fit.add_argument(
        "--budget",
        dest="budget_col",
        metavar="COL",
        help="column of each row's FLOP budget, its isoflop curve (default: budget_flops if the table has "
        "it, else C grouped within 1.25×)",
    )
    fit.add_argument("--json", action="store_true", help="the parametric fit as one JSON object")
    fit.add_argument("--boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    fit.set_defaults(func=_cmd_fit)


def _cmd_fit(args) -> int:
    from reports.fit import distinct_points, fit_parametric, fit_points, table_points

    for flag, value in (("--boot", args.boot), ("--seed", args.seed)):
        if value < 0:
            print(f"nanostudy fit: error: {flag} must be >= 0, got {value}", file=sys.stderr)
            return 2
    try:
        points, left_out, budgets = table_points(
            args.table,
            n_col=args.n_col,
            d_col=args.d_col,
            loss_col=args.loss_col,
            flops_col=args.flops_col,
            budget_col=args.budget_col,
        )
    except ValueError as error:
        print(f"nanostudy fit: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        points = distinct_points(points, left_out)  # as fit_points does
        for line in left_out:  # stdout holds the JSON object alone
            print(f"nanostudy fit: {line}", file=sys.stderr)
        try:
            fit = fit_parametric(points, n_boot=args.boot, seed=args.seed)
        except ValueError as error:
            print(f"nanostudy fit: cannot fit {args.table}: {error}", file=sys.stderr)
            return 1
        print(json.dumps(_finite(fit.to_json())))
        return 0
    fits = fit_points(points, n_boot=args.boot, seed=args.seed)
    fits = dataclasses.replace(fits, problems=left_out + fits.problems)
    print(format_fits(fits, source=str(args.table), budgets=budgets))
    # One budget's parabola is a minimum, not a law: a script that asks for a law learns it got none.
    return 0 if fits.parametric is not None or (fits.isoflop and fits.isoflop.n_opt is not None) else 1


def format_fits(fits, *, source: str, budgets: str | None = None) -> str:
    """A `StudyFits` as text: the laws, their intervals, the minima per budget, and the problems; `budgets`
    says how the points were grouped into budgets."""
    lines = [f"{source}: {len(fits.points)} points, {len({p.budget for p in fits.points})} budgets"]
    lines += [f"  {budgets}"] if budgets else []
    par = fits.parametric
    if par is not None:
        lines += [
            "",
            f"parametric: L(N, D) = E + A/N^alpha + B/D^beta (Huber loss, {par.num_starts:,} starts; "
            f"95% intervals over {par.n_boot} resamples)",
        ]
        rows = [("", "value", "95% interval")]
        rows += [(name, _num(getattr(par, name)), _interval(par.ci[name], ".4g")) for name in _PARAMS]
        lines += _table(rows)
        budgets = sorted({p.budget for p in fits.points})
        factor, extra = par.flops_per_token
        rows = [("C (FLOPs)", "N_opt", "95% interval", "D_opt", "95% interval", "D/N")]
        for c in (budgets[-1], budgets[-1] * 10, budgets[-1] * 100):
            n_opt, d_opt = par.optimal(c)
            ci = par.optimal_ci(c)
            rows.append(
                (
                    f"{c:.3g}",
                    _num(n_opt),
                    _interval(ci["n"]),
                    _num(d_opt),
                    _interval(ci["d"]),
                    f"{d_opt / n_opt:.1f}",
                )
            )
        spent = "C = 6·N·D" if (factor, extra) == (6.0, 0.0) else f"D = C / ({factor:.4g}·N^{1 + extra:.4f})"
        lines += [
            "",
            f"compute-optimal allocation of the parametric law ({spent}, the points' FLOPs per token):",
            *_table(rows),
        ]
    iso = fits.isoflop
    if iso is not None and iso.parabolas:
        rows = [("budget", "points", "N*", "95% interval", "D*", "95% interval", "L*", "95% interval", "")]
        for p in iso.parabolas:
            rows.append(
                (
                    f"{p.budget:.3g}",
                    str(p.n_points),
                    _num(p.n_opt),
                    _interval(p.n_opt_ci),
                    _num(p.d_opt),
                    _interval(p.d_opt_ci),
                    f"{p.loss_opt:.4f}",
                    _interval(p.loss_opt_ci, ".4f"),
                    "" if p.interior else "outside the sampled N",
                )
            )
        lines += ["", "isoflop minima (a parabola of the loss in ln N per budget):", *_table(rows)]
        for label, law in (("N*", iso.n_opt), ("D*", iso.d_opt), ("L*", iso.loss_opt)):
            if law is not None:
                exponent_ci = _interval(law.exponent_ci, ".4f")
                offset = f"{law.offset:.4f} + " if label == "L*" else ""
                text = f"  {label} = {offset}{_num(law.k)}·C^{law.exponent:.4f}, exponent 95% {exponent_ci}"
                if label == "L*":
                    text += f", E 95% {_interval(law.offset_ci, '.4f')}"
                if law.excluded:
                    budgets = ", ".join(f"{c:.3g}" for c in law.excluded)
                    text += f"; minima inside the sampled N only, budget {budgets} left out"
                if law.extrapolated:
                    text += "; includes minima outside the sampled sizes"
                lines.append(text)
    check = fits.prediction
    if check is not None:
        lines += [
            "",
            f"prediction check, budget {check.budget:.3g} held out: predicted {check.predicted:.4f} "
            f"{_interval(check.predicted_ci, '.4f')}, measured {check.measured:.4f}",
            f"  ({check.method})",
        ]
    if fits.problems:
        lines += ["", "not fitted, or to look at:"] + [f"  {line}" for line in fits.problems]
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _num(value: float) -> str:
    return f"{value:.4g}"  # nan, or inf: a nearly flat parabola's N* beyond any float (docs/fits.md)


def _interval(interval, fmt: str = ".3g") -> str:
    low, high = interval
    if math.isnan(low) or math.isnan(high):
        return "[n/a]"
    return f"[{low:{fmt}}, {high:{fmt}}]"  # an unbounded end shows as inf or -inf


def _finite(value):
    """JSON has no NaN: non-finite numbers become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
