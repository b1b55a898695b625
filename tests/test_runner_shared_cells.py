"""Runners of two studies that share a cell, with real processes and the fake trainer: which runner looks
after an open attempt of the shared cell when one of them died (`StudyLoop.recover` at a start, and the
loop while it runs). Study "tiny" is A; "other" is B, whose live runner a test plays by holding its lock."""

import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from runner_fixtures import (
    ROOT,
    add_tiny_cells,
    fake_python,
    kill9,
    make_loop,
    new_study,
    wait_for,
    write_plan,
)
from trainer_fixtures import make_data_dir

from runner import api
from runner.lock import StudyLock, lock_path
from store import (
    AttemptOutcome,
    CellState,
    add_cells,
    attempts_of,
    claim,
    get_cell,
    train_curve,
    upsert_study,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("data") / "tiny", train_tokens=4_000, val_tokens=1_000)


@pytest.fixture
def studies(tmp_path, data_dir):
    """Study A ("tiny") with cells "shared" and "mine"; study B ("other") planned "shared" too."""
    db = tmp_path / "nanostudy.db"
    store, tiny = new_study(db)
    cells = add_tiny_cells(
        store, tiny, data_dir, tmp_path / "runs", [{"id": "shared", "flops": 2e9}, {"id": "mine"}]
    )
    other = upsert_study(store, name="other", path=str(tmp_path / "other.yaml"), spec={"name": "other"})
    add_cells(store, other.id, [cells[0]])
    # The shared cell trains for 4 s (40 steps of 0.1 s): long enough to kill a runner while it trains.
    plan = write_plan(tmp_path, {"shared": ["slow"]})
    yield SimpleNamespace(store=store, db=db, tiny=tiny, other=other.id, plan=plan, root=tmp_path)
    store.close()


def _runner_process(studies, name: str) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "tests" / "runner_fixtures.py"), str(studies.db), name]
    command += ["--fake", str(studies.plan)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _open_attempt(studies, cell_id: str):
    attempts = [a for a in attempts_of(studies.store, cell_id) if a.ended_at is None and a.pid is not None]
    return attempts[0] if attempts else None


def _loop(studies, study_id: int, log: list[str]):
    return make_loop(studies.store, study_id, python=fake_python(studies.root), plan=studies.plan, log=log)


def _holds(studies, name: str) -> StudyLock:
    return StudyLock(lock_path(studies.store, name), name)


def _assert_readopted_and_done(studies, log: list[str], pid: int) -> None:
    """Study A's runner re-adopted the shared cell's first attempt (the trainer of process `pid`), which
    trained to its end under A, every step ingested once; A's own cell trained too."""
    assert any("re-adopted attempt 1" in line for line in log), log
    attempts = attempts_of(studies.store, "shared")
    assert [(a.number, a.outcome, a.pid, a.study_id) for a in attempts] == [
        (1, AttemptOutcome.DONE, pid, studies.tiny)
    ]
    assert [point.step for point in train_curve(studies.store, "shared")] == list(range(1, 41))
    assert get_cell(studies.store, "mine").state is CellState.DONE


def test_a_restarted_runner_recovers_its_own_attempt_while_the_sharing_studys_runner_lives(studies):
    # A's runner claims the shared cell and dies; its trainer lives on. B's runner is live. A, restarted,
    # holds A's lock, so the attempt's runner is certainly dead: A re-adopts it. (It was left "to" B,
    # which recovers only at its own start, and the cell showed running for ever.)
    runner = _runner_process(studies, "tiny")
    first = wait_for(lambda: _open_attempt(studies, "shared"), timeout_s=20, what="the trainer to start")
    assert first.study_id == studies.tiny
    wait_for(lambda: get_cell(studies.store, "shared").steps_done >= 3, timeout_s=20, what="ingested steps")
    kill9(runner.pid)
    runner.wait()

    log: list[str] = []
    with _holds(studies, "other"), _holds(studies, "tiny"):
        assert _loop(studies, studies.tiny, log).run() is False
    assert not any("left to it" in line for line in log), log
    _assert_readopted_and_done(studies, log, first.pid)


def test_an_attempt_of_the_sharing_study_is_left_to_its_live_runner(studies):
    log: list[str] = []
    loop = _loop(studies, studies.tiny, log)
    with _holds(studies, "other"):
        # B's live runner has just claimed the shared cell, on this host (its trainer is not up yet).
        here = {"executor": loop.executor.kind, "host": loop.executor.host}
        theirs = claim(studies.store, "shared", **here, study_id=studies.other)
        with _holds(studies, "tiny"):
            assert loop.run() is False  # "mine" trains; each turn looks at "shared" again
    assert any(
        "belongs to the runner of study 'other' (the cell is shared); left to it" in line for line in log
    )
    assert any("1 cell(s) still train under another runner" in line for line in log), log
    (attempt,) = attempts_of(studies.store, "shared")
    assert (attempt.id, attempt.ended_at, attempt.study_id) == (theirs.id, None, studies.other)
    assert get_cell(studies.store, "shared").state is CellState.RUNNING
    assert get_cell(studies.store, "mine").state is CellState.DONE


def test_at_its_start_a_runner_takes_over_an_attempt_of_the_sharing_study_whose_runner_died(studies):
    log: list[str] = []
    loop = _loop(studies, studies.tiny, log)
    here = {"executor": loop.executor.kind, "host": loop.executor.host}
    # B's runner claimed the shared cell and died before its trainer started; B is not running now.
    theirs = claim(studies.store, "shared", **here, study_id=studies.other)
    write_plan(studies.root, {})  # every trainer ends done at once
    with _holds(studies, "tiny"):
        assert loop.run() is False
    assert any("attempt 1 never started; pending again" in line for line in log), log
    attempts = attempts_of(studies.store, "shared")
    assert [(a.id, a.outcome, a.study_id) for a in attempts] == [
        (theirs.id, AttemptOutcome.LOST, studies.tiny),
        (attempts[1].id, AttemptOutcome.DONE, studies.tiny),
    ]


def test_a_live_runner_takes_over_the_shared_cell_of_a_runner_that_died(studies):
    # B's runner trains the shared cell while A's runner starts (A leaves it to B), then B's runner dies:
    # A takes the attempt over at once and re-adopts its trainer, rather than leaving the cell running
    # until B is run again. B, restarted while A looks after it, leaves it to A: one runner watches it.
    write_plan(studies.root, {"shared": ["slow"], "mine": ["slow"]})  # A's loop runs while B's dies
    theirs_runner = _runner_process(studies, "other")
    theirs = wait_for(lambda: _open_attempt(studies, "shared"), timeout_s=20, what="B's trainer to start")
    assert theirs.study_id == studies.other

    log: list[str] = []
    with _holds(studies, "tiny"):
        loop = threading.Thread(target=_loop(studies, studies.tiny, log).run)
        loop.start()
        try:
            wait_for(lambda: any("left to it" in line for line in log), timeout_s=20, what="A to leave it")
            kill9(theirs_runner.pid)
            theirs_runner.wait()
            wait_for(
                lambda: any("taking it over" in line for line in log), timeout_s=20, what="A's take-over"
            )
            assert get_cell(studies.store, "shared").state is CellState.RUNNING
            restarted: list[str] = []
            with _holds(studies, "other"):
                assert _loop(studies, studies.other, restarted).run() is False
            assert any("belongs to the runner of study 'tiny'" in line for line in restarted), restarted
        finally:
            loop.join(timeout=60)
        assert not loop.is_alive()
    assert any(
        "attempt 1 was left by the runner of study 'other', which has stopped; taking it over" in line
        for line in log
    )
    _assert_readopted_and_done(studies, log, theirs.pid)


def test_cancelling_a_shared_cell_leaves_its_trainer_to_the_live_runner_that_watches_it(studies):
    # B's runner trains the shared cell; A's is not running. `nanostudy cancel tiny` closes the attempt
    # and leaves the stop to B's runner (it signalled the trainer itself too, as if nobody watched it).
    theirs_runner = _runner_process(studies, "other")
    theirs = wait_for(lambda: _open_attempt(studies, "shared"), timeout_s=20, what="B's trainer to start")
    result = api.cancel(studies.store, "tiny", cell_id="shared")
    assert result.stopping == ("shared",) and result.stopped_here == ()
    output, _ = theirs_runner.communicate(timeout=60)
    assert "cancelled through the store; stopping its trainer" in output, output
    assert not psutil.pid_exists(theirs.pid) or psutil.Process(theirs.pid).status() == psutil.STATUS_ZOMBIE
    assert get_cell(studies.store, "shared").state is CellState.CANCELLED
    (attempt,) = attempts_of(studies.store, "shared")
    assert (attempt.outcome, attempt.study_id) == (AttemptOutcome.CANCELLED, studies.other)
