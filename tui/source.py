"""The TUI's reads of the results database, run in worker threads and never on the UI thread.

The database is opened read-only in spirit (`create=False`: the TUI never makes one) on the first read,
and opened again on a later read when it could not be: a TUI started before `nanostudy run` has created
the database shows why it has nothing to show, then picks the study up once it exists. Every problem
(no database, a database of another schema version, no such study, a broken file) comes back as a
`StoreProblem` whose message is one line for the screen, never a traceback. SQLite in WAL mode lets these
reads run beside the runner's writes without either waiting for the other.
"""

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy as sa

from runner import api
from store import (
    Attempt,
    Eval,
    SchemaVersionError,
    Store,
    StoreNotFoundError,
    TrainPoint,
    ValPoint,
    attempts_of,
    evals_of,
    get_study,
    open_attempts,
    open_store,
    train_curve,
    val_curve,
)
from tui.gpu_telemetry import Ours

T = TypeVar("T")


class StoreProblem(Exception):
    """Why the database cannot be read now, in one line for the UI."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CellDetail:
    """One cell for its detail screen; curves hold only the points after the step asked for."""

    cell: api.CellProgress
    train: list[TrainPoint]
    val: list[ValPoint]
    evals: list[Eval]
    attempts: list[Attempt]
    logs: list[api.LogTail]


class StoreSource:
    """The database at `target` (a path or URL), shared by every screen's worker threads."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._store: Store | None = None
        self._file: tuple[int, int] | None = None  # the SQLite file `_store` reads
        self._lock = threading.Lock()

    def read(self, function: Callable[..., T], *args, **kwargs) -> T:
        """function(store, *args, **kwargs), with every way it can fail turned into a StoreProblem."""
        try:
            return function(self._open(), *args, **kwargs)
        except StoreProblem:
            raise
        except (StoreNotFoundError, SchemaVersionError, api.UnknownStudyError) as error:
            raise StoreProblem(str(error)) from None
        except sa.exc.SQLAlchemyError as error:
            raise StoreProblem(
                f"{self.target}: cannot read the database: {error.__class__.__name__}: "
                f"{getattr(error, 'orig', error)}"
            ) from None
        except (OSError, ValueError) as error:
            raise StoreProblem(f"{self.target}: {error}") from None

    def _open(self) -> Store:
        with self._lock:
            if self._store is not None and _file_of(self._store) != self._file:
                # The file was deleted or replaced: an open SQLite connection keeps reading the old one,
                # and the screen showed it as live forever. Opened again, as at the start.
                self._store.close()
                self._store = None
            if self._store is None:
                self._store = open_store(self.target, create=False)
                self._file = _file_of(self._store)
            return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def _file_of(store: Store) -> tuple[int, int] | None:
    """The SQLite file at the store's path now, as (device, inode); None without one (or on PostgreSQL)."""
    if store.engine.dialect.name != "sqlite":
        return None
    try:
        stat = os.stat(store.name)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def cell_detail(
    store: Store, name: str, cell_id: str, *, train_after: int | None = None, val_after: int | None = None
) -> CellDetail:
    """The cell's status row, its curves after the given steps (None: all), evals, attempts, log tail."""
    cell = next((c for c in api.study_status(store, name).cells if c.id == cell_id), None)
    if cell is None:
        raise StoreProblem(f"study {name!r} has no cell {cell_id!r}")
    return CellDetail(
        cell=cell,
        train=train_curve(store, cell_id, after_step=train_after),
        val=val_curve(store, cell_id, after_step=val_after),
        evals=evals_of(store, cell_id=cell_id),
        attempts=attempts_of(store, cell_id),
        logs=api.log_tail(store, cell_id),
    )


def ours_on_host(store: Store, name: str, host: str) -> Ours:
    """The study's open attempts on `host`: the GPUs each was given and its launcher's pid."""
    study = get_study(store, name)
    attempts = [] if study is None or study.id is None else open_attempts(store, study.id)
    here = [attempt for attempt in attempts if attempt.host == host]
    return Ours(
        cells_by_gpu={
            int(index): attempt.cell_id
            for attempt in here
            for index in (attempt.gpus or "").split(",")
            if index.strip().isdigit()
        },
        cells_by_pid={attempt.pid: attempt.cell_id for attempt in here if attempt.pid},
    )
