"""benchmarks/study_overhead.py's arithmetic on a study run over two runner commands (stopped, resumed)."""

import json
from types import SimpleNamespace

import pytest

from benchmarks.study_overhead import _events_of, _segments, cell_numbers, read_events_file, sessions_of


def row(cell, start, end, *, train, stopped=False, gpus=("0",)):
    return {"cell": cell, "started_at": start, "ended_at": end, "wall_s": end - start, "train_s": train,
            "stopped": stopped, "gpus": list(gpus)}  # fmt: skip


def test_a_stopped_runner_ends_a_session_and_the_pause_between_commands_is_not_counted() -> None:
    rows = [
        row("a", 0.0, 10.0, train=8.0),
        row("b", 11.0, 15.0, train=2.0, stopped=True),  # the runner stopped here (SIGTERM)
        row("b", 100.0, 110.0, train=7.0),  # the next command resumes it, 85 s later
        row("c", 110.5, 120.0, train=9.0),
    ]
    sessions = sessions_of(rows)
    assert [[r["cell"] for r in s] for s in sessions] == [["a", "b"], ["b", "c"]]
    assert [r["gap_s"] for r in rows] == pytest.approx([0.0, 1.0, 0.0, 0.5])
    assert [r["overhead_s"] for r in rows] == pytest.approx([2.0, 3.0, 3.0, 1.0])


def test_gaps_are_per_gpu() -> None:
    rows = [
        row("a", 0.0, 10.0, train=9.0, gpus=("0",)),
        row("b", 0.5, 4.0, train=3.0, gpus=("1",)),
        row("c", 6.0, 9.0, train=3.0, gpus=("1",)),
        row("d", 12.0, 14.0, train=2.0, gpus=("0", "1")),
    ]
    [session] = sessions_of(rows)
    assert len(session) == 4
    assert [r["gap_s"] for r in rows] == pytest.approx([0.0, 0.0, 2.0, 2.0])  # d waits for a (0) and c (1)


def test_an_attempt_on_standby_counts_only_the_gpu_time_after_the_one_it_waited_for() -> None:
    rows = [
        row("a", 0.0, 30.0, train=25.0),
        row("b", 20.0, 55.0, train=22.0),  # set up beside a from 20 s, trained from a's end at 30 s
        row("c", 56.0, 60.0, train=3.0),  # after a 1 s gap
    ]
    assert len(sessions_of(rows)) == 1
    assert [r["standby_s"] for r in rows] == pytest.approx([0.0, 10.0, 0.0])
    assert [r["gap_s"] for r in rows] == pytest.approx([0.0, 0.0, 1.0])
    assert [r["overhead_s"] for r in rows] == pytest.approx([5.0, 3.0, 2.0])
    # The GPU's wall time is its trainings plus the overheads, standby or not.
    assert sum(r["train_s"] + r["overhead_s"] for r in rows) == pytest.approx(60.0)


def test_each_attempt_gets_the_events_from_its_own_start(tmp_path) -> None:
    first = SimpleNamespace(started_at=0.0, ended_at=10.0)
    never_started = SimpleNamespace(started_at=11.0, ended_at=12.0)
    second = SimpleNamespace(started_at=20.0, ended_at=40.0)

    def steps(first_time, step_s):
        return [{"kind": "step", "time": first_time + i, "step_s": s, "tok_per_s": 100.0, "mfu": 0.1}
                for i, s in enumerate(step_s)]  # fmt: skip

    events = [
        {"kind": "start", "time": 2.0, "device_batch_size": 8},
        *steps(3.0, [5.0, 1.0, 1.0, 1.0]),
        {"kind": "start", "time": 25.0, "device_batch_size": 8, "setup_s": {"runtime": 1.0, "model": 0.5}},
        *steps(26.0, [1.0, 1.0, 1.0]),
        {"kind": "end", "time": 30.0},
    ]
    segments = _segments(events)
    assert [len(s) for s in segments] == [5, 5]
    assert _events_of(never_started, segments) == []
    stopped = cell_numbers(first, _events_of(first, segments))  # stopped before its end
    assert stopped["steps"] == 4 and stopped["compile_s"] == pytest.approx(4.0)
    assert stopped["train_s"] == pytest.approx(4.0) and stopped["start_s"] == pytest.approx(2.0)
    assert stopped["final_s"] is None and stopped["exit_s"] is None
    done = cell_numbers(second, _events_of(second, segments))
    assert done["steps"] == 3 and done["train_s"] == pytest.approx(3.0)
    assert done["final_s"] == pytest.approx(2.0) and done["exit_s"] == pytest.approx(10.0)
    assert done["setup_s"] == {"runtime": 1.0, "model": 0.5} and stopped["setup_s"] is None
    assert cell_numbers(never_started, [])["train_s"] == 0.0

    # A study stopped before a cell's trainer wrote anything: its attempts measure as never started.
    assert _segments(read_events_file(tmp_path / "missing" / "events.jsonl")) == []
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + "\n")
    assert _segments(read_events_file(tmp_path / "events.jsonl")) == segments


def test_an_attempt_on_a_device_without_a_known_peak_has_no_mfu_rather_than_zero() -> None:
    attempt = SimpleNamespace(started_at=0.0, ended_at=10.0)
    events = [{"kind": "start", "time": 1.0, "device_batch_size": 2}]
    events += [
        {"kind": "step", "time": 2.0 + i, "step_s": 1.0, "tok_per_s": 50.0, "mfu": None} for i in range(3)
    ]
    numbers = cell_numbers(attempt, events)
    assert numbers["mfu"] is None and numbers["tok_per_s"] == 50.0
    events[1]["mfu"] = events[2]["mfu"] = events[3]["mfu"] = 0.4
    assert cell_numbers(attempt, events)["mfu"] == pytest.approx(0.4)
