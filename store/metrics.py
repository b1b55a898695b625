"""Ingesting a trainer's events: metric rows, evals, checkpoints and the events-file offset, in one go.

The runner tails `RUN_DIR/events.jsonl`, turns what it read into rows and calls `ingest` once per read.
Everything from that read lands in one transaction together with the new byte offset, so a runner killed
at any moment resumes from an offset that matches the rows exactly: nothing is lost. Rows are keyed by
(cell, step[, task | kind]) and inserted with ON CONFLICT DO NOTHING, so reading the same events twice
(a crash between the trainer's write and our commit) stores them once: nothing is doubled. (`add_evals`,
for done cells, may also fill a stored eval row that has no score: see there.)

Bulk rows go through one executemany per table (no ORM object per row): this is the hot path.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from store.cells import lock_cell_state
from store.engine import Store, insert_ignoring_duplicates, now, upsert
from store.schema import (
    Attempt,
    Cell,
    CellState,
    Checkpoint,
    CheckpointKind,
    Eval,
    IngestOffset,
    TrainMetric,
    ValMetric,
)
from store.values import clean_json, clean_rows

_cells: sa.Table = Cell.__table__  # type: ignore[attr-defined]
_attempts: sa.Table = Attempt.__table__  # type: ignore[attr-defined]
_train: sa.Table = TrainMetric.__table__  # type: ignore[attr-defined]
_val: sa.Table = ValMetric.__table__  # type: ignore[attr-defined]
_evals: sa.Table = Eval.__table__  # type: ignore[attr-defined]
_checkpoints: sa.Table = Checkpoint.__table__  # type: ignore[attr-defined]
_offsets: sa.Table = IngestOffset.__table__  # type: ignore[attr-defined]

# The keys each kind of row may carry (the cell and attempt ids come from `ingest`'s arguments).
TRAIN_FIELDS = frozenset(
    {"step", "tokens", "flops", "loss", "lr", "lr_frac", "tok_per_s", "mfu", "step_s", "elapsed_s", "time"}
)
VAL_FIELDS = frozenset({"step", "tokens", "flops", "val_loss", "val_bpb", "val_tokens", "elapsed_s", "time"})
EVAL_FIELDS = frozenset(
    {"step", "task", "score", "preset", "accuracy", "centered", "stderr", "num_examples", "metrics", "time"}
)
CHECKPOINT_FIELDS = frozenset({"step", "kind", "path", "tokens", "flops", "created_at"})
_STEP_TOKENS = frozenset({"step", "tokens"})

Rows = Sequence[Mapping[str, Any]]


def ingest(
    store: Store,
    cell_id: str,
    *,
    attempt_id: int | None = None,
    train: Rows = (),
    val: Rows = (),
    evals: Rows = (),
    checkpoints: Rows = (),
    start: Mapping[str, Any] | None = None,
    events_path: str | None = None,
    events_offset: int | None = None,
) -> None:
    """Store one read's worth of a cell's events, and (with `events_path`) how far into the file it got.

    Rows are mappings with keys from TRAIN_FIELDS, VAL_FIELDS, EVAL_FIELDS, CHECKPOINT_FIELDS; non-finite
    floats become NULL. `start` is the attempt's `start` event, kept whole on the attempt. The cell's
    progress columns (steps_done, tokens_seen, train_loss, val_*) move to the newest step ingested, never
    backwards. Raises FinishedCellError for a done cell, ValueError for an unknown cell or a malformed row
    (naming the table and key), and nothing is written then.
    """
    if (events_path is None) != (events_offset is None):
        raise ValueError(f"ingest {cell_id}: give events_path and events_offset together")
    if start is not None and attempt_id is None:
        raise ValueError(f"ingest {cell_id}: a start event needs the attempt_id it belongs to")
    if events_offset is not None and events_offset < 0:
        raise ValueError(f"ingest {cell_id}: events_offset must be >= 0, got {events_offset}")
    stamp = now()
    ids = {"cell_id": cell_id, "attempt_id": attempt_id}
    train_rows = clean_rows(_train, train, allowed=TRAIN_FIELDS, required=_STEP_TOKENS, fixed=ids)
    val_rows = clean_rows(_val, val, allowed=VAL_FIELDS, required=_STEP_TOKENS, fixed=ids)
    eval_rows = clean_rows(
        _evals, evals, allowed=EVAL_FIELDS, required=frozenset({"step", "task"}), fixed={"cell_id": cell_id}
    )
    checkpoint_rows = clean_rows(
        _checkpoints,
        checkpoints,
        allowed=CHECKPOINT_FIELDS,
        required=frozenset({"step", "kind", "path"}),
        defaults={"created_at": stamp},
        fixed={"cell_id": cell_id},
    )
    for row in checkpoint_rows:
        row["kind"] = CheckpointKind(row["kind"])
    with store.write() as conn:
        lock_cell_state(conn, cell_id)
        insert_ignoring_duplicates(conn, _train, train_rows)
        insert_ignoring_duplicates(conn, _val, val_rows)
        insert_ignoring_duplicates(conn, _evals, eval_rows)
        insert_ignoring_duplicates(conn, _checkpoints, checkpoint_rows)
        _advance_progress(conn, cell_id, train_rows, val_rows, stamp)
        if start is not None:
            updated = conn.execute(
                sa.update(_attempts)
                .where(_attempts.c.id == attempt_id, _attempts.c.cell_id == cell_id)
                .values(start_event=clean_json(dict(start)))
            )
            if updated.rowcount != 1:
                raise ValueError(f"ingest {cell_id}: attempt {attempt_id} is not an attempt of this cell")
        if events_path is not None:
            row = {
                "cell_id": cell_id,
                "path": events_path,
                "offset_bytes": events_offset,
                "updated_at": stamp,
            }
            upsert(conn, _offsets, row, keys=("cell_id", "path"))


def add_evals(store: Store, cell_id: str, evals: Rows) -> int:
    """Add eval rows to a done cell from outside its trainer (`nanostudy eval` scoring its final checkpoint);
    returns how many were written (new, or replacing a stored row).

    Rows are keyed by (cell, step, task). A new key is inserted. A stored row keeps its score unless the new
    one fills a gap, and a null score never replaces anything:
    - a stored row with a null score (a task not scored then: its file was missing) takes a row's real score;
    - when the rows hold averages (rows whose metrics have `parts`), they are taken as one scoring, and when
      that scoring scores every key the store has a score for and more (a task file added since), each of
      its scored rows replaces the stored one: the averages with the task scores they average, so a stored
      average and its parts always come from one scoring, never from two.
    No other writer touches a done cell's rows (`ingest` refuses them), so this is safe while a runner works
    on the same study. Refused (ValueError) for a cell that is not done: a live cell's evals come from its
    trainer's events, and a row added now could shadow one its trainer writes later. Rows are mappings with
    keys from EVAL_FIELDS; a malformed row raises ValueError and nothing is written.
    """
    rows = clean_rows(
        _evals, evals, allowed=EVAL_FIELDS, required=frozenset({"step", "task"}), fixed={"cell_id": cell_id}
    )
    with store.write() as conn:
        locked = sa.select(_cells.c.state).where(_cells.c.id == cell_id).with_for_update()
        state = conn.execute(locked).scalar()
        if state is None:
            raise ValueError(f"cell {cell_id}: not in the database")
        if state is not CellState.DONE:
            raise ValueError(
                f"cell {cell_id}: is {state.value}; evals are added from outside only to done cells (a live "
                "cell's come from its trainer's events)"
            )
        keys = {(row["step"], row["task"]) for row in rows}
        found = conn.execute(
            sa.select(_evals.c.step, _evals.c.task, _evals.c.score).where(
                _evals.c.cell_id == cell_id, _evals.c.step.in_(sorted({step for step, _ in keys}))
            )
        )
        stored = {(step, task): score for step, task, score in found if (step, task) in keys}
        scored_before = {key for key, score in stored.items() if score is not None}
        scored_now = {(row["step"], row["task"]) for row in rows if row["score"] is not None}
        averages = any(isinstance(row["metrics"], dict) and "parts" in row["metrics"] for row in rows)
        fuller = averages and scored_before < scored_now
        replacing: dict[tuple[int, str], dict[str, Any]] = {}
        for row in rows:
            key = (row["step"], row["task"])
            if key in stored and row["score"] is not None and (stored[key] is None or fuller):
                replacing.setdefault(key, row)  # a key given twice: its first scored row
        count = sa.select(sa.func.count()).select_from(_evals).where(_evals.c.cell_id == cell_id)
        before = conn.execute(count).scalar_one()
        insert_ignoring_duplicates(
            conn, _evals, [row for row in rows if (row["step"], row["task"]) not in stored]
        )
        added = conn.execute(count).scalar_one() - before
        if replacing:
            replace = sa.update(_evals).where(
                _evals.c.cell_id == cell_id,
                _evals.c.step == sa.bindparam("key_step"),
                _evals.c.task == sa.bindparam("key_task"),
            )
            changes = [
                {
                    **{name: value for name, value in row.items() if name not in ("cell_id", "step", "task")},
                    "key_step": step,
                    "key_task": task,
                }
                for (step, task), row in replacing.items()
            ]
            conn.execute(replace, changes)
        return added + len(replacing)


def ingest_offset(store: Store, cell_id: str, events_path: str) -> int:
    """The byte offset into `events_path` up to which the cell's events are stored; 0 if none yet."""
    with store.read() as conn:
        offset = conn.execute(
            sa.select(_offsets.c.offset_bytes).where(
                _offsets.c.cell_id == cell_id, _offsets.c.path == events_path
            )
        ).scalar()
    return int(offset or 0)


def rewind(store: Store, cell_id: str, *, to_step: int) -> None:
    """Forget the cell's results after `to_step` before a resume from the checkpoint at that step.

    The resumed attempt re-emits those steps; without this, the rows of the dead attempt would win the
    ON CONFLICT DO NOTHING. `to_step=0` clears a cell that restarts from scratch (a rerun). Progress
    columns are recomputed from what remains. Refused for a done cell.
    """
    if to_step < 0:
        raise ValueError(f"rewind {cell_id}: to_step must be >= 0, got {to_step}")
    with store.write() as conn:
        lock_cell_state(conn, cell_id)
        for table in (_train, _val, _evals, _checkpoints):
            conn.execute(sa.delete(table).where(table.c.cell_id == cell_id, table.c.step > to_step))
        last_train = conn.execute(
            sa.select(_train.c.step, _train.c.tokens, _train.c.loss)
            .where(_train.c.cell_id == cell_id)
            .order_by(_train.c.step.desc())
            .limit(1)
        ).first()
        last_val = conn.execute(
            sa.select(_val.c.step, _val.c.val_loss, _val.c.val_bpb)
            .where(_val.c.cell_id == cell_id)
            .order_by(_val.c.step.desc())
            .limit(1)
        ).first()
        conn.execute(
            sa.update(_cells)
            .where(_cells.c.id == cell_id)
            .values(
                steps_done=last_train.step if last_train else 0,
                tokens_seen=last_train.tokens if last_train else 0,
                train_loss=last_train.loss if last_train else None,
                val_step=last_val.step if last_val else None,
                val_loss=last_val.val_loss if last_val else None,
                val_bpb=last_val.val_bpb if last_val else None,
                updated_at=now(),
            )
        )


# Built once (see `store.cells._LOCK_STATE`). `<=` rather than `<`: re-ingesting the newest step rewrites
# the same values, which is harmless; an older step changes nothing.
_TRAIN_PROGRESS = (
    sa.update(_cells)
    .where(_cells.c.id == sa.bindparam("cell_id"), _cells.c.steps_done <= sa.bindparam("new_step"))
    .values(
        steps_done=sa.bindparam("new_step"),
        tokens_seen=sa.bindparam("new_tokens"),
        train_loss=sa.bindparam("new_loss", type_=sa.Float),
        updated_at=sa.bindparam("stamp"),
    )
)
_VAL_PROGRESS = (
    sa.update(_cells)
    .where(
        _cells.c.id == sa.bindparam("cell_id"),
        sa.or_(_cells.c.val_step.is_(None), _cells.c.val_step <= sa.bindparam("new_step")),
    )
    .values(
        val_step=sa.bindparam("new_step"),
        val_loss=sa.bindparam("new_loss", type_=sa.Float),
        val_bpb=sa.bindparam("new_bpb", type_=sa.Float),
        updated_at=sa.bindparam("stamp"),
    )
)


def _advance_progress(conn: Connection, cell_id: str, train_rows: Rows, val_rows: Rows, stamp: float) -> None:
    if train_rows:
        last = max(train_rows, key=lambda row: row["step"])
        conn.execute(
            _TRAIN_PROGRESS,
            {
                "cell_id": cell_id,
                "new_step": last["step"],
                "new_tokens": last["tokens"],
                "new_loss": last["loss"],
                "stamp": stamp,
            },
        )
    if val_rows:
        last = max(val_rows, key=lambda row: row["step"])
        conn.execute(
            _VAL_PROGRESS,
            {
                "cell_id": cell_id,
                "new_step": last["step"],
                "new_loss": last["val_loss"],
                "new_bpb": last["val_bpb"],
                "stamp": stamp,
            },
        )
