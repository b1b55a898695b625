"""Cells: adding the planned grid, reading it, and moving cells between states.

A state change is a compare-and-swap: `UPDATE cells SET state = :to WHERE id = :id AND state = :from`,
and the caller learns from the row count whether it won. Two claims of the same pending cell cannot both
succeed, whatever the interleaving, because the database serialises the two UPDATEs and the second finds
the state already changed.
"""

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlmodel import col, select

from store.engine import Store, insert_ignoring_duplicates, now
from store.schema import (
    ALLOWED_TRANSITIONS,
    FINISHED_STATES,
    Attempt,
    Cell,
    CellMode,
    CellState,
    Study,
    StudyCell,
)
from store.values import clean_json, clean_text, finite

_cells: sa.Table = Cell.__table__  # type: ignore[attr-defined]
_studies: sa.Table = Study.__table__  # type: ignore[attr-defined]
_links: sa.Table = StudyCell.__table__  # type: ignore[attr-defined]

# Built once: every ingest runs it, and building a statement costs more than SQLite executing it.
_LOCK_STATE = sa.select(_cells.c.state).where(_cells.c.id == sa.bindparam("cell_id")).with_for_update()

# Columns a transition may set besides the state; everything else is fixed at planning or owned by ingest.
TRANSITION_FIELDS = frozenset(
    {"reason", "steps_done", "tokens_seen", "train_loss", "val_step", "val_loss", "val_bpb", "run_dir"}
)


class FinishedCellError(ValueError):
    """A write to a cell that is done: its results are final."""


@dataclass(frozen=True, kw_only=True, slots=True)
class NewCell:
    """One planned cell as the runner hands it over; the store adds state and timestamps."""

    id: str
    mode: CellMode
    depth: int
    flops_budget: float
    seed: int
    num_params: int
    num_tokens: int
    flops_per_token: int
    steps_total: int
    config: Mapping[str, Any]
    axes: Mapping[str, Any] = field(default_factory=dict)
    parent_cell_id: str | None = None
    run_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.id or len(self.id) > 64:
            raise ValueError(f"cell id: must be 1 to 64 characters, got {self.id!r}")
        if self.mode not in set(CellMode):
            modes = ", ".join(mode.value for mode in CellMode)
            raise ValueError(f"cell {self.id}: mode {self.mode!r} is not one of {modes}")
        object.__setattr__(self, "mode", CellMode(self.mode))
        if self.mode is CellMode.PRETRAINING and self.parent_cell_id is not None:
            raise ValueError(
                f"cell {self.id}: parent_cell_id={self.parent_cell_id!r} with mode 'pretraining' "
                "(a pretraining cell has no parent)"
            )
        # Mode mid-training: no parent cell; the checkpoint the study names is in the config, recorded here.
        init_from = self.config.get("init_from")
        if self.mode is CellMode.MID_TRAINING and self.parent_cell_id is None and not init_from:
            raise ValueError(
                f"cell {self.id}: a mid-training cell needs its parent pretraining cell or, without one, "
                "the checkpoint it starts from as config['init_from']"
            )
        for name in ("depth", "num_params", "num_tokens", "flops_per_token", "steps_total", "seed"):
            value = getattr(self, name)
            lowest = 0 if name == "seed" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
                raise ValueError(f"cell {self.id}: {name} must be an integer >= {lowest}, got {value!r}")
        if not (math.isfinite(self.flops_budget) and self.flops_budget > 0):
            raise ValueError(
                f"cell {self.id}: flops_budget must be a positive number, got {self.flops_budget!r}"
            )

    @property
    def flops(self) -> float:
        """C, the training FLOPs this cell will spend."""
        return float(self.flops_per_token) * float(self.num_tokens)


def add_cells(store: Store, study_id: int, cells: Sequence[NewCell]) -> int:
    """Link the cells to the study (planned), inserting those the database does not have yet; returns how
    many are new to the study.

    Cells already present keep their state and results: the id is a hash of the resolved config, so an
    existing id is the same training run, whichever study planned it first; a cell done for another study
    is done for this one too. A mid-training cell whose parent is unknown is an error (one without a
    parent starts from the checkpoint its config names). All or nothing: one transaction.
    """
    with store.write() as conn:
        return add_cells_in(conn, study_id, cells)


def add_cells_in(conn: Connection, study_id: int, cells: Sequence[NewCell]) -> int:
    """`add_cells` inside the caller's write transaction."""
    ids = [cell.id for cell in cells]
    if len(set(ids)) != len(ids):
        duplicated = sorted({cell_id for cell_id in ids if ids.count(cell_id) > 1})
        raise ValueError(f"add_cells: duplicated cell ids {duplicated}")
    stamp = now()
    # Parents first: foreign keys are checked row by row.
    ordered = sorted(cells, key=lambda cell: cell.mode is CellMode.MID_TRAINING)
    rows = [_row(cell, study_id, stamp) for cell in ordered]
    links = [
        {"study_id": study_id, "cell_id": cell.id, "created_at": stamp, "planned": True} for cell in ordered
    ]
    if conn.execute(sa.select(_studies.c.id).where(_studies.c.id == study_id)).first() is None:
        raise ValueError(f"add_cells: study {study_id} is not in the database")
    before = _count(conn, study_id)
    parents = {cell.parent_cell_id for cell in cells if cell.parent_cell_id} - set(ids)
    if parents:
        known = set(conn.execute(sa.select(_cells.c.id).where(_cells.c.id.in_(parents))).scalars())
        if missing := sorted(parents - known):
            raise ValueError(f"add_cells: parent cell(s) {missing} are not in the database")
    for chunk in _chunks(rows, 500):
        insert_ignoring_duplicates(conn, _cells, chunk)
    for chunk in _chunks(links, 500):
        insert_ignoring_duplicates(conn, _links, chunk)
    _mark_planned(conn, study_id, ids)  # a cell linked before, since left out, is planned again
    return _count(conn, study_id) - before


def move_run_dirs(store: Store, run_dirs: Mapping[str, str]) -> list[str]:
    """Give each cell its new run directory, unless it has had an attempt (its checkpoints and events live
    in the old one); returns the ids of the cells that keep a different, older run directory."""
    attempts: sa.Table = Attempt.__table__  # type: ignore[attr-defined]
    tried = sa.select(attempts.c.cell_id).where(attempts.c.cell_id == _cells.c.id).exists()
    moved = sa.or_(_cells.c.run_dir.is_(None), _cells.c.run_dir != sa.bindparam("new_dir"))
    kept = []
    with store.write() as conn:
        for cell_id, run_dir in run_dirs.items():
            conn.execute(
                sa.update(_cells)
                .where(_cells.c.id == cell_id, moved, ~tried)
                .values(run_dir=sa.bindparam("new_dir"), updated_at=now()),
                {"new_dir": run_dir},
            )
        ids = list(run_dirs)
        for start in range(0, len(ids), 500):
            rows = conn.execute(
                sa.select(_cells.c.id, _cells.c.run_dir).where(_cells.c.id.in_(ids[start : start + 500]))
            )
            kept += [cell_id for cell_id, run_dir in rows if run_dir != run_dirs[cell_id]]
    return sorted(kept)


def in_study(study_id: int, *, planned_only: bool = True) -> sa.ColumnElement[bool]:
    """The WHERE clause that keeps the cells of one study (through `study_cells`): those its file, as last
    run, plans; with `planned_only=False` every cell it ever planned (whose attempts its runner recovers)."""
    links = sa.select(_links.c.cell_id).where(_links.c.study_id == study_id)
    return _cells.c.id.in_(links.where(_links.c.planned) if planned_only else links)


def replan_in(conn: Connection, study_id: int, cell_ids: Collection[str]) -> int:
    """Mark the study's links planned exactly for `cell_ids` (the cells its file plans now, already
    linked), inside the caller's write transaction; returns how many of its cells are left out."""
    conn.execute(sa.update(_links).where(_links.c.study_id == study_id).values(planned=False))
    _mark_planned(conn, study_id, cell_ids)
    return conn.execute(
        sa.select(sa.func.count()).select_from(_links).where(_links.c.study_id == study_id, ~_links.c.planned)
    ).scalar_one()


def _mark_planned(conn: Connection, study_id: int, cell_ids: Collection[str]) -> None:
    ids = list(cell_ids)
    for start in range(0, len(ids), 500):
        conn.execute(
            sa.update(_links)
            .where(_links.c.study_id == study_id, _links.c.cell_id.in_(ids[start : start + 500]))
            .values(planned=True)
        )


def cell_states(store: Store, cell_ids: Iterable[str]) -> dict[str, CellState]:
    """The state of each of these cells the database has, whichever studies they belong to."""
    ids = list(cell_ids)
    states: dict[str, CellState] = {}
    with store.read() as conn:
        for start in range(0, len(ids), 500):
            query = sa.select(_cells.c.id, _cells.c.state).where(_cells.c.id.in_(ids[start : start + 500]))
            states.update((cell_id, CellState(state)) for cell_id, state in conn.execute(query))
    return states


def studies_of_cell(store: Store, cell_id: str, *, planned_only: bool = False) -> list[str]:
    """The names of the studies a cell belongs to, oldest link first: every study that ever planned it (whose
    runner may hold an attempt of it), or with `planned_only` those whose file, as last run, plans it."""
    query = (
        sa.select(_studies.c.name)
        .join(_links, _links.c.study_id == _studies.c.id)
        .where(_links.c.cell_id == cell_id)
        .order_by(_links.c.created_at, _studies.c.id)
    )
    if planned_only:
        query = query.where(_links.c.planned)
    with store.read() as conn:
        return list(conn.execute(query).scalars())


def get_cell(store: Store, cell_id: str) -> Cell | None:
    with store.session() as session:
        return session.get(Cell, cell_id)


def cells_of(
    store: Store, study_id: int, *, states: Iterable[CellState] | None = None, mode: CellMode | None = None
) -> list[Cell]:
    """The study's cells in grid order (mode, budget, depth, seed), each with its latest progress.

    This is the status query behind the TUI's table: one SELECT, no per-cell lookups, since the ingest keeps
    each cell's progress and latest losses on its own row.
    """
    query = select(Cell).where(in_study(study_id))
    if states is not None:
        query = query.where(col(Cell.state).in_(list(states)))
    if mode is not None:
        query = query.where(Cell.mode == mode)
    query = query.order_by(
        col(Cell.mode), col(Cell.flops_budget), col(Cell.depth), col(Cell.seed), col(Cell.id)
    )
    with store.session() as session:
        return list(session.exec(query).all())


def transition(store: Store, cell_id: str, from_state: CellState, to_state: CellState, **fields: Any) -> bool:
    """Move the cell from `from_state` to `to_state` if it is still in `from_state`; True if this call won.

    `fields` may set the result columns of TRANSITION_FIELDS (e.g. `reason`, `val_bpb` on done). An illegal
    move raises ValueError naming both states, before touching the database.
    """
    with store.write() as conn:
        return transition_in(conn, cell_id, from_state, to_state, **fields)


def transition_in(
    conn: Connection, cell_id: str, from_state: CellState, to_state: CellState, **fields: Any
) -> bool:
    """`transition` inside the caller's write transaction (claiming a cell and opening its attempt is one)."""
    from_state, to_state = CellState(from_state), CellState(to_state)
    if (from_state, to_state) not in ALLOWED_TRANSITIONS:
        legal = sorted(to.value for start, to in ALLOWED_TRANSITIONS if start == from_state)
        raise ValueError(
            f"cell {cell_id}: illegal transition {from_state.value} -> {to_state.value} "
            f"(from {from_state.value}: {', '.join(legal) or 'none, it is final'})"
        )
    unknown = fields.keys() - TRANSITION_FIELDS
    if unknown:
        raise ValueError(
            f"cell {cell_id}: a transition cannot set {sorted(unknown)}; "
            f"it may set {sorted(TRANSITION_FIELDS)}"
        )
    values = {name: _clean(name, value) for name, value in fields.items()}
    stamp = now()
    values.setdefault("reason", None)  # the reason describes the state it is entering, not an older one
    values["state"] = to_state
    values["updated_at"] = stamp
    values["finished_at"] = stamp if to_state in FINISHED_STATES else None
    result = conn.execute(
        sa.update(_cells).where(_cells.c.id == cell_id, _cells.c.state == from_state).values(**values)
    )
    return result.rowcount == 1


def lock_cell_state(conn: Connection, cell_id: str) -> CellState:
    """The cell's state, row-locked for this transaction (SQLite's write transaction already is a lock).

    Raises ValueError for an unknown cell and FinishedCellError for a done one; every write of results
    starts here.
    """
    state = conn.execute(_LOCK_STATE, {"cell_id": cell_id}).scalar()
    if state is None:
        raise ValueError(f"cell {cell_id}: not in the database")
    if state is CellState.DONE:
        raise FinishedCellError(f"cell {cell_id}: is done; its results are final and cannot change")
    return state


def _clean(name: str, value: Any) -> Any:
    column = _cells.c[name]
    if name == "reason":
        return clean_text(value)
    return finite(value) if isinstance(column.type, sa.Float) and value is not None else value


def _row(cell: NewCell, study_id: int, stamp: float) -> dict[str, Any]:
    return {
        "id": cell.id,
        "study_id": study_id,
        "mode": cell.mode,
        "parent_cell_id": cell.parent_cell_id,
        "axes": clean_json(dict(cell.axes)),
        "depth": cell.depth,
        "flops_budget": cell.flops_budget,
        "seed": cell.seed,
        "config": clean_json(dict(cell.config)),
        "state": CellState.PENDING,
        "reason": None,
        "num_params": cell.num_params,
        "num_tokens": cell.num_tokens,
        "flops_per_token": cell.flops_per_token,
        "flops": cell.flops,
        "steps_total": cell.steps_total,
        "steps_done": 0,
        "tokens_seen": 0,
        "run_dir": cell.run_dir,
        "created_at": stamp,
        "updated_at": stamp,
    }


def _count(conn: Connection, study_id: int) -> int:
    return conn.execute(
        sa.select(sa.func.count()).select_from(_links).where(_links.c.study_id == study_id)
    ).scalar_one()


def _chunks(rows: list[dict[str, Any]], size: int) -> Iterable[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]
