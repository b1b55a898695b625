"""Opening a results database: SQLite (a file beside the study) or any PostgreSQL URL.

`open_store(target)` returns a `Store`. On SQLite every new connection gets WAL (readers never block the
one writer), a busy timeout (a writer that finds the file locked waits instead of failing), foreign keys on
(SQLite's default is off) and synchronous=NORMAL (in WAL mode a commit is durable against a process crash,
and only a power cut can lose the last commits; fsync per commit would cap the ingest at the disk's
flush rate).

Transactions are explicit: `store.read()` is one snapshot (BEGIN DEFERRED), `store.write()` takes the write
lock up front (BEGIN IMMEDIATE). Python's sqlite3 otherwise starts a transaction only at the first write,
so a read-then-write (check a cell's state, then insert) would not be atomic, and a deferred transaction
that reads and then wants to write fails at once with "database is locked" instead of waiting.
"""

import functools
import operator
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from store.schema import SCHEMA_VERSION, TABLES, Attempt, Cell, Meta, StudyCell

DEFAULT_DB_NAME = "nanostudy.db"
BUSY_TIMEOUT_S = 30.0
SUPPORTED_DIALECTS = ("sqlite", "postgresql")
_WRITE_OPTION = "nanostudy_write"  # execution option that makes `begin` take the SQLite write lock


class SchemaVersionError(RuntimeError):
    """The database was written by another version of nanostudy's schema."""


class StoreOpenError(OSError):
    """The database cannot be opened: a path that cannot hold a SQLite file, a file that is not a database,
    a server that does not answer. The message names the path or URL and the driver's reason."""


class StoreNotFoundError(FileNotFoundError):
    """A reader asked for a database that does not exist yet."""


def now() -> float:
    """Unix seconds, the clock of every `*_at` column."""
    return time.time()


def default_db_path(study_path: str | Path) -> Path:
    """Where a study's database lives unless `--db` says otherwise: `nanostudy.db` beside the study file."""
    return Path(study_path).resolve().parent / DEFAULT_DB_NAME


@dataclass(frozen=True, slots=True)
class Store:
    """An open results database. Pass it to the functions of `store.cells`, `store.metrics`, ...

    Safe to share between threads (each call checks a connection out of the pool). Close it when done, or
    use it as a context manager.
    """

    engine: Engine
    name: str  # the file path or the URL without its password, for messages
    _pinned: threading.local = field(default_factory=threading.local, compare=False, repr=False)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection inside one read transaction: every query sees the same snapshot."""
        pinned = getattr(self._pinned, "conn", None)
        if pinned is not None:
            yield pinned
            return
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read of this thread inside (`read()`, `session()`, and so every query function) sees one
        snapshot of the database: a reader that makes several queries (the report, the status views) never
        mixes two moments of a runner's writes. One read transaction on one connection (on PostgreSQL at
        REPEATABLE READ, whose snapshot holds across statements). Writes are not allowed inside."""
        if getattr(self._pinned, "conn", None) is not None:
            yield
            return
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                self._pinned.conn = conn
                try:
                    yield
                finally:
                    self._pinned.conn = None

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A connection inside one write transaction, committed on success and rolled back on an error."""
        if getattr(self._pinned, "conn", None) is not None:
            raise RuntimeError("store.write() inside store.snapshot(): a snapshot is for reads only")
        with self.engine.connect() as conn:
            conn.execution_options(**{_WRITE_OPTION: True})
            with conn.begin():
                yield conn

    @contextmanager
    def session(self) -> Iterator[Session]:
        """An ORM session for reads that return table objects; the objects stay usable after it closes."""
        pinned = getattr(self._pinned, "conn", None)
        with Session(pinned or self.engine, expire_on_commit=False) as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(target: str | Path, *, create: bool = True, busy_timeout_s: float = BUSY_TIMEOUT_S) -> Store:
    """Open (and with `create`, make) the database at a file path or a SQLAlchemy URL.

    A path or `sqlite:///...` URL opens SQLite; `postgresql+psycopg://user@host/db` opens PostgreSQL. A new
    database gets every table and the current schema version; an existing one must carry exactly
    SCHEMA_VERSION or SchemaVersionError names the file and both versions. With `create=False` (readers
    such as the TUI and the report) a missing SQLite file raises StoreNotFoundError instead of appearing.
    """
    url = _url(target)
    if url.get_backend_name() not in SUPPORTED_DIALECTS:
        raise ValueError(
            f"database {url.render_as_string(hide_password=True)}: unsupported backend "
            f"{url.get_backend_name()!r}; nanostudy stores results in {' or '.join(SUPPORTED_DIALECTS)}"
        )
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            # Each connection would get its own empty database: the runner and its readers would not meet.
            raise ValueError(f"database {url}: in-memory SQLite cannot be shared; give a file path")
        name = url.database
        path = Path(url.database)
        if not create and not path.exists():
            raise StoreNotFoundError(f"{path}: no nanostudy database here yet (the runner creates it)")
        if path.is_dir():
            raise StoreOpenError(f"database {path}: is a directory; give a database file (or a new name)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreOpenError(f"database {path}: cannot create its folder ({error.strerror})") from None
        if not create and not os.access(path.parent, os.W_OK) and not Path(f"{path}-wal").exists():
            # A reader of a database in a folder it cannot write (an archived study, a read-only share):
            # SQLite cannot make the -shm file a WAL reader needs, and refuses to open it at all. With no
            # -wal file there, no one is writing it either, so it is read as the unchanging file it is.
            file_uri = f"file:{urllib.parse.quote(str(path))}"
            url = sa.URL.create("sqlite", database=file_uri, query={"immutable": "1", "uri": "true"})
        engine = sa.create_engine(url, connect_args={"timeout": busy_timeout_s})
        _install_sqlite_hooks(engine, busy_timeout_s)
    else:
        name = url.render_as_string(hide_password=True)
        if url.drivername == "postgresql":
            # SQLAlchemy's default PostgreSQL driver is psycopg2; we use its successor, psycopg (3).
            url = url.set(drivername="postgresql+psycopg")
        try:
            engine = sa.create_engine(url, pool_pre_ping=True)
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                f"database {name}: the {url.drivername} driver is not installed ({error}); "
                "for PostgreSQL install `psycopg[binary]`"
            ) from error
    store = Store(engine=engine, name=name)
    try:
        _check_or_create_schema(store, create=create)
    except sa.exc.DBAPIError as error:
        engine.dispose()
        reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
        raise StoreOpenError(f"database {name}: cannot be opened ({reason})") from None
    except BaseException:
        engine.dispose()
        raise
    return store


def _url(target: str | Path) -> sa.URL:
    text = str(target)
    if "://" in text:
        return sa.make_url(text)
    return sa.URL.create("sqlite", database=str(Path(text).expanduser().resolve()))


def _install_sqlite_hooks(engine: Engine, busy_timeout_s: float) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the driver; `_on_begin` issues BEGIN itself.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        # busy_timeout first, so that switching to WAL waits for a lock rather than failing.
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        # WAL is written into the file and outlives us: only ours (or a new, empty file) is switched, never
        # another program's database that `_check_or_create_schema` is about to refuse.
        tables = {row[0] for row in cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables or Meta.__tablename__ in tables:
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        # 64 MiB of page cache (default 2 MiB): a runner ingesting round-robin into a thousand cells touches
        # a leaf page per cell, and rereading them from the OS each batch costs more than the insert.
        cursor.execute("PRAGMA cache_size = -65536")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get(_WRITE_OPTION) else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


def _check_or_create_schema(store: Store, *, create: bool) -> None:
    meta = Meta.__table__  # type: ignore[attr-defined]
    with store.read() as conn:
        present = set(sa.inspect(conn).get_table_names())
    if meta.name in present:
        _check_version(store)
        return
    if present:
        raise SchemaVersionError(
            f"{store.name}: not a nanostudy database (it has tables {sorted(present)[:5]} but no "
            f"'{meta.name}' table); point --db at a new file"
        )
    if not create:
        raise StoreNotFoundError(f"{store.name}: no nanostudy tables yet (the runner creates them)")
    with store.write() as conn:
        # Another process may have created the schema between our look and our write lock.
        if not sa.inspect(conn).has_table(meta.name):
            for table in TABLES:
                table.create(conn)
            conn.execute(sa.insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
    _check_version(store)


def _migrate_1_to_2(conn: Connection) -> None:
    """Version 2 links cells to studies in `study_cells`: each cell joins the study it was made for."""
    links = StudyCell.__table__  # type: ignore[attr-defined]
    links.create(conn)
    cells = Cell.__table__  # type: ignore[attr-defined]
    rows = sa.select(cells.c.study_id, cells.c.id, cells.c.created_at)
    conn.execute(sa.insert(links).from_select(["study_id", "cell_id", "created_at"], rows))


def _migrate_2_to_3(conn: Connection) -> None:
    """Version 3 records in `attempts.study_id` the study whose runner looks after each attempt; older
    attempts get NULL (unknown), which the runner treats as it treated every attempt before."""
    attempts = Attempt.__table__  # type: ignore[attr-defined]
    _add_column(conn, attempts, attempts.c.study_id)


def _migrate_3_to_4(conn: Connection) -> None:
    """Version 4 records in `study_cells.planned` whether the study file, as last run, plans the cell;
    every link so far is planned (as every cell linked to a study counted before)."""
    links = StudyCell.__table__  # type: ignore[attr-defined]
    # Step 1 -> 2 creates study_cells as the schema has it now, with the column already.
    if "planned" not in {column["name"] for column in sa.inspect(conn).get_columns(links.name)}:
        _add_column(conn, links, links.c.planned, default=sa.true())


def _add_column(conn: Connection, table: sa.Table, column: sa.Column, *, default: Any = None) -> None:
    """ALTER TABLE ... ADD COLUMN: SQLAlchemy has no construct for it (that is Alembic's); the type and any
    default are compiled for the dialect. With a default the column is NOT NULL, and existing rows get it."""
    preparer = conn.dialect.identifier_preparer
    sql = (
        f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN {preparer.format_column(column)} "
        f"{column.type.compile(conn.dialect)}"
    )
    if default is not None:
        sql += f" NOT NULL DEFAULT {default.compile(dialect=conn.dialect)}"
    conn.exec_driver_sql(sql)


# version -> the step that upgrades a database of that version to the next, in one transaction.
MIGRATIONS = {1: _migrate_1_to_2, 2: _migrate_2_to_3, 3: _migrate_3_to_4}


def _read_version(conn: Connection, store: Store, *, lock: bool = False) -> int:
    meta = Meta.__table__  # type: ignore[attr-defined]
    query = sa.select(meta.c.value).where(meta.c.key == "schema_version")
    found = conn.execute(query.with_for_update() if lock else query).scalar()
    if found is None or not found.isdigit():
        raise SchemaVersionError(f"{store.name}: no valid schema_version in its meta table (found {found!r})")
    return int(found)


def _migrate(store: Store) -> None:
    """Upgrade an older database step by step, each step and its new version in one write transaction (a
    failure leaves the database as it was); another process upgrading it at the same time is waited for."""
    meta = Meta.__table__  # type: ignore[attr-defined]
    version: int | str = "?"
    while True:
        try:
            with store.write() as conn:
                version = _read_version(conn, store, lock=True)
                if version >= SCHEMA_VERSION or version not in MIGRATIONS:
                    return
                MIGRATIONS[version](conn)
                conn.execute(
                    sa.update(meta).where(meta.c.key == "schema_version").values(value=str(version + 1))
                )
        except sa.exc.DBAPIError as error:
            raise SchemaVersionError(
                f"{store.name}: database schema version {version} is older than this nanostudy's "
                f"{SCHEMA_VERSION} and could not be upgraded ({error.orig}); nothing was changed"
            ) from error


def _check_version(store: Store) -> None:
    with store.read() as conn:
        found = _read_version(conn, store)
    if found < SCHEMA_VERSION and found in MIGRATIONS:
        _migrate(store)
        with store.read() as conn:
            found = _read_version(conn, store)
    if found != SCHEMA_VERSION:
        relation = "older" if int(found) < SCHEMA_VERSION else "newer"
        raise SchemaVersionError(
            f"{store.name}: database schema version {found} is {relation} than this nanostudy's "
            f"{SCHEMA_VERSION}; use a nanostudy that matches it, or a new --db for this one"
        )
    _link_unlinked_cells(store)


def _link_unlinked_cells(store: Store) -> None:
    """Link each cell that no study links to the study it was made for. A version-1 nanostudy that had
    the database open before another process upgraded it adds cells without links, which every per-study
    read (through `study_cells`) would miss; they are found here when the database is next opened."""
    cells, links = Cell.__table__, StudyCell.__table__  # type: ignore[attr-defined]
    unlinked = sa.select(cells.c.study_id, cells.c.id, cells.c.created_at).where(
        ~sa.select(links.c.cell_id).where(links.c.cell_id == cells.c.id).exists()
    )
    with store.read() as conn:
        if conn.execute(unlinked.limit(1)).first() is None:
            return
    with store.write() as conn:
        conn.execute(sa.insert(links).from_select(["study_id", "cell_id", "created_at"], unlinked))


def insert_ignoring_duplicates(conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """INSERT the rows in one executemany; a row whose key already exists is skipped, not an error.

    This is what makes re-ingesting the same events harmless. ON CONFLICT DO NOTHING is spelled the same
    by SQLite and PostgreSQL but lives in each dialect's own `insert`. All rows must have the same keys.

    Metric rows are the hot path: when no column needs a type conversion, the statement is compiled once
    and the rows go straight to the driver's executemany, skipping SQLAlchemy's per-row parameter
    processing, which costs more than SQLite's insert itself. Float columns count as needing none: every
    row here comes from `store.values.clean_rows`, which already made each of them a float or None.
    """
    if not rows:
        return
    columns = tuple(rows[0])
    sql, positions = _compiled_insert(conn.dialect, table, columns)
    if sql is None:
        dialect = {"sqlite": sqlite, "postgresql": postgresql}[conn.dialect.name]
        conn.execute(dialect.insert(table).on_conflict_do_nothing(), list(rows))
    elif positions is None:
        conn.exec_driver_sql(sql, list(rows))
    else:
        # itemgetter builds each row's parameter tuple in C; with one name it returns a bare value.
        as_tuple = operator.itemgetter(*positions) if len(positions) > 1 else lambda row: (row[positions[0]],)
        conn.exec_driver_sql(sql, [as_tuple(row) for row in rows])


@functools.cache
def _compiled_insert(
    dialect: sa.Dialect, table: sa.Table, columns: tuple[str, ...]
) -> tuple[str | None, tuple[str, ...] | None]:
    """(driver SQL, parameter order for a positional paramstyle or None), or (None, None) when a column
    has a bind processor (JSON, enums) and so must go through SQLAlchemy."""
    for name in columns:
        column_type = table.c[name].type
        if not isinstance(column_type, sa.Float) and column_type._cached_bind_processor(dialect) is not None:
            return None, None
    module = {"sqlite": sqlite, "postgresql": postgresql}[dialect.name]
    statement = module.insert(table).values({name: sa.bindparam(name) for name in columns})
    compiled = statement.on_conflict_do_nothing().compile(dialect=dialect)
    positions = tuple(compiled.positiontup) if compiled.positional else None
    return str(compiled), positions


def upsert(conn: Connection, table: sa.Table, row: Mapping[str, Any], *, keys: Sequence[str]) -> None:
    """INSERT the row, or UPDATE its non-key columns when a row with the same `keys` exists."""
    dialect = {"sqlite": sqlite, "postgresql": postgresql}[conn.dialect.name]
    statement = dialect.insert(table).values(**row)
    changes = {name: statement.excluded[name] for name in row if name not in keys}
    conn.execute(statement.on_conflict_do_update(index_elements=list(keys), set_=changes))
