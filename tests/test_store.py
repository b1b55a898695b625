"""The results store: schema and engine set-up, the cell state machine, ingest, and the reads.

Every test taking the `store` fixture runs on SQLite and, when a PostgreSQL server and the psycopg driver
are available, again on PostgreSQL (a throwaway server started for the session).
"""

import itertools
import math
import os
import queue
import random
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from store import (
    ALLOWED_TRANSITIONS,
    SCHEMA_VERSION,
    AttemptOutcome,
    CellMode,
    CellState,
    CheckpointKind,
    Executor,
    FinishedCellError,
    NewCell,
    SchemaVersionError,
    Store,
    StoreNotFoundError,
    add_cells,
    attempt_counts,
    attempts_of,
    best_cell,
    best_checkpoint,
    cell_statuses,
    cells_of,
    claim,
    default_db_path,
    end_attempt,
    evals_of,
    final_checkpoint,
    get_attempt,
    get_cell,
    heartbeat,
    ingest,
    ingest_offset,
    latest_checkpoint,
    latest_fits,
    latest_train_points,
    list_studies,
    move_run_dirs,
    open_attempts,
    open_store,
    ranked_checkpoints,
    record_launch,
    record_study,
    rewind,
    save_fit,
    stale_attempts,
    studies_of_cell,
    study_summary,
    take_over_attempt,
    train_curve,
    transition,
    upsert_study,
    val_curve,
    val_curves,
)
from store.schema import Meta

# ---------------------------------------------------------------------------------------------- fixtures


def _pg_binaries() -> tuple[str, str] | None:
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    return (initdb, pg_ctl) if initdb and pg_ctl else None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server on a Unix socket; yields a URL template with `{db}` to fill in."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("PostgreSQL tests need the psycopg driver (pip package `psycopg[binary]`)")
    binaries = _pg_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL tests need initdb and pg_ctl on PATH (apt-get install postgresql)")
    initdb, pg_ctl = binaries
    root = Path(tempfile.mkdtemp(prefix="nanostudy-pg-"))
    # initdb refuses to run as root; run the server as the `postgres` user then.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres")
    data, log = root / "data", root / "server.log"
    port = 5400 + os.getpid() % 500  # only names the socket file: no TCP port is opened
    try:
        subprocess.run(
            [*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust"],
            check=True,
            capture_output=True,
        )
        options = f"-k {root} -c listen_addresses='' -p {port} -F"
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "start"],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as error:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start a PostgreSQL server: {error.stderr.decode(errors='replace')[-300:]}")
    try:
        # Plain `postgresql://`, as a user would write it: open_store picks the psycopg driver.
        yield f"postgresql://postgres@/{{db}}?host={root}&port={port}"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


_pg_counter = itertools.count()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the session's server."""
    name = f"t{os.getpid()}_{next(_pg_counter)}"
    admin_url = postgres_server.format(db="postgres").replace("postgresql://", "postgresql+psycopg://")
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield postgres_server.format(db=name)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        target = str(tmp_path / "nanostudy.db")
    else:
        target = request.getfixturevalue("postgres_url")
    with open_store(target) as opened:
        yield opened


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    with open_store(tmp_path / "nanostudy.db") as opened:
        yield opened


def _cell(cell_id: str, **overrides) -> NewCell:
    fields = dict(
        id=cell_id,
        mode=CellMode.PRETRAINING,
        depth=4,
        flops_budget=1e15,
        seed=0,
        num_params=1_000_000,
        num_tokens=3_000_000_000,  # past 2**31: BIGINT on PostgreSQL
        flops_per_token=6_000_000,
        steps_total=100,
        config={"depth": 4, "lr": 0.02},
        axes={"depth": 4, "flops": 1e15, "seed": 0},
    )
    fields.update(overrides)
    return NewCell(**fields)


def _study(store: Store, name: str = "s") -> int:
    study = upsert_study(store, name=name, path=f"studies/{name}.yaml", spec={"grid": {"depth": [4]}})
    assert study.id is not None
    return study.id


def _put_in_state(store: Store, cell_id: str, state: CellState) -> None:
    """Walk a pending cell along legal moves to `state`."""
    if state is CellState.PENDING:
        return
    if state is CellState.CANCELLED:
        assert transition(store, cell_id, CellState.PENDING, CellState.CANCELLED)
        return
    attempt = claim(store, cell_id, executor=Executor.LOCAL, host="h")
    assert attempt is not None
    if state is not CellState.RUNNING:
        outcome = {
            CellState.DONE: AttemptOutcome.DONE,
            CellState.FAILED: AttemptOutcome.FAILED,
            CellState.DIVERGED: AttemptOutcome.DIVERGED,
        }[state]
        assert end_attempt(store, attempt.id, outcome)


# ------------------------------------------------------------------------------------- engine and schema


def test_sqlite_pragmas_are_set_on_every_connection(sqlite_store: Store) -> None:
    # Two connections checked out at once: the pool's first and a second one.
    with sqlite_store.engine.connect() as first, sqlite_store.engine.connect() as second:
        for conn in (first, second):
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -65536  # KiB


def test_foreign_keys_are_enforced(store: Store) -> None:
    from store.schema import TrainMetric

    with pytest.raises(sa.exc.IntegrityError), store.write() as conn:
        conn.execute(sa.insert(TrainMetric.__table__).values(cell_id="nope", step=1, tokens=1))


def test_new_database_records_the_schema_version(store: Store) -> None:
    with store.read() as conn:
        value = conn.execute(
            sa.select(Meta.__table__.c.value).where(Meta.__table__.c.key == "schema_version")
        )
        assert value.scalar() == str(SCHEMA_VERSION)


@pytest.mark.parametrize(("stored", "word"), [(0, "older"), (SCHEMA_VERSION + 1, "newer")])
def test_schema_version_mismatch_names_file_and_both_versions(tmp_path: Path, stored: int, word: str) -> None:
    path = tmp_path / "nanostudy.db"
    with open_store(path) as opened, opened.write() as conn:
        conn.execute(sa.update(Meta.__table__).values(value=str(stored)))
    with pytest.raises(SchemaVersionError) as error:
        open_store(path)
    message = str(error.value)
    assert str(path) in message and f"version {stored}" in message and f"{SCHEMA_VERSION}" in message
    assert word in message


def test_reads_inside_a_snapshot_see_one_moment_whatever_another_writer_does(store: Store) -> None:
    study_id = _study(store)
    add_cells(store, study_id, [_cell("first")])
    claim(store, "first", executor=Executor.LOCAL, host="h")
    writer = open_store(store.engine.url.render_as_string(hide_password=False))
    seen_by_another_thread = []
    with store.snapshot():
        assert [c.id for c in cells_of(store, study_id)] == ["first"]
        # A runner writes between the reader's queries: a new cell, and a step of the first cell.
        add_cells(writer, study_id, [_cell("second", seed=1)])
        ingest(writer, "first", attempt_id=1, train=[{"step": 1, "loss": 2.0, "tokens": 10}])
        assert [c.id for c in cells_of(store, study_id)] == ["first"]  # an ORM session
        assert [c.steps_done for c in cell_statuses(store, study_id)] == [0]  # a plain read
        assert train_curve(store, "first") == []
        thread = threading.Thread(target=lambda: seen_by_another_thread.extend(cells_of(store, study_id)))
        thread.start()
        thread.join()
        with pytest.raises(RuntimeError, match="snapshot is for reads only"), store.write():
            pass
    writer.close()
    assert sorted(c.id for c in seen_by_another_thread) == ["first", "second"]  # not pinned to the snapshot
    assert sorted(c.id for c in cells_of(store, study_id)) == ["first", "second"]
    assert [p.step for p in train_curve(store, "first")] == [1]


def test_move_run_dirs_moves_only_cells_never_tried(store: Store) -> None:
    study_id = _study(store)
    add_cells(
        store, study_id, [_cell("fresh", run_dir="/old/fresh"), _cell("tried", seed=1, run_dir="/old/tried")]
    )
    assert claim(store, "tried", executor=Executor.LOCAL, host="h") is not None
    assert move_run_dirs(store, {"fresh": "/new/fresh", "tried": "/new/tried"}) == ["tried"]
    assert (
        get_cell(store, "fresh").run_dir == "/new/fresh" and get_cell(store, "tried").run_dir == "/old/tried"
    )


def test_record_study_leaves_no_study_behind_when_its_cells_fail(store: Store) -> None:
    orphan = _cell("child", mode=CellMode.MID_TRAINING, parent_cell_id="ghost")
    with pytest.raises(ValueError, match="ghost"):
        record_study(store, name="half", path="half.yaml", spec={}, cells=[_cell("a"), orphan])
    assert [study.name for study in list_studies(store)] == [] and get_cell(store, "a") is None
    study, added, left_out = record_study(store, name="whole", path="whole.yaml", spec={}, cells=[_cell("a")])
    assert (added, left_out) == (1, 0) and [cell.id for cell in cells_of(store, study.id)] == ["a"]


def test_a_cell_the_study_file_no_longer_plans_leaves_its_status_and_comes_back_as_it_was(
    store: Store,
) -> None:
    """Re-recording a study with its new plan (a depth removed, a setting changed: another cell id) leaves
    the old cells linked, with their results and state, but out of every per-study read; the cell's other
    studies keep it; planned again, it is back, done as it was."""
    a, b, c = _cell("a"), _cell("b", seed=1), _cell("c", seed=2)
    study, *_ = record_study(store, name="s", path="s.yaml", spec={}, cells=[a, b])
    other, *_ = record_study(store, name="t", path="t.yaml", spec={}, cells=[b])
    transition(store, "b", CellState.PENDING, CellState.RUNNING)
    transition(store, "b", CellState.RUNNING, CellState.DONE)
    _, added, left_out = record_study(store, name="s", path="s.yaml", spec={}, cells=[a, c])
    assert (added, left_out) == (1, 1)
    assert [status.id for status in cell_statuses(store, study.id)] == ["a", "c"]
    assert [cell.id for cell in cells_of(store, other.id)] == ["b"]  # the other study's plan is its own
    _, added, left_out = record_study(store, name="s", path="s.yaml", spec={}, cells=[a, b, c])
    assert (added, left_out) == (0, 0)
    assert {status.id: status.state for status in cell_statuses(store, study.id)} == {
        "a": CellState.PENDING, "b": CellState.DONE, "c": CellState.PENDING,
    }  # fmt: skip


def test_a_version_1_database_is_upgraded_and_keeps_its_cells(tmp_path: Path) -> None:
    path = tmp_path / "nanostudy.db"
    with open_store(path) as opened:
        study_id = _study(opened, "old")
        add_cells(opened, study_id, [_cell("a"), _cell("b", seed=1)])
        # What version 1 was: no study_cells table, each cell owned by cells.study_id alone (and, as in
        # version 2, no attempts.study_id).
        with opened.write() as conn:
            conn.exec_driver_sql("DROP TABLE study_cells")
            conn.exec_driver_sql("ALTER TABLE attempts DROP COLUMN study_id")
            conn.execute(sa.update(Meta.__table__).values(value="1"))
    with open_store(path, create=False) as upgraded:
        assert [cell.id for cell in cells_of(upgraded, study_id)] == ["a", "b"]
        with upgraded.read() as conn:
            version = conn.execute(sa.select(Meta.__table__.c.value)).scalar()
        assert version == str(SCHEMA_VERSION)
        other = _study(upgraded, "new")
        assert add_cells(upgraded, other, [_cell("a")]) == 1
        assert studies_of_cell(upgraded, "a") == ["old", "new"]


def _schema_version(store: Store) -> str:
    with store.read() as conn:
        return conn.execute(sa.select(Meta.__table__.c.value)).scalar()


def _attempt_columns(store: Store) -> list[str]:
    return _columns(store, "attempts")


def _columns(store: Store, table: str) -> list[str]:
    with store.read() as conn:
        return [column["name"] for column in sa.inspect(conn).get_columns(table)]


def _make_older(store: Store, version: int) -> str:
    """Turn the database into what `version` (1, 2 or 3) wrote; returns the URL to open it again."""
    with store.write() as conn:
        if version < 2:
            conn.exec_driver_sql("DROP TABLE study_cells")
        else:
            conn.exec_driver_sql("ALTER TABLE study_cells DROP COLUMN planned")
        if version < 3:
            conn.exec_driver_sql("ALTER TABLE attempts DROP COLUMN study_id")
        conn.execute(sa.update(Meta.__table__).values(value=str(version)))
    url = store.engine.url.render_as_string(hide_password=False)
    store.close()
    return url


@pytest.mark.parametrize("version", [1, 2, 3])
def test_an_older_database_is_upgraded_and_its_attempts_keep_no_study(store: Store, version: int) -> None:
    study_id = _study(store, "old")
    add_cells(store, study_id, [_cell("open"), _cell("ended", seed=1)])
    running = claim(store, "open", executor=Executor.LOCAL, host="h")
    record_launch(store, running.id, pid=4242, pid_start_time=123.5)
    _put_in_state(store, "ended", CellState.FAILED)
    url = _make_older(store, version)
    for _ in range(2):  # the second open finds version 4 and changes nothing
        with open_store(url, create=False) as upgraded:
            assert _schema_version(upgraded) == str(SCHEMA_VERSION) == "4"
            assert _attempt_columns(upgraded).count("study_id") == 1
            assert _columns(upgraded, "study_cells").count("planned") == 1  # every link planned, as before
            # The attempts made before: unknown study, and the open one is still open, as it was.
            (still_open,) = open_attempts(upgraded, study_id)
            assert (still_open.id, still_open.pid, still_open.study_id) == (running.id, 4242, None)
            assert [a.study_id for a in attempts_of(upgraded, "ended")] == [None]
            assert [cell.id for cell in cells_of(upgraded, study_id)] == ["open", "ended"]
    with open_store(url, create=False) as upgraded:
        assert transition(upgraded, "ended", CellState.FAILED, CellState.PENDING)
        again = claim(upgraded, "ended", executor=Executor.LOCAL, host="h", study_id=study_id)
        assert again.study_id == study_id and get_attempt(upgraded, again.id).study_id == study_id


def test_an_interrupted_upgrade_leaves_the_database_as_it_was(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from store import engine

    study_id = _study(store, "old")
    add_cells(store, study_id, [_cell("a")])
    url = _make_older(store, 2)
    upgrade = engine.MIGRATIONS[2]

    def upgrade_then_die(conn: sa.Connection) -> None:
        upgrade(conn)
        raise KeyboardInterrupt  # after the new column, before the new version: the transaction is lost

    monkeypatch.setitem(engine.MIGRATIONS, 2, upgrade_then_die)
    with pytest.raises(KeyboardInterrupt):
        open_store(url, create=False)
    raw = sa.create_engine(url)  # not open_store, which would upgrade it
    try:
        with raw.connect() as conn:
            assert conn.execute(sa.select(Meta.__table__.c.value)).scalar() == "2"
            assert "study_id" not in {column["name"] for column in sa.inspect(conn).get_columns("attempts")}
    finally:
        raw.dispose()
    monkeypatch.setitem(engine.MIGRATIONS, 2, upgrade)
    with open_store(url, create=False) as reopened:
        assert _schema_version(reopened) == str(SCHEMA_VERSION)
        assert _attempt_columns(reopened).count("study_id") == 1
        assert [cell.id for cell in cells_of(reopened, study_id)] == ["a"]


def test_several_openers_of_an_older_database_at_once_upgrade_it_once(store: Store) -> None:
    study_id = _study(store, "old")
    add_cells(store, study_id, [_cell("a"), _cell("b", seed=1)])
    url = _make_older(store, 1)
    num_openers = 4
    start, errors = threading.Barrier(num_openers), queue.Queue()

    def open_it() -> None:
        try:
            start.wait(timeout=30)
            with open_store(url, create=False) as opened:
                assert _schema_version(opened) == str(SCHEMA_VERSION)
        except BaseException as error:  # reported to the test below
            errors.put(repr(error))

    openers = [threading.Thread(target=open_it) for _ in range(num_openers)]
    for opener in openers:
        opener.start()
    for opener in openers:
        opener.join(timeout=60)
    assert list(errors.queue) == []
    with open_store(url, create=False) as upgraded:
        assert _attempt_columns(upgraded).count("study_id") == 1
        assert [cell.id for cell in cells_of(upgraded, study_id)] == ["a", "b"]
        assert studies_of_cell(upgraded, "a") == ["old"]


def test_cells_an_older_nanostudy_added_after_the_upgrade_are_linked_at_the_next_open(tmp_path: Path) -> None:
    # A version-1 process that opened the database before another process upgraded it inserts cells with
    # cells.study_id alone, no study_cells row: every per-study read missed them (status showed 0 cells).
    path = tmp_path / "nanostudy.db"
    with open_store(path) as opened:
        study_id = _study(opened, "late")
        add_cells(opened, study_id, [_cell("a")])
        with opened.write() as conn:
            conn.exec_driver_sql("DELETE FROM study_cells WHERE cell_id = 'a'")
        assert cells_of(opened, study_id) == []
    with open_store(path, create=False) as reopened:
        assert [cell.id for cell in cells_of(reopened, study_id)] == ["a"]
        assert studies_of_cell(reopened, "a") == ["late"]


def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE things (x INTEGER)")
    engine.dispose()
    with pytest.raises(SchemaVersionError, match="not a nanostudy database"):
        open_store(path)
    # Refused and left as it was: its journal mode is written into the file, and was switched to WAL.
    with sa.create_engine(f"sqlite:///{path}").connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "delete"


def test_readers_do_not_create_a_database(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match=str(tmp_path / "missing.db")):
        open_store(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_a_database_in_a_folder_we_cannot_write_is_read_without_writing_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An archived study on a read-only share: SQLite could not make the -shm file a WAL reader needs, and
    # the report and status failed with "unable to open database file".
    folder = tmp_path / "archive"
    path = folder / "nanostudy.db"
    with open_store(path) as writer:
        _study(writer, "kept")
    assert [child.name for child in folder.iterdir()] == ["nanostudy.db"]  # closed cleanly: no -wal
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores the mode bits: the folder reads as they say it should
        access = os.access
        monkeypatch.setattr(
            os,
            "access",
            lambda p, mode, **kw: False if Path(p) == folder and mode & os.W_OK else access(p, mode, **kw),
        )
    try:
        with open_store(path, create=False) as reader:
            assert [study.name for study in list_studies(reader)] == ["kept"]
            assert [child.name for child in folder.iterdir()] == ["nanostudy.db"]
    finally:
        folder.chmod(0o755)


def test_paths_and_urls_open_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "nanostudy.db"
    with open_store(path) as by_path:
        _study(by_path, "a")
    with open_store(f"sqlite:///{path}", create=False) as by_url:
        assert [study.name for study in list_studies(by_url)] == ["a"]
    assert default_db_path(tmp_path / "studies" / "iso.yaml") == tmp_path / "studies" / "nanostudy.db"


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(ValueError, match="in-memory SQLite cannot be shared"):
        open_store("sqlite://")


def test_unsupported_backend_is_refused_without_leaking_the_password() -> None:
    with pytest.raises(ValueError, match="unsupported backend 'mysql'") as error:
        open_store("mysql://user:secret@localhost/db")
    assert "secret" not in str(error.value)


# --------------------------------------------------------------------------------------- studies and cells


def test_upsert_study_keeps_its_id_and_takes_the_new_spec(store: Store) -> None:
    first = upsert_study(store, name="iso", path="a.yaml", spec={"budgets": [1e15]})
    second = upsert_study(store, name="iso", path="b.yaml", spec={"budgets": [1e15, 1e16], "x": math.nan})
    assert second.id == first.id
    assert second.path == "b.yaml" and second.spec == {"budgets": [1e15, 1e16], "x": None}


def test_add_cells_is_idempotent_and_keeps_existing_state(store: Store) -> None:
    study_id = _study(store)
    cells = [_cell(f"c{i}", seed=i) for i in range(3)]
    assert add_cells(store, study_id, cells) == 3
    assert claim(store, "c1", executor=Executor.LOCAL, host="h") is not None
    assert add_cells(store, study_id, [*cells, _cell("c3", seed=3)]) == 1
    states = {cell.id: cell.state for cell in cells_of(store, study_id)}
    assert states == {"c0": "pending", "c1": "running", "c2": "pending", "c3": "pending"}
    stored = get_cell(store, "c0")
    assert stored is not None and stored.num_tokens == 3_000_000_000
    assert stored.flops == pytest.approx(6_000_000 * 3_000_000_000)
    assert stored.config == {"depth": 4, "lr": 0.02} and stored.axes["flops"] == 1e15


def test_a_cell_is_shared_by_the_studies_that_plan_it(store: Store) -> None:
    mine, theirs = _study(store, "mine"), _study(store, "theirs")
    assert add_cells(store, theirs, [_cell("shared"), _cell("theirs only", seed=1)]) == 2
    _put_in_state(store, "shared", CellState.DONE)
    # The same config planned by a second study is the same cell, done already: linked, never retrained.
    assert add_cells(store, mine, [_cell("shared"), _cell("mine only", seed=2)]) == 2
    assert add_cells(store, mine, [_cell("shared")]) == 0
    assert {c.id: c.state for c in cells_of(store, mine)} == {"shared": "done", "mine only": "pending"}
    assert {c.id: c.state for c in cells_of(store, theirs)} == {"shared": "done", "theirs only": "pending"}
    assert study_summary(store, mine).counts[CellState.DONE] == 1
    assert [status.id for status in cell_statuses(store, mine)] == ["shared", "mine only"]
    assert studies_of_cell(store, "shared") == ["theirs", "mine"]
    # Their file, edited, plans it no more: still a study that may hold an attempt of it, but it shares it
    # with no one (`nanostudy run` said "shared with study theirs").
    record_study(
        store, name="theirs", path="studies/theirs.yaml", spec={}, cells=[_cell("theirs only", seed=1)]
    )
    assert studies_of_cell(store, "shared") == ["theirs", "mine"]
    assert studies_of_cell(store, "shared", planned_only=True) == ["mine"]


def test_add_cells_refuses_an_unknown_study_or_parent_and_writes_nothing(store: Store) -> None:
    mine = _study(store, "mine")
    with pytest.raises(ValueError, match="study 999 is not in the database"):
        add_cells(store, 999, [_cell("lost")])
    orphan = _cell("child", mode=CellMode.MID_TRAINING, parent_cell_id="ghost")
    with pytest.raises(ValueError, match=r"parent cell\(s\) \['ghost'\]"):
        add_cells(store, mine, [_cell("fine"), orphan])
    assert get_cell(store, "fine") is None and cells_of(store, mine) == []
    # A parent listed after its child in the same call is fine: parents are inserted first.
    child = _cell("kid", mode=CellMode.MID_TRAINING, parent_cell_id="mom")
    assert add_cells(store, mine, [child, _cell("mom")]) == 2
    assert get_cell(store, "kid").parent_cell_id == "mom"


def test_a_mid_training_cell_without_a_parent_records_the_checkpoint_it_starts_from(store: Store) -> None:
    # Mode mid-training: every cell starts from the checkpoint the study names; there is no parent cell.
    config = {"init_from": "/runs/base/checkpoints/step_000100", "mode": "mid-training"}
    cell = _cell("mid", mode=CellMode.MID_TRAINING, config=config)
    assert add_cells(store, _study(store), [cell]) == 1
    stored = get_cell(store, "mid")
    assert stored.parent_cell_id is None and stored.config["init_from"] == config["init_from"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"id": ""}, "cell id"),
        ({"mode": "finetuning"}, "mode 'finetuning' is not one of pretraining, mid-training"),
        ({"mode": CellMode.MID_TRAINING}, r"needs its parent pretraining cell or.*config\['init_from'\]"),
        ({"parent_cell_id": "p"}, "parent_cell_id='p'"),
        ({"num_tokens": 0}, "num_tokens must be an integer >= 1"),
        ({"depth": 2.5}, "depth must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"flops_budget": math.inf}, "flops_budget must be a positive number"),
    ],
)
def test_new_cell_validation_names_the_problem(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _cell("x", **overrides)


# ----------------------------------------------------------------------------------------- state machine


ALL_PAIRS = list(itertools.product(CellState, CellState))


@pytest.mark.parametrize(("start", "end"), [pair for pair in ALL_PAIRS if pair not in ALLOWED_TRANSITIONS])
def test_illegal_transitions_raise_naming_both_states(
    sqlite_store: Store, start: CellState, end: CellState
) -> None:
    study_id = _study(sqlite_store)
    add_cells(sqlite_store, study_id, [_cell("c")])
    _put_in_state(sqlite_store, "c", start)
    with pytest.raises(ValueError, match=f"illegal transition {start.value} -> {end.value}"):
        transition(sqlite_store, "c", start, end)
    assert get_cell(sqlite_store, "c").state is start


@pytest.mark.parametrize(("start", "end"), sorted(ALLOWED_TRANSITIONS))
def test_legal_transitions_win_once(sqlite_store: Store, start: CellState, end: CellState) -> None:
    study_id = _study(sqlite_store)
    add_cells(sqlite_store, study_id, [_cell("c")])
    _put_in_state(sqlite_store, "c", start)
    assert transition(sqlite_store, "c", start, end, reason="because")
    cell = get_cell(sqlite_store, "c")
    assert cell.state is end and cell.reason == "because"
    assert (cell.finished_at is not None) == (end in {"done", "failed", "diverged", "cancelled"})
    # The same compare-and-swap again finds the state changed and loses without raising.
    assert not transition(sqlite_store, "c", start, end)


def test_transition_fields_are_whitelisted_and_cleaned(store: Store) -> None:
    study_id = _study(store)
    add_cells(store, study_id, [_cell("c")])
    _put_in_state(store, "c", CellState.RUNNING)
    with pytest.raises(ValueError, match=r"cannot set \['num_params'\]"):
        transition(store, "c", CellState.RUNNING, CellState.DONE, num_params=1)
    assert transition(store, "c", CellState.RUNNING, CellState.DIVERGED, val_loss=math.inf, val_bpb=math.nan)
    cell = get_cell(store, "c")
    assert cell.val_loss is None and cell.val_bpb is None


def test_a_reason_with_nul_bytes_or_a_lone_surrogate_is_stored(store: Store) -> None:
    # A trainer's stderr tail padded with zero bytes (a log file on a network filesystem after its node
    # crashed): PostgreSQL refused the text, and end_attempt raised with the attempt left open.
    study_id = _study(store)
    add_cells(store, study_id, [_cell("a"), _cell("b")])
    attempt = claim(store, "a", executor=Executor.LOCAL, host="h")
    assert end_attempt(store, attempt.id, AttemptOutcome.FAILED, exit_code=1, reason="OOM\x00\x00 in é")
    assert get_cell(store, "a").reason == attempts_of(store, "a")[0].reason == "OOM\ufffd\ufffd in é"
    assert transition(store, "b", CellState.PENDING, CellState.CANCELLED, reason="by \udcffx\x00")
    assert get_cell(store, "b").reason == "by \ufffdx\ufffd"


def test_a_done_cell_is_immutable(store: Store) -> None:
    study_id = _study(store)
    add_cells(store, study_id, [_cell("c")])
    attempt = claim(store, "c", executor=Executor.LOCAL, host="h")
    ingest(store, "c", attempt_id=attempt.id, train=[{"step": 1, "tokens": 10, "loss": 3.0}])
    assert end_attempt(store, attempt.id, AttemptOutcome.DONE, exit_code=0, val_bpb=1.25)
    with pytest.raises(FinishedCellError, match="cell c: is done"):
        ingest(store, "c", train=[{"step": 2, "tokens": 20, "loss": 2.0}])
    with pytest.raises(FinishedCellError):
        rewind(store, "c", to_step=0)
    for target in CellState:
        with pytest.raises(ValueError, match="none, it is final"):
            transition(store, "c", CellState.DONE, target)
    cell = get_cell(store, "c")
    assert (cell.state, cell.val_bpb, cell.steps_done) == (CellState.DONE, 1.25, 1)
    assert [point.step for point in train_curve(store, "c")] == [1]


# ----------------------------------------------------------------------------------------------- attempts


def test_attempt_lifecycle(store: Store) -> None:
    study_id = _study(store)
    add_cells(store, study_id, [_cell("c")])
    first = claim(store, "c", executor=Executor.LOCAL, host="node1", gpus="0,1", num_gpus=2)
    assert first is not None and first.number == 1 and first.outcome is None
    assert claim(store, "c", executor=Executor.LOCAL, host="node1") is None  # already running
    record_launch(store, first.id, pid=4242, pid_start_time=123.5)
    assert [attempt.id for attempt in open_attempts(store, study_id)] == [first.id]
    assert heartbeat(store, [first.id, 999]) == 1
    assert end_attempt(store, first.id, AttemptOutcome.INTERRUPTED, exit_code=-15, reason="runner stopped")
    assert not end_attempt(store, first.id, AttemptOutcome.FAILED)  # already closed: no change
    assert get_cell(store, "c").state is CellState.PENDING
    second = claim(store, "c", executor=Executor.SLURM, host="login", resume_step=50)
    assert second.number == 2 and second.resume_step == 50
    assert end_attempt(store, second.id, AttemptOutcome.FAILED, exit_code=1, reason="CUDA error")
    cell = get_cell(store, "c")
    assert (cell.state, cell.reason) == (CellState.FAILED, "CUDA error")
    history = attempts_of(store, "c")
    assert [(a.number, a.outcome, a.exit_code) for a in history] == [
        (1, AttemptOutcome.INTERRUPTED, -15),
        (2, AttemptOutcome.FAILED, 1),
    ]
    assert history[0].pid == 4242 and history[0].gpus == "0,1" and history[1].executor is Executor.SLURM
    assert open_attempts(store) == []
    with pytest.raises(ValueError, match="not an open attempt"):
        record_launch(store, first.id, pid=1)
    assert heartbeat(store, [first.id]) == 0


def test_an_attempt_records_its_runners_study_and_one_runner_takes_it_over(store: Store) -> None:
    mine, theirs, third = _study(store, "mine"), _study(store, "theirs"), _study(store, "third")
    add_cells(store, mine, [_cell("shared")])
    add_cells(store, theirs, [_cell("shared")])
    attempt = claim(store, "shared", executor=Executor.LOCAL, host="h", study_id=theirs)
    assert attempt.study_id == theirs and open_attempts(store, mine)[0].study_id == theirs
    # Two runners that found theirs dead: the first compare-and-swap wins, the second finds it taken.
    assert take_over_attempt(store, attempt.id, study_id=mine, from_study_id=theirs)
    assert not take_over_attempt(store, attempt.id, study_id=third, from_study_id=theirs)
    assert get_attempt(store, attempt.id).study_id == mine
    assert end_attempt(store, attempt.id, AttemptOutcome.LOST)
    assert not take_over_attempt(store, attempt.id, study_id=theirs, from_study_id=mine)  # closed
    # An attempt from before schema version 3 has no study: it is taken over from None.
    old = claim(store, "shared", executor=Executor.LOCAL, host="h")
    assert old.study_id is None
    assert not take_over_attempt(store, old.id, study_id=mine, from_study_id=theirs)
    assert take_over_attempt(store, old.id, study_id=mine, from_study_id=None)
    assert get_attempt(store, old.id).study_id == mine


def test_stale_attempts_are_found_and_reaped(store: Store) -> None:
    study_id = _study(store)
    add_cells(store, study_id, [_cell("quiet"), _cell("alive", seed=1)])
    quiet = claim(store, "quiet", executor=Executor.LOCAL, host="h")
    alive = claim(store, "alive", executor=Executor.LOCAL, host="h")
    from store.schema import Attempt

    with store.write() as conn:  # the quiet one last beat ten minutes ago
        table = Attempt.__table__
        conn.execute(
            sa.update(table).where(table.c.id == quiet.id).values(heartbeat_at=quiet.heartbeat_at - 600)
        )
    stale = stale_attempts(store, max_silence_s=60)
    assert [attempt.id for attempt in stale] == [quiet.id]
    assert end_attempt(store, quiet.id, AttemptOutcome.LOST, reason="heartbeat stale for 600 s")
    assert get_cell(store, "quiet").state is CellState.PENDING
    assert get_attempt(store, quiet.id).outcome is AttemptOutcome.LOST
    assert get_cell(store, "alive").state is CellState.RUNNING and alive.id not in {a.id for a in stale}


# ------------------------------------------------------------------------------------------------- ingest


def _train_rows(steps: range, loss: float = 3.0) -> list[dict]:
    return [
        {"step": s, "tokens": s * 1000, "flops": s * 6e9, "loss": loss - s * 0.01, "lr": 0.02} for s in steps
    ]


def test_ingest_twice_stores_each_row_once(store: Store) -> None:
    study_id = _study(store)
    add_cells(store, study_id, [_cell("c")])
    attempt = claim(store, "c", executor=Executor.LOCAL, host="h")
    batch = dict(
        train=_train_rows(range(1, 21)),
        val=[{"step": 10, "tokens": 10_000, "val_loss": 2.5, "val_bpb": 1.1}],
        evals=[{"step": 20, "task": "arc", "accuracy": 0.3, "metrics": {"n": 10}}],
        checkpoints=[{"step": 20, "kind": "periodic", "path": "ckpt/20", "tokens": 20_000}],
    )
    for _ in range(2):
        ingest(store, "c", attempt_id=attempt.id, **batch)
    # Overlapping batch: steps 15..30, of which 21..30 are new.
    ingest(store, "c", attempt_id=attempt.id, train=_train_rows(range(15, 31)))
    assert [point.step for point in train_curve(store, "c")] == list(range(1, 31))
    assert len(val_curve(store, "c")) == 1 and len(evals_of(store, cell_id="c")) == 1
    assert latest_checkpoint(store, "c").step == 20
    cell = get_cell(store, "c")
    assert (cell.steps_done, cell.tokens_seen) == (30, 30_000)
    assert cell.train_loss == pytest.approx(3.0 - 0.30)
    assert (cell.val_step, cell.val_loss, cell.val_bpb) == (10, 2.5, 1.1)


def test_non_finite_values_are_stored_as_null_everywhere(store: Store) -> None:
    study_id = _study(store)
    add_cells(store, study_id, [_cell("c", config={"lr": math.nan, "nested": [math.inf, 1.0]})])
    attempt = claim(store, "c", executor=Executor.LOCAL, host="h")
    np = pytest.importorskip("numpy")
    ingest(
        store,
        "c",
        attempt_id=attempt.id,
        train=[
            {"step": 1, "tokens": 1, "loss": math.nan, "lr": math.inf, "mfu": -math.inf, "tok_per_s": 5.0},
            {"step": 2, "tokens": 2, "loss": np.float32("nan"), "lr": np.float64(0.5)},
        ],
        val=[{"step": 2, "tokens": 2, "val_loss": math.inf, "val_bpb": math.nan}],
        evals=[{"step": 2, "task": "t", "accuracy": math.nan, "metrics": {"stderr": math.inf}}],
        start={"versions": {"torch": "2.5"}, "peak": math.nan},
    )
    first, second = train_curve(store, "c")
    assert (first.loss, first.lr, first.mfu, first.tok_per_s) == (None, None, None, 5.0)
    assert (second.loss, second.lr) == (None, 0.5) and type(second.lr) is float
    assert val_curve(store, "c")[0][3:5] == (None, None)
    evaluation = evals_of(store, cell_id="c")[0]
    assert evaluation.accuracy is None and evaluation.metrics == {"stderr": None}
    assert get_cell(store, "c").config == {"lr": None, "nested": [None, 1.0]}
    assert get_attempt(store, attempt.id).start_event == {"versions": {"torch": "2.5"}, "peak": None}
    cell = get_cell(store, "c")
    assert cell.train_loss is None and cell.val_loss is None and cell.val_bpb is None
    # Nothing in any float column of the metric tables is NaN or infinite.
    with store.read() as conn:
        values = conn.exec_driver_sql("SELECT loss, lr, mfu FROM train_metrics").all()
    assert all(v is None or math.isfinite(v) for row in values for v in row)


def test_ingest_rejects_malformed_rows_and_writes_nothing(store: Store) -> None:
    study_id = _study(store)
    add_cells(store, study_id, [_cell("c")])
    good = {"step": 1, "tokens": 1, "loss": 1.0}
    with pytest.raises(ValueError, match=r"train_metrics: unknown column\(s\) \['los'\]"):
        ingest(store, "c", train=[good, {"step": 2, "tokens": 2, "los": 1.0}])
    with pytest.raises(ValueError, match=r"val_metrics: row .* lacks required 'tokens'"):
        ingest(store, "c", val=[{"step": 1, "val_loss": 1.0}])
    with pytest.raises(ValueError, match="cell ghost: not in the database"):
        ingest(store, "ghost", train=[good])
    with pytest.raises(ValueError, match="'weekly' is not a valid CheckpointKind"):
        ingest(store, "c", checkpoints=[{"step": 1, "kind": "weekly", "path": "p"}])
    assert train_curve(store, "c") == []


def test_progress_never_moves_backwards_and_rewind_recomputes_it(store: Store) -> None:
    study_id = _study(store)
    add_cells(store, study_id, [_cell("c")])
    attempt = claim(store, "c", executor=Executor.LOCAL, host="h")
    ingest(
        store,
        "c",
        attempt_id=attempt.id,
        train=_train_rows(range(1, 61)),
        val=[{"step": 25, "tokens": 25_000, "val_bpb": 1.5}, {"step": 50, "tokens": 50_000, "val_bpb": 1.4}],
        checkpoints=[
            {"step": 25, "kind": "periodic", "path": "c25"},
            {"step": 50, "kind": "periodic", "path": "c50"},
        ],
    )
    ingest(store, "c", attempt_id=attempt.id, train=_train_rows(range(5, 10)))  # an old, re-read slice
    assert get_cell(store, "c").steps_done == 60
    # The attempt dies at step 60; the next resumes from the checkpoint at step 25.
    end_attempt(store, attempt.id, AttemptOutcome.LOST)
    rewind(store, "c", to_step=25)
    cell = get_cell(store, "c")
    assert (cell.steps_done, cell.tokens_seen, cell.val_step, cell.val_bpb) == (25, 25_000, 25, 1.5)
    assert latest_checkpoint(store, "c").path == "c25"
    resumed = claim(store, "c", executor=Executor.LOCAL, host="h", resume_step=25)
    ingest(store, "c", attempt_id=resumed.id, train=_train_rows(range(26, 41), loss=9.0))
    curve = train_curve(store, "c")
    assert [p.step for p in curve] == list(range(1, 41))
    assert curve[-1].loss == pytest.approx(9.0 - 0.40)  # the resumed attempt's rows, not the dead one's
    assert [p.step for p in train_curve(store, "c", after_step=38)] == [39, 40]


def test_ingest_offsets_commit_with_the_rows(store: Store) -> None:
    study_id = _study(store)
    add_cells(store, study_id, [_cell("c")])
    assert ingest_offset(store, "c", "run/events.jsonl") == 0
    ingest(store, "c", train=_train_rows(range(1, 3)), events_path="run/events.jsonl", events_offset=180)
    ingest(store, "c", train=_train_rows(range(3, 5)), events_path="run/events.jsonl", events_offset=360)
    assert ingest_offset(store, "c", "run/events.jsonl") == 360
    # A failing batch moves neither the rows nor the offset.
    with pytest.raises(ValueError):
        ingest(store, "c", train=[{"step": 5}], events_path="run/events.jsonl", events_offset=540)
    assert ingest_offset(store, "c", "run/events.jsonl") == 360
    assert [p.step for p in train_curve(store, "c")] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="together"):
        ingest(store, "c", events_path="run/events.jsonl")


# -------------------------------------------------------------------------------------------------- reads


def test_study_summary_matches_the_cells(store: Store) -> None:
    rng = random.Random(0)
    study_id = _study(store)
    other = _study(store, "other")
    add_cells(store, other, [_cell("elsewhere", steps_total=7)])  # must not leak into the summary
    cells = [
        _cell(
            f"c{i:02d}",
            seed=i,
            steps_total=rng.randint(50, 100),
            num_tokens=rng.randint(1, 9) * 10**9,
            flops_per_token=rng.randint(1, 9) * 10**6,
        )
        for i in range(24)
    ]
    add_cells(store, study_id, cells)
    expected_counts = dict.fromkeys(CellState, 0)
    steps_done = tokens_seen = 0
    flops_done = 0.0
    for cell in cells:
        state = rng.choice(list(CellState))
        _put_in_state(store, cell.id, CellState.RUNNING if state is CellState.PENDING else CellState.PENDING)
        if state is not CellState.CANCELLED and state is not CellState.PENDING:
            last = rng.randint(1, cell.steps_total)
            ingest(store, cell.id, train=[{"step": s, "tokens": s * 512} for s in range(1, last + 1)])
            steps_done += last
            tokens_seen += last * 512
            flops_done += last * 512 * cell.flops_per_token
        if state is CellState.PENDING:
            # Running, then interrupted: pending again, with its progress kept.
            attempt = open_attempts(store)[0]
            end_attempt(store, attempt.id, AttemptOutcome.INTERRUPTED)
        else:
            _finish(store, cell.id, state)
        expected_counts[state] += 1
    summary = study_summary(store, study_id)
    assert summary.counts == expected_counts
    assert summary.num_cells == len(cells)
    assert summary.steps_total == sum(cell.steps_total for cell in cells)
    assert summary.tokens_total == sum(cell.num_tokens for cell in cells)
    assert (summary.steps_done, summary.tokens_seen) == (steps_done, tokens_seen)
    assert summary.flops_done == pytest.approx(flops_done)
    assert summary.flops_total == pytest.approx(sum(cell.flops for cell in cells))
    assert 0 < summary.fraction_done < 1
    statuses = cell_statuses(store, study_id)
    assert [s.id for s in statuses] == [c.id for c in sorted(cells, key=lambda c: (c.seed, c.id))]
    assert sum(s.steps_done for s in statuses) == steps_done
    assert {s.state for s in statuses} == {s for s, n in expected_counts.items() if n}


def _finish(store: Store, cell_id: str, state: CellState) -> None:
    """From running or pending, to `state`."""
    cell = get_cell(store, cell_id)
    if cell.state is CellState.PENDING:
        if state is CellState.CANCELLED:
            assert transition(store, cell_id, CellState.PENDING, CellState.CANCELLED)
            return
        claim(store, cell_id, executor=Executor.LOCAL, host="h")
    attempt = next(a for a in attempts_of(store, cell_id) if a.ended_at is None)
    outcome = AttemptOutcome(state.value) if state is not CellState.RUNNING else None
    if outcome is not None:
        assert end_attempt(store, attempt.id, outcome)


def test_best_cell_prefers_mode_then_largest_budget_then_lowest_bpb(store: Store) -> None:
    study_id = _study(store)
    specs = [  # id, mode, budget, val_bpb, final state
        ("small-best", CellMode.PRETRAINING, 1e15, 0.9, CellState.DONE),
        ("big-a", CellMode.PRETRAINING, 1e16, 1.2, CellState.DONE),
        ("big-b", CellMode.PRETRAINING, 1e16, 1.1, CellState.DONE),
        ("big-running", CellMode.PRETRAINING, 1e16, 0.5, CellState.RUNNING),
        ("huge-failed", CellMode.PRETRAINING, 1e17, 0.4, CellState.FAILED),
    ]
    add_cells(
        store,
        study_id,
        [
            _cell(cid, mode=mode, flops_budget=budget, seed=i)
            for i, (cid, mode, budget, _, _) in enumerate(specs)
        ],
    )
    for cid, _, _, bpb, state in specs:
        attempt = claim(store, cid, executor=Executor.LOCAL, host="h")
        ingest(store, cid, attempt_id=attempt.id, val=[{"step": 100, "tokens": 1, "val_bpb": bpb}])
        if state is not CellState.RUNNING:
            final = [{"step": 100, "kind": "final", "path": f"{cid}/final"}] if cid != "big-b" else []
            ingest(store, cid, checkpoints=final)
            end_attempt(store, attempt.id, AttemptOutcome(state.value))
    assert best_cell(store, study_id).id == "big-b"  # no mid-training cells: falls back to pretraining
    chosen = best_checkpoint(store, study_id)
    assert chosen[0].id == "big-a" and chosen[1].path == "big-a/final"  # big-b has no final checkpoint
    assert final_checkpoint(store, "big-a").kind is CheckpointKind.FINAL
    assert final_checkpoint(store, "big-running") is None

    add_cells(store, study_id, [_cell("mid", mode=CellMode.MID_TRAINING, parent_cell_id="small-best")])
    attempt = claim(store, "mid", executor=Executor.LOCAL, host="h")
    ingest(
        store,
        "mid",
        val=[{"step": 10, "tokens": 1, "val_bpb": 1.9}],
        checkpoints=[{"step": 10, "kind": "final", "path": "mid/final"}],
    )
    end_attempt(store, attempt.id, AttemptOutcome.DONE)
    assert best_cell(store, study_id).id == "mid"
    assert best_cell(store, study_id, prefer_mode=CellMode.PRETRAINING).id == "big-b"
    assert best_checkpoint(store, study_id)[1].path == "mid/final"
    # The alternatives, best first: the preferred mode, then the larger budget, then the lower bpb.
    ranked = ranked_checkpoints(store, study_id)
    assert [cell.id for cell, _ in ranked] == ["mid", "big-a", "small-best"]
    assert ranked[0] == best_checkpoint(store, study_id)
    by_pretraining = ranked_checkpoints(store, study_id, prefer_mode=CellMode.PRETRAINING)
    assert [cell.id for cell, _ in by_pretraining] == ["big-a", "small-best", "mid"]
    assert set(val_curves(store, study_id)) == {"small-best", "big-a", "big-b", "mid"}
    assert best_cell(store, _study(store, "empty")) is None


def test_batched_status_reads_match_the_per_cell_ones(store: Store) -> None:
    """latest_train_points and attempt_counts: what train_curve and attempts_of give cell by cell, in one
    query each, for this study only."""
    study_id, other_id = _study(store), _study(store, "other")
    add_cells(store, study_id, [_cell(f"c{i}", seed=i) for i in range(3)])
    add_cells(store, other_id, [_cell("elsewhere")])
    for cell_id, steps in (("c0", 5), ("c1", 2), ("elsewhere", 4)):
        attempt = claim(store, cell_id, executor=Executor.LOCAL, host="h")
        rows = [{"step": s, "tokens": 10 * s, "loss": 1.0 / s, "tok_per_s": 100.0 * s} for s in range(1, 6)]
        ingest(store, cell_id, attempt_id=attempt.id, train=rows[:steps])
    end_attempt(store, attempts_of(store, "c1")[-1].id, AttemptOutcome.FAILED)
    assert transition(store, "c1", CellState.FAILED, CellState.PENDING)
    claim(store, "c1", executor=Executor.LOCAL, host="h")

    latest = latest_train_points(store, study_id)
    assert set(latest) == {"c0", "c1"}  # c2 never stepped; "elsewhere" is another study's
    for cell_id in latest:
        assert latest[cell_id] == train_curve(store, cell_id)[-1]
    assert latest["c0"].tok_per_s == 500.0 and latest["c1"].step == 2
    assert attempt_counts(store, study_id) == {"c0": 1, "c1": 2}


def test_fits_keep_history_and_latest_wins(store: Store) -> None:
    study_id = _study(store)
    save_fit(store, study_id, kind="parametric", metric="val_bpb", params={"E": 1.0, "alpha": math.nan})
    save_fit(store, study_id, kind="parametric", metric="val_bpb", params={"E": 0.9})
    save_fit(store, study_id, kind="isoflop", metric="val_bpb", params={"a": 0.5})
    fits = latest_fits(store, study_id)
    assert [(fit.kind, fit.params) for fit in fits] == [("isoflop", {"a": 0.5}), ("parametric", {"E": 0.9})]


def test_competing_claims_each_cell_won_once(store: Store) -> None:
    """The compare-and-swap on both backends: threads with their own connections race for every cell."""
    study_id = _study(store)
    cell_ids = [f"c{i:02d}" for i in range(20)]
    add_cells(store, study_id, [_cell(cell_id, seed=i) for i, cell_id in enumerate(cell_ids)])
    start, results = threading.Barrier(4), queue.Queue()

    def race(seed: int) -> None:
        order = random.Random(seed).sample(cell_ids, len(cell_ids))
        start.wait()
        results.put(
            [cell_id for cell_id in order if claim(store, cell_id, executor=Executor.LOCAL, host="h")]
        )

    threads = [threading.Thread(target=race, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    winners = [cell_id for _ in threads for cell_id in results.get_nowait()]
    assert sorted(winners) == cell_ids
    assert all(len(attempts_of(store, cell_id)) == 1 for cell_id in cell_ids)
