"""Attempts: claiming a cell, heartbeats, ending a try, and finding the ones that went quiet.

The runner's life cycle of one try, each step one transaction:

    attempt = claim(store, cell_id, executor=..., host=..., study_id=...)  # pending -> running, opened
    if attempt is None: ...                                                # someone else got it
    record_launch(store, attempt.id, pid=..., pid_start_time=...)
    heartbeat(store, [attempt.id, ...])                                    # every few seconds while it runs
    end_attempt(store, attempt.id, AttemptOutcome.DONE, exit_code=0, val_bpb=...)  # running -> done

A restarted runner looks at `open_attempts` (re-adopt the live ones: same host, pid and pid start time);
the reaper ends each of `stale_attempts` with outcome LOST, which puts its cell back to pending. An
attempt records the study whose runner looks after it; a runner that recovers another study's attempt of a
shared cell (that study's runner died) first makes it its own with `take_over_attempt`.
"""

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from store.cells import in_study, lock_cell_state, transition_in
from store.engine import Store, now
from store.schema import CELL_STATE_AFTER, Attempt, AttemptOutcome, Cell, CellState, Executor
from store.values import clean_text

_attempts: sa.Table = Attempt.__table__  # type: ignore[attr-defined]
_cells: sa.Table = Cell.__table__  # type: ignore[attr-defined]


def claim(
    store: Store,
    cell_id: str,
    *,
    executor: Executor,
    host: str,
    gpus: str | None = None,
    num_gpus: int = 0,
    resume_step: int | None = None,
    study_id: int | None = None,
) -> Attempt | None:
    """Move a pending cell to running and open its next attempt, atomically; None if it was not pending.

    The guarded UPDATE decides the winner: of two concurrent claims exactly one sees a row count of 1.
    `study_id` is the study whose runner claims it (a cell may be shared): the attempt is that runner's to
    look after, and a restarted runner of that study recovers it.
    """
    executor = Executor(executor)
    if num_gpus < 0:
        raise ValueError(f"claim {cell_id}: num_gpus must be >= 0, got {num_gpus}")
    with store.write() as conn:
        if not transition_in(conn, cell_id, CellState.PENDING, CellState.RUNNING):
            if conn.execute(sa.select(_cells.c.id).where(_cells.c.id == cell_id)).first() is None:
                raise ValueError(f"claim {cell_id}: no such cell")
            return None
        number = conn.execute(
            sa.select(sa.func.coalesce(sa.func.max(_attempts.c.number), 0) + 1).where(
                _attempts.c.cell_id == cell_id
            )
        ).scalar_one()
        stamp = now()
        attempt_id = conn.execute(
            sa.insert(_attempts)
            .values(
                cell_id=cell_id,
                number=number,
                executor=executor,
                host=host,
                gpus=gpus,
                num_gpus=num_gpus,
                resume_step=resume_step,
                study_id=study_id,
                started_at=stamp,
                heartbeat_at=stamp,
            )
            .returning(_attempts.c.id)
        ).scalar_one()
    return get_attempt(store, attempt_id)


def record_launch(
    store: Store,
    attempt_id: int,
    *,
    pid: int | None = None,
    pid_start_time: float | None = None,
    job_id: str | None = None,
) -> None:
    """Note the process (or Slurm job) that now runs the attempt, so a restarted runner can find it again."""
    with store.write() as conn:
        result = conn.execute(
            sa.update(_attempts)
            .where(_attempts.c.id == attempt_id, _attempts.c.ended_at.is_(None))
            .values(pid=pid, pid_start_time=pid_start_time, job_id=job_id, heartbeat_at=now())
        )
    if result.rowcount != 1:
        raise ValueError(f"attempt {attempt_id}: not an open attempt")


def take_over_attempt(store: Store, attempt_id: int, *, study_id: int, from_study_id: int | None) -> bool:
    """Make an open attempt the one of `study_id`'s runner if it is still `from_study_id`'s (None: an attempt
    from before schema version 3); True if this call moved it.

    A compare-and-swap, like `claim`: of two runners taking over the same attempt exactly one wins, and
    the loser leaves the attempt to the winner.
    """
    with store.write() as conn:
        result = conn.execute(
            sa.update(_attempts)
            .where(
                _attempts.c.id == attempt_id,
                _attempts.c.ended_at.is_(None),
                _attempts.c.study_id.is_not_distinct_from(from_study_id),
            )
            .values(study_id=study_id)
        )
    return result.rowcount == 1


def heartbeat(store: Store, attempt_ids: Iterable[int]) -> int:
    """Mark the open attempts among `attempt_ids` alive now, in one transaction; returns how many."""
    ids = list(attempt_ids)
    if not ids:
        return 0
    with store.write() as conn:
        result = conn.execute(
            sa.update(_attempts)
            .where(_attempts.c.id.in_(ids), _attempts.c.ended_at.is_(None))
            .values(heartbeat_at=now())
        )
    return result.rowcount


def end_attempt(
    store: Store,
    attempt_id: int,
    outcome: AttemptOutcome,
    *,
    exit_code: int | None = None,
    reason: str | None = None,
    **cell_fields: Any,
) -> bool:
    """Close an open attempt and move its cell from running to the state its outcome implies, atomically.

    CELL_STATE_AFTER maps the outcome: done -> done, failed -> failed, interrupted or lost -> pending, ...
    `cell_fields` are set on the cell as in `store.cells.transition` (e.g. the final `val_bpb`). Returns
    False, changing nothing, when the attempt was already closed (a reaper and a late exit both ending it).
    """
    outcome = AttemptOutcome(outcome)
    with store.write() as conn:
        cell_id = conn.execute(sa.select(_attempts.c.cell_id).where(_attempts.c.id == attempt_id)).scalar()
        if cell_id is None:
            raise ValueError(f"attempt {attempt_id}: not in the database")
        lock_cell_state(conn, cell_id)
        closed = conn.execute(
            sa.update(_attempts)
            .where(_attempts.c.id == attempt_id, _attempts.c.ended_at.is_(None))
            .values(ended_at=now(), outcome=outcome, exit_code=exit_code, reason=clean_text(reason))
        )
        if closed.rowcount != 1:
            return False
        target = CELL_STATE_AFTER[outcome]
        if not transition_in(conn, cell_id, CellState.RUNNING, target, reason=reason, **cell_fields):
            # An open attempt always has a running cell; anything else means the database was edited by hand.
            raise RuntimeError(f"cell {cell_id}: has open attempt {attempt_id} but is not running")
    return True


def get_attempt(store: Store, attempt_id: int) -> Attempt | None:
    with store.session() as session:
        return session.get(Attempt, attempt_id)


def attempts_of(store: Store, cell_id: str) -> list[Attempt]:
    """Every attempt at the cell, oldest first."""
    with store.session() as session:
        query = select(Attempt).where(Attempt.cell_id == cell_id).order_by(col(Attempt.number))
        return list(session.exec(query).all())


def attempt_counts(store: Store, study_id: int) -> dict[str, int]:
    """How many attempts each cell of the study has had, in one GROUP BY; cells never tried are absent."""
    query = (
        sa.select(_attempts.c.cell_id, sa.func.count())
        .join(_cells, _cells.c.id == _attempts.c.cell_id)
        .where(in_study(study_id))
        .group_by(_attempts.c.cell_id)
    )
    with store.read() as conn:
        return {cell_id: count for cell_id, count in conn.execute(query)}


def open_attempts(store: Store, study_id: int | None = None) -> list[Attempt]:
    """Attempts not yet ended (their trainers may still be alive), optionally of one study's cells only:
    every cell it ever planned, so that its runner recovers the attempt of a cell its file has dropped."""
    query = select(Attempt).where(col(Attempt.ended_at).is_(None))
    if study_id is not None:
        cells = in_study(study_id, planned_only=False)
        query = query.join(Cell, col(Cell.id) == col(Attempt.cell_id)).where(cells)
    with store.session() as session:
        return list(session.exec(query.order_by(col(Attempt.id))).all())


def stale_attempts(store: Store, *, max_silence_s: float, study_id: int | None = None) -> list[Attempt]:
    """Open attempts whose last heartbeat is older than `max_silence_s`: candidates for the reaper."""
    if max_silence_s <= 0:
        raise ValueError(f"max_silence_s must be positive, got {max_silence_s}")
    cutoff = now() - max_silence_s
    return [attempt for attempt in open_attempts(store, study_id) if attempt.heartbeat_at < cutoff]
