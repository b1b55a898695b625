"""The runner's public API for the CLI and the TUI: studies, their status, and cancelling or retrying cells.

Everything acts through the store. A runner that is running the study notices a change on its next turn
(it reads every cell's state each `poll_s`): a pending cell cancelled here is never started, a running cell
cancelled here has its attempt closed here and its trainer stopped by that runner (one SIGTERM: the trainer
checkpoints and exits), a cell retried here is started when a GPU is free. When no runner holds the study,
`cancel` stops the trainer of a running cell itself: a process of this machine, or a Slurm job that one of
the study's attempts recorded (`scancel`).
"""

import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.executor import Executor, Handle, Running, executor_for, log_paths
from runner.ingest import EventTail
from runner.lock import is_locked, lock_path
from store import (
    Attempt,
    AttemptOutcome,
    Cell,
    CellMode,
    CellState,
    Checkpoint,
    Store,
    Study,
    attempt_counts,
    attempts_of,
    cell_statuses,
    default_db_path,
    end_attempt,
    get_cell,
    get_study,
    latest_train_points,
    open_attempts,
    open_store,
    ranked_checkpoints,
    studies_of_cell,
    study_summary,
    transition,
)
from store import best_checkpoint as _best_checkpoint
from store import list_studies as _list_studies

CANCEL_REASON = "cancelled by the user"
STUDY_SUFFIXES = (".yaml", ".yml")  # a STUDY argument ending so is a study file, never a study's name
UNPLANNED_STOP_REASON = "stopped by a cancel of the study, whose file no longer plans this cell"
RETRYABLE_STATES = (CellState.FAILED, CellState.DIVERGED, CellState.CANCELLED)


class UnknownStudyError(LookupError):
    """No study of that name in the database."""


@dataclass(frozen=True, kw_only=True, slots=True)
class StudyOverview:
    name: str
    path: str
    num_cells: int
    counts: dict[str, int]  # state -> cells, zeros left out
    fraction_done: float  # of the planned FLOPs
    updated_at: float | None


@dataclass(frozen=True, kw_only=True, slots=True)
class CellProgress:
    id: str
    mode: str
    parent_id: str | None
    state: str
    reason: str | None
    depth: int
    flops: float  # the FLOP budget the cell was planned for (its grid coordinate)
    seed: int
    num_params: int
    attempts: int
    step: int
    steps_total: int
    tokens: int
    train_loss: float | None
    val_loss: float | None
    val_bpb: float | None
    eta_s: float | None  # until this cell is done, from measured speed; None when unknown or finished
    tok_per_s: float | None = None  # of its newest training step
    mfu: float | None = None  # of its newest training step, in [0, 1]; None on the CPU
    gpus: str | None = None  # a running cell's CUDA_VISIBLE_DEVICES ("" on the CPU); None when not running


@dataclass(frozen=True, kw_only=True, slots=True)
class StudyStatus:
    name: str
    path: str
    counts: dict[str, int]  # every state, zeros included
    cells: tuple[CellProgress, ...]
    fraction_done: float
    eta_s: float | None  # until every unfinished cell is done, at the current parallelism
    runner_active: bool  # a runner holds the study's lock on this machine

    def to_json(self) -> dict[str, Any]:
        """`nanostudy status --json`: {"study", "counts", "cells": [{"id", "state", "depth", ...}], ...}."""
        return {
            "study": self.name,
            "path": self.path,
            "counts": self.counts,
            "fraction_done": self.fraction_done,
            "eta_s": self.eta_s,
            "runner_active": self.runner_active,
            "cells": [
                {
                    "id": cell.id,
                    "state": cell.state,
                    "depth": cell.depth,
                    "flops": cell.flops,
                    "seed": cell.seed,
                    "mode": cell.mode,
                    "parent_id": cell.parent_id,
                    "attempts": cell.attempts,
                    "step": cell.step,
                    "steps_total": cell.steps_total,
                    "tokens": cell.tokens,
                    "num_params": cell.num_params,
                    "train_loss": cell.train_loss,
                    "val_loss": cell.val_loss,
                    "val_bpb": cell.val_bpb,
                    "eta_s": cell.eta_s,
                    "tok_per_s": cell.tok_per_s,
                    "mfu": cell.mfu,
                    "gpus": cell.gpus,
                    "reason": cell.reason,
                }
                for cell in self.cells
            ],
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class CancelResult:
    cancelled: tuple[str, ...]  # pending cells, now cancelled
    stopping: tuple[str, ...]  # running cells, now cancelled; their trainers are being stopped
    stopped_here: tuple[str, ...]  # of those, the ones whose trainer this call signalled (no runner active)
    unchanged: tuple[str, ...]  # done, failed or diverged (already finished), or already cancelled
    still_running: tuple[str, ...] = ()  # of stopped_here, the ones still running when `wait_s` ran out
    # Cells an earlier version of the study file planned whose trainer, started by this study, still ran
    # with no runner watching: stopped here at a checkpoint (pending again; they resume if planned again).
    unplanned_stopped: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class BestCheckpoint:
    """The checkpoint to talk to: a done cell's final checkpoint."""

    cell_id: str
    mode: str  # "pretraining" | "mid-training"
    depth: int
    flops: float  # the cell's FLOP budget
    val_bpb: float | None
    step: int
    path: Path  # the checkpoint directory


def best_checkpoint(store: Store, name: str) -> BestCheckpoint | None:
    """The checkpoint the TUI's chat, `nanostudy chat` and `nanostudy serve` load for a study: the final
    checkpoint of store.best_checkpoint's cell (done mid-training cells first, else any done cell; the
    largest FLOP budget; the lowest val bpb). None while no cell qualifies."""
    study = _study(store, name)
    assert study.id is not None
    found = _best_checkpoint(store, study.id, prefer_mode=CellMode.MID_TRAINING)
    return None if found is None else _as_best(*found)


def checkpoint_candidates(store: Store, name: str) -> list[BestCheckpoint]:
    """Every done cell's final checkpoint, best first by `best_checkpoint`'s rule (its choice leads when
    there is one; cells without a val bpb come last): the list the TUI's chat offers to choose from."""
    study = _study(store, name)
    assert study.id is not None
    ranked = ranked_checkpoints(store, study.id, prefer_mode=CellMode.MID_TRAINING)
    return [_as_best(cell, checkpoint) for cell, checkpoint in ranked]


def _as_best(cell: Cell, checkpoint: Checkpoint) -> BestCheckpoint:
    assert cell.run_dir is not None, f"done cell {cell.id} has no run directory"
    return BestCheckpoint(
        cell_id=cell.id,
        mode=cell.mode.value,
        depth=cell.depth,
        flops=cell.flops_budget,
        val_bpb=cell.val_bpb,
        step=checkpoint.step,
        path=(Path(cell.run_dir) / checkpoint.path).resolve(),
    )


def resolve_study(study: str, db: str | None = None) -> tuple[str, str]:
    """(database, study name) for STUDY as the commands take it, without opening anything: a study file
    (its `name`; the database beside it unless `db`), or a study's name (in `db`, else in nanostudy.db in
    the current directory). StudyError (a ValueError) for a study file without a readable name: the rest of
    it is not checked, so that a study edited (or whose data moved) since it ran can still be watched and
    cancelled."""
    path = Path(study)
    if path.is_file():
        from runner.study import study_name

        return str(db or default_db_path(path)), study_name(path)
    if path.suffix in STUDY_SUFFIXES:  # a mistyped file, not the name of a study
        raise FileNotFoundError(f"{study}: no such study file")
    return str(db or "nanostudy.db"), study


@dataclass(frozen=True, kw_only=True, slots=True)
class LogTail:
    path: Path  # RUN_DIR/logs/attempt_N.out or .err
    lines: tuple[str, ...]  # its last lines


LOG_TAIL_BYTES = 64 << 10  # enough for the last lines of any log; a log may be gigabytes


def log_tail(store: Store, cell_id: str, *, num_lines: int = 40) -> list[LogTail]:
    """The last `num_lines` of the cell's newest attempt's stdout and stderr (where the executor writes
    them), each file that exists and is not empty; [] for a cell never started."""
    cell = get_cell(store, cell_id)
    attempts = attempts_of(store, cell_id)
    if cell is None or cell.run_dir is None or not attempts:
        return []
    tails = []
    for path in log_paths(Path(cell.run_dir), attempts[-1].number):
        lines = _last_lines(path, num_lines)
        if lines:
            tails.append(LogTail(path=path, lines=lines))
    return tails


def _last_lines(path: Path, num_lines: int) -> tuple[str, ...]:
    try:
        with path.open("rb") as file:
            size = file.seek(0, 2)
            file.seek(max(0, size - LOG_TAIL_BYTES))
            text = file.read().decode("utf-8", errors="replace")
    except OSError:  # not there (yet), or unreadable: nothing to show
        return ()
    lines = text.splitlines()
    if size > LOG_TAIL_BYTES:
        lines = lines[1:]  # the first line read is probably cut
    return tuple(lines[-num_lines:])


def open_study(study: str, db: str | None = None) -> tuple[Store, str]:
    """STUDY as the commands take it: a study file (its name; its database unless `db`), or a study's name
    (in `db`, else in nanostudy.db in the current directory). Raises StoreNotFoundError (a
    FileNotFoundError) when that database does not exist, StudyError (a ValueError) for a bad file."""
    target, name = resolve_study(study, db)
    return open_store(target, create=False), name


def list_studies(store: Store) -> list[StudyOverview]:
    overviews = []
    for study in _list_studies(store):
        assert study.id is not None
        summary = study_summary(store, study.id)
        overviews.append(
            StudyOverview(
                name=study.name,
                path=study.path,
                num_cells=summary.num_cells,
                counts={state.value: n for state, n in summary.counts.items() if n},
                fraction_done=summary.fraction_done,
                updated_at=summary.updated_at,
            )
        )
    return overviews


def study_status(store: Store, name: str) -> StudyStatus:
    """Counts, every cell's progress, and ETAs from the measured speed of the study's cells.

    A cell's ETA is its remaining steps at its own measured seconds per step; a cell that has not started
    is estimated from the study's FLOP rate per cell (FLOPs done / training seconds, over cells with
    progress). The study's ETA divides the remaining seconds by the number of cells running now (one if
    none): a rough guide, since it knows nothing of GPUs that free up or of cells still to be retried.
    """
    # A handful of queries whatever the number of cells (the TUI polls this every second), in one snapshot.
    with store.snapshot():
        study = _study(store, name)
        statuses = cell_statuses(store, study.id)
        latest = latest_train_points(store, study.id)
        num_attempts = attempt_counts(store, study.id)
        gpus = {attempt.cell_id: attempt.gpus or "" for attempt in open_attempts(store, study.id)}
    speeds: dict[str, float] = {}  # cell -> seconds per step, measured
    flops_done = seconds_done = 0.0
    for status in statuses:
        last = latest.get(status.id)
        if (
            status.steps_done > 0
            and status.state in (CellState.RUNNING, CellState.PENDING, CellState.DONE)
            and last is not None
            and last.elapsed_s
        ):
            speeds[status.id] = last.elapsed_s / last.step
            flops_done += status.flops * status.steps_done / status.steps_total
            seconds_done += last.elapsed_s
    flop_rate = flops_done / seconds_done if seconds_done > 0 else None
    cells = []
    remaining_s: float | None = 0.0
    for status in statuses:
        eta_s = None
        if status.state in (CellState.RUNNING, CellState.PENDING):
            steps_left = status.steps_total - status.steps_done
            if status.id in speeds:
                eta_s = steps_left * speeds[status.id]
            elif flop_rate:
                eta_s = status.flops * steps_left / status.steps_total / flop_rate
            remaining_s = None if remaining_s is None or eta_s is None else remaining_s + eta_s
        cells.append(
            CellProgress(
                id=status.id,
                mode=status.mode.value,
                parent_id=status.parent_cell_id,
                state=status.state.value,
                reason=status.reason,
                depth=status.depth,
                flops=status.flops_budget,
                seed=status.seed,
                num_params=status.num_params,
                attempts=num_attempts.get(status.id, 0),
                step=status.steps_done,
                steps_total=status.steps_total,
                tokens=status.tokens_seen,
                train_loss=status.train_loss,
                val_loss=status.val_loss,
                val_bpb=status.val_bpb,
                eta_s=eta_s,
                tok_per_s=None if status.id not in latest else latest[status.id].tok_per_s,
                mfu=None if status.id not in latest else latest[status.id].mfu,
                gpus=gpus.get(status.id) if status.state is CellState.RUNNING else None,
            )
        )
    summary = study_summary(store, study.id)
    running = summary.counts[CellState.RUNNING]
    return StudyStatus(
        name=study.name,
        path=study.path,
        counts={state.value: n for state, n in summary.counts.items()},
        cells=tuple(cells),
        fraction_done=summary.fraction_done,
        eta_s=None if remaining_s is None else remaining_s / max(1, running),
        runner_active=is_locked(lock_path(store, study.name)),
    )


def cancel(store: Store, name: str, *, cell_id: str | None = None, wait_s: float = 0.0) -> CancelResult:
    """Cancel one cell, or every unfinished cell of the study.

    Pending cells become cancelled. A running cell's open attempt is closed as cancelled (the cell with
    it, in one transaction); its trainer is then stopped by the runner that watches it (`_watched`: for a
    cell that several studies share, maybe another study's), or, when no runner on this machine watches
    it, by this call (one SIGTERM to the process we started, verified by pid and start time; `wait_s` waits
    that long for it to exit). Finished cells are left as they are.
    """
    study = _study(store, name)
    statuses = cell_statuses(store, study.id)
    if cell_id is not None:
        statuses = [status for status in statuses if status.id == cell_id]
        if not statuses:
            raise ValueError(f"study {name!r} has no cell {cell_id!r}")
    cancelled, stopping, stopped_here, unchanged = [], [], [], []
    to_stop: list[tuple[Executor, Handle, str]] = []
    for status in statuses:
        if status.state is CellState.PENDING and transition(
            store, status.id, CellState.PENDING, CellState.CANCELLED, reason=CANCEL_REASON
        ):
            cancelled.append(status.id)
            continue
        attempt = _open_attempt(store, status.id) if status.state is CellState.RUNNING else None
        if attempt is None or not end_attempt(
            store, attempt.id, AttemptOutcome.CANCELLED, reason=CANCEL_REASON
        ):
            unchanged.append(status.id)
            continue
        stopping.append(status.id)
        if not _watched(store, attempt) and (signalled := _stop_here(store, attempt)):
            to_stop.append(signalled)
            stopped_here.append(status.id)
    unplanned_stopped = []
    if cell_id is None:
        # A trainer of a cell that the edited file no longer plans belongs to the study all the same: its
        # runner stops it when it starts; with no runner live, so does a cancel of the whole study.
        planned = {status.id for status in statuses}
        for attempt in open_attempts(store, study.id):
            if attempt.cell_id in planned or attempt.study_id != study.id or _watched(store, attempt):
                continue
            signalled = _stop_here(store, attempt)
            if signalled is None:  # it ended meanwhile: the next runner closes the attempt from its events
                continue
            assert attempt.id is not None
            end_attempt(store, attempt.id, AttemptOutcome.INTERRUPTED, reason=UNPLANNED_STOP_REASON)
            to_stop.append(signalled)
            unplanned_stopped.append(attempt.cell_id)
    deadline = time.monotonic() + wait_s
    signalled = [cell for _, _, cell in to_stop]
    while to_stop and time.monotonic() < deadline:
        to_stop = [entry for entry in to_stop if isinstance(entry[0].poll(entry[1]), Running)]
        time.sleep(0.2)
    # What those trainers logged since their runner died (steps, the checkpoint they stopped at): into the
    # store now, so that `status` shows where they stopped, not where the runner last read them. A later
    # runner's catch-up reads from the same offset, so nothing is stored twice.
    for cell in signalled:
        EventTail(store, cell, _run_dir(store, cell)).pump()
    return CancelResult(
        cancelled=tuple(cancelled),
        stopping=tuple(stopping),
        stopped_here=tuple(stopped_here),
        unchanged=tuple(unchanged),
        still_running=tuple(cell for _, _, cell in to_stop),
        unplanned_stopped=tuple(unplanned_stopped),
    )


def retry(store: Store, name: str, cell_id: str) -> bool:
    """Put a failed, diverged or cancelled cell back to pending (it resumes from its last checkpoint when a
    runner starts it); False if the cell is in another state."""
    study = _study(store, name)
    status = next((s for s in cell_statuses(store, study.id) if s.id == cell_id), None)
    if status is None:
        raise ValueError(f"study {name!r} has no cell {cell_id!r}")
    if status.state not in RETRYABLE_STATES:
        return False
    return transition(
        store, cell_id, status.state, CellState.PENDING, reason=f"retry of a {status.state.value} cell"
    )


def rerun(
    store: Store, study_id: int, states: set[CellState], *, only: Collection[str] | None = None
) -> list[str]:
    """Every cell of the study in one of `states` (failed, diverged, cancelled) back to pending; with
    `only`, just those of these ids (`run --rerun`: the cells the study file plans now, which its run will
    start; a cell an earlier version of the file planned would be left pending for good)."""
    unknown = set(states) - set(RETRYABLE_STATES)
    if unknown:
        raise ValueError(
            f"--rerun: {sorted(s.value for s in unknown)}; choose from failed, diverged, cancelled"
        )
    moved = []
    for status in cell_statuses(store, study_id):
        if only is not None and status.id not in only:
            continue
        if status.state in states and transition(
            store, status.id, status.state, CellState.PENDING, reason=f"rerun of a {status.state.value} cell"
        ):
            moved.append(status.id)
    return moved


def _study(store: Store, name: str) -> Study:
    study = get_study(store, name)
    if study is None:
        known = ", ".join(s.name for s in _list_studies(store)) or "none"
        raise UnknownStudyError(f"{store.name}: no study named {name!r} (studies here: {known})")
    assert study.id is not None
    return study


def _watched(store: Store, attempt: Attempt) -> bool:
    """Whether a live runner watches the attempt (and so stops its trainer once the attempt is closed): the
    runner of the study the attempt records (`attempts.study_id`), else, for an attempt from before that was
    recorded, of any study the cell belongs to."""
    if attempt.study_id is not None:
        names = [study.name for study in _list_studies(store) if study.id == attempt.study_id]
    else:
        names = studies_of_cell(store, attempt.cell_id)
    return any(is_locked(lock_path(store, name)) for name in names)


def _stop_here(store: Store, attempt: Attempt) -> tuple[Executor, Handle, str] | None:
    """One SIGTERM from here to the attempt's trainer, which no runner watches (verified by pid and start
    time, or a Slurm job id): (executor, handle, cell id) to wait on, or None when it no longer runs."""
    executor = executor_for(attempt)
    handle = executor.adopt(attempt, _run_dir(store, attempt.cell_id))
    if handle is None:
        return None
    executor.cancel(handle)
    return executor, handle, attempt.cell_id


def _open_attempt(store: Store, cell_id: str) -> Attempt | None:
    return next((a for a in reversed(attempts_of(store, cell_id)) if a.ended_at is None), None)


def _run_dir(store: Store, cell_id: str) -> Path:
    cell = get_cell(store, cell_id)
    assert cell is not None and cell.run_dir is not None, f"running cell {cell_id} has no run directory"
    return Path(cell.run_dir)
