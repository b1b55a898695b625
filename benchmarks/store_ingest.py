"""Results-store speed: metric rows ingested per second while a reader polls, and the status query's latency.

    python benchmarks/store_ingest.py [--cells 1000] [--steps 1000] [--batch-rows 100] [--json out.json]

1. Ingest. `store.ingest` fills cells × steps training rows, round-robin over the cells in batches of
   `--batch-rows` (one transaction each, as the runner does per tail read), while a separate reader process
   polls the TUI's status views (`cell_statuses` + `study_summary`) every `--poll-s`. Beside it, in the same
   run and on the same schema: the ceiling (the same rows and progress updates through raw sqlite3
   executemany, no SQLAlchemy and no value cleaning) and the naive way (one ORM object per row, on a
   sample). Then ours again at other batch sizes.
2. Query. On the filled database (cells × steps rows), the median and worst of repeated status queries,
   and of the other reads the TUI and the report make.

Targets (issue 4): >= 50,000 rows/s while a reader polls; status query <= 100 ms at 1,000 × 1,000.
"""

import argparse
import json
import multiprocessing
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlmodel import Session

from store import (
    CellMode,
    Executor,
    NewCell,
    Store,
    add_cells,
    cell_statuses,
    cells_of,
    claim,
    ingest,
    open_store,
    study_summary,
    train_curve,
    upsert_study,
)
from store.schema import TrainMetric

TARGET_ROWS_PER_S = 50_000
TARGET_STATUS_S = 0.100


@dataclass
class IngestResult:
    name: str
    batch_rows: int
    rows: int
    seconds: float
    rows_per_s: float
    reader_polls: int
    reader_median_s: float
    reader_max_s: float


@dataclass
class QueryResult:
    name: str
    median_s: float
    max_s: float
    repeats: int


def make_study(path: Path, num_cells: int) -> tuple[Store, int, dict[str, int]]:
    """A fresh database with `num_cells` running cells; returns the store, study id and attempt ids."""
    store = open_store(path)
    study = upsert_study(store, name="bench", path="bench.yaml", spec={})
    cells = [
        NewCell(
            id=f"{i:08x}",
            mode=CellMode.PRETRAINING,
            depth=4 + i % 20,
            flops_budget=10.0 ** (15 + i % 5),
            seed=i // 100,
            num_params=10**6 * (1 + i % 20),
            num_tokens=10**9,
            flops_per_token=6 * 10**6,
            steps_total=100_000,
            config={"depth": 4 + i % 20, "lr": 0.02, "batch": 524288},
            axes={"depth": 4 + i % 20, "flops": 10.0 ** (15 + i % 5), "seed": i // 100},
        )
        for i in range(num_cells)
    ]
    add_cells(store, study.id, cells)
    attempts = {cell.id: claim(store, cell.id, executor=Executor.LOCAL, host="bench").id for cell in cells}
    return store, study.id, attempts


def step_rows(first_step: int, count: int) -> list[dict]:
    return [
        {
            "step": step,
            "tokens": step * 524288,
            "flops": step * 524288 * 6e6,
            "loss": 10.0 / (1 + step) ** 0.1,
            "lr": 0.02,
            "lr_frac": 1.0,
            "tok_per_s": 1.2e6,
            "mfu": 0.45,
            "step_s": 0.4,
            "elapsed_s": step * 0.4,
            "time": 1.7e9 + step * 0.4,
        }
        for step in range(first_step, first_step + count)
    ]


def batches(cell_ids: list[str], steps: int, batch_rows: int):
    """(cell id, first step, count): round-robin over the cells, `batch_rows` steps at a time."""
    for first in range(1, steps + 1, batch_rows):
        count = min(batch_rows, steps + 1 - first)
        for cell_id in cell_ids:
            yield cell_id, first, count


def poll(path: str, study_id: int, interval_s: float, ready, stop, out) -> None:
    """The TUI's loop: status views every `interval_s`, timing each poll."""
    latencies_s = []
    with open_store(path, create=False) as store:
        while not stop.is_set():
            began = time.perf_counter()
            cell_statuses(store, study_id)
            study_summary(store, study_id)
            latencies_s.append(time.perf_counter() - began)
            ready.set()
            stop.wait(interval_s)
    out.put(latencies_s)


def with_reader(
    path: Path, study_id: int, poll_s: float, work: Callable[[], int], name: str, batch_rows: int
):
    context = multiprocessing.get_context("spawn")
    ready, stop, out = context.Event(), context.Event(), context.Queue()
    reader = context.Process(target=poll, args=(str(path), study_id, poll_s, ready, stop, out))
    reader.start()
    if not ready.wait(timeout=120):
        raise RuntimeError("the reader process did not start polling")
    began = time.perf_counter()
    rows = work()
    seconds = time.perf_counter() - began
    stop.set()
    latencies_s = out.get(timeout=120)
    reader.join(timeout=60)
    return IngestResult(
        name=name,
        batch_rows=batch_rows,
        rows=rows,
        seconds=seconds,
        rows_per_s=rows / seconds,
        reader_polls=len(latencies_s),
        reader_median_s=statistics.median(latencies_s) if latencies_s else float("nan"),
        reader_max_s=max(latencies_s, default=float("nan")),
    )


def ingest_ours(store: Store, attempts: dict[str, int], steps: int, batch_rows: int) -> int:
    rows = 0
    for cell_id, first, count in batches(list(attempts), steps, batch_rows):
        ingest(store, cell_id, attempt_id=attempts[cell_id], train=step_rows(first, count))
        rows += count
    return rows


def ingest_raw_sqlite(path: Path, attempts: dict[str, int], steps: int, batch_rows: int) -> int:
    """The ceiling: the same rows and progress updates, straight through sqlite3."""
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("busy_timeout = 30000", "journal_mode = WAL", "synchronous = NORMAL", "foreign_keys = ON"):
        conn.execute(f"PRAGMA {pragma}")
    columns = list(step_rows(1, 1)[0])
    insert = (
        f"INSERT INTO train_metrics (cell_id, attempt_id, {', '.join(columns)}) "
        f"VALUES (?, ?, {', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING"
    )
    update = "UPDATE cells SET steps_done = ?, tokens_seen = ?, train_loss = ?, updated_at = ? WHERE id = ?"
    rows = 0
    for cell_id, first, count in batches(list(attempts), steps, batch_rows):
        batch = step_rows(first, count)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("SELECT state FROM cells WHERE id = ?", (cell_id,)).fetchone()
        conn.executemany(insert, [(cell_id, attempts[cell_id], *row.values()) for row in batch])
        last = batch[-1]
        conn.execute(update, (last["step"], last["tokens"], last["loss"], time.time(), cell_id))
        conn.execute("COMMIT")
        rows += count
    conn.close()
    return rows


def ingest_orm_per_row(store: Store, attempts: dict[str, int], steps: int, batch_rows: int) -> int:
    """The naive way: one ORM object per row, one session commit per batch."""
    rows = 0
    for cell_id, first, count in batches(list(attempts), steps, batch_rows):
        with Session(store.engine) as session:
            for row in step_rows(first, count):
                session.add(TrainMetric(cell_id=cell_id, attempt_id=attempts[cell_id], **row))
            session.commit()
        rows += count
    return rows


def time_query(name: str, query: Callable[[], object], repeats: int) -> QueryResult:
    query()  # the first call compiles the statement and warms the page cache
    times_s = []
    for _ in range(repeats):
        began = time.perf_counter()
        query()
        times_s.append(time.perf_counter() - began)
    return QueryResult(name=name, median_s=statistics.median(times_s), max_s=max(times_s), repeats=repeats)


def print_ingest(result: IngestResult) -> None:
    print(
        f"{result.name:<30} batch {result.batch_rows:>5}  {result.rows:>9,} rows"
        f"  {result.rows_per_s:>9,.0f} rows/s"
        f"  reader: {result.reader_polls} polls, median {result.reader_median_s * 1e3:.1f} ms,"
        f" max {result.reader_max_s * 1e3:.1f} ms",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-rows", type=int, default=100, help="rows per ingest call (one transaction)")
    parser.add_argument("--poll-s", type=float, default=0.1, help="the reader's pause between polls")
    parser.add_argument("--sample-cells", type=int, default=100, help="cells for the comparison runs")
    parser.add_argument("--sample-steps", type=int, default=500, help="steps for the comparison runs")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the comparison runs (median kept)")
    parser.add_argument("--repeats", type=int, default=20, help="repeats of each query timing")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    ingests: list[IngestResult] = []
    queries: list[QueryResult] = []
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        root = Path(tmp)

        def run(name: str, batch_rows: int, cells: int, steps: int, how: str, tag: str) -> IngestResult:
            path = root / f"{how}-{batch_rows}-{tag}.db"
            store, study_id, attempts = make_study(path, cells)
            work = {
                "ours": lambda: ingest_ours(store, attempts, steps, batch_rows),
                "raw": lambda: ingest_raw_sqlite(path, attempts, steps, batch_rows),
                "orm": lambda: ingest_orm_per_row(store, attempts, steps, batch_rows),
            }[how]
            result = with_reader(path, study_id, args.poll_s, work, name, batch_rows)
            store.close()
            path.unlink()
            return result

        # The comparisons, interleaved over rounds so that load from other processes on a shared machine
        # falls on every variant alike; each variant reports its median round.
        variants = [
            ("store.ingest", args.batch_rows, "ours"),
            ("raw sqlite3 (ceiling)", args.batch_rows, "raw"),
            ("ORM object per row", args.batch_rows, "orm"),
            ("store.ingest", 10, "ours"),
            ("store.ingest", 1000, "ours"),
        ]
        rounds: dict[int, list[IngestResult]] = {index: [] for index in range(len(variants))}
        for round_index in range(args.rounds):
            for index, (name, batch_rows, how) in enumerate(variants):
                result = run(name, batch_rows, args.sample_cells, args.sample_steps, how, str(round_index))
                rounds[index].append(result)
        for results in rounds.values():
            median = sorted(results, key=lambda result: result.rows_per_s)[len(results) // 2]
            ingests.append(median)
            print_ingest(median)

        # The full fill, which the query timings then run on.
        path = root / "full.db"
        store, study_id, attempts = make_study(path, args.cells)
        full = with_reader(
            path,
            study_id,
            args.poll_s,
            lambda: ingest_ours(store, attempts, args.steps, args.batch_rows),
            f"store.ingest ({args.cells} x {args.steps})",
            args.batch_rows,
        )
        ingests.append(full)
        print_ingest(full)
        one_cell = next(iter(attempts))
        for name, query in [
            ("cell_statuses (status table)", lambda: cell_statuses(store, study_id)),
            ("study_summary (counts)", lambda: study_summary(store, study_id)),
            ("status poll (both)", lambda: (cell_statuses(store, study_id), study_summary(store, study_id))),
            ("cells_of (full ORM rows)", lambda: cells_of(store, study_id)),
            (f"train_curve ({args.steps} points)", lambda: train_curve(store, one_cell)),
        ]:
            result = time_query(name, query, args.repeats)
            queries.append(result)
            print(f"{name:<30} median {result.median_s * 1e3:7.1f} ms   max {result.max_s * 1e3:7.1f} ms")
        store.close()

    poll_s = next(q.median_s for q in queries if q.name.startswith("status poll"))
    verdict = {
        "ingest_rows_per_s": full.rows_per_s,
        "ingest_target_met": full.rows_per_s >= TARGET_ROWS_PER_S,
        "status_poll_median_s": poll_s,
        "status_target_met": poll_s <= TARGET_STATUS_S,
    }
    print(json.dumps(verdict))
    if args.json:
        payload = {"ingest": [asdict(r) for r in ingests], "queries": [asdict(q) for q in queries], **verdict}
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
