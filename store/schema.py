"""The whole database schema in one place: tables, the cell state machine, and the schema version.

Conventions, every table:
- Every `*_at` column is unix seconds (UTC) as a float, the same clock as the trainer events' `time`.
- Non-finite floats are stored as NULL, never NaN or inf (`store.values` cleans every write).
- Counts that can pass 2**31 (parameters, tokens, FLOPs per token, byte offsets) are BIGINT, so
  PostgreSQL holds them as SQLite does.
- Enums are stored as their lower-case values in a VARCHAR with a CHECK constraint (no native PostgreSQL
  enum types), so `SELECT state FROM cells` reads `pending`, and a new state needs no type migration.

Bump SCHEMA_VERSION with any change to a table below, and either write the step that upgrades the previous
version in `store.engine.MIGRATIONS` or let `store.engine.open_store` refuse the older database. A newer
database is always refused.

Versions: 1, the first; 2 adds `study_cells` (a cell may belong to several studies); 3 adds
`attempts.study_id` (the study whose runner looks after an attempt); 4 adds `study_cells.planned` (whether
the study file, as last run, still plans the cell).
"""

import enum
from typing import Any

import sqlalchemy as sa
from sqlmodel import JSON, Field, SQLModel

SCHEMA_VERSION = 4


class CellState(enum.StrEnum):
    PENDING = "pending"  # planned, or interrupted and resumable from its last checkpoint
    RUNNING = "running"  # an open attempt is training it
    DONE = "done"  # trained to the end; its results never change again
    FAILED = "failed"  # the trainer crashed or was lost; retried per policy (failed -> pending)
    DIVERGED = "diverged"  # the loss went non-finite or blew up; rerun only when asked
    CANCELLED = "cancelled"  # the user stopped it


# Every legal move; anything else is a bug in the caller and `store.cells.transition` raises.
# `done` has no way out: a finished cell is immutable (a changed config is a new cell id).
ALLOWED_TRANSITIONS: frozenset[tuple[CellState, CellState]] = frozenset(
    {
        (CellState.PENDING, CellState.RUNNING),
        (CellState.PENDING, CellState.CANCELLED),
        (CellState.RUNNING, CellState.DONE),
        (CellState.RUNNING, CellState.FAILED),
        (CellState.RUNNING, CellState.DIVERGED),
        (CellState.RUNNING, CellState.CANCELLED),
        (CellState.RUNNING, CellState.PENDING),  # interrupted: resumes from its last checkpoint
        (CellState.FAILED, CellState.PENDING),  # retry
        (CellState.DIVERGED, CellState.PENDING),  # only on an explicit `--rerun diverged`
        (CellState.CANCELLED, CellState.PENDING),  # rerun
    }
)
# States in which a cell is not being worked on and has a `finished_at`.
FINISHED_STATES = frozenset({CellState.DONE, CellState.FAILED, CellState.DIVERGED, CellState.CANCELLED})


class CellMode(enum.StrEnum):
    PRETRAINING = "pretraining"
    # Starts from its parent pretraining cell's final checkpoint (mode all), or, without a parent, from the
    # checkpoint the study names, recorded in its config's init_from (mode mid-training).
    MID_TRAINING = "mid-training"


class Executor(enum.StrEnum):
    LOCAL = "local"
    SLURM = "slurm"


class AttemptOutcome(enum.StrEnum):
    """How an attempt ended; NULL while it runs. Each outcome moves its cell to one state."""

    DONE = "done"
    FAILED = "failed"
    DIVERGED = "diverged"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # the runner stopped it on purpose (Ctrl-C, preemption): resumable
    LOST = "lost"  # its heartbeat went stale and the process is gone: the reaper closed it


# The state an attempt's cell moves to (from running) when the attempt ends with each outcome.
CELL_STATE_AFTER: dict[AttemptOutcome, CellState] = {
    AttemptOutcome.DONE: CellState.DONE,
    AttemptOutcome.FAILED: CellState.FAILED,
    AttemptOutcome.DIVERGED: CellState.DIVERGED,
    AttemptOutcome.CANCELLED: CellState.CANCELLED,
    AttemptOutcome.INTERRUPTED: CellState.PENDING,
    AttemptOutcome.LOST: CellState.PENDING,
}


class CheckpointKind(enum.StrEnum):
    FINAL = "final"
    PERIODIC = "periodic"


def _enum(enum_cls: type[enum.Enum]) -> sa.Enum:
    return sa.Enum(
        enum_cls,
        native_enum=False,
        create_constraint=True,
        length=16,
        validate_strings=True,
        values_callable=lambda members: [member.value for member in members],
        name=f"{enum_cls.__name__.lower()}_enum",
    )


class Meta(SQLModel, table=True):
    """Key/value facts about the database itself; `schema_version` is checked at every open."""

    __tablename__ = "meta"
    key: str = Field(primary_key=True, max_length=64)
    value: str


class Study(SQLModel, table=True):
    """One study file's run. Several studies may share a database (one PostgreSQL for a team)."""

    __tablename__ = "studies"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=200)
    path: str  # the study file, as given to the runner
    spec: dict[str, Any] = Field(sa_type=JSON)  # the parsed study, for the report's provenance
    created_at: float
    updated_at: float


class Cell(SQLModel, table=True):
    """One point of the grid: a fully resolved training config and where it stands.

    The id is the runner's short hash of the resolved config, so re-planning a study finds its cells again,
    and a second study that plans the same config shares the cell (and its results) rather than training it
    twice: which studies a cell belongs to is `study_cells`; `study_id` is only the study that planned it
    first.
    `train_loss`, `val_*` and the progress columns follow the newest ingested event (the ingest updates them
    in the same transaction as the metric rows), so status views need no scan of the metrics; once the cell
    is done they are its final results.
    """

    __tablename__ = "cells"
    __table_args__ = (sa.Index("ix_cells_study_state", "study_id", "state"),)

    id: str = Field(primary_key=True, max_length=64)
    study_id: int = Field(foreign_key="studies.id", ondelete="CASCADE")  # the first study that planned it
    mode: CellMode = Field(sa_type=_enum(CellMode))
    parent_cell_id: str | None = Field(default=None, foreign_key="cells.id", max_length=64)
    # The grid coordinates: all of them as JSON, plus the usual three as columns to filter and sort on.
    axes: dict[str, Any] = Field(sa_type=JSON)
    depth: int
    flops_budget: float  # the budget axis C this cell was planned for
    seed: int
    config: dict[str, Any] = Field(sa_type=JSON)  # the trainer's resolved config.json
    state: CellState = Field(default=CellState.PENDING, sa_type=_enum(CellState))
    reason: str | None = None  # why it is in its state (error, divergence step, cancelled by ...)
    # The scaling-law axes, from the model's own num_scaling_params() and estimate_flops().
    num_params: int = Field(sa_type=sa.BigInteger)  # N
    num_tokens: int = Field(sa_type=sa.BigInteger)  # D, planned
    flops_per_token: int = Field(sa_type=sa.BigInteger)
    flops: float  # C = flops_per_token * num_tokens, planned
    steps_total: int
    # Progress and latest results, kept current by the ingest.
    steps_done: int = 0
    tokens_seen: int = Field(default=0, sa_type=sa.BigInteger)
    train_loss: float | None = None
    val_step: int | None = None
    val_loss: float | None = None
    val_bpb: float | None = None
    run_dir: str | None = None
    created_at: float
    updated_at: float
    finished_at: float | None = None


class StudyCell(SQLModel, table=True):
    """A cell's membership of a study: every study that plans a cell links it, the first one included.

    `planned`: the study file, as last run, plans the cell. A cell that an earlier version of the file
    planned (a depth since removed, a learning rate since changed: another cell id) stays linked, with its
    results, but the study's status, report and fits leave it out (`store.cells.in_study`); planned again,
    it comes back as it was."""

    __tablename__ = "study_cells"
    study_id: int = Field(primary_key=True, foreign_key="studies.id", ondelete="CASCADE")
    cell_id: str = Field(
        primary_key=True, foreign_key="cells.id", ondelete="CASCADE", max_length=64, index=True
    )
    created_at: float
    # A server default: a process of version 3 that still has the database open links cells as planned.
    planned: bool = Field(default=True, sa_column_kwargs={"server_default": sa.true()})


class Attempt(SQLModel, table=True):
    """One try at training a cell: a process tree on this host or a Slurm job, and how it ended."""

    __tablename__ = "attempts"
    __table_args__ = (sa.UniqueConstraint("cell_id", "number"), sa.Index("ix_attempts_open", "ended_at"))

    id: int | None = Field(default=None, primary_key=True)
    cell_id: str = Field(foreign_key="cells.id", ondelete="CASCADE", max_length=64, index=True)
    number: int  # 1, 2, ... per cell
    executor: Executor = Field(sa_type=_enum(Executor))
    host: str
    # A pid alone can be reused by the OS; pid + its start time names one process (re-adoption checks both).
    pid: int | None = None
    pid_start_time: float | None = None
    job_id: str | None = None  # Slurm
    gpus: str | None = None  # the CUDA_VISIBLE_DEVICES it was given; None on the CPU
    num_gpus: int = 0
    resume_step: int | None = None  # the checkpoint step it resumed from; None from scratch
    # The study whose runner looks after the attempt: the one that claimed it, or one that took it over after
    # that runner died (a cell may be shared). A restarted runner recovers its own attempts and leaves another
    # study's to that study's runner while it lives. NULL: claimed before schema version 3. A plain integer,
    # not a foreign key: like `host`, it records who ran the attempt; nothing cascades from it.
    study_id: int | None = None
    started_at: float
    heartbeat_at: float
    ended_at: float | None = None
    exit_code: int | None = None
    outcome: AttemptOutcome | None = Field(default=None, sa_type=_enum(AttemptOutcome))
    reason: str | None = None
    # The trainer's `start` event of this attempt: code and library versions, device, effective settings.
    start_event: dict[str, Any] | None = Field(default=None, sa_type=JSON)


# SQLite: metric tables are WITHOUT ROWID, stored as one B-tree clustered on (cell_id, step) instead of a
# rowid table plus a primary-key index: each ingested row writes one tree, not two, and a cell's curve is
# contiguous on disk. Their rows are small, the case SQLite recommends it for. Other backends ignore it.
_CLUSTERED = {"sqlite_with_rowid": False}


class TrainMetric(SQLModel, table=True):
    """One training step event. The key (cell_id, step) makes re-ingesting the same events a no-op."""

    __tablename__ = "train_metrics"
    __table_args__ = _CLUSTERED
    cell_id: str = Field(primary_key=True, foreign_key="cells.id", ondelete="CASCADE", max_length=64)
    step: int = Field(primary_key=True)
    attempt_id: int | None = Field(default=None, foreign_key="attempts.id", ondelete="SET NULL")
    tokens: int = Field(sa_type=sa.BigInteger)  # seen so far, this step included
    flops: float | None = None  # spent so far
    loss: float | None = None
    lr: float | None = None  # the matrix (Muon) learning rate of this step
    lr_frac: float | None = None  # the schedule's multiplier
    tok_per_s: float | None = None
    mfu: float | None = None  # in [0, 1]; NULL on the CPU
    step_s: float | None = None
    elapsed_s: float | None = None  # training wall time so far, over all attempts
    time: float | None = None  # the event's wall-clock time


class ValMetric(SQLModel, table=True):
    """One validation event; bits per byte are tokenizer-independent, so the report fits them."""

    __tablename__ = "val_metrics"
    __table_args__ = _CLUSTERED
    cell_id: str = Field(primary_key=True, foreign_key="cells.id", ondelete="CASCADE", max_length=64)
    step: int = Field(primary_key=True)
    attempt_id: int | None = Field(default=None, foreign_key="attempts.id", ondelete="SET NULL")
    tokens: int = Field(sa_type=sa.BigInteger)
    flops: float | None = None
    val_loss: float | None = None  # mean nats per target token
    val_bpb: float | None = None  # bits per byte of the targets' text
    val_tokens: int | None = Field(default=None, sa_type=sa.BigInteger)  # target tokens evaluated
    elapsed_s: float | None = None
    time: float | None = None


class Eval(SQLModel, table=True):
    """One task's score at one step (e.g. a CORE task at the final step)."""

    __tablename__ = "evals"
    cell_id: str = Field(primary_key=True, foreign_key="cells.id", ondelete="CASCADE", max_length=64)
    step: int = Field(primary_key=True)
    task: str = Field(primary_key=True, max_length=100)
    score: float | None = None  # the task's headline number, as the trainer reports it
    preset: str | None = None  # which eval suite the task came from
    accuracy: float | None = None
    centered: float | None = None  # accuracy rescaled so chance is 0 and perfect is 1
    stderr: float | None = None
    num_examples: int | None = None
    metrics: dict[str, Any] | None = Field(default=None, sa_type=JSON)  # everything the event carried
    time: float | None = None


class Checkpoint(SQLModel, table=True):
    """A checkpoint the trainer wrote; mid-training cells find their parent's final one here."""

    __tablename__ = "checkpoints"
    cell_id: str = Field(primary_key=True, foreign_key="cells.id", ondelete="CASCADE", max_length=64)
    step: int = Field(primary_key=True)
    kind: CheckpointKind = Field(primary_key=True, sa_type=_enum(CheckpointKind))
    path: str  # as the trainer wrote it: relative to the cell's run_dir
    tokens: int | None = Field(default=None, sa_type=sa.BigInteger)
    flops: float | None = None
    created_at: float


class IngestOffset(SQLModel, table=True):
    """How far into a cell's events file the ingest has read, committed with the rows it read."""

    __tablename__ = "ingest_offsets"
    cell_id: str = Field(primary_key=True, foreign_key="cells.id", ondelete="CASCADE", max_length=64)
    path: str = Field(primary_key=True, max_length=1024)
    offset_bytes: int = Field(sa_type=sa.BigInteger)
    updated_at: float


class Fit(SQLModel, table=True):
    """A fitted scaling law (e.g. kind 'parametric', metric 'val_bpb') and its parameters with CIs."""

    __tablename__ = "fits"
    id: int | None = Field(default=None, primary_key=True)
    study_id: int = Field(foreign_key="studies.id", ondelete="CASCADE", index=True)
    kind: str = Field(max_length=64)
    metric: str = Field(max_length=64)
    params: dict[str, Any] = Field(sa_type=JSON)
    created_at: float


# Our tables in creation order (parents first). Listed rather than taken from SQLModel.metadata, which any
# other SQLModel table in the process would join.
TABLES: tuple[sa.Table, ...] = tuple(
    model.__table__  # type: ignore[attr-defined]
    for model in (
        Meta,
        Study,
        Cell,
        StudyCell,
        Attempt,
        TrainMetric,
        ValMetric,
        Eval,
        Checkpoint,
        IngestOffset,
        Fit,
    )
)
