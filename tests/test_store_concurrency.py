"""The store under concurrency, on SQLite: competing claims, and readers polling while the runner writes."""

import multiprocessing
import queue
import random
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from store import (
    AttemptOutcome,
    CellMode,
    Executor,
    NewCell,
    add_cells,
    attempts_of,
    cell_statuses,
    claim,
    end_attempt,
    get_study,
    ingest,
    open_store,
    study_summary,
    upsert_study,
)
from store.schema import TrainMetric

NUM_CELLS = 40


def _make_study(path: Path, num_cells: int = NUM_CELLS) -> list[str]:
    cells = [
        NewCell(
            id=f"cell{i:03d}",
            mode=CellMode.PRETRAINING,
            depth=4,
            flops_budget=1e15,
            seed=i,
            num_params=10**6,
            num_tokens=10**9,
            flops_per_token=6 * 10**6,
            steps_total=10_000,
            config={},
        )
        for i in range(num_cells)
    ]
    with open_store(path) as store:
        study = upsert_study(store, name="race", path="race.yaml", spec={})
        add_cells(store, study.id, cells)
    return [cell.id for cell in cells]


def _claim_all(path: str, cell_ids: list[str], seed: int, start, out, each_round=None) -> None:
    """Try to claim every cell, in a shuffled order; report the ids this worker won. With `each_round` (a
    barrier of all workers) the workers make their claims in lockstep, one each per round, so that no
    worker can claim everything before the others are scheduled (as a loaded machine may let a thread do)."""
    order = list(cell_ids)
    random.Random(seed).shuffle(order)
    won = []
    with open_store(path, create=False) as store:
        start.wait()
        for cell_id in order:
            if each_round is not None:
                each_round.wait(timeout=60)
            if claim(store, cell_id, executor=Executor.LOCAL, host=f"w{seed}"):
                won.append(cell_id)
    out.put(won)


def _check_exactly_one_winner(path: Path, cell_ids: list[str], results: list[list[str]]) -> None:
    winners = [cell_id for won in results for cell_id in won]
    assert sorted(winners) == sorted(cell_ids), "every cell claimed exactly once"
    with open_store(path, create=False) as store:
        assert all(len(attempts_of(store, cell_id)) == 1 for cell_id in cell_ids)


def test_competing_claims_in_threads_each_cell_won_once(tmp_path: Path) -> None:
    path = tmp_path / "nanostudy.db"
    cell_ids = _make_study(path)
    num_workers = 6
    start, each_round, out = threading.Barrier(num_workers), threading.Barrier(num_workers), queue.Queue()
    workers = [
        threading.Thread(target=_claim_all, args=(str(path), cell_ids, seed, start, out, each_round))
        for seed in range(num_workers)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    results = [out.get_nowait() for _ in workers]
    _check_exactly_one_winner(path, cell_ids, results)
    # In the first round the workers try different cells (their shuffled orders start differently), and
    # each wins its own: the claims really were concurrent.
    assert sum(1 for won in results if won) > 1, "the race had more than one winner overall"


def test_competing_claims_in_two_processes_each_cell_won_once(tmp_path: Path) -> None:
    path = tmp_path / "nanostudy.db"
    cell_ids = _make_study(path)
    context = multiprocessing.get_context("spawn")
    out, start = context.Queue(), context.Barrier(2)
    workers = [
        context.Process(target=_claim_all, args=(str(path), cell_ids, seed, start, out)) for seed in range(2)
    ]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    _check_exactly_one_winner(path, cell_ids, results)


def _poll(path: str, study_id: int, stop, out) -> None:
    """A TUI-like reader: poll the status views until told to stop, checking each snapshot is consistent."""
    polls, errors, latencies_s = 0, [], []
    last_steps: dict[str, int] = {}
    with open_store(path, create=False) as store:
        table = TrainMetric.__table__
        while not stop.is_set():
            began = time.perf_counter()
            try:
                statuses = cell_statuses(store, study_id)
                study_summary(store, study_id)
                with store.read() as conn:  # one snapshot: rows and progress were committed together
                    counts = dict(
                        conn.execute(
                            sa.select(table.c.cell_id, sa.func.count()).group_by(table.c.cell_id)
                        ).all()
                    )
                    steps = dict(conn.exec_driver_sql("SELECT id, steps_done FROM cells").all())
            except Exception as error:  # reported to the test, which fails on any
                errors.append(repr(error))
                continue
            latencies_s.append(time.perf_counter() - began)
            polls += 1
            for cell_id, done in steps.items():
                if counts.get(cell_id, 0) != done:
                    errors.append(f"{cell_id}: {counts.get(cell_id, 0)} rows but steps_done {done}")
            for status in statuses:
                if status.steps_done < last_steps.get(status.id, 0):
                    errors.append(f"{status.id}: steps_done went back to {status.steps_done}")
                last_steps[status.id] = status.steps_done
    out.put({"polls": polls, "errors": errors[:5], "max_latency_s": max(latencies_s, default=0.0)})


def test_reader_process_polls_while_the_writer_ingests(tmp_path: Path) -> None:
    path = tmp_path / "nanostudy.db"
    cell_ids = _make_study(path, num_cells=8)
    context = multiprocessing.get_context("spawn")
    stop, out = context.Event(), context.Queue()
    with open_store(path) as store:
        study_id = get_study(store, "race").id
        attempts = {cell_id: claim(store, cell_id, executor=Executor.LOCAL, host="h") for cell_id in cell_ids}
        reader = context.Process(target=_poll, args=(str(path), study_id, stop, out))
        reader.start()
        time.sleep(1.0)  # let the reader start polling (spawn imports take a moment)
        slowest_batch_s, step = 0.0, 0
        deadline = time.perf_counter() + 2.0
        while time.perf_counter() < deadline:
            for cell_id in cell_ids:
                rows = [{"step": s, "tokens": s * 100, "loss": 1.0} for s in range(step + 1, step + 51)]
                began = time.perf_counter()
                ingest(store, cell_id, attempt_id=attempts[cell_id].id, train=rows)
                slowest_batch_s = max(slowest_batch_s, time.perf_counter() - began)
            step += 50
        for cell_id in cell_ids:
            end_attempt(store, attempts[cell_id].id, AttemptOutcome.DONE)
        stop.set()
        report = out.get(timeout=60)
        reader.join(timeout=60)
    assert reader.exitcode == 0
    assert report["errors"] == []
    assert report["polls"] >= 5, report
    assert step >= 100, "the writer kept going while the reader polled"
    # WAL: the writer never waits for the reader (the busy timeout is 30 s; a blocked writer would show it).
    assert slowest_batch_s < 1.0, slowest_batch_s


def test_two_writers_wait_for_each_other_instead_of_failing(tmp_path: Path) -> None:
    """Only the runner writes, but a second writer (a stray CLI) must queue on the busy timeout, not crash."""
    path = tmp_path / "nanostudy.db"
    num_writers = 2
    cell_ids = _make_study(path, num_cells=num_writers)
    with open_store(path) as store:
        attempts = {cell_id: claim(store, cell_id, executor=Executor.LOCAL, host="h") for cell_id in cell_ids}
    failures: list[str] = []

    def write(cell_id: str) -> None:
        with open_store(path, create=False) as store:
            for start in range(0, 2000, 100):
                rows = [{"step": s, "tokens": s} for s in range(start + 1, start + 101)]
                try:
                    ingest(store, cell_id, attempt_id=attempts[cell_id].id, train=rows)
                except Exception as error:
                    failures.append(repr(error))

    threads = [threading.Thread(target=write, args=(cell_id,)) for cell_id in cell_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    with open_store(path, create=False) as store:
        assert [status.steps_done for status in cell_statuses(store, 1)] == [2000] * num_writers
