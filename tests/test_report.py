"""The HTML report: every section from a realistic store, bad input said and survived, the CLI, the hook that
writes it after `nanostudy run`, and PNG/SVG export. The browser half is tests/test_report_browser.py."""

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from unittest import mock

import pytest
from report_fixtures import (
    BUDGETS,
    DEPTHS,
    build_study,
    empty_study,
    new_study,
    one_budget_study,
    sparse_study,
)

import reports.data
import reports.report
from reports.data import attempt_hours, read_study, thin
from reports.fit import fit_points, fit_study, store_points, table_points
from reports.report import build_report, write_report
from runner.cli import main
from store import (
    Attempt,
    AttemptOutcome,
    CellMode,
    Executor,
    NewCell,
    add_cells,
    claim,
    end_attempt,
    ingest,
    open_store,
)

SECTIONS = ("summary", "isoflop", "optimum", "parametric", "training", "evals", "throughput", "cells")
CHARTS = (
    "isoflop",
    "n-opt",
    "d-opt",
    "loss-opt",
    "parametric",
    "residuals",
    "training",
    "evals",
    "throughput",
)


# Bootstrap resamples in these tests: enough for intervals, few enough for seconds.
N_BOOT = 20


@pytest.fixture(scope="module")
def study_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("report") / "nanostudy.db"
    build_study(db).close()
    return db


@pytest.fixture(scope="module")
def fits(study_db: Path):
    """reports.fit's fits of the synthetic study, made once (the parametric fit's starts take seconds)."""
    from store import open_store

    with open_store(study_db, create=False) as store:
        return fit_study(store, "synthetic", n_boot=N_BOOT)


@pytest.fixture
def store(study_db: Path):
    from store import open_store

    with open_store(study_db, create=False) as store:
        yield store


def _specs(html: str) -> dict[str, dict]:
    """The Vega-Lite spec of each chart, by chart name."""
    found = re.findall(r'data-name="([^"]+)" data-spec="(spec-\d+)"', html)
    specs = {}
    for name, spec_id in found:
        match = re.search(rf'<script type="application/json" id="{spec_id}">(.*?)</script>', html, re.S)
        specs[name] = json.loads(match.group(1))
    return specs


def _values(spec: dict) -> list[dict]:
    return [row for rows in spec.get("datasets", {}).values() for row in rows] + spec.get("data", {}).get(
        "values", []
    )


def test_every_section_and_chart_from_a_realistic_study(store, fits, tmp_path: Path) -> None:
    result = write_report(store, "synthetic", tmp_path / "r.html", fits=fits)
    html = (tmp_path / "r.html").read_text()
    assert result.left_out == []
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in html
    specs = _specs(html)
    assert tuple(specs) == CHARTS
    # Offline: the only scripts are inline; nothing refers to a server.
    assert not re.search(r"<script[^>]+src=", html)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "vegaEmbed" in html and len(html) < 3_000_000
    # The summary: counts, GPU-hours from the attempts, the laws, recommendations for larger budgets.
    assert "<b>12</b> done" in html and "<b>1</b> failed" in html and "<b>1</b> diverged" in html
    hours = sum(budget / 4e14 for budget in BUDGETS) * len(DEPTHS) / 3600
    hours += (BUDGETS[2] / 4e14 / 4 + BUDGETS[1] / 4e14 / 2) / 3600  # the failed and the diverged cell
    assert f"{hours:,.2f} GPU-hours" in html
    assert f"e = {fits.isoflop.n_opt.exponent:.3f}" in html and f"{fits.parametric.alpha:.4g}" in html
    assert f"{max(BUDGETS) * 10:.2g} (10× the largest)" in html
    # The numbers on the chart are the fit's: each isoflop minimum sits where the fit put it.
    minima = [row for row in _values(specs["isoflop"]) if row["kind"] == "min"]
    assert sorted(row["N"] for row in minima) == pytest.approx(
        sorted(p.n_opt for p in fits.isoflop.parabolas)
    )
    law_rows = [row for row in _values(specs["n-opt"]) if row["series"] == "power law (95% band)"]
    assert all(row["y"] == pytest.approx(float(fits.isoflop.n_opt(row["C"]))) for row in law_rows)
    # Every cell is in the table, the failed one with its reason.
    assert html.count('<tr class="') == 14
    assert "CUDA out of memory" in html and "training loss is nan at step 20" in html


def test_no_finished_cell_says_what_is_missing_and_renders_the_rest(tmp_path: Path) -> None:
    store = empty_study(tmp_path / "empty.db")
    result = write_report(store, "empty", tmp_path / "empty.html", n_boot=N_BOOT)
    html = (tmp_path / "empty.html").read_text()
    assert any("no finished pretraining cell" in line for line in result.left_out)
    assert any("downstream evaluations" in line for line in result.left_out)
    assert "What this report leaves out" in html and "no finished pretraining cell" in html
    assert tuple(_specs(html)) == ("training", "throughput")  # the failed cell's steps are still shown
    assert "<b>0</b> done" in html and "<b>1</b> failed" in html and "<b>3</b> pending" in html


def test_a_cell_that_diverged_at_its_first_step_draws_no_empty_training_chart(tmp_path: Path) -> None:
    store, study_id = new_study(tmp_path / "nanostudy.db", "nan")
    cell = NewCell(id="d1", mode=CellMode.PRETRAINING, depth=6, flops_budget=1e17, seed=0, num_params=10**7,
                   num_tokens=10**9, flops_per_token=6 * 10**7, steps_total=40, config={})  # fmt: skip
    add_cells(store, study_id, [cell])
    attempt = claim(store, "d1", executor=Executor.LOCAL, host="h", gpus="0", num_gpus=1)
    step = {"step": 1, "tokens": 4096, "loss": math.nan, "tok_per_s": 1e5, "mfu": 0.3}
    ingest(store, "d1", attempt_id=attempt.id, train=[step])  # its loss stored as NULL
    end_attempt(store, attempt.id, AttemptOutcome.DIVERGED, exit_code=3, reason="loss is nan at step 1")
    report = build_report(read_study(store, "nan"), None)
    assert [name for name, _ in report.charts()] == ["throughput"]  # the training chart had no data
    assert "training curves: no cell has logged a finite training loss yet" in report.left_out


def test_the_report_reads_one_moment_of_a_runner_that_writes_between_its_queries(tmp_path: Path) -> None:
    store, study_id = new_study(tmp_path / "nanostudy.db", "live")
    cell = NewCell(id="d1", mode=CellMode.PRETRAINING, depth=6, flops_budget=1e17, seed=0, num_params=10**7,
                   num_tokens=10**9, flops_per_token=6 * 10**7, steps_total=40, config={})  # fmt: skip
    add_cells(store, study_id, [cell])
    attempt = claim(store, "d1", executor=Executor.LOCAL, host="h", gpus="0", num_gpus=1)
    ingest(store, "d1", attempt_id=attempt.id, train=[{"step": 1, "tokens": 4096, "loss": 3.0}])
    runner = open_store(tmp_path / "nanostudy.db")
    real_train_curve = reports.data.train_curve

    def train_curve_while_the_runner_writes(*args, **kwargs):
        # Between the cell's row and its curve: two more steps, and the attempt ends.
        ingest(
            runner,
            "d1",
            attempt_id=attempt.id,
            train=[{"step": s, "tokens": 4096 * s, "loss": 2.0} for s in (2, 3)],
        )
        end_attempt(runner, attempt.id, AttemptOutcome.FAILED, exit_code=1, reason="crashed")
        return real_train_curve(*args, **kwargs)

    with mock.patch("reports.data.train_curve", train_curve_while_the_runner_writes):
        data = read_study(store, "live")
    runner.close()
    (row,) = data.cells
    assert (row.state, row.steps_done, [p.step for p in data.curves["d1"]]) == ("running", 1, [1])
    assert row.num_attempts == 1 and row.reason is None
    after = read_study(store, "live")
    assert (after.cells[0].state, [p.step for p in after.curves["d1"]]) == ("failed", [1, 2, 3])


def test_mid_training_cells_get_panels_and_marks_of_their_own(tmp_path: Path) -> None:
    # Their loss is another (chat data, assistant tokens): drawn in a budget's panel it read as a pretraining
    # curve; their evals sat at their own few FLOPs, as if a tiny pretraining run had scored them.
    store, study_id = new_study(tmp_path / "nanostudy.db", "mid")
    common = dict(flops_budget=1e17, seed=0, num_params=10**7, flops_per_token=6 * 10**7, steps_total=2)
    cells = [
        NewCell(id="pre", mode=CellMode.PRETRAINING, depth=6, num_tokens=10**9, config={}, **common),
        NewCell(id="chat", mode=CellMode.MID_TRAINING, parent_cell_id="pre", depth=6, num_tokens=10**8,
                config={}, **common),
    ]  # fmt: skip
    add_cells(store, study_id, cells)
    for cell_id, loss, score in (("pre", 3.0, 0.30), ("chat", 1.5, 0.40)):
        attempt = claim(store, cell_id, executor=Executor.LOCAL, host="h", gpus="0", num_gpus=1)
        train = [{"step": step, "tokens": 4096 * step, "loss": loss, "tok_per_s": 1e5} for step in (1, 2)]
        evals = [{"step": 2, "task": "core", "score": score, "num_examples": 100}]
        ingest(store, cell_id, attempt_id=attempt.id, train=train, evals=evals)
        end_attempt(store, attempt.id, AttemptOutcome.DONE, exit_code=0)
    specs = {name: chart.to_dict() for name, chart in build_report(read_study(store, "mid"), None).charts()}
    training = specs["training"]
    panels = {row["cell"]: row["budget"] for row in _values(training)}
    assert panels == {"pre": "1e17", "chat": "1e17 · mid-training"}
    assert training["facet"]["sort"] == ["1e17", "1e17 · mid-training"]
    scores = {row["cell"]: row for row in _values(specs["evals"])}
    assert scores["pre"]["stage"] == "pretraining" and scores["chat"]["stage"] == "mid-training"
    assert scores["pre"]["C"] == pytest.approx(6e7 * 10**9)
    assert scores["chat"]["C"] == pytest.approx(6e7 * 10**9 + 6e7 * 10**8)  # its parent's compute too


def test_budgets_with_too_few_points_are_named(tmp_path: Path) -> None:
    store = sparse_study(tmp_path / "sparse.db")
    result = write_report(store, "sparse", tmp_path / "sparse.html", n_boot=N_BOOT)
    html = (tmp_path / "sparse.html").read_text()
    assert any(line.startswith("budget 1e+18: 1 point(s)") for line in result.left_out)
    assert any("power laws over budgets need minima at 2 or more" in line for line in result.left_out)
    assert "budget 1e+18: 1 point(s)" in html and "What this report leaves out" in html
    assert "isoflop" in _specs(html)  # the budget that has enough points is drawn


def test_one_budget_gives_its_minimum_but_no_law_and_no_recommendation(tmp_path: Path) -> None:
    # Once: α = −0.270, β = −0.2195 (a law under which loss rises with compute) with a = 0.4485 and model
    # sizes recommended for 10×, 100× and 1000× the budget, without a word of warning.
    store = one_budget_study(tmp_path / "one.db")
    result = write_report(store, "one", tmp_path / "one.html", n_boot=N_BOOT)
    html = (tmp_path / "one.html").read_text()
    assert any(line.startswith("parametric fit: N·D varies only 1.") for line in result.left_out)
    assert "Recommended model size" not in html and "α (exponent of N)" not in html
    assert "a = β/(α+β)" not in html
    assert "isoflop" in _specs(html) and "parametric" not in _specs(html)  # the curve's minimum is drawn


def test_done_cells_that_trained_different_heads_are_said_to_and_marked(tmp_path: Path, monkeypatch) -> None:
    """fp8_head: auto trains the FP8 head only on GPUs with FP8: a study run on two kinds of GPU mixes
    heads, which the summary says and the cell table marks cell by cell (from each start event)."""
    import report_fixtures

    ingest, heads = report_fixtures.ingest, iter([True, False, None, True])

    def ingest_with_head(store, cell_id, *, start, **rows):
        device = {**start["device"], "fp8_head": next(heads)}
        if device["fp8_head"] is None:  # a start event from before the head was recorded: its config's
            del device["fp8_head"]
            start = {**start, "config": {"fp8_head": False}}
        return ingest(store, cell_id, start={**start, "device": device}, **rows)

    monkeypatch.setattr(report_fixtures, "ingest", ingest_with_head)
    store = sparse_study(tmp_path / "sparse.db")
    write_report(store, "sparse", tmp_path / "sparse.html", n_boot=N_BOOT)
    html = (tmp_path / "sparse.html").read_text()
    assert "Mixed heads" in html and "2 of the 4 done cells trained the lm_head&#x27;s matmuls in FP8" in html
    rows = re.findall(r'<tr class="[^"]*" data-state=.*?</tr>', html, flags=re.S)
    assert [("FP8 head" in row) for row in rows] == [True, False, False, True]
    # One head throughout: nothing to say.
    heads = iter([False] * 4)
    write_report(sparse_study(tmp_path / "other.db"), "sparse", tmp_path / "other.html", n_boot=N_BOOT)
    assert "Mixed heads" not in (tmp_path / "other.html").read_text()


def test_recommendations_start_from_the_largest_budget_the_fits_saw(store, tmp_path: Path) -> None:
    # Every cell of the grid's top budget failed (here: left out of the points): the laws end a budget
    # lower, and so do the recommendations, as in `nanostudy fit`; they started from the grid's top budget.
    points, _ = store_points(store, "synthetic")
    below_top = fit_points([p for p in points if p.budget < max(BUDGETS)], n_boot=N_BOOT)
    html = build_report(read_study(store, "synthetic"), below_top).html()
    assert f"{sorted(BUDGETS)[-2] * 10:.2g} (10× the largest)" in html
    assert f"{max(BUDGETS) * 10:.2g} (10× the largest)" not in html


def test_fits_that_fail_leave_a_report_without_them(store, tmp_path: Path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise ValueError("the optimiser did not converge")

    monkeypatch.setattr(reports.report, "_fit_study", broken)
    result = write_report(store, "synthetic", tmp_path / "r.html", n_boot=10)
    assert any("the optimiser did not converge" in line for line in result.left_out)
    assert "training" in _specs((tmp_path / "r.html").read_text())


def test_a_fit_section_that_fails_leaves_the_other_sections(store, fits, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise OverflowError("math range error")

    monkeypatch.setattr(reports.report.charts, "optimum_chart", broken)
    report = build_report(read_study(store, "synthetic"), fits)
    assert "Compute-optimal N*, D* and L*: failed: OverflowError: math range error" in report.left_out
    names = [name for name, _ in report.charts()]
    assert "isoflop" in names and "parametric" in names and "n-opt" not in names


def test_an_isoflop_law_over_minima_outside_the_sampled_sizes_is_marked(store, fits) -> None:
    # The summary showed the N*(C) exponent with no caveat when extrapolated minima were in it.
    data = read_study(store, "synthetic")
    iso = fits.isoflop
    assert "outside the sampled sizes" not in build_report(data, fits).html()  # every minimum inside
    marked = dataclasses.replace(iso, n_opt=dataclasses.replace(iso.n_opt, extrapolated=(1e18,)))
    summary = build_report(data, dataclasses.replace(fits, isoflop=marked)).sections[0].html
    assert (
        "N*(C) = k·C^e (isoflop; includes minima outside the sampled sizes, which can bias it and narrow its "
        "interval)"
    ) in summary
    left = dataclasses.replace(iso, d_opt=dataclasses.replace(iso.d_opt, excluded=(1e18,)))
    summary = build_report(data, dataclasses.replace(fits, isoflop=left)).sections[0].html
    assert "D*(C) = k·C^e (isoflop; minima inside the sampled sizes only: budget 1e+18 left out)" in summary


def test_charts_export_as_png_and_svg(store, fits, tmp_path: Path) -> None:
    report = build_report(read_study(store, "synthetic"), fits)
    charts = report.charts()[:2]
    report = reports.report.Report(
        title=report.title, data=report.data, fits=fits, sections=[], left_out=[]
    )  # two charts are enough to test the two formats
    report.sections.append(
        reports.report.Section(anchor="x", title="x", charts=[(n, c, "") for n, c in charts])
    )
    pngs = reports.report.export_charts(report, tmp_path / "png", "png")
    svgs = reports.report.export_charts(report, tmp_path / "svg", "svg")
    assert [p.name for p in pngs] == ["01-isoflop.png", "02-n-opt.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)
    assert [p.name for p in svgs] == ["01-isoflop.svg", "02-n-opt.svg"]
    assert all("<svg" in p.read_text()[:200] for p in svgs)


def test_gpu_and_cpu_hours_from_attempts() -> None:
    def attempt(start: float, end: float | None, gpus: int, heartbeat: float | None = None) -> Attempt:
        return Attempt(
            cell_id="c", number=1, executor=Executor.LOCAL, host="h", num_gpus=gpus, started_at=start,
            heartbeat_at=heartbeat or start, ended_at=end,
        )  # fmt: skip

    attempts = [attempt(0, 3600, 8), attempt(0, 1800, 0), attempt(0, None, 2, heartbeat=900)]
    gpu_hours, cpu_hours = attempt_hours(attempts, now=10_000)
    assert gpu_hours == pytest.approx(8 + 0.5) and cpu_hours == pytest.approx(0.5)


def test_thin_keeps_first_and_last() -> None:
    assert thin(list(range(1000)), 5) == [0, 250, 500, 749, 999]
    assert thin([1, 2], 5) == [1, 2]


# -- the command line -------------------------------------------------------------------------------------


def _study_file(folder: Path, name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\nmode: pretraining\n")
    return path


def test_nanostudy_report_writes_beside_the_study(fits, tmp_path: Path, monkeypatch, capsys) -> None:
    build_study(tmp_path / "nanostudy.db").close()
    study = _study_file(tmp_path, "synthetic")
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(study), "--boot", str(N_BOOT)]) == 0  # with reports.fit, end to end
    html = (tmp_path / "reports" / "synthetic.html").read_text()
    # Paths under the working directory are shown relative to it: a committed report names no home folder.
    assert "study file synthetic.yaml · database nanostudy.db · " in html
    assert str(tmp_path) not in html
    assert f"report: {tmp_path / 'reports' / 'synthetic.html'}" in capsys.readouterr().out
    monkeypatch.setattr(reports.report, "_fit_study", lambda *args, **kwargs: fits)  # the same, made once
    assert (
        main(["report", "synthetic", "--db", str(tmp_path / "nanostudy.db"), "-o", str(tmp_path / "x.html")])
        == 0
    )
    assert (tmp_path / "x.html").is_file()
    assert main(["report", str(study), "--format", "svg", "-o", str(tmp_path / "svg")]) == 0
    assert len(list((tmp_path / "svg").glob("*.svg"))) == len(CHARTS)


def test_nanostudy_report_csv_is_the_cell_table_and_fits_like_the_store(fits, tmp_path: Path, capsys) -> None:
    import csv

    build_study(tmp_path / "nanostudy.db").close()
    study = _study_file(tmp_path, "synthetic")
    assert main(["report", str(study), "--format", "csv"]) == 0
    path = tmp_path / "reports" / "synthetic-cells.csv"
    assert f"cells: {path}" in capsys.readouterr().out
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    from store import open_store

    with open_store(tmp_path / "nanostudy.db", create=False) as store:
        cells = read_study(store, "synthetic").cells
    assert [row["id"] for row in rows] == [cell.id for cell in cells]
    for row, cell in zip(rows, cells, strict=True):
        assert int(row["num_params"]) == cell.num_params and int(row["depth"]) == cell.depth
        assert row["state"] == cell.state
        assert row["val_bpb"] == ("" if cell.val_bpb is None else repr(cell.val_bpb))
    # The documented route: `nanostudy fit` on the whole table makes the store's own points and parametric
    # fit. The failed and diverged rows carry a planned D and a partial val_bpb; they once made 14 points.
    assert {row["state"] for row in rows} == {"done", "failed", "diverged"}
    columns = {"n_col": "num_params", "d_col": "num_tokens", "loss_col": "val_bpb", "flops_col": "flops"}
    points, left_out, budgets = table_points(path, **columns)
    assert left_out == ["2 row(s) of synthetic-cells.csv left out by their 'state' column, not 'done': "
                        "1 diverged, 1 failed"]  # fmt: skip
    assert budgets == "budgets: from the 'budget_flops' column"
    same = [(p.n, p.d, p.c, p.loss, p.budget) for p in fits.points]
    assert [(p.n, p.d, p.c, p.loss, p.budget) for p in points] == same
    flags = ["--n", "num_params", "--d", "num_tokens", "--loss", "val_bpb", "--flops", "flops"]
    assert main(["fit", str(path), *flags, "--boot", "0", "--json"]) == 0
    captured = capsys.readouterr()
    table_fit = json.loads(captured.out)
    assert "left out by their 'state' column" in captured.err
    assert table_fit["n_points"] == len(fits.points) == 12
    for key in ("E", "A", "B", "alpha", "beta"):
        assert table_fit[key] == getattr(fits.parametric, key)


def test_nanostudy_report_bad_input(tmp_path: Path, capsys) -> None:
    assert main(["report", "x", "--boot", "-1"]) == 2
    assert "--boot must be >= 0" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing.yaml")]) == 2
    assert "no such study file" in capsys.readouterr().err
    study = _study_file(tmp_path, "nothing")
    assert main(["report", str(study)]) == 2
    assert "nanostudy report: error:" in capsys.readouterr().err  # no database beside it
    empty_study(tmp_path / "nanostudy.db").close()
    assert main(["report", str(study)]) == 2
    assert "study 'nothing' is not in the database" in capsys.readouterr().err


def test_nanostudy_report_to_a_place_it_cannot_write_says_so_and_leaves_nothing(
    fits, tmp_path: Path, monkeypatch, capsys
) -> None:
    build_study(tmp_path / "nanostudy.db").close()
    study = _study_file(tmp_path, "synthetic")
    monkeypatch.setattr(reports.report, "_fit_study", lambda *args, **kwargs: fits)
    folder = tmp_path / "out"
    folder.mkdir()
    (tmp_path / "taken").write_text("mine\n")
    for output, fmt in ((folder, "html"), (folder, "csv"), (tmp_path / "taken", "png")):
        # A traceback, and a half-finished temporary file left beside the output each time.
        assert main(["report", str(study), "-o", str(output), "--format", fmt]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"nanostudy report: error: cannot write the report: {output}: ")
        assert err.count("\n") == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "nanostudy.db",
        "out",
        "synthetic.yaml",
        "taken",
    ]
    assert (tmp_path / "taken").read_text() == "mine\n"
    # A database that cannot be opened is an OSError too, but not one of the output's.
    assert main(["report", "synthetic", "--db", str(tmp_path / "taken")]) == 2
    assert capsys.readouterr().err.startswith(f"nanostudy report: error: database {tmp_path / 'taken'}: ")


def test_nanostudy_report_of_a_study_file_with_no_name_is_the_study_named_after_the_file(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    # A study's `name` defaults to the file's name (docs/study-files.md); the report refused such a file,
    # and `nanostudy run` of it ended with the warning that no report was written.
    empty_study(tmp_path / "nanostudy.db", name="iso").close()
    study = tmp_path / "iso.yaml"
    study.write_text("mode: pretraining\n")
    assert main(["report", str(study), "--boot", "0"]) == 0
    assert (tmp_path / "reports" / "iso.html").is_file()
    study.write_text("name: 3\n")
    assert main(["report", str(study)]) == 2
    assert "the study's 'name' must be a non-empty string, got 3" in capsys.readouterr().err
    study.chmod(0o000)
    try:
        if os.access(study, os.R_OK):  # root reads it anyway: a read that fails as the mode says

            def refused(*args, **kwargs):
                raise PermissionError(13, "Permission denied")

            monkeypatch.setattr(Path, "read_text", refused)
        assert main(["report", str(study)]) == 2
        assert (
            capsys.readouterr().err
            == f"nanostudy report: error: {study}: cannot be read (Permission denied)\n"
        )
    finally:
        study.chmod(0o644)


def test_run_writes_the_report_and_keeps_its_exit_code(tmp_path: Path, monkeypatch, capsys) -> None:
    """`nanostudy run` ends with the report (runner/cli.py's hook); a report that fails is a warning only."""
    import runner.run_commands

    empty_study(tmp_path / "nanostudy.db", name="ran").close()
    study = _study_file(tmp_path, "ran")
    monkeypatch.setattr(runner.run_commands, "_cmd_run", lambda args: 1)  # the run: one cell failed
    assert main(["run", str(study)]) == 1
    assert (tmp_path / "reports" / "ran.html").is_file()
    assert "report: " in capsys.readouterr().out

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(reports.report, "write_report", broken)
    assert main(["run", str(study)]) == 1
    assert "warning: the report was not written: disk full" in capsys.readouterr().err
    monkeypatch.setattr(runner.run_commands, "_cmd_run", lambda args: 2)  # an invalid study: no report
    assert main(["run", str(study)]) == 2
    assert "report" not in capsys.readouterr().err


def test_an_interval_with_an_unbounded_end_is_shown_with_that_end_not_hidden():
    # A budget whose drawn parabolas sometimes have no minimum: N* down to 0, D* up to infinity, L* down to
    # minus infinity. Both ends are shown (it used to read "-" in the report and "[n/a]" in `nanostudy fit`);
    # only a NaN end, no interval at all, is shown as missing.
    from reports.fit_command import _interval
    from reports.report import _ci

    assert _ci((0.0, 6.44e6), "si") == "[0, 6.44M]"
    assert _ci((4.3e7, math.inf), "si") == "[43M, ∞]"
    assert _ci((-math.inf, 0.8584), ".4f") == "[−∞, 0.8584]"
    assert _ci((math.nan, 1.0), ".4f") == _ci(None, ".4f") == "-"
    assert _interval((4.32e7, math.inf)) == "[4.32e+07, inf]"
    assert _interval((math.nan, 1.0)) == "[n/a]"


def test_chart_tooltips_show_no_null_and_a_chart_without_parabolas_has_no_empty_layers():
    import dataclasses

    from reports import charts
    from reports.data import CellRow
    from reports.points import Point

    def values(chart) -> list[dict]:
        """Every row of the chart's inline data, wherever in the spec it sits."""

        def walk(node):
            if isinstance(node, dict):
                data = node.get("data")
                yield from data["values"] if isinstance(data, dict) and "values" in data else ()
                for key, child in node.items():
                    if key != "data":
                        yield from walk(child)
            elif isinstance(node, list):
                for child in node:
                    yield from walk(child)

        return list(walk(chart.to_dict()))

    def tooltips(chart) -> list[str]:
        return re.findall(r"'field': '([^']+)'", str(chart.to_dict()).split("'tooltip'", 1)[-1])

    # Throughput on the CPU: no MFU, which a tooltip showed as "mfu null".
    cpu = CellRow(
        id="c1", mode="pretraining", parent_id=None, depth=2, budget_flops=1e12, seed=0, state="done",
        reason=None, num_params=1000, num_tokens=10, flops=1e12, steps_done=1, steps_total=1, train_loss=1.0,
        val_loss=1.0, val_bpb=1.0, num_attempts=1, device="x86_64", fp8_head=False, num_gpus=0, gpu_hours=0.0,
        cpu_hours=0.1, tok_per_s=1000.0, mfu=None,
    )  # fmt: skip
    gpu = dataclasses.replace(cpu, id="c2", device="NVIDIA H100", mfu=0.4321)
    rows = values(charts.throughput_chart([cpu, gpu]))
    assert {row["cell"]: row["MFU"] for row in rows} == {"c1": "–", "c2": "43.2%"}
    assert "mfu" not in tooltips(charts.throughput_chart([cpu]))
    # Isoflop minima and the optimum charts: an interval the fit could not give is "–", not two nulls.
    nan = float("nan")
    chart = charts.optimum_chart(
        [(1e15, 3e6, (nan, nan)), (3e15, 5e6, (4e6, float("inf")))], None, y_title="N*", title="t",
        c_range=(1e15, 3e15),
    )  # fmt: skip
    assert [row["ci"] for row in values(chart)] == ["–", "[4e+06, ∞]"]
    # One cell, no parabola: only the cells' layer (empty layers made Vega warn of an infinite extent).
    point = Point(n=1000.0, d=10.0, c=6e4, loss=2.0, budget=6e4, cell_id="c1", depth=2)
    chart = charts.isoflop_chart([point], [], metric_label="loss")
    assert len(chart.to_dict()["layer"]) == 1
