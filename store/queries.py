"""Reads for the TUI and the report: study progress, curves, evals, checkpoints, and the best cell.

Table rows come back as the schema's SQLModel objects, detached and safe to keep. Curves come back as
NamedTuples straight from the cursor: a report reads up to a million points, and an ORM object per point
would cost seconds where a tuple costs a microsecond.
"""

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlmodel import col, select

from store.cells import cells_of, in_study
from store.engine import Store
from store.schema import Cell, CellMode, CellState, Checkpoint, CheckpointKind, Eval, TrainMetric, ValMetric

_cells: sa.Table = Cell.__table__  # type: ignore[attr-defined]
_train: sa.Table = TrainMetric.__table__  # type: ignore[attr-defined]
_val: sa.Table = ValMetric.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, kw_only=True, slots=True)
class StudySummary:
    """Counts and totals over a study's cells: the TUI's header line and the runner's ETA."""

    num_cells: int
    counts: dict[CellState, int]  # every state present, zeros included
    steps_done: int
    steps_total: int
    tokens_seen: int
    tokens_total: int
    flops_done: float  # tokens seen × FLOPs per token, over all cells
    flops_total: float
    updated_at: float | None  # the newest change to any cell

    @property
    def fraction_done(self) -> float:
        """Share of the study's planned FLOPs already spent (FLOPs, not steps: big cells weigh more)."""
        return self.flops_done / self.flops_total if self.flops_total > 0 else 0.0


class CellStatus(NamedTuple):
    """A cell's row for a status table: its coordinates, state and latest progress, without the config."""

    id: str
    mode: CellMode
    parent_cell_id: str | None
    axes: dict[str, Any]
    depth: int
    flops_budget: float
    seed: int
    state: CellState
    reason: str | None
    num_params: int
    num_tokens: int
    flops: float
    steps_done: int
    steps_total: int
    tokens_seen: int
    train_loss: float | None
    val_step: int | None
    val_loss: float | None
    val_bpb: float | None
    updated_at: float
    finished_at: float | None


class TrainPoint(NamedTuple):
    step: int
    tokens: int
    flops: float | None
    loss: float | None
    lr: float | None
    tok_per_s: float | None
    mfu: float | None
    elapsed_s: float | None
    time: float | None


class ValPoint(NamedTuple):
    step: int
    tokens: int
    flops: float | None
    val_loss: float | None
    val_bpb: float | None
    time: float | None


def study_summary(store: Store, study_id: int) -> StudySummary:
    """One GROUP BY over the study's cells."""
    c = _cells.c
    query = (
        sa.select(
            c.state,
            sa.func.count(),
            sa.func.sum(c.steps_done),
            sa.func.sum(c.steps_total),
            sa.func.sum(c.tokens_seen),
            sa.func.sum(c.num_tokens),
            sa.func.sum(c.tokens_seen * sa.cast(c.flops_per_token, sa.Float)),
            sa.func.sum(c.flops),
            sa.func.max(c.updated_at),
        )
        .where(in_study(study_id))
        .group_by(c.state)
    )
    with store.read() as conn:
        rows = conn.execute(query).all()
    counts = dict.fromkeys(CellState, 0)
    totals = [0, 0, 0, 0, 0.0, 0.0]
    updated_at = None
    for state, count, *sums, newest in rows:
        counts[CellState(state)] = count
        totals = [total + (value or 0) for total, value in zip(totals, sums, strict=True)]
        updated_at = newest if updated_at is None else max(updated_at, newest)
    steps_done, steps_total, tokens_seen, tokens_total, flops_done, flops_total = totals
    return StudySummary(
        num_cells=sum(counts.values()),
        counts=counts,
        steps_done=int(steps_done),
        steps_total=int(steps_total),
        tokens_seen=int(tokens_seen),
        tokens_total=int(tokens_total),
        flops_done=float(flops_done),
        flops_total=float(flops_total),
        updated_at=updated_at,
    )


def cell_statuses(store: Store, study_id: int) -> list[CellStatus]:
    """Every cell of the study with its latest step, losses and bpb, in grid order: the TUI's table.

    One SELECT over `cells` and nothing else (the ingest keeps each cell's progress on its row), and no
    config JSON to decode, so it stays fast at thousands of cells while the runner writes.
    """
    c = _cells.c
    query = (
        sa.select(*(c[name] for name in CellStatus._fields))
        .where(in_study(study_id))
        .order_by(c.mode, c.flops_budget, c.depth, c.seed, c.id)
    )
    with store.read() as conn:
        return [CellStatus._make(row) for row in conn.execute(query)]


def latest_train_points(store: Store, study_id: int) -> dict[str, TrainPoint]:
    """Each cell's newest training step (the one its `steps_done` names), in one join: the speed, MFU and
    elapsed time of every cell for a status view, without a query per cell. Cells with no step are absent.
    """
    query = (
        sa.select(_train.c.cell_id, *(_train.c[name] for name in TrainPoint._fields))
        .join(_cells, sa.and_(_cells.c.id == _train.c.cell_id, _cells.c.steps_done == _train.c.step))
        .where(in_study(study_id))
    )
    with store.read() as conn:
        return {cell_id: TrainPoint._make(point) for cell_id, *point in conn.execute(query)}


def train_curve(store: Store, cell_id: str, *, after_step: int | None = None) -> list[TrainPoint]:
    """The cell's training metrics by step; with `after_step`, only newer points (for polling)."""
    query = sa.select(*(_train.c[name] for name in TrainPoint._fields)).where(_train.c.cell_id == cell_id)
    if after_step is not None:
        query = query.where(_train.c.step > after_step)
    with store.read() as conn:
        return [TrainPoint._make(row) for row in conn.execute(query.order_by(_train.c.step))]


def val_curve(store: Store, cell_id: str, *, after_step: int | None = None) -> list[ValPoint]:
    """The cell's validation metrics by step; with `after_step`, only newer points."""
    query = sa.select(*(_val.c[name] for name in ValPoint._fields)).where(_val.c.cell_id == cell_id)
    if after_step is not None:
        query = query.where(_val.c.step > after_step)
    with store.read() as conn:
        return [ValPoint._make(row) for row in conn.execute(query.order_by(_val.c.step))]


def val_curves(
    store: Store, study_id: int, *, states: Iterable[CellState] = (CellState.DONE,)
) -> dict[str, list[ValPoint]]:
    """Validation curves of all the study's cells in `states`, in one query: cell id -> points by step."""
    query = (
        sa.select(_val.c.cell_id, *(_val.c[name] for name in ValPoint._fields))
        .join(_cells, _cells.c.id == _val.c.cell_id)
        .where(in_study(study_id), _cells.c.state.in_(list(states)))
        .order_by(_val.c.cell_id, _val.c.step)
    )
    curves: dict[str, list[ValPoint]] = defaultdict(list)
    with store.read() as conn:
        for cell_id, *point in conn.execute(query):
            curves[cell_id].append(ValPoint._make(point))
    return dict(curves)


def evals_of(store: Store, *, cell_id: str | None = None, study_id: int | None = None) -> list[Eval]:
    """Eval scores of one cell, or of every cell of a study, ordered by cell, step and task."""
    if (cell_id is None) == (study_id is None):
        raise ValueError("evals_of: give exactly one of cell_id and study_id")
    query = select(Eval)
    if cell_id is not None:
        query = query.where(Eval.cell_id == cell_id)
    else:
        query = query.join(Cell, col(Cell.id) == col(Eval.cell_id)).where(in_study(study_id))
    with store.session() as session:
        return list(session.exec(query.order_by(col(Eval.cell_id), col(Eval.step), col(Eval.task))).all())


def checkpoints_of(store: Store, cell_id: str) -> list[Checkpoint]:
    with store.session() as session:
        query = select(Checkpoint).where(Checkpoint.cell_id == cell_id).order_by(col(Checkpoint.step))
        return list(session.exec(query).all())


def final_checkpoint(store: Store, cell_id: str) -> Checkpoint | None:
    """The checkpoint a finished cell ended with: what a mid-training child starts from."""
    finals = [ckpt for ckpt in checkpoints_of(store, cell_id) if ckpt.kind is CheckpointKind.FINAL]
    return finals[-1] if finals else None


def latest_checkpoint(store: Store, cell_id: str) -> Checkpoint | None:
    """The newest checkpoint of any kind: where an interrupted cell resumes."""
    checkpoints = checkpoints_of(store, cell_id)
    # At equal steps prefer the final one (sorts after periodic by this key).
    return max(checkpoints, key=lambda c: (c.step, c.kind is CheckpointKind.FINAL), default=None)


def best_cell(store: Store, study_id: int, *, prefer_mode: CellMode = CellMode.MID_TRAINING) -> Cell | None:
    """The model to show off: among done cells of `prefer_mode` (else of any mode), those of the largest
    FLOP budget, the one with the lowest validation bits per byte. None when no cell is done.
    """
    return _best(cells_of(store, study_id, states=[CellState.DONE]), prefer_mode)


def best_checkpoint(
    store: Store, study_id: int, *, prefer_mode: CellMode = CellMode.MID_TRAINING
) -> tuple[Cell, Checkpoint] | None:
    """`best_cell`'s rule over the done cells that have a final checkpoint, with that checkpoint."""
    finals = _final_checkpoints(store, study_id)
    best = _best([cell for cell, _ in finals.values()], prefer_mode)
    return finals[best.id] if best is not None else None


def ranked_checkpoints(
    store: Store, study_id: int, *, prefer_mode: CellMode = CellMode.MID_TRAINING
) -> list[tuple[Cell, Checkpoint]]:
    """Every done cell that has a final checkpoint, with it, best first by `best_cell`'s rule: scored cells
    first, of `prefer_mode` first, larger FLOP budgets first, then the lower val bpb. The first one is
    `best_checkpoint`'s; the rest are the alternatives a person may pick instead (the TUI's chat)."""

    def rank(pair: tuple[Cell, Checkpoint]) -> tuple:
        cell = pair[0]
        return (
            cell.val_bpb is None,
            cell.mode != prefer_mode,
            -cell.flops_budget,
            math.inf if cell.val_bpb is None else cell.val_bpb,
            math.inf if cell.val_loss is None else cell.val_loss,
            cell.id,
        )

    return sorted(_final_checkpoints(store, study_id).values(), key=rank)


def _final_checkpoints(store: Store, study_id: int) -> dict[str, tuple[Cell, Checkpoint]]:
    """Done cells of the study with their newest final checkpoint, by cell id."""
    query = (
        select(Cell, Checkpoint)
        .join(Checkpoint, col(Checkpoint.cell_id) == col(Cell.id))
        .where(in_study(study_id), Cell.state == CellState.DONE, Checkpoint.kind == CheckpointKind.FINAL)
        .order_by(col(Checkpoint.step))
    )
    with store.session() as session:
        # Ordered by step, so a cell's newest final checkpoint is the one kept.
        return {cell.id: (cell, checkpoint) for cell, checkpoint in session.exec(query).all()}


def _best(cells: list[Cell], prefer_mode: CellMode) -> Cell | None:
    scored = [cell for cell in cells if cell.val_bpb is not None]
    preferred = [cell for cell in scored if cell.mode == prefer_mode]
    pool = preferred or scored
    if not pool:
        return None
    largest = max(cell.flops_budget for cell in pool)
    top = [cell for cell in pool if cell.flops_budget == largest]
    return min(
        top, key=lambda cell: (cell.val_bpb, math.inf if cell.val_loss is None else cell.val_loss, cell.id)
    )
