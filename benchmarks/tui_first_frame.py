"""The TUI's first frame: how long `nanostudy tui STUDY` takes to show a study of 1,000 cells, against the
same app on an empty study, in the same run.

    python benchmarks/tui_first_frame.py [--cells 1000] [--steps 100] [--rounds 5] [--json out.json]

Each store is a fresh SQLite database: an empty study, and a study of `--cells` cells with `--steps` training
steps and one validation point each, in mixed states (a half done, a tenth failed, the rest running). The app
is started headless (Textual's `run_test`, 160×50, no NVML) and timed from its start until the study
screen has drawn the totals, the heatmap and a table row for every cell: the first frame with the data.
Both stores alternate over `--rounds` rounds; each reports its median. Beside them, the floor any UI pays:
the status read alone (`runner.api.study_status`) on the big store. Target (issue 7): ≤ 1 s at 1,000 cells.
"""

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.store_ingest import make_study, step_rows
from runner.api import study_status
from store import AttemptOutcome, end_attempt, ingest, open_store

TARGET_S = 1.0
STUDY = "bench"


def fill_study(path: Path, *, num_cells: int, steps: int) -> Path:
    """A study named "bench" of `num_cells` cells with `steps` training steps each, in mixed states."""
    store, _, attempts = make_study(path, num_cells)
    for index, (cell_id, attempt_id) in enumerate(attempts.items()):
        if steps:
            val = [
                {"step": steps, "tokens": steps * 524288, "val_loss": 3.0, "val_bpb": 1.0 + index % 7 / 10}
            ]
            ingest(store, cell_id, attempt_id=attempt_id, train=step_rows(1, steps), val=val)
        if index % 2 == 0:
            end_attempt(store, attempt_id, AttemptOutcome.DONE, exit_code=0)
        elif index % 10 == 1:
            end_attempt(store, attempt_id, AttemptOutcome.FAILED, exit_code=1, reason="bench")
    store.close()
    return path


async def first_frame_s(db: Path, num_cells: int, *, size: tuple[int, int] = (160, 50)) -> float:
    """Seconds from the app's start to a drawn study screen with every cell in its table."""
    from textual.widgets import DataTable

    from tui.app import NanostudyApp
    from tui.study_screen import StudyScreen

    app = NanostudyApp(str(db), STUDY, nvml_loader=lambda: None)
    began = time.perf_counter()
    async with app.run_test(size=size) as pilot:
        while not (
            isinstance(app.screen, StudyScreen)
            and app.screen.status is not None
            and app.screen.query_one(DataTable).row_count == num_cells
        ):
            await pilot.pause(0.005)
        await pilot.pause()  # the frame with the data is drawn at the next idle
        elapsed_s = time.perf_counter() - began
    return elapsed_s


def status_read_s(db: Path, repeats: int) -> float:
    with open_store(db, create=False) as store:
        study_status(store, STUDY)
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            study_status(store, STUDY)
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tui-bench-") as tmp:
        empty = fill_study(Path(tmp) / "empty.db", num_cells=0, steps=0)
        big = fill_study(Path(tmp) / "big.db", num_cells=args.cells, steps=args.steps)
        asyncio.run(first_frame_s(empty, 0))  # the first start pays for imports and compiled CSS
        times: dict[str, list[float]] = {"empty": [], "big": []}
        for _ in range(args.rounds):
            times["empty"].append(asyncio.run(first_frame_s(empty, 0)))
            times["big"].append(asyncio.run(first_frame_s(big, args.cells)))
        read_s = status_read_s(big, repeats=10)
    empty_s, big_s = statistics.median(times["empty"]), statistics.median(times["big"])
    for label, key, median_s in (("empty study", "empty", empty_s), (f"{args.cells} cells", "big", big_s)):
        worst_ms = max(times[key]) * 1e3
        print(f"first frame, {label:<12} median {median_s * 1e3:6.0f} ms  (max {worst_ms:.0f} ms)")
    print(f"status read alone, {args.cells} cells: median {read_s * 1e3:6.0f} ms")
    met = big_s <= TARGET_S
    print(f"{args.cells} cells / empty: {big_s / empty_s:.2f}x; target {TARGET_S:.1f} s met: {met}")
    result = {
        "cells": args.cells,
        "steps": args.steps,
        "rounds": args.rounds,
        "empty_first_frame_s": times["empty"],
        "big_first_frame_s": times["big"],
        "empty_median_s": empty_s,
        "big_median_s": big_s,
        "ratio": big_s / empty_s,
        "status_read_median_s": read_s,
        "target_met": met,
    }
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
