"""The runner's loop with real processes and a fake trainer that starts in milliseconds: scheduling order,
every way an attempt can end, retries, cancel, GPU selection, restarts. The real trainer's turn is in
tests/test_runner.py."""

import itertools
import json
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from runner_fixtures import (
    ROOT,
    FakeNvml,
    add_tiny_cells,
    fake_python,
    kill9,
    make_loop,
    new_study,
    wait_for,
    write_plan,
)
from trainer_fixtures import make_data_dir

from benchmarks import study_overhead
from nanogpt.events import read_events
from runner import api
from runner.gpus import GpuPool
from runner.lock import StudyLock, StudyLockedError, lock_path
from runner.run import LoopOptions, label, newest_checkpoint_step
from runner.scheduler import STOPPED_BY_RUNNER as STOPPED
from store import (
    AttemptOutcome,
    CellState,
    attempts_of,
    cell_statuses,
    checkpoints_of,
    final_checkpoint,
    get_cell,
    record_study,
    train_curve,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("data") / "tiny", train_tokens=4_000, val_tokens=1_000)


@pytest.fixture
def study(tmp_path, data_dir):
    store, study_id = new_study(tmp_path / "nanostudy.db")
    yield SimpleNamespace(store=store, id=study_id, root=tmp_path, data=data_dir, runs=tmp_path / "runs")
    store.close()


def _cells(study, specs):
    return add_tiny_cells(study.store, study.id, study.data, study.runs, specs)


def _states(study) -> dict[str, CellState]:
    return {status.id: status.state for status in cell_statuses(study.store, study.id)}


def _outcomes(study, cell_id) -> list[AttemptOutcome | None]:
    return [attempt.outcome for attempt in attempts_of(study.store, cell_id)]


def test_cells_run_largest_first_and_their_events_become_rows_once(study, tmp_path):
    _cells(study, [{"id": "small", "flops": 1e9}, {"id": "large", "flops": 4e9}, {"id": "mid", "flops": 2e9}])
    loop = make_loop(study.store, study.id, python=fake_python(tmp_path))
    assert loop.run() is False
    assert set(_states(study).values()) == {CellState.DONE}
    starts = {cell: attempts_of(study.store, cell)[0].started_at for cell in ("small", "large", "mid")}
    assert sorted(starts, key=starts.get) == ["large", "mid", "small"]
    for cell in starts:
        events, _ = read_events(study.runs / cell / "events.jsonl")
        steps = [event["step"] for event in events if event["kind"] == "step"]
        assert [point.step for point in train_curve(study.store, cell)] == steps == [1, 2, 3, 4]
        assert [c.kind.value for c in checkpoints_of(study.store, cell)] == ["final"]
        assert get_cell(study.store, cell).val_bpb == pytest.approx(0.9)
        attempt = attempts_of(study.store, cell)[0]
        assert attempt.start_event["kind"] == "start" and attempt.exit_code == 0

    # The same study again: nothing is pending, nothing starts.
    again = make_loop(study.store, study.id, python=fake_python(tmp_path))
    assert again.run() is False
    assert all(len(attempts_of(study.store, cell)) == 1 for cell in starts)


def test_a_cell_moved_by_another_run_between_read_and_claim_trains_where_the_store_says(
    study, tmp_path, monkeypatch
):
    # Another study's `run --runs-dir` moves a never-tried shared cell (store.move_run_dirs) after this
    # runner read its run directory and before it claimed the cell: the trainer ran in the old directory
    # while the store recorded the new one, and the done cell pointed at a directory that did not exist.
    from runner import run as run_module
    from store import move_run_dirs

    _cells(study, [{"id": "moved"}])
    elsewhere = tmp_path / "elsewhere" / "moved"
    newest = run_module.newest_checkpoint_step

    def move_then_look(run_dir):
        move_run_dirs(study.store, {"moved": str(elsewhere)})
        return newest(run_dir)

    monkeypatch.setattr(run_module, "newest_checkpoint_step", move_then_look)
    assert make_loop(study.store, study.id, python=fake_python(tmp_path)).run() is False
    cell = get_cell(study.store, "moved")
    assert cell.state is CellState.DONE and cell.run_dir == str(elsewhere)
    events, _ = read_events(elsewhere / "events.jsonl")
    assert events[-1]["kind"] == "end" and not (study.runs / "moved" / "events.jsonl").exists()


def test_a_crash_fails_with_the_stderr_tail_and_is_retried_up_to_the_count(study, tmp_path):
    _cells(study, [{"id": "flaky"}, {"id": "broken"}, {"id": "errors"}, {"id": "badcfg"}])
    plan = write_plan(
        tmp_path,
        {
            "flaky": ["crash", "done"],
            "broken": ["crash"],
            "errors": ["error", "done"],
            "badcfg": ["bad_input", "done"],  # a retry would fail the same way: none is made
        },
    )
    options = LoopOptions(poll_s=0.1, heartbeat_s=1.0, max_attempts=2)
    loop = make_loop(study.store, study.id, python=fake_python(tmp_path), plan=plan, options=options)
    assert loop.run() is False
    states = _states(study)
    assert states == {
        "flaky": CellState.DONE,
        "broken": CellState.FAILED,
        "errors": CellState.DONE,
        "badcfg": CellState.FAILED,
    }
    assert _outcomes(study, "flaky") == [AttemptOutcome.FAILED, AttemptOutcome.DONE]
    assert _outcomes(study, "broken") == [AttemptOutcome.FAILED, AttemptOutcome.FAILED]
    crash = attempts_of(study.store, "broken")[-1]
    assert crash.exit_code == 1
    assert (
        "without an end event" in crash.reason and "RuntimeError: shard 0: checksum mismatch" in crash.reason
    )
    assert "checksum mismatch" in get_cell(study.store, "broken").reason
    error = attempts_of(study.store, "errors")[0]
    assert error.reason.startswith("ValueError: bad things")
    bad = attempts_of(study.store, "badcfg")[0]
    assert bad.exit_code == 2 and "bad config or input" in bad.reason and "train.num_steps" in bad.reason

    # A new run leaves cells that used up their retries alone ...
    assert (
        make_loop(study.store, study.id, python=fake_python(tmp_path), plan=plan, options=options).run()
        is False
    )
    assert len(attempts_of(study.store, "broken")) == 2
    # ... unless the policy now allows more.
    more = LoopOptions(poll_s=0.1, heartbeat_s=1.0, max_attempts=3)
    assert (
        make_loop(study.store, study.id, python=fake_python(tmp_path), plan=plan, options=more).run() is False
    )
    assert len(attempts_of(study.store, "broken")) == 3
    assert len(attempts_of(study.store, "badcfg")) == 1 and _states(study)["badcfg"] is CellState.FAILED


def test_a_config_the_runner_itself_refuses_at_launch_fails_once_and_is_not_retried(study, tmp_path):
    # A config in the database that the trainer's checks refuse (as one from a hand-edited database, or a
    # planner change that the trainer's bounds do not allow): every retry would be refused the same way.
    _cells(study, [{"id": "huge", "config": {"model": {"depth": 5000}}}, {"id": "fine"}])
    log: list[str] = []
    options = LoopOptions(poll_s=0.1, heartbeat_s=1.0, max_attempts=3)
    loop = make_loop(study.store, study.id, python=fake_python(tmp_path), options=options, log=log)
    assert loop.run() is False
    assert _states(study) == {"huge": CellState.FAILED, "fine": CellState.DONE}
    [attempt] = attempts_of(study.store, "huge")
    assert attempt.exit_code == 2 and attempt.reason.startswith("bad config or input: ")
    assert "config.json: model.depth: at most 4,096, got 5,000" in attempt.reason
    assert any("huge" in line and "not retried" in line for line in log), log


def test_diverged_is_not_retried_unless_asked(study, tmp_path):
    _cells(study, [{"id": "boom"}])
    plan = write_plan(tmp_path, {"boom": ["diverged", "done"]})
    loop = make_loop(study.store, study.id, python=fake_python(tmp_path), plan=plan)
    assert loop.run() is False
    assert _states(study) == {"boom": CellState.DIVERGED}
    attempt = attempts_of(study.store, "boom")[0]
    assert attempt.exit_code == 3 and attempt.reason == "training loss is nan at step 1"

    options = LoopOptions(poll_s=0.1, heartbeat_s=1.0, rerun_diverged=True)
    loop = make_loop(study.store, study.id, python=fake_python(tmp_path), plan=plan, options=options)
    assert loop.run() is False
    assert _outcomes(study, "boom") == [AttemptOutcome.DIVERGED, AttemptOutcome.DONE]


def test_rerun_moves_cells_back_and_gives_them_a_fresh_budget(study, tmp_path):
    _cells(study, [{"id": "broken"}, {"id": "boom"}])
    plan = write_plan(tmp_path, {"broken": ["crash", "crash", "done"], "boom": ["diverged", "done"]})
    options = LoopOptions(poll_s=0.1, heartbeat_s=1.0, max_attempts=1)
    assert (
        make_loop(study.store, study.id, python=fake_python(tmp_path), plan=plan, options=options).run()
        is False
    )
    assert _states(study) == {"broken": CellState.FAILED, "boom": CellState.DIVERGED}

    assert api.rerun(study.store, study.id, {CellState.FAILED}, only={"boom"}) == []  # not planned now
    moved = api.rerun(study.store, study.id, {CellState.FAILED})
    assert moved == ["broken"]
    loop = make_loop(study.store, study.id, python=fake_python(tmp_path), plan=plan, options=options)
    loop.fresh_budget = frozenset(moved)
    loop.run()
    assert _outcomes(study, "broken") == [AttemptOutcome.FAILED, AttemptOutcome.FAILED]  # one more try
    with pytest.raises(ValueError, match="--rerun"):
        api.rerun(study.store, study.id, {CellState.DONE})


def test_cancel_through_the_store_reaches_the_running_runner(study, tmp_path):
    _cells(study, [{"id": "hangs", "flops": 2e9}, {"id": "waits", "flops": 1e9}])
    plan = write_plan(tmp_path, {"hangs": ["hang"]})
    loop = make_loop(study.store, study.id, python=fake_python(tmp_path), plan=plan)
    with StudyLock(lock_path(study.store, "tiny"), "tiny"):
        runner = threading.Thread(target=loop.run)
        runner.start()
        wait_for(lambda: get_cell(study.store, "hangs").steps_done >= 2, timeout_s=20, what="steps ingested")
        result = api.cancel(study.store, "tiny")
        runner.join(timeout=30)
        assert not runner.is_alive()
    assert result.stopping == ("hangs",) and result.cancelled == ("waits",) and result.stopped_here == ()
    assert _states(study) == {"hangs": CellState.CANCELLED, "waits": CellState.CANCELLED}
    attempt = attempts_of(study.store, "hangs")[0]
    assert attempt.outcome is AttemptOutcome.CANCELLED and attempt.reason == api.CANCEL_REASON
    # The runner stopped the trainer the clean way: it checkpointed on the way out, and it was ingested.
    events, _ = read_events(study.runs / "hangs" / "events.jsonl")
    assert events[-1]["kind"] == "checkpoint" and events[-1]["final"] is False
    assert checkpoints_of(study.store, "hangs")[-1].step == events[-1]["step"]
    assert attempts_of(study.store, "waits") == []

    assert api.retry(study.store, "tiny", "waits") is True
    assert api.retry(study.store, "tiny", "waits") is False  # pending now
    assert _states(study)["waits"] is CellState.PENDING


def _runner(db: Path, plan: Path | None, *args: str) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "tests" / "runner_fixtures.py"), str(db), "tiny", *args]
    if plan is not None:
        command += ["--fake", str(plan)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _open_attempt(study, cell_id):
    attempts = [a for a in attempts_of(study.store, cell_id) if a.ended_at is None and a.pid is not None]
    return attempts[0] if attempts else None


def test_a_runner_killed_with_sigkill_is_replaced_and_its_live_trainer_adopted(study, tmp_path):
    _cells(study, [{"id": "adopted"}])
    plan = write_plan(tmp_path, {"adopted": ["slow"]})
    runner = _runner(study.root / "nanostudy.db", plan)
    first = wait_for(lambda: _open_attempt(study, "adopted"), timeout_s=20, what="the trainer to start")
    wait_for(lambda: get_cell(study.store, "adopted").steps_done >= 3, timeout_s=20, what="ingested steps")
    kill9(runner.pid)
    runner.wait()
    steps_at_kill = get_cell(study.store, "adopted").steps_done

    log: list[str] = []
    assert make_loop(study.store, study.id, python=fake_python(tmp_path), plan=plan, log=log).run() is False
    assert any("re-adopted attempt 1" in line for line in log)
    attempts = attempts_of(study.store, "adopted")
    assert [(a.number, a.outcome, a.pid) for a in attempts] == [(1, AttemptOutcome.DONE, first.pid)]
    assert attempts[0].exit_code is None  # an adopted process's exit code cannot be collected
    assert steps_at_kill < 40
    assert [point.step for point in train_curve(study.store, "adopted")] == list(range(1, 41))


def test_a_trainer_that_died_while_no_runner_watched_is_failed_then_resumed(study, tmp_path):
    _cells(study, [{"id": "orphan"}])
    plan = write_plan(tmp_path, {"orphan": ["slow", "done"]})
    runner = _runner(study.root / "nanostudy.db", plan)
    first = wait_for(lambda: _open_attempt(study, "orphan"), timeout_s=20, what="the trainer to start")
    wait_for(
        lambda: get_cell(study.store, "orphan").steps_done >= 7, timeout_s=20, what="a checkpoint and more"
    )
    kill9(runner.pid)
    runner.wait()
    kill9(first.pid)
    wait_for(
        lambda: not psutil.pid_exists(first.pid) or _zombie(first.pid),
        timeout_s=10,
        what="the trainer to die",
    )
    resume_step = newest_checkpoint_step(study.runs / "orphan")
    assert resume_step is not None and resume_step >= 5

    assert make_loop(study.store, study.id, python=fake_python(tmp_path), plan=plan).run() is False
    attempts = attempts_of(study.store, "orphan")
    assert [(a.outcome, a.resume_step) for a in attempts] == [
        (AttemptOutcome.FAILED, None),
        (AttemptOutcome.DONE, resume_step),
    ]
    assert "while no runner watched it" in attempts[0].reason
    # The steps after the checkpoint died with the trainer and were forgotten; none is stored twice.
    assert [point.step for point in train_curve(study.store, "orphan")] == list(range(1, resume_step + 1))


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _trainer_of_a_dropped_cell(study, tmp_path, *, kept_does: str):
    """Cells `dropped` (its fake trainer hangs) and `kept`; a runner starts them and is killed; the study is
    then recorded again without `dropped`, whose trainer still runs. Returns the plan and its attempt."""
    _, kept = _cells(study, [{"id": "dropped"}, {"id": "kept", "seed": 1}])
    plan = write_plan(tmp_path, {"dropped": ["hang"], "kept": [kept_does]})
    runner = _runner(study.root / "nanostudy.db", plan)
    try:
        attempt = wait_for(lambda: _open_attempt(study, "dropped"), timeout_s=30, what="the trainer to start")
        wait_for(lambda: get_cell(study.store, "dropped").steps_done >= 2, timeout_s=20, what="steps")
    finally:
        kill9(runner.pid)
        runner.wait()
    assert psutil.pid_exists(attempt.pid)
    _, _, left_out = record_study(study.store, name="tiny", path="tiny.yaml", spec={}, cells=[kept])
    assert left_out == 1 and set(_states(study)) == {"kept"}
    return plan, attempt


def test_a_live_trainer_of_a_cell_the_edited_study_no_longer_plans_is_stopped_not_waited_for(study, tmp_path):
    """The runner died; the study file was then edited so that a cell whose trainer still runs is no longer
    planned (out of the status, which cancel reads). The next runner adopts that trainer and stops it (a
    checkpoint, then its cell pending, for a study that plans it again), rather than waiting on it unseen."""
    plan, attempt = _trainer_of_a_dropped_cell(study, tmp_path, kept_does="done")
    log: list[str] = []
    try:
        loop = make_loop(study.store, study.id, python=fake_python(tmp_path), plan=plan, log=log)
        assert loop.run() is False
    finally:
        if not _zombie(attempt.pid):
            kill9(attempt.pid)
    assert any("dropped" in line and "no longer in the study file's plan" in line for line in log), log
    [stopped] = attempts_of(study.store, "dropped")
    assert stopped.outcome is AttemptOutcome.INTERRUPTED
    assert get_cell(study.store, "dropped").state is CellState.PENDING
    assert _states(study) == {"kept": CellState.DONE}


def test_cancel_with_no_runner_stops_our_trainer_itself(study, tmp_path):
    _cells(study, [{"id": "hangs"}])
    plan = write_plan(tmp_path, {"hangs": ["hang"]})
    runner = _runner(study.root / "nanostudy.db", plan)
    attempt = wait_for(lambda: _open_attempt(study, "hangs"), timeout_s=20, what="the trainer to start")
    wait_for(lambda: get_cell(study.store, "hangs").steps_done >= 2, timeout_s=20, what="ingested steps")
    kill9(runner.pid)
    runner.wait()
    result = api.cancel(study.store, "tiny", cell_id="hangs", wait_s=20)
    assert result.stopping == ("hangs",) and result.stopped_here == ("hangs",)
    assert not psutil.pid_exists(attempt.pid) or _zombie(attempt.pid)
    assert _states(study) == {"hangs": CellState.CANCELLED}
    events, _ = read_events(study.runs / "hangs" / "events.jsonl")
    assert events[-1]["kind"] == "checkpoint"  # stopped with SIGTERM: it checkpointed
    # The steps it logged after its runner died are in the store: `status` shows where it stopped.
    last_step = max(event["step"] for event in events if event["kind"] == "step")
    assert get_cell(study.store, "hangs").steps_done == last_step
    assert [point.step for point in train_curve(study.store, "hangs")] == list(range(1, last_step + 1))


def test_cancel_of_the_study_with_no_runner_stops_a_trainer_of_a_cell_its_file_no_longer_plans(
    study, tmp_path
):
    """As the next runner would (above), but from `nanostudy cancel STUDY`: the trainer is the study's, even
    though the edited file left its cell out of the status that cancel reads."""
    _, attempt = _trainer_of_a_dropped_cell(study, tmp_path, kept_does="hang")
    try:
        result = api.cancel(study.store, "tiny", wait_s=20)
        assert result.unplanned_stopped == ("dropped",) and result.still_running == ()
        assert not psutil.pid_exists(attempt.pid) or _zombie(attempt.pid)
    finally:
        if not _zombie(attempt.pid):
            kill9(attempt.pid)
    [stopped] = attempts_of(study.store, "dropped")
    assert stopped.outcome is AttemptOutcome.INTERRUPTED and "no longer plans" in stopped.reason
    assert get_cell(study.store, "dropped").state is CellState.PENDING  # resumes if planned again
    events, _ = read_events(study.runs / "dropped" / "events.jsonl")
    assert events[-1]["kind"] == "checkpoint"


def test_two_signals_within_one_poll_still_stop_the_trainers(study, tmp_path):
    """A second Ctrl-C leaves at once, but only after each trainer has had its SIGTERM: two signals that
    arrive within one poll once left the trainer training on with no runner."""
    _cells(study, [{"id": "hangs"}])
    plan = write_plan(tmp_path, {"hangs": ["hang"]})
    log: list[str] = []
    loop = make_loop(study.store, study.id, python=fake_python(tmp_path), plan=plan, log=log)
    watch = loop._watch

    def two_signals_once_stepping() -> None:
        watch()
        if get_cell(study.store, "hangs").steps_done >= 2:
            loop._signals.count = 2  # as the handler counts them, between two polls

    loop._watch = two_signals_once_stepping  # type: ignore[method-assign]
    assert loop.run() is True
    [attempt] = attempts_of(study.store, "hangs")
    try:
        wait_for(lambda: _zombie(attempt.pid), timeout_s=20, what="the trainer to stop")
    finally:
        if not _zombie(attempt.pid):
            kill9(attempt.pid)  # a trainer left running would hang on for good
    events, _ = read_events(study.runs / "hangs" / "events.jsonl")
    assert events[-1]["kind"] == "checkpoint"  # it stopped on SIGTERM, checkpointing
    assert any("stopping 1 trainer(s)" in line for line in log), log


def test_a_trainer_killed_setting_up_by_the_stop_of_a_runner_that_then_left_is_interrupted_not_failed(
    study, tmp_path
):
    """A second Ctrl-C leaves at once, before the trainers it asked to stop have ended; one still setting up
    (no signal handler yet) dies of that SIGTERM without an event. The next runner once failed its attempt as
    a crash, which used up the cell's retries; it reads that the stop was asked for: interrupted, resumed."""
    _cells(study, [{"id": "a"}])
    plan = write_plan(tmp_path, {"a": ["setting_up", "done"]})
    options = LoopOptions(poll_s=0.1, heartbeat_s=1.0, max_attempts=1)
    loop = make_loop(study.store, study.id, python=fake_python(tmp_path), plan=plan, options=options)
    watch = loop._watch

    def two_signals_once_started() -> None:
        watch()
        if (study.runs / "a" / "env_attempt_1.json").exists():
            loop._signals.count = 2

    loop._watch = two_signals_once_started  # type: ignore[method-assign]
    assert loop.run() is True
    [attempt] = attempts_of(study.store, "a")
    assert attempt.ended_at is None  # left to the next runner
    wait_for(lambda: _zombie(attempt.pid), timeout_s=20, what="the trainer to die of the SIGTERM")

    log: list[str] = []
    loop = make_loop(study.store, study.id, python=fake_python(tmp_path), plan=plan, options=options, log=log)
    assert loop.run() is False
    first, second = attempts_of(study.store, "a")
    assert (first.outcome, first.exit_code, first.reason) == (AttemptOutcome.INTERRUPTED, None, STOPPED)
    assert second.outcome is AttemptOutcome.DONE and _states(study) == {"a": CellState.DONE}


def test_a_trainer_killed_between_its_final_checkpoint_and_the_event_still_leaves_it_in_the_store(
    study, tmp_path
):
    """Killed after renaming its final checkpoint into place, before the event naming it: the retry finds the
    run finished and writes only `end`. The cell is done; its final checkpoint, which its mid-training child
    starts from, was missing from the store, and the child failed at every launch."""
    _cells(study, [{"id": "pre"}])
    add_tiny_cells(
        study.store,
        study.id,
        study.data,
        study.runs,
        [{"id": "mid", "parent": "pre", "mid_data": study.data}],
    )
    plan = write_plan(tmp_path, {"pre": ["killed_at_final", "finished"]})
    options = LoopOptions(poll_s=0.1, heartbeat_s=1.0, max_attempts=2)
    loop = make_loop(study.store, study.id, python=fake_python(tmp_path), plan=plan, options=options)
    assert loop.run() is False
    assert _outcomes(study, "pre") == [AttemptOutcome.FAILED, AttemptOutcome.DONE]
    final = final_checkpoint(study.store, "pre")
    assert final is not None
    assert (final.step, final.path, final.tokens) == (4, "checkpoints/step_000004", 1024)
    assert _states(study) == {"pre": CellState.DONE, "mid": CellState.DONE}
    config = json.loads((study.runs / "mid" / "config.json").read_text())
    assert config["init_from"] == str((study.runs / "pre" / "checkpoints" / "step_000004").resolve())


def test_second_runner_on_the_same_study_refuses(study):
    path = lock_path(study.store, "tiny")
    with StudyLock(path, "tiny"):
        with pytest.raises(StudyLockedError, match=r"already being run by pid \d+ on"):
            StudyLock(path, "tiny").acquire()
        assert api.study_status(study.store, "tiny").runner_active is True
    assert api.study_status(study.store, "tiny").runner_active is False
    with StudyLock(path, "tiny"):  # free again once released
        pass


def test_gpu_selection_with_a_fake_nvml(study, tmp_path):
    """A GPU running someone else's process is skipped; --gpus restricts; the trainer sees exactly the chosen
    indices in CUDA_VISIBLE_DEVICES, in NVML's order."""
    nvml = FakeNvml(num_gpus=4, foreign={1: [999_999]})
    _cells(study, [{"id": "two", "flops": 4e9}, {"id": "one", "flops": 2e9}, {"id": "other", "flops": 1e9}])
    pool = GpuPool(nvml=nvml, restrict=(1, 2, 3))
    assert pool.usable == (1, 2, 3)
    loop = make_loop(study.store, study.id, python=fake_python(tmp_path), pool=pool, num_gpus={"two": 2})
    assert loop.run() is False
    env = {
        cell: json.loads((study.runs / cell / "env_attempt_1.json").read_text())
        for cell in ("two", "one", "other")
    }
    assert env["two"]["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert {env["one"]["CUDA_VISIBLE_DEVICES"], env["other"]["CUDA_VISIBLE_DEVICES"]} <= {"2", "3"}
    assert all(e["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" for e in env.values())
    assert [a.gpus for a in attempts_of(study.store, "two")] == ["2,3"]
    assert attempts_of(study.store, "two")[0].num_gpus == 2


class CountFailsNvml(FakeNvml):
    """nvmlDeviceGetCount fails at its calls in `failing` (from 1), as while the driver reloads."""

    def __init__(self, num_gpus: int, *, failing: range):
        super().__init__(num_gpus)
        self.failing, self.calls = failing, 0

    def nvmlDeviceGetCount(self):
        self.calls += 1
        if self.calls in self.failing:
            raise RuntimeError("Unknown Error")
        return super().nvmlDeviceGetCount()


def test_a_runner_waits_while_nvml_cannot_list_the_gpus_and_says_why(study, tmp_path):
    _cells(study, [{"id": "one", "flops": 1e9}])
    pool = GpuPool(nvml=CountFailsNvml(1, failing=range(2, 6)))  # the pool's own look is call 1
    log: list[str] = []
    loop = make_loop(study.store, study.id, python=fake_python(tmp_path), pool=pool, log=log)
    assert loop.run() is False
    assert _states(study) == {"one": CellState.DONE}
    [attempt] = attempts_of(study.store, "one")
    assert attempt.gpus == "0"
    assert any(
        "waiting for a free GPU (1 cell(s) ready; NVML cannot list this machine's GPUs "
        "(RuntimeError: Unknown Error))" in line
        for line in log
    ), log


def test_eight_one_gpu_and_two_four_gpu_cells_on_a_fake_8_gpu_machine(study, tmp_path, monkeypatch):
    """Issue 11's placement with real processes (fake trainers of 40 steps × 0.1 s) on a fake 8-GPU NVML:
    the two four-GPU cells start together on all 8 GPUs; as each ends, four one-GPU cells take its GPUs
    in the next pass. No GPU ever holds two attempts at once. Printed: the GPU-busy fraction (GPU-seconds
    held by attempts over 8 × the study's wall time), the per-cell overhead (an attempt's wall time less
    its 4 s of steps) and how long a GPU waits between two cells (measured here: 98%, 0.17 s, 0.08 s)."""
    monkeypatch.setenv("FAKE_TRAINER_STEP_S", "0.1")
    specs = [{"id": f"big{i}", "flops": 8e9} for i in range(2)]
    specs += [{"id": f"small{i}", "flops": 1e9} for i in range(8)]
    _cells(study, specs)
    plan = write_plan(tmp_path, {spec["id"]: ["slow"] for spec in specs})
    pool = GpuPool(nvml=FakeNvml(num_gpus=8))
    loop = make_loop(
        study.store,
        study.id,
        python=fake_python(tmp_path),
        plan=plan,
        pool=pool,
        num_gpus={"big0": 4, "big1": 4},
    )
    assert loop.run() is False
    assert set(_states(study).values()) == {CellState.DONE}
    runs = {}  # cell -> (start, end, gpus)
    for spec in specs:
        [attempt] = attempts_of(study.store, spec["id"])
        gpus = tuple(int(g) for g in attempt.gpus.split(","))
        assert attempt.num_gpus == len(gpus) == (4 if spec["id"].startswith("big") else 1)
        runs[spec["id"]] = (attempt.started_at, attempt.ended_at, gpus)
    assert sorted(runs["big0"][2] + runs["big1"][2]) == list(range(8))
    first_start = min(start for start, _, _ in runs.values())
    waits = []
    for gpu in range(8):
        timeline = sorted((start, end, cell) for cell, (start, end, gpus) in runs.items() if gpu in gpus)
        # Each GPU: the four-GPU cell it was given at the start, then one one-GPU cell, never overlapping.
        assert [cell[:3] for _, _, cell in timeline] == ["big", "sma"], (gpu, timeline)
        (big_start, big_end, _), (small_start, _, _) = timeline
        assert big_start - first_start < 1.5 and big_end <= small_start < big_end + 1.5, (gpu, timeline)
        waits.append(small_start - big_end)
    last_end = max(end for _, end, _ in runs.values())
    busy = sum((end - start) * len(gpus) for start, end, gpus in runs.values()) / (
        8 * (last_end - first_start)
    )
    overhead = [(end - start) - 40 * 0.1 for start, end, _ in runs.values()]
    print(
        f"GPU-busy {busy:.1%}; per-cell overhead mean {sum(overhead) / len(overhead):.2f} s "
        f"(max {max(overhead):.2f}); GPUs' wait between cells mean {sum(waits) / len(waits):.2f} s"
    )
    assert busy > 0.8  # two waves of 4 s cells: below that, GPUs sat idle for a second or more between them

    # benchmarks/study_overhead.py's arithmetic on this placement (it reads the same store and events).
    summary = study_overhead.summarize(study.store, "tiny", study.runs)
    assert summary["num_gpus"] == 8 and summary["wall_s"] == pytest.approx(last_end - first_start)
    cells = {row["cell"]: row for row in summary["cells"]}
    for cell, (start, end, gpus) in runs.items():
        row = cells[cell]
        assert row["train_s"] == pytest.approx(4.0) and row["wall_s"] == pytest.approx(end - start)
        before = next(big for big in ("big0", "big1") if gpus[0] in runs[big][2])  # ran on these GPUs
        gap = 0.0 if cell.startswith("big") else start - runs[before][1]
        assert row["gap_s"] == pytest.approx(gap, abs=1e-9)
        assert row["overhead_s"] == pytest.approx(end - start - 4.0 + gap)
    expected_busy = sum(4.0 * len(gpus) for _, _, gpus in runs.values()) / (8 * (last_end - first_start))
    assert summary["gpu_busy"] == pytest.approx(expected_busy)


def test_with_overlap_startup_a_gpus_next_cell_sets_up_while_the_current_one_trains(
    study, tmp_path, monkeypatch
):
    """Six cells on a fake 2-GPU machine; each trainer takes 1 s to set up and 2 s to train (fake trainers
    that honour the GPU lock). A GPU's next cell starts while its current one trains, waits for the lock,
    and trains the moment the other exits: on each GPU no two cells ever train at once, at most two
    attempts live at once, and the GPU waits between two trainings far less than one set-up."""
    monkeypatch.setenv("FAKE_TRAINER_STEP_S", "0.05")
    monkeypatch.setenv("FAKE_TRAINER_SETUP_S", "1.0")
    specs = [{"id": f"c{i}", "flops": (6 - i) * 1e9} for i in range(6)]
    _cells(study, specs)
    plan = write_plan(tmp_path, {spec["id"]: ["slow"] for spec in specs})
    options = LoopOptions(poll_s=0.1, heartbeat_s=1.0, overlap_startup=True, gpu_lock_dir=tmp_path / "locks")
    log: list[str] = []
    loop = make_loop(
        study.store,
        study.id,
        python=fake_python(tmp_path),
        plan=plan,
        pool=GpuPool(nvml=FakeNvml(num_gpus=2)),
        options=options,
        log=log,
    )
    assert loop.run() is False
    assert set(_states(study).values()) == {CellState.DONE}
    assert sum("on standby" in line for line in log) >= 2
    by_gpu: dict[str, list] = {"0": [], "1": []}
    for spec in specs:
        [attempt] = attempts_of(study.store, spec["id"])
        events = read_events(study.runs / spec["id"] / "events.jsonl")[0]
        start = next(e for e in events if e["kind"] == "start")
        env = json.loads((study.runs / spec["id"] / "env_attempt_1.json").read_text())
        by_gpu[attempt.gpus].append(
            (start["time"], events[-1]["time"], attempt.started_at, attempt.ended_at, start["setup_s"])
        )
        assert env["CUDA_VISIBLE_DEVICES"] == attempt.gpus
    gaps = []
    for gpu, cells in by_gpu.items():
        cells.sort()
        assert len(cells) == 3, (gpu, cells)
        for (_, before_end, _, before_exit, _), (train_start, _, launched, _, setup_s) in itertools.pairwise(
            cells
        ):
            assert train_start >= before_end  # one training at a time
            assert launched < before_exit  # it was started while the other trained
            assert setup_s["gpu_wait"] > 0
            gaps.append(train_start - before_end)
        # Never three attempts of one GPU alive at once.
        assert cells[2][2] >= cells[0][3], (gpu, cells)
    assert max(gaps) < 0.8, gaps  # without overlap: at least the 1 s set-up, plus the runner's poll

    # benchmarks/study_overhead.py counts a standby cell's set-up beside the other's training as no overhead.
    summary = study_overhead.summarize(study.store, "tiny", study.runs)
    rows = summary["cells"]
    assert sum(row["standby_s"] > 1.0 for row in rows) == 4
    for gpu in ("0", "1"):
        mine = [row for row in rows if row["gpus"] == [gpu]]
        wall = max(row["ended_at"] for row in mine) - min(row["started_at"] for row in mine)
        assert sum(row["train_s"] + row["overhead_s"] for row in mine) == pytest.approx(wall)


def test_the_log_names_a_budget_with_its_significant_digits(study):
    _cells(study, [{"id": "odd", "flops": 7.5e10}])
    [status] = cell_statuses(study.store, study.id)
    assert "7.5e+10 FLOPs" in label(status)  # one digit would show 8e+10
