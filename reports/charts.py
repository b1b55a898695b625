"""The report's charts, one function per chart, in Altair: a base chart, then layers.

Every fitted line, band and contour is computed here in Python from the fit objects of `reports.fit`
(never with Vega's `transform_regression`), so the numbers on a chart are the numbers in the report's
tables. Data goes in inline (`alt.Data(values=...)`), so a chart's spec is self-contained. Functions take
the fit objects and the rows of `reports.data` and return an Altair chart; they read nothing else.
"""

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import altair as alt
import numpy as np

from reports.data import CellRow

WIDTH, HEIGHT = 520, 320
SMALL_WIDTH, SMALL_HEIGHT = 300, 230  # three side by side
PANEL_WIDTH, PANEL_HEIGHT = 260, 190
SCHEME = "viridis"
FORMAT_SI = "~s"  # 2.5M, 300k
FORMAT_FLOPS = ".0e"  # 1e+15
# Training curves: done cells solid, the others dashed or dotted.
DASHES = {
    "done": [1, 0],
    "running": [8, 3],
    "diverged": [4, 3],
    "failed": [1, 3],
    "cancelled": [2, 2],
    "pending": [2, 2],
}
# Curves are drawn from this many points (on a log grid where the axis is log).
NUM_LINE_POINTS = 80


def flops_label(flops: float) -> str:
    """A FLOP budget as the grid names it, to 3 significant digits: 1e15, 3e15, 7.5e10, 1.25e15."""
    mantissa, _, exponent = f"{flops:.2e}".partition("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def budget_order(budgets: Iterable[float]) -> list[str]:
    """The budgets' labels from the smallest budget to the largest (the order of colours and panels)."""
    return [flops_label(budget) for budget in sorted(set(budgets))]


def _data(rows: list[dict[str, Any]]) -> alt.Data:
    return alt.Data(values=[{k: _plain(v) for k, v in row.items()} for row in rows])


def _plain(value: Any) -> Any:
    """numpy scalars to Python numbers; non-finite numbers to None (JSON has no NaN)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _finite(*values: Any) -> bool:
    return all(isinstance(v, int | float | np.generic) and np.isfinite(v) for v in values)


def _text(value: Any, fmt: str) -> str:
    """A number as a tooltip shows it, "–" for none (Vega would write null), ∞ for an unbounded end."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if np.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:{fmt}}"


def _interval_text(low: Any, high: Any, fmt: str) -> str:
    """A 95% interval as a tooltip shows it: [low, high], or "–" where there is none (too few points)."""
    if _text(low, fmt) == "–" or _text(high, fmt) == "–":
        return "–"
    return f"[{_text(low, fmt)}, {_text(high, fmt)}]"


def _bounded(rows: list[dict[str, Any]], series: str) -> bool:
    """Whether any row of the series has a finite interval (low, high)."""
    return any(_finite(row.get("low"), row.get("high")) for row in rows if row["series"] == series)


def _log_grid(low: float, high: float, num: int = NUM_LINE_POINTS) -> np.ndarray:
    return np.geomspace(low, high, num)


def _budget_color(order: list[str], title: str = "FLOP budget") -> alt.Color:
    return alt.Color("budget:O", sort=order, title=title, scale=alt.Scale(scheme=SCHEME))


# -- isoflop curves ---------------------------------------------------------------------------------------


def isoflop_chart(points: Sequence[Any], parabolas: Sequence[Any], *, metric_label: str) -> alt.LayerChart:
    """Loss against N for each budget (log x): the cells, each budget's fitted parabola in ln N, and its
    minimum with the 95% interval of N* as a horizontal bar. A cell left out as an outlier is hollow."""
    outliers = {parabola.outlier for parabola in parabolas if parabola.outlier}
    order = budget_order(point.budget for point in points)
    rows: list[dict[str, Any]] = [
        {
            "kind": "cell",
            "N": point.n,
            "loss": point.loss,
            "budget": flops_label(point.budget),
            "cell": point.cell_id,
            "depth": point.depth,
            "fitted": "left out (outlier)" if point.cell_id in outliers else "fitted",
        }
        for point in points
    ]
    for parabola in parabolas:
        label = flops_label(parabola.budget)
        ns = [point.n for point in points if flops_label(point.budget) == label]
        c2, c1, c0 = parabola.coeffs
        for n in _log_grid(min(ns) / 1.25, max(ns) * 1.25):
            x = np.log(n)
            rows.append({"kind": "fit", "N": n, "loss": c2 * x * x + c1 * x + c0, "budget": label})
        low, high = parabola.n_opt_ci
        rows.append(
            {
                "kind": "min",
                "N": parabola.n_opt,
                "N_low": low,
                "N_high": high,
                "N_ci": _interval_text(low, high, ",.0f"),
                "loss": parabola.loss_opt,
                "budget": label,
                "interior": "yes" if parabola.interior else "no: extend the grid",
            }
        )
    base = alt.Chart(_data(rows)).encode(
        x=alt.X("N:Q").scale(type="log", nice=False, padding=12).axis(format=FORMAT_SI).title("parameters N"),
        y=alt.Y("loss:Q").scale(zero=False).title(metric_label),
        color=_budget_color(order),
    )
    cells = (
        base.transform_filter("datum.kind == 'cell'")
        .mark_point(size=60, filled=True)
        .encode(
            shape=alt.Shape("fitted:N", title="cell", legend=alt.Legend() if outliers else None),
            opacity=alt.condition("datum.fitted == 'fitted'", alt.value(1.0), alt.value(0.35)),
            tooltip=[
                "cell:N",
                "depth:Q",
                alt.Tooltip("N:Q", format=",.0f"),
                alt.Tooltip("loss:Q", format=".4f"),
            ],
        )
    )
    fits = base.transform_filter("datum.kind == 'fit'").mark_line(strokeWidth=1.5).encode(detail="budget:O")
    interval = (
        base.transform_filter("datum.kind == 'min'")
        .mark_rule(strokeWidth=3, opacity=0.6)
        .encode(x2="N_high:Q")
    )
    interval = interval.encode(x="N_low:Q")
    minima = (
        base.transform_filter("datum.kind == 'min'")
        .mark_point(shape="diamond", size=140, filled=True, stroke="black", strokeWidth=1)
        .encode(
            tooltip=[
                alt.Tooltip("budget:O", title="budget"),
                alt.Tooltip("N:Q", format=",.0f", title="N*"),
                alt.Tooltip("N_ci:N", title="N* (95%)"),
                alt.Tooltip("loss:Q", format=".4f"),
                "interior:N",
            ]
        )
    )
    # Only layers with data: an empty one makes Vega warn of an infinite extent.
    layers = [fits] if parabolas else []
    layers += [interval] if any(_finite(row.get("N_low"), row.get("N_high")) for row in rows) else []
    layers += [cells, minima] if parabolas else [cells]
    return alt.layer(*layers).properties(
        width=WIDTH, height=HEIGHT, title="Isoflop curves: loss against model size at each FLOP budget"
    )


# -- compute-optimal scaling ------------------------------------------------------------------------------


def optimum_chart(
    minima: Sequence[tuple[float, float, tuple[float, float]]],
    law: Any,
    *,
    y_title: str,
    title: str,
    c_range: tuple[float, float],
    parametric: Callable[[float], float] | None = None,
    log_y: bool = True,
    y_format: str = FORMAT_SI,
) -> alt.LayerChart:
    """An optimum against compute (log-log): each budget's isoflop minimum with its interval, the power law
    fitted to them with its 95% band over `c_range`, and (dashed) the parametric fit's prediction.

    `minima` are (budget C, value, (low, high)); `law` a `PowerLaw` (or None: points only)."""
    rows: list[dict[str, Any]] = [
        {
            "series": "isoflop minima",
            "C": c,
            "y": value,
            "low": low,
            "high": high,
            "ci": _interval_text(low, high, ".4g"),
        }
        for c, value, (low, high) in minima
    ]
    grid = _log_grid(*c_range)
    if law is not None:
        low, high = law.band(grid)
        for c, value, lo, hi in zip(grid, law(grid), low, high, strict=True):
            rows.append({"series": "power law (95% band)", "C": c, "y": value, "low": lo, "high": hi})
    if parametric is not None:
        rows += [{"series": "parametric L(N, D)", "C": c, "y": parametric(float(c))} for c in grid]
    series = ["isoflop minima", "power law (95% band)", "parametric L(N, D)"]
    palette = ["#1f77b4", "#d62728", "#444444"]
    base = alt.Chart(_data(rows)).encode(
        x=alt.X("C:Q").scale(type="log").axis(format=FORMAT_FLOPS).title("compute C (FLOPs)"),
        y=alt.Y("y:Q")
        .scale(alt.Scale(type="log") if log_y else alt.Scale(zero=False))
        .axis(format=y_format)
        .title(y_title),
        color=alt.Color("series:N", title=None)
        .scale(domain=series, range=palette)
        .legend(orient="bottom", direction="vertical"),
    )
    band = (
        base.transform_filter("datum.series == 'power law (95% band)'")
        .mark_area(opacity=0.15)
        .encode(y="low:Q", y2="high:Q")
    )
    line = base.transform_filter("datum.series == 'power law (95% band)'").mark_line()
    dashed = base.transform_filter("datum.series == 'parametric L(N, D)'").mark_line(strokeDash=[6, 4])
    bars = (
        base.transform_filter("datum.series == 'isoflop minima'").mark_rule().encode(y="low:Q", y2="high:Q")
    )
    dots = (
        base.transform_filter("datum.series == 'isoflop minima'")
        .mark_point(filled=True, size=70)
        .encode(
            tooltip=[
                alt.Tooltip("C:Q", format=".2e"),
                alt.Tooltip("y:Q", format=".4~s", title=y_title),
                alt.Tooltip("ci:N", title="95% interval"),
            ]
        )
    )
    # Only layers with data: an empty one (or intervals the bootstrap could not bound) makes Vega warn of
    # an infinite extent.
    layers = [band] if _bounded(rows, "power law (95% band)") else []
    layers += [line] if law is not None else []
    layers += [dashed] if parametric is not None else []
    layers += [bars] if _bounded(rows, "isoflop minima") else []
    return alt.layer(*layers, dots).properties(width=SMALL_WIDTH, height=SMALL_HEIGHT, title=title)


# -- the parametric fit -----------------------------------------------------------------------------------


def parametric_chart(fit: Any, points: Sequence[Any], *, metric_label: str) -> alt.LayerChart:
    """Contours of the fitted L(N, D) = E + A/N^α + B/D^β over the (N, D) plane (log-log), the cells on top
    coloured by their measured loss on the same scale, and the efficient frontier (the N and D that minimise
    L at each compute C, spent at the cells' FLOPs per token: `ParametricFit.optimal`)."""
    ns, ds = [p.n for p in points], [p.d for p in points]
    n_low, n_high = min(ns) / 3, max(ns) * 3
    d_low, d_high = min(ds) / 3, max(ds) * 3
    losses = [p.loss for p in points]
    rows: list[dict[str, Any]] = []
    for level in np.linspace(min(losses), max(losses), 7):
        level = float(f"{level:.3g}")
        for n in _log_grid(n_low, n_high, 120):
            rest = level - fit.E - fit.A / n**fit.alpha  # what B/D^β must be on this contour
            if rest <= 0:
                continue
            d = (fit.B / rest) ** (1 / fit.beta)
            if d_low <= d <= d_high:
                rows.append({"kind": "contour", "N": n, "D": d, "loss": level})
    cs = [p.c for p in points]
    for c in _log_grid(min(cs) / 10, max(cs) * 100):
        n, d = fit.optimal(float(c))
        if n_low <= n <= n_high and d_low <= d <= d_high:
            rows.append({"kind": "frontier", "N": n, "D": d, "C": c})
    rows += [
        {"kind": "cell", "N": p.n, "D": p.d, "loss": p.loss, "cell": p.cell_id, "depth": p.depth}
        for p in points
    ]
    base = alt.Chart(_data(rows)).encode(
        x=alt.X("N:Q").scale(type="log", domain=[n_low, n_high]).axis(format=FORMAT_SI).title("parameters N"),
        y=alt.Y("D:Q").scale(type="log", domain=[d_low, d_high]).axis(format=FORMAT_SI).title("tokens D"),
    )
    color = alt.Color("loss:Q", title=metric_label).scale(scheme=SCHEME, reverse=True)
    contours = (
        base.transform_filter("datum.kind == 'contour'")
        .mark_line(strokeWidth=1.5)
        .encode(color=color, detail="loss:Q", order="N:Q", tooltip=[alt.Tooltip("loss:Q", title="contour")])
    )
    frontier = (
        base.transform_filter("datum.kind == 'frontier'")
        .mark_line(color="black", strokeDash=[6, 3], strokeWidth=2)
        .encode(
            order="C:Q",
            tooltip=[
                alt.Tooltip("C:Q", format=".2e"),
                alt.Tooltip("N:Q", format=",.0f"),
                alt.Tooltip("D:Q", format=",.0f"),
            ],
        )
    )
    cells = (
        base.transform_filter("datum.kind == 'cell'")
        .mark_circle(size=90, stroke="black", strokeWidth=1, opacity=1)
        .encode(
            color=color,
            tooltip=[
                "cell:N",
                "depth:Q",
                alt.Tooltip("N:Q", format=",.0f"),
                alt.Tooltip("D:Q", format=",.0f"),
                alt.Tooltip("loss:Q", format=".4f"),
            ],
        )
    )
    return alt.layer(contours, frontier, cells).properties(
        width=WIDTH,
        height=HEIGHT,
        title=alt.TitleParams(
            "Parametric fit: contours of L(N, D), the cells, the efficient frontier",
            subtitle="dashed black: the compute-optimal N and D for each budget (C = FLOPs per token × D)",
        ),
    )


def residuals_chart(points: Sequence[Any], residuals: Sequence[float]) -> alt.LayerChart:
    """ln L − ln L̂ of each cell against N: a good fit scatters around zero with no trend by budget."""
    order = budget_order(p.budget for p in points)
    rows = [
        {"N": p.n, "residual": r, "budget": flops_label(p.budget), "cell": p.cell_id, "depth": p.depth}
        for p, r in zip(points, residuals, strict=True)
    ]
    base = alt.Chart(_data(rows)).encode(
        x=alt.X("N:Q").scale(type="log", nice=False, padding=12).axis(format=FORMAT_SI).title("parameters N")
    )
    zero = alt.Chart(_data([{"zero": 0.0}])).mark_rule(color="gray").encode(y="zero:Q")
    dots = base.mark_point(filled=True, size=60).encode(
        y=alt.Y("residual:Q").title("residual: ln L − ln L̂"),
        color=_budget_color(order),
        tooltip=["cell:N", "depth:Q", alt.Tooltip("residual:Q", format="+.4f")],
    )
    return alt.layer(zero, dots).properties(
        width=WIDTH * 0.8, height=HEIGHT * 0.6, title="Parametric fit residuals"
    )


# -- training ---------------------------------------------------------------------------------------------


def training_curves_chart(cells: Sequence[CellRow], curves: dict[str, list[Any]]) -> alt.FacetChart:
    """Training loss against tokens seen (log x) for every cell, coloured by depth, one panel per budget;
    cells that did not finish are dashed. Mid-training cells (another loss, on chat data, from their
    parent's checkpoint) get panels of their own, after their budget's pretraining panel."""
    rows = []
    for cell in cells:
        for point in curves.get(cell.id, []):
            if point.loss is None or point.tokens <= 0:
                continue
            rows.append(
                {
                    "tokens": point.tokens,
                    "loss": point.loss,
                    "cell": cell.id,
                    "depth": cell.depth,
                    "budget": _panel(cell),
                    "state": cell.state,
                    "step": point.step,
                }
            )
    shown = [cell for cell in cells if cell.id in curves]
    order = [
        label
        for budget in budget_order(cell.budget_flops for cell in shown)
        for label in (budget, f"{budget}{MID_PANEL}")
        if any(_panel(cell) == label for cell in shown)
    ]
    states = sorted({row["state"] for row in rows}, key=lambda state: (state != "done", state))
    chart = (
        alt.Chart(_data(rows))
        .mark_line(strokeWidth=1.3)
        .encode(
            x=alt.X("tokens:Q").scale(type="log").axis(format=FORMAT_SI).title("tokens seen"),
            y=alt.Y("loss:Q").scale(zero=False).title("training loss"),
            color=alt.Color("depth:O", title="depth").scale(scheme=SCHEME),
            detail="cell:N",
            strokeDash=alt.StrokeDash("state:N", title="state").scale(
                domain=states, range=[DASHES.get(state, [2, 2]) for state in states]
            ),
            tooltip=["cell:N", "depth:O", "state:N", "step:Q", alt.Tooltip("loss:Q", format=".4f")],
        )
        .properties(width=PANEL_WIDTH, height=PANEL_HEIGHT)
    )
    return chart.facet(facet=alt.Facet("budget:O", sort=order, title="FLOP budget"), columns=3).properties(
        title="Training curves"
    )


MID_PANEL = " · mid-training"  # after a budget's label: the panel of its mid-training cells


def _panel(cell: CellRow) -> str:
    return flops_label(cell.budget_flops) + (MID_PANEL if cell.mode == "mid-training" else "")


def evals_chart(rows: Sequence[dict[str, Any]]) -> alt.FacetChart:
    """Downstream scores against compute (log x), one panel per task, coloured by depth; a vertical bar of
    ± one standard error where a row has one. Mid-training cells are triangles, pretraining cells circles.

    `rows`: {"task", "C", "score", "low", "high", "depth", "cell", "budget", "stage"} (low/high may be
    None; stage is the cell's mode; C of a mid-training cell counts its parent's pretraining too)."""
    base = alt.Chart(_data(list(rows))).encode(
        x=alt.X("C:Q").scale(type="log").axis(format=FORMAT_FLOPS).title("compute C (FLOPs)"),
        color=alt.Color("depth:O").scale(scheme=SCHEME),
    )
    stages = sorted({row["stage"] for row in rows}, key=lambda stage: stage != "pretraining")
    points = base.mark_point(filled=True, size=55).encode(
        y=alt.Y("score:Q").scale(zero=False).title("score"),
        shape=alt.Shape("stage:N", title="stage").scale(
            domain=stages, range=["circle" if stage == "pretraining" else "triangle-up" for stage in stages]
        ),
        tooltip=[
            "task:N",
            "cell:N",
            "stage:N",
            "depth:O",
            "budget:N",
            alt.Tooltip("score:Q", format=".4f"),
        ],
    )
    layers = [points]
    if any(row.get("low") is not None for row in rows):
        errors = base.transform_filter("isValid(datum.low)").mark_rule().encode(y="low:Q", y2="high:Q")
        layers.insert(0, errors)
    chart = alt.layer(*layers).properties(width=PANEL_WIDTH, height=PANEL_HEIGHT)
    return chart.facet(facet=alt.Facet("task:N", title=None), columns=3).properties(
        title="Downstream evaluations against compute"
    )


def throughput_chart(cells: Sequence[CellRow]) -> alt.HConcatChart | alt.Chart:
    """Training throughput (tokens/s, log-log against N) and MFU per cell; MFU only where it is known."""
    rows = [
        {
            "N": cell.num_params,
            "tok_per_s": cell.tok_per_s,
            "mfu": cell.mfu,
            "MFU": _text(cell.mfu, ".1%"),
            "depth": cell.depth,
            "cell": cell.id,
            "device": cell.device or "?",
        }
        for cell in cells
        if cell.tok_per_s is not None
    ]
    base = alt.Chart(_data(rows)).encode(
        x=alt.X("N:Q").scale(type="log").axis(format=FORMAT_SI).title("parameters N"),
        color=alt.Color("depth:O").scale(scheme=SCHEME),
        tooltip=[
            "cell:N",
            "depth:O",
            "device:N",
            alt.Tooltip("tok_per_s:Q", format=",.0f"),
            "MFU:N",
        ],
    )
    speed = base.mark_point(filled=True, size=60).encode(
        y=alt.Y("tok_per_s:Q").scale(type="log").axis(format=FORMAT_SI).title("tokens / s (median)")
    )
    speed = speed.properties(width=PANEL_WIDTH * 1.4, height=PANEL_HEIGHT, title="Throughput per cell")
    if not any(row["mfu"] is not None for row in rows):
        return speed
    mfu = (
        base.transform_filter("isValid(datum.mfu)")
        .mark_point(filled=True, size=60)
        .encode(y=alt.Y("mfu:Q").axis(format="%").title("MFU (median)"))
        .properties(width=PANEL_WIDTH * 1.4, height=PANEL_HEIGHT, title="Model FLOPs utilisation per cell")
    )
    return alt.hconcat(speed, mfu)
