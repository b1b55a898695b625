"""The scaling report of a study: one self-contained HTML file, or its charts as PNG/SVG files.

    from reports.report import write_report
    result = write_report(store, "isoflop", "reports/isoflop.html")     # fits the study itself
    print(result.path, result.left_out)

Read top to bottom, the report holds: a summary (cells, GPU-hours, the fitted laws with 95% intervals, the
recommended N* and D* for larger budgets), the isoflop curves, N*(C), D*(C) and L*(C), the parametric fit
(contours, frontier, residuals), every cell's training curve, downstream evals, throughput and MFU, and a
filterable table of every cell. What cannot be shown (no finished cell, a budget with too few points, no
evals in the store) is said at the top and in its section; the rest still renders.

`build_report(data, fits)` is pure (rows and fit objects in, sections out); `write_report` reads the store,
fits, builds and writes. The fits come from `reports.fit` (see docs/internals.md).
"""

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import altair as alt
import numpy as np
import vl_convert

from reports import charts
from reports.data import CellRow, StudyData, read_study
from reports.html import chart_div, esc, notice, page, table, vegalite_version, write_atomically
from store import Store

FORMATS = ("html", "png", "svg")
METRIC_LABELS = {"bpb": "validation bits per byte", "loss": "validation loss (nats per token)"}
# Recommendations are made for these multiples of the largest budget of the grid.
LARGER_BUDGETS = (10.0, 100.0, 1000.0)


@dataclass(kw_only=True, slots=True)
class Section:
    anchor: str
    title: str
    html: str = ""  # text and tables, above the charts
    charts: list[tuple[str, alt.TopLevelMixin, str]] = field(default_factory=list)  # (file name, chart, note)
    left_out: list[str] = field(default_factory=list)  # what this section could not show, and why


@dataclass(frozen=True, kw_only=True, slots=True)
class Report:
    title: str
    data: StudyData
    fits: Any  # reports.fit.StudyFits | None
    sections: list[Section]
    left_out: list[str]  # every section's, in reading order

    def charts(self) -> list[tuple[str, alt.TopLevelMixin]]:
        return [(name, chart) for section in self.sections for name, chart, _ in section.charts]

    def html(self) -> str:
        index = 0
        rendered = []
        for section in self.sections:
            body = section.html
            if section.left_out and section.anchor != "summary":
                body += notice("Left out of this section", section.left_out)
            figures = ""
            for name, chart, note in section.charts:
                index += 1
                figures += chart_div(index, name, chart.to_dict(), note)
            body += f'<div class="charts">\n{figures}</div>\n' if figures else ""
            rendered.append((section.anchor, section.title, body))
        generated = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.data.read_at))
        study_file, database = shown_path(self.data.study.path), shown_path(self.data.database)
        meta = (
            f"study file {esc(study_file)} · database {esc(database)} · "
            f"generated {generated} by <code>nanostudy report</code>"
        )
        return page(title=self.title, meta=meta, sections=rendered)


@dataclass(frozen=True, kw_only=True, slots=True)
class ReportResult:
    paths: list[Path]  # the HTML file, or one file per chart
    left_out: list[str]


def write_report(
    store: Store,
    study_name: str,
    out: Path | str,
    *,
    fmt: str = "html",
    metric: str = "bpb",
    n_boot: int = 1000,
    seed: int = 0,
    fits: Any = None,
) -> ReportResult:
    """Read the study, fit it (unless `fits` is given), and write the report to `out`: the HTML file, or
    for `fmt` png/svg a folder with one file per chart. Raises `reports.data.UnknownStudyError`."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: must be one of {', '.join(FORMATS)}")
    fit_error = None
    with store.snapshot():  # the cells and the fits' points from one moment of a runner's writes
        data = read_study(store, study_name)
        if fits is None:
            try:
                fits = _fit_study(store, study_name, metric=metric, n_boot=n_boot, seed=seed)
            except Exception as error:  # the report still shows the cells, curves and costs without fits
                fit_error = f"scaling fits: failed: {type(error).__name__}: {error}"
    report = build_report(data, fits, metric=metric, fit_error=fit_error)
    out = Path(out)
    if fmt == "html":
        page_html = report.html()
        write_atomically(out, lambda file: file.write(page_html))
        return ReportResult(paths=[out], left_out=report.left_out)
    return ReportResult(paths=export_charts(report, out, fmt), left_out=report.left_out)


def export_charts(report: Report, folder: Path, fmt: str, *, scale: float = 2.0) -> list[Path]:
    """Each chart as its own PNG (at `scale`× for print) or SVG file, numbered in reading order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, (name, chart) in enumerate(report.charts(), start=1):
        spec = chart.to_dict()
        path = folder / f"{number:02d}-{name}.{fmt}"
        if fmt == "png":
            path.write_bytes(vl_convert.vegalite_to_png(spec, vl_version=vegalite_version(), scale=scale))
        else:
            path.write_text(vl_convert.vegalite_to_svg(spec, vl_version=vegalite_version()), encoding="utf-8")
        paths.append(path)
    return paths


def _fit_study(store: Store, study_name: str, *, metric: str, n_boot: int, seed: int) -> Any:
    from reports.fit import fit_study  # scipy: imported when a report is made, not with the CLI

    return fit_study(store, study_name, metric=metric, n_boot=n_boot, seed=seed)


# -- sections ---------------------------------------------------------------------------------------------


def build_report(data: StudyData, fits: Any, *, metric: str = "bpb", fit_error: str | None = None) -> Report:
    """The report's sections from the study's rows and its fits (None: nothing could be fitted, and
    `fit_error` may say why)."""
    label = METRIC_LABELS.get(metric, metric)
    sections = [
        _guarded("isoflop", "Isoflop curves", _isoflop_section, data, fits, label, fit_error),
        _guarded("optimum", "Compute-optimal N*, D* and L*", _optimum_section, fits, label),
        _guarded("parametric", "Parametric fit L(N, D)", _parametric_section, fits, label),
        _training_section(data),
        _evals_section(data),
        _throughput_section(data),
        _cells_section(data),
    ]
    left_out = [line for section in sections for line in section.left_out]
    # The fits' own problems that no section took up (e.g. a budget too small for a bootstrap interval, the
    # prediction check); grid advice has a notice of its own.
    advice = {_advice_line(p) for p in _parabolas(fits) if p.advice}
    problems = list(fits.problems) if fits is not None else []
    if fits is not None and not fits.points:  # one line said it; keep only why cells were left out
        problems = [line for line in problems if "left out" in line]
    left_out += [line for line in problems if line not in left_out and line not in advice]
    summary = _summary_section(data, fits, label, left_out)
    return Report(
        title=f"nanostudy report: {data.study.name}",
        data=data,
        fits=fits,
        sections=[summary, *sections],
        left_out=left_out,
    )


def _summary_section(data: StudyData, fits: Any, label: str, left_out: list[str]) -> Section:
    counts = data.counts
    shown = [state for state, n in counts.items() if n or state in ("done", "failed", "diverged")]
    body = '<p class="counts">' + "".join(f"<span><b>{counts[s]}</b> {s}</span>" for s in shown)
    body += f"<span>of <b>{len(data.cells)}</b> cells</span></p>\n"
    devices = sorted({cell.device for cell in data.cells if cell.device})
    body += (
        f"<p>Compute used: <b>{data.gpu_hours:,.2f} GPU-hours</b>"
        + (f" and {data.cpu_hours:,.2f} CPU-hours (cells trained on the CPU)" if data.cpu_hours > 0 else "")
        + (f" on {esc(', '.join(devices))}" if devices else "")
        + f"; {sum(c.flops for c in data.cells if c.state == 'done'):.3g} FLOPs trained in done cells.</p>\n"
    )
    body += notice("What this report leaves out", left_out)
    body += notice("Mixed heads", _mixed_heads(data))
    if fits is not None:
        advice = [_advice_line(p) for p in _parabolas(fits) if p.advice]
        body += notice("Grid advice", advice, kind="advice")
        parts = ((_laws_table, (fits, label)), (_recommendations, (fits,)), (_prediction, (fits,)))
        for part, args in parts:
            try:
                body += part(*args)
            except Exception as error:  # one table that breaks on odd fits leaves the others
                failed = f"{part.__name__.strip('_')}: failed: {type(error).__name__}: {error}"
                body += notice("Not shown", [failed])
    return Section(anchor="summary", title="Summary", html=body)


def _guarded(anchor: str, title: str, build, *args) -> Section:
    """build(*args), or an empty section saying why it failed: each fit's section fails on its own."""
    try:
        return build(*args)
    except Exception as error:  # the rest of the report still renders
        failed = f"{title}: failed: {type(error).__name__}: {error}"
        return Section(anchor=anchor, title=title, left_out=[failed])


def _laws_table(fits: Any, label: str) -> str:
    rows = []
    iso = fits.isoflop
    if iso is not None:
        for name, law in (("N*(C)", iso.n_opt), ("D*(C)", iso.d_opt)):
            if law is not None:
                rows.append(
                    (f"{name} = k·C^e (isoflop{_minima_used(law)})", f"e = {law.exponent:.3f}",
                     _ci(law.exponent_ci, ".3f"), f"k = {law.k:.3g}", _ci(law.k_ci, ".3g"))
                )  # fmt: skip
        if iso.loss_opt is not None:
            law = iso.loss_opt
            rows.append(
                (f"L*(C) = E + k·C^e (isoflop{_minima_used(law)})", f"e = {law.exponent:.3f}",
                 _ci(law.exponent_ci, ".3f"), f"E = {law.offset:.4g}", _ci(law.offset_ci, ".4g"))
            )  # fmt: skip
    par = fits.parametric
    if par is not None:
        for name in ("E", "A", "B", "alpha", "beta", "a", "b"):
            value = getattr(par, name)
            rows.append((_PARAM_NAMES[name], f"{value:.4g}", _ci(par.ci.get(name), ".4g"), "", ""))
    if not rows:
        return "<p>No law could be fitted (see above).</p>\n"
    intro = (
        f"<h3>Fitted laws ({esc(label)})</h3>\n<p>Intervals are 95% bootstrap intervals (the parametric law: "
        "over resampled cells; the isoflop laws: over draws of the noise pooled across budgets)"
        + (f" ({fits.parametric.n_boot} resamples)" if par is not None else "")
        + ". Parametric: L(N, D) = E + A/N<sup>α</sup> + B/D<sup>β</sup>; "
        + "N* ∝ C<sup>a</sup>, D* ∝ C<sup>b</sup>.</p>\n"
    )
    return intro + table(("law", "estimate", "95% interval", "", ""), rows)


def _minima_used(law: Any) -> str:
    """Which budgets' minima an isoflop law was fitted to, when not simply all of them."""
    if law.extrapolated:
        return "; includes minima outside the sampled sizes, which can bias it and narrow its interval"
    if law.excluded:
        budgets = ", ".join(f"{c:.2g}" for c in law.excluded)
        return f"; minima inside the sampled sizes only: budget {budgets} left out"
    return ""


_PARAM_NAMES = {
    "E": "E (irreducible loss)",
    "A": "A",
    "B": "B",
    "alpha": "α (exponent of N)",
    "beta": "β (exponent of D)",
    "a": "a = β/(α+β): N* ∝ C^a",
    "b": "b = α/(α+β): D* ∝ C^b",
}


def _recommendations(fits: Any) -> str:
    # The largest budget the fits saw (as `nanostudy fit` takes it), not the grid's: when every cell of the
    # grid's top budget failed, the fits end a budget lower.
    budgets = [point.budget for point in fits.points]
    iso, par = fits.isoflop, fits.parametric
    if not budgets or (par is None and (iso is None or iso.n_opt is None)):
        return ""
    rows = []
    for multiple in LARGER_BUDGETS:
        c = max(budgets) * multiple
        row = [f"{c:.2g} ({multiple:g}× the largest)"]
        for law in (iso.n_opt, iso.d_opt) if iso is not None else (None, None):
            row += _law_at(law, c)
        if par is not None:
            n, d = par.optimal(c)
            ci = par.optimal_ci(c)
            row += [si(n), _ci(ci["n"], "si"), si(d), _ci(ci["d"], "si"), f"{d / n:.1f}"]
        else:
            row += ["-"] * 5
        rows.append(row)
    header = ("budget C", "N* isoflop", "95%", "D* isoflop", "95%", "N* parametric", "95%",
              "D* parametric", "95%", "D/N")  # fmt: skip
    return (
        "<h3>Recommended model size and tokens for larger budgets</h3>\n"
        "<p>Extrapolations of the fitted laws: the further the budget from the grid, the wider the interval "
        "should be read.</p>\n" + table(header, rows)
    )


def _law_at(law: Any, c: float) -> list[str]:
    if law is None:
        return ["-", "-"]
    low, high = law.band(np.array([c]))
    return [si(float(law(np.array([c]))[0])), _ci((float(low[0]), float(high[0])), "si")]


def _prediction(fits: Any) -> str:
    check = fits.prediction
    if check is None:
        return ""
    low, high = check.predicted_ci
    verdict = ""
    if not (math.isnan(low) or math.isnan(high)):
        verdict = f" ({'inside' if low <= check.measured <= high else 'outside'} the interval)"
    return (
        f"<p>Prediction check ({esc(check.method)}): fitted without the largest budget "
        f"({check.budget:.2g} FLOPs), the best loss there was predicted as <b>{check.predicted:.4f}</b> "
        f"{_ci(check.predicted_ci, '.4f')}; measured <b>{check.measured:.4f}</b> "
        f"{verdict}.</p>\n"
    )


def _isoflop_section(data: StudyData, fits: Any, label: str, fit_error: str | None) -> Section:
    section = Section(anchor="isoflop", title="Isoflop curves")
    if fits is None or not fits.points:
        section.left_out.append(fit_error or _no_points(data, fits))
        return section
    if fits.isoflop is None:
        section.left_out += list(fits.problems) or ["isoflop curves: not fitted"]
        parabolas = []
    else:
        parabolas = fits.isoflop.parabolas
        section.left_out += fits.isoflop.skipped
    section.html = (
        "<p>Each budget's cells, the parabola fitted to loss against ln N, and its minimum (diamond) with "
        "the 95% interval of N* (bar). A minimum at the edge of the sampled sizes is not trusted: the grid "
        "advice above says which depths to add.</p>\n"
    )
    section.charts.append(("isoflop", charts.isoflop_chart(fits.points, parabolas, metric_label=label), ""))
    return section


def _optimum_section(fits: Any, label: str) -> Section:
    section = Section(anchor="optimum", title="Compute-optimal N*, D* and L*")
    iso = fits.isoflop if fits is not None else None
    if iso is None or not iso.parabolas:
        if fits is not None and fits.points:  # with no points at all, the isoflop section said it already
            section.left_out.append("N*(C), D*(C), L*(C): no isoflop parabola was fitted")
        return section
    budgets = [p.budget for p in iso.parabolas]
    c_range = (min(budgets) / 2, max(budgets) * max(LARGER_BUDGETS))
    par = fits.parametric
    for name, law, attr, title, y_title, par_index in (
        ("n-opt", iso.n_opt, "n_opt", "N*(C): compute-optimal parameters", "parameters N*", 0),
        ("d-opt", iso.d_opt, "d_opt", "D*(C): compute-optimal tokens", "tokens D*", 1),
        ("loss-opt", iso.loss_opt, "loss_opt", "L*(C): the best loss at each budget", label, None),
    ):
        minima = [(p.budget, getattr(p, attr), getattr(p, f"{attr}_ci")) for p in iso.parabolas]
        parametric = None
        if par is not None and par_index is not None:
            parametric = lambda c, i=par_index: par.optimal(c)[i]
        # Loss on a linear axis: L* flattens towards the irreducible loss, and a log axis hides that.
        chart = charts.optimum_chart(
            minima,
            law,
            y_title=y_title,
            title=title,
            c_range=c_range,
            parametric=parametric,
            log_y=par_index is not None,
            y_format=charts.FORMAT_SI if par_index is not None else ".3~f",
        )
        note = f"{_law_text(law)}." if law is not None else ""
        section.charts.append((name, chart, note))
    return section


def _law_text(law: Any) -> str:
    interval = _ci(law.exponent_ci, ".3f")
    bounded = f"95% interval {interval}" if interval != "-" else "no interval (too few resampled minima)"
    offset = f"{law.offset:.4g} + " if law.offset else ""
    return f"fit: {offset}{law.k:.3g} · C^{law.exponent:.3f}, exponent {bounded}{_minima_used(law)}"


def _parametric_section(fits: Any, label: str) -> Section:
    section = Section(anchor="parametric", title="Parametric fit L(N, D)")
    par = fits.parametric if fits is not None else None
    if par is None:
        if fits is not None and fits.points:
            reasons = [line for line in fits.problems if "parametric" in line.lower()]
            section.left_out += reasons or ["parametric fit: not fitted (too few finished cells)"]
        return section
    section.html = (
        f"<p>L(N, D) = {par.E:.3g} + {par.A:.3g}/N<sup>{par.alpha:.3f}</sup> + "
        f"{par.B:.3g}/D<sup>{par.beta:.3f}</sup>, fitted to {par.n_points} cells (Huber loss on ln L).</p>\n"
    )
    section.charts.append(("parametric", charts.parametric_chart(par, fits.points, metric_label=label), ""))
    section.charts.append(("residuals", charts.residuals_chart(fits.points, par.residuals), ""))
    return section


def _training_section(data: StudyData) -> Section:
    section = Section(anchor="training", title="Training curves")
    with_curves = [cell for cell in data.cells if data.curves.get(cell.id)]
    if not with_curves:
        section.left_out.append("training curves: no cell has logged a training step yet")
        return section
    # A step whose loss was not finite (stored as NULL) has nothing to draw: a cell that diverged at its
    # first step made a chart with no data, which Vega drew empty and warned of on the console.
    with_curves = [
        cell
        for cell in with_curves
        if any(point.loss is not None and point.tokens > 0 for point in data.curves[cell.id])
    ]
    if not with_curves:
        section.left_out.append("training curves: no cell has logged a finite training loss yet")
        return section
    section.charts.append(("training", charts.training_curves_chart(with_curves, data.curves), ""))
    return section


# The eval gauntlet's averages (nanogpt/gauntlet/tasks.py, average_name): `core_average`,
# `category/<name>`, `chatcore_average`, under a preset's prefix (`quick/`) and with "@N" when N examples
# per task were scored. When a study has them, the chart shows them rather than a panel per task.
_AVERAGE_TASKS = ("core_average", "chatcore_average")
_CATEGORY = "category/"


def _is_average(task: str) -> bool:
    name = task.split("@", 1)[0]
    return name.rsplit("/", 1)[-1] in _AVERAGE_TASKS or _CATEGORY in name


def _compute(cells: dict[str, CellRow], cell_id: str) -> float:
    """The compute behind a cell's model: a mid-training cell's own and its parent's pretraining."""
    cell = cells[cell_id]
    parent = cells.get(cell.parent_id) if cell.parent_id else None
    return cell.flops + (parent.flops if parent is not None else 0.0)


def _evals_section(data: StudyData) -> Section:
    section = Section(anchor="evals", title="Downstream evaluations")
    cells = {cell.id: cell for cell in data.cells}
    scored = [row for row in data.evals if row.score is not None and row.cell_id in cells]
    averages = [row for row in scored if _is_average(row.task)]
    note = ""
    if averages:
        per_task = len(scored) - len(averages)
        note = (
            f"The eval gauntlet's centered averages (± one standard error); the {per_task} per-task scores "
            "behind them are in the store (<code>nanostudy eval --json</code> prints them)."
        )
    rows = [
        {
            "task": row.task,
            "C": _compute(cells, row.cell_id),
            "score": row.score,
            "low": None if row.stderr is None else row.score - row.stderr,
            "high": None if row.stderr is None else row.score + row.stderr,
            "depth": cells[row.cell_id].depth,
            "cell": row.cell_id,
            "budget": charts.flops_label(cells[row.cell_id].budget_flops),
            "stage": cells[row.cell_id].mode,
        }
        for row in (averages or scored)
    ]
    if not rows:
        section.left_out.append("downstream evaluations: the store has no eval scores for this study")
        return section
    section.charts.append(("evals", charts.evals_chart(rows), note))
    return section


def _throughput_section(data: StudyData) -> Section:
    section = Section(anchor="throughput", title="Throughput and MFU")
    measured = [cell for cell in data.cells if cell.tok_per_s is not None]
    if not measured:
        section.left_out.append("throughput: no cell has logged its speed yet")
        return section
    if all(cell.mfu is None for cell in measured):
        section.left_out.append("MFU: not known (cells ran on the CPU, or on a GPU of unknown peak FLOPs)")
    section.html = "<p>Medians over each cell's steps after the first 10% (compilation and warm-up).</p>\n"
    section.charts.append(("throughput", charts.throughput_chart(measured), ""))
    return section


def _mixed_heads(data: StudyData) -> list[str]:
    """A line when the done cells trained their lm_head in different precisions (fp8_head: auto on GPUs
    with and without FP8, or cells recorded before auto was the default)."""
    done = [cell for cell in data.cells if cell.state == "done" and cell.fp8_head is not None]
    fp8 = [cell for cell in done if cell.fp8_head]
    if not fp8 or len(fp8) == len(done):
        return []
    return [
        f"{len(fp8)} of the {len(done)} done cells trained the lm_head's matmuls in FP8, the others in the "
        "autocast dtype (the cell table's device column says which). At depth 12 the FP8 head changed the "
        "validation loss by less than a rerun of the same cell does; for one head throughout, set "
        "fp8_head: true or false in the study (docs/training.md)."
    ]


def _cells_section(data: StudyData) -> Section:
    header = ("cell", "mode", "depth", "budget", "seed", "state", "N", "D", "C", "steps", "val loss",
              "val bpb", "tries", "device", "hours", "tok/s", "MFU", "reason")  # fmt: skip
    rows = "".join(_cell_row(cell) for cell in data.cells)
    head = "".join(
        f"<th{' class=text' if i in (0, 1, 5, 13, 17) else ''}>{esc(h)}</th>" for i, h in enumerate(header)
    )
    states = "".join(f'<option value="{s}">{s}</option>' for s, n in data.counts.items() if n)
    body = (
        '<p><input id="cell-filter" type="search" placeholder="filter: e.g. done 1e15 d12">'
        f'<select id="cell-state"><option value="">every state</option>{states}</select> '
        f'<span id="cell-count">{len(data.cells)} shown</span></p>\n'
        f'<div class="scroll"><table id="cells"><thead><tr>{head}</tr></thead>'
        f"<tbody>\n{rows}</tbody></table></div>\n"
    )
    return Section(anchor="cells", title="Every cell", html=body)


def _cell_row(cell: CellRow) -> str:
    values = (
        cell.id, "mid" if cell.mode == "mid-training" else "pre", cell.depth,
        charts.flops_label(cell.budget_flops), cell.seed, cell.state, si(cell.num_params),
        si(cell.num_tokens), f"{cell.flops:.2e}", f"{cell.steps_done}/{cell.steps_total}",
        _num(cell.val_loss, ".4f"), _num(cell.val_bpb, ".4f"), cell.num_attempts,
        (cell.device or "-") + ", FP8 head" * bool(cell.fp8_head),
        _hours(cell), _num(cell.tok_per_s, ",.0f"), _num(cell.mfu, ".1%"),
    )  # fmt: skip
    cells = "".join(
        f"<td{' class=text' if i in (0, 1, 5, 13) else ''}>{esc(v)}</td>" for i, v in enumerate(values)
    )
    reason = (cell.reason or "").splitlines()[0] if cell.reason else ""
    state = esc(cell.state)
    return f'<tr class="{state}" data-state="{state}">{cells}<td class="reason">{esc(reason)}</td></tr>\n'


def _hours(cell: CellRow) -> str:
    """GPU-hours, or CPU-hours for a cell trained on the CPU."""
    if cell.cpu_hours > 0 and cell.gpu_hours == 0:
        return f"{cell.cpu_hours:.2f} CPU"
    return f"{cell.gpu_hours:.2f} GPU"


def _parabolas(fits: Any) -> list[Any]:
    return fits.isoflop.parabolas if fits is not None and fits.isoflop is not None else []


def _advice_line(parabola: Any) -> str:
    """As `reports.fit` words it among its problems, so that the two are told apart."""
    return f"budget {parabola.budget:.3g}: {parabola.advice}"


# -- formatting -------------------------------------------------------------------------------------------


def _no_points(data: StudyData, fits: Any) -> str:
    done = sum(1 for cell in data.pretraining if cell.state == "done")
    problems = "; ".join(fits.problems) if fits is not None and fits.problems else ""
    if done == 0:
        return (
            "scaling fits: no finished pretraining cell yet, so no isoflop curve, law or parametric fit "
            "(they need done cells with a final validation value)"
        )
    return f"scaling fits: none of the {done} done cells has a final validation value" + (
        f" ({problems})" if problems else ""
    )


def _ci(interval: Sequence[float] | None, fmt: str) -> str:
    if interval is None or any(math.isnan(value) for value in interval):
        return "-"  # no interval (too few points or resamples)
    low, high = interval
    return f"[{_end(low, fmt)}, {_end(high, fmt)}]"


def _end(value: float, fmt: str) -> str:
    """An interval's end; an unbounded one (the bootstrap's draws ran off to it) as ∞ or −∞."""
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return si(value) if fmt == "si" else f"{value:{fmt}}"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:{fmt}}"


def si(number: float) -> str:
    """1.23M, 45.6B: parameters and tokens as people say them."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(number) >= scale:
            return f"{number / scale:.3g}{suffix}"
    return f"{number:.3g}"


def shown_path(path: str) -> str:
    """A path as the report shows it: relative to the working directory when it lies under it, so that a
    report committed beside its study names no one's home folder; anything else (a URL) as given."""
    candidate = Path(path)
    if not candidate.is_absolute():
        return path
    try:
        return str(candidate.relative_to(Path.cwd()))
    except ValueError:
        return path
