"""The data every fit reads: one `Point` (N, D, C, loss, budget) per trained cell or per row of a table.

From the store: the done pretraining cells of a study, N = the model's `num_scaling_params()` and C = its
`estimate_flops()` per token × D, both recorded by the planner (never recomputed here), D = the tokens the
cell trained, and the loss = its final validation bits per byte (`metric="bpb"`, comparable across
tokenizers) or loss in nats per token (`metric="loss"`).

From a CSV table (papers' data, other tools' results): named columns for N, D, the loss and optionally C;
every bad value is reported as `FILE:LINE: column 'NAME': problem`, all of them at once. A table with a
`state` column (as `nanostudy report --format csv` writes) has its rows that are not `done` left out, and
one with a `mode` column its rows that are not `pretraining`, as the store's points are: those rows carry a
planned D and a partial loss.
"""

import csv
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from store import CellMode, CellState, Store, cell_statuses, get_study

# metric name → the cell column holding its final value
METRICS = {"bpb": "val_bpb", "loss": "val_loss"}
# A table's column of each row's budget, as `nanostudy report --format csv` writes it: used when present.
BUDGET_COLUMN = "budget_flops"
# Without a budget column, rows whose C lies within this factor of their group's smallest C are one budget:
# an isoflop curve's C/(6·N·D) varies 1.11-1.20 with the attention FLOPs (docs/results/h100-isoflop), so
# its 6·N·D spans 1.08×, and budgets are usually 2× or more apart.
BUDGET_TOLERANCE = 1.25
_MAX_LISTED_PROBLEMS = 20


@dataclass(frozen=True, kw_only=True, slots=True)
class Point:
    n: float  # N: the cell's num_scaling_params
    d: float  # D: tokens trained
    c: float  # C: FLOPs trained = flops_per_token × D (6·N·D for a table without a FLOPs column)
    loss: float  # the chosen metric
    budget: float  # the grid's FLOP budget; isoflop curves are grouped by it
    cell_id: str | None = None  # the cell, or `FILE:LINE` for a table row
    depth: int | None = None

    @property
    def flops_per_token(self) -> float:
        return self.c / self.d


def flops_per_token_model(points: Sequence[Point]) -> Callable[[np.ndarray], np.ndarray]:
    """FLOPs per token as a function of N, following the points' own C / D (see `flops_per_token_law`)."""
    factor, extra = flops_per_token_law(points)
    return lambda n: factor * np.power(np.asarray(n), 1.0 + extra)


def flops_per_token_law(points: Sequence[Point]) -> tuple[float, float]:
    """(κ, s) of FLOPs per token = κ·N^(1 + s): a line of ln(C / D / N) in ln N fitted over the points
    (exactly (6, 0) for points with C = 6·N·D; attention FLOPs make small models cost more per parameter,
    which s < 0 captures)."""
    log_n = np.log([p.n for p in points])
    log_ratio = np.log([p.flops_per_token / p.n for p in points])
    if len(np.unique(log_n)) < 2:
        return math.exp(float(log_ratio.mean())), 0.0
    slope, intercept = (float(v) for v in np.polyfit(log_n, log_ratio, 1))
    return math.exp(intercept), slope


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    return metric


def points_from_store(store: Store, study_name: str, *, metric: str = "bpb") -> list[Point]:
    """The study's done pretraining cells that have a final value of `metric`, in grid order."""
    return store_points(store, study_name, metric=metric)[0]


def store_points(store: Store, study_name: str, *, metric: str = "bpb") -> tuple[list[Point], list[str]]:
    """`points_from_store` and a line for each kind of done cell left out (no value of the metric)."""
    column = METRICS[check_metric(metric)]
    study = get_study(store, study_name)
    if study is None or study.id is None:
        raise ValueError(f"study {study_name!r} is not in the database")
    points, missing = [], []
    for cell in cell_statuses(store, study.id):
        if cell.state is not CellState.DONE or cell.mode is not CellMode.PRETRAINING:
            continue
        value = getattr(cell, column)
        if value is None or not 0 < value < math.inf or cell.num_tokens <= 0 or cell.flops <= 0:
            missing.append(cell.id)
            continue
        points.append(
            Point(
                n=float(cell.num_params),
                d=float(cell.num_tokens),
                c=float(cell.flops),
                loss=float(value),
                budget=float(cell.flops_budget),
                cell_id=cell.id,
                depth=cell.depth,
            )
        )
    problems = []
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        problems.append(
            f"{len(missing)} done cell(s) have no finite positive final {column} and are left out: {shown}"
        )
    return points, problems


def points_from_table(
    path: str | Path, *, n_col: str, d_col: str, loss_col: str, flops_col: str | None = None
) -> list[Point]:
    """One point per data row of a CSV file with a header row (see `table_points`)."""
    return table_points(path, n_col=n_col, d_col=d_col, loss_col=loss_col, flops_col=flops_col)[0]


def table_points(
    path: str | Path,
    *,
    n_col: str,
    d_col: str,
    loss_col: str,
    flops_col: str | None = None,
    budget_col: str | None = None,
) -> tuple[list[Point], list[str], str]:
    """The points of a CSV file's data rows, a line for each kind of row left out, and how the rows were
    grouped into budgets, in words.

    C = 6·N·D without a FLOPs column. A point's budget (its isoflop curve) is its row's value in
    `budget_col`, or without one in the `budget_flops` column when the table has it (`nanostudy report
    --format csv`); otherwise the rows are grouped by C, each group the rows within BUDGET_TOLERANCE× of its
    smallest C, and its budget is their C's geometric mean. Rows whose `state` column (when the table has
    one) is not `done`, or whose `mode` column is not `pretraining`, are left out before their values are
    read, as `store_points` leaves out such cells. Raises ValueError listing every problem as
    `FILE:LINE: column 'NAME': ...` (a missing, non-numeric, non-finite or non-positive value, or an
    unknown column name).
    """
    path = Path(path)
    header_line, names, rows = _read_table(path)
    if budget_col is None and names.count(BUDGET_COLUMN) == 1:
        budget_col = BUDGET_COLUMN
    wanted = {"n": n_col, "d": d_col, "loss": loss_col, "c": flops_col, "budget": budget_col}
    columns = {}
    for key, name in wanted.items():
        if name is None:
            continue
        if names.count(name) != 1:
            found = "no" if name not in names else "more than one"
            raise ValueError(
                f"{path}:{header_line}: {found} column named {name!r} (columns: {', '.join(names)})"
            )
        columns[key] = names.index(name)
    # The cell table's own columns: only done pretraining cells are what the report fits.
    wanted_states = {"state": CellState.DONE.value, "mode": CellMode.PRETRAINING.value}
    filters = {name: names.index(name) for name in wanted_states if names.count(name) == 1}
    left_out: dict[str, Counter] = {name: Counter() for name in filters}
    kept, problems = [], []
    for line, row in rows:
        found = {name: (row[i] if i < len(row) else "").strip() for name, i in filters.items()}
        unwanted = [name for name, value in found.items() if value != wanted_states[name]]
        if unwanted:
            left_out[unwanted[0]][found[unwanted[0]] or "(empty)"] += 1
            continue
        values = {}
        for key, index in columns.items():
            value, problem = _positive(row[index] if index < len(row) else "")
            if problem:
                problems.append(f"{path}:{line}: column {wanted[key]!r}: {problem}")
            values[key] = value
        if all(value is not None for value in values.values()):
            values["c"] = values.get("c") or 6.0 * values["n"] * values["d"]
            kept.append((line, values))
    if problems:
        raise ValueError(_join_problems(problems))
    if budget_col is not None:
        budgets = [values["budget"] for _, values in kept]
        grouped = f"budgets: from the {budget_col!r} column"
    else:
        budgets = _grouped_budgets([values["c"] for _, values in kept])
        grouped = (
            f"budgets: the rows' {'C' if flops_col else 'C = 6·N·D'} grouped, each group the rows within "
            f"{BUDGET_TOLERANCE:g}× of its smallest (no budget column)"
        )
    points = [
        Point(n=v["n"], d=v["d"], c=v["c"], loss=v["loss"], budget=budget, cell_id=f"{path.name}:{line}")
        for (line, v), budget in zip(kept, budgets, strict=True)
    ]
    notes = [
        f"{sum(counts.values())} row(s) of {path.name} left out by their {name!r} column, not "
        f"{wanted_states[name]!r}: "
        + ", ".join(f"{count} {value}" for value, count in sorted(counts.items()))
        for name, counts in left_out.items()
        if counts
    ]
    return points, notes, grouped


def _read_table(path: Path) -> tuple[int, list[str], list[tuple[int, list[str]]]]:
    """(the header's line, its column names, the non-blank data rows with their lines) of a CSV file."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            numbered = _numbered_rows(csv.reader(file))
            rows = [(line, row) for line, row in numbered if any(cell.strip() for cell in row)]
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except csv.Error as error:
        raise ValueError(f"{path}: not a CSV file ({error})") from None
    if not rows:
        raise ValueError(f"{path}: empty (a header row naming the columns, then one row per run)")
    if len(rows) == 1:
        raise ValueError(f"{path}: no data rows after the header")
    header_line, header = rows[0]
    return header_line, [name.strip() for name in header], rows[1:]


def _grouped_budgets(flops: list[float]) -> list[float]:
    """Each row's budget: from the smallest C up, a group takes the rows within BUDGET_TOLERANCE× of its
    smallest C, and its budget is their C's geometric mean (the one C when they agree)."""
    order = sorted(range(len(flops)), key=lambda i: flops[i])
    budgets = [0.0] * len(flops)
    start = 0
    while start < len(order):
        stop = start
        while stop < len(order) and flops[order[stop]] <= flops[order[start]] * BUDGET_TOLERANCE:
            stop += 1
        group = [flops[i] for i in order[start:stop]]
        budget = group[0] if group[0] == group[-1] else math.exp(sum(map(math.log, group)) / len(group))
        for i in order[start:stop]:
            budgets[i] = budget
        start = stop
    return budgets


def _numbered_rows(reader) -> Iterator[tuple[int, list[str]]]:
    # The line a row starts on: reader.line_num is the line it ended on (a quoted field may span lines).
    start = 1
    for row in reader:
        yield start, row
        start = reader.line_num + 1


def _positive(text: str) -> tuple[float | None, str | None]:
    text = text.strip()
    if not text:
        return None, "missing value"
    try:
        value = float(text)
    except ValueError:
        return None, f"not a number: {text!r}"
    if not math.isfinite(value):
        return None, f"not a finite number: {text!r}"
    if value <= 0:
        return None, f"must be positive, got {text}"
    return value, None


def _join_problems(problems: list[str]) -> str:
    shown = problems[:_MAX_LISTED_PROBLEMS]
    if len(problems) > len(shown):
        shown.append(f"... and {len(problems) - len(shown)} more problem(s)")
    return "\n".join(shown)
