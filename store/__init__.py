"""The results database: SQLModel tables over SQLite (default) or PostgreSQL, and named reads and writes.

    from store import open_store
    store = open_store("studies/nanostudy.db")          # or any SQLAlchemy URL
    study = upsert_study(store, name=..., path=..., spec=...)

The runner is the only process that writes (`studies`, `cells`, `attempts`, `metrics`); the TUI and the
report open the same database with `create=False` and read (`queries`, `cells.cells_of`). Callers never
write SQL of their own: a new need is a new named function here.
"""

from store.attempts import (
    attempt_counts,
    attempts_of,
    claim,
    end_attempt,
    get_attempt,
    heartbeat,
    open_attempts,
    record_launch,
    stale_attempts,
)
from store.cells import FinishedCellError, NewCell, add_cells, cells_of, get_cell, transition
from store.engine import (
    SchemaVersionError,
    Store,
    StoreNotFoundError,
    default_db_path,
    open_store,
)
from store.metrics import add_evals, ingest, ingest_offset, rewind
from store.queries import (
    CellStatus,
    StudySummary,
    TrainPoint,
    ValPoint,
    best_cell,
    best_checkpoint,
    cell_statuses,
    checkpoints_of,
    evals_of,
    final_checkpoint,
    latest_checkpoint,
    latest_train_points,
    ranked_checkpoints,
    study_summary,
    train_curve,
    val_curve,
    val_curves,
)
from store.schema import (
    ALLOWED_TRANSITIONS,
    SCHEMA_VERSION,
    Attempt,
    AttemptOutcome,
    Cell,
    CellMode,
    CellState,
    Checkpoint,
    CheckpointKind,
    Eval,
    Executor,
    Fit,
    Study,
)
from store.studies import get_study, latest_fits, list_studies, save_fit, upsert_study

__all__ = [
    "ALLOWED_TRANSITIONS",
    "SCHEMA_VERSION",
    "Attempt",
    "AttemptOutcome",
    "Cell",
    "CellMode",
    "CellState",
    "CellStatus",
    "Checkpoint",
    "CheckpointKind",
    "Eval",
    "Executor",
    "FinishedCellError",
    "Fit",
    "NewCell",
    "SchemaVersionError",
    "Store",
    "StoreNotFoundError",
    "Study",
    "StudySummary",
    "TrainPoint",
    "ValPoint",
    "add_cells",
    "add_evals",
    "attempt_counts",
    "attempts_of",
    "best_cell",
    "best_checkpoint",
    "cell_statuses",
    "cells_of",
    "checkpoints_of",
    "claim",
    "default_db_path",
    "end_attempt",
    "evals_of",
    "final_checkpoint",
    "get_attempt",
    "get_cell",
    "get_study",
    "heartbeat",
    "ingest",
    "ingest_offset",
    "latest_checkpoint",
    "latest_fits",
    "latest_train_points",
    "list_studies",
    "open_attempts",
    "open_store",
    "ranked_checkpoints",
    "record_launch",
    "rewind",
    "save_fit",
    "stale_attempts",
    "study_summary",
    "train_curve",
    "transition",
    "upsert_study",
    "val_curve",
    "val_curves",
]
