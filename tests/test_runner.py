"""The runner with the real trainer on the CPU: real processes, real kills.

kill -9 of the runner (its trainer re-adopted, or resumed from its checkpoint when it died too), kill -9 of
a trainer, Ctrl-C, divergence, mode `all`, torchrun. Every test checks the database against the events
files: each step stored once, no cell trained twice from scratch.
"""

import json
import signal
import subprocess
import sys
from types import SimpleNamespace

import psutil
import pytest
from runner_fixtures import ROOT, add_tiny_cells, kill9, make_loop, new_study, wait_for
from trainer_fixtures import make_data_dir

from nanogpt.events import read_events
from runner.executor import Exited, LaunchRequest, LocalExecutor
from runner.ingest import AttemptTrace, EventTail
from runner.run import LoopOptions, newest_checkpoint_step
from runner.scheduler import decide_outcome
from store import AttemptOutcome, CellState, attempts_of, cell_statuses, get_cell, train_curve, val_curve

pytestmark = pytest.mark.slow

# Long enough (about 3 s of steps on a busy 2-core machine) to kill things in the middle.
LONG = {
    "train": {"num_steps": 240},
    "eval": {"every_steps": 80, "val_tokens": 256},
    "checkpoint": {"every_steps": 20, "keep_last": 3},
}


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return SimpleNamespace(
        pre=make_data_dir(root / "pre", train_tokens=20_000, val_tokens=2_000),
        mid=make_data_dir(root / "mid", train_tokens=8_000, val_tokens=1_000, with_mask=True),
    )


@pytest.fixture
def study(tmp_path, data_dirs):
    store, study_id = new_study(tmp_path / "nanostudy.db")
    yield SimpleNamespace(store=store, id=study_id, root=tmp_path, runs=tmp_path / "runs", data=data_dirs)
    store.close()


def _cells(study, specs):
    return add_tiny_cells(study.store, study.id, study.data.pre, study.runs, specs)


def _events(study, cell_id: str) -> list[dict]:
    events, _ = read_events(study.runs / cell_id / "events.jsonl")
    return events


def _assert_stored_once(study, cell_id: str) -> None:
    """The stored curve is the events' steps, each once, 1..total: nothing lost, nothing doubled."""
    total = get_cell(study.store, cell_id).steps_total
    stored = [point.step for point in train_curve(study.store, cell_id)]
    assert stored == list(range(1, total + 1))
    logged = {event["step"] for event in _events(study, cell_id) if event["kind"] == "step"}
    assert logged == set(stored)
    # A resumed session re-emits nothing before its checkpoint, so the losses stored are the events' own.
    last = {e["step"]: e["loss"] for e in _events(study, cell_id) if e["kind"] == "step"}
    assert [point.loss for point in train_curve(study.store, cell_id)] == pytest.approx(
        [last[s] for s in stored]
    )


def _fresh_starts(study, cell_id: str) -> int:
    """Sessions of the trainer that started from scratch (resumed_from null)."""
    return sum(1 for e in _events(study, cell_id) if e["kind"] == "start" and e["resumed_from"] is None)


def _runner(study, *args: str) -> subprocess.Popen:
    log = open(study.root / "runner.log", "a")  # noqa: SIM115 (the process owns it)
    command = [
        sys.executable,
        str(ROOT / "tests" / "runner_fixtures.py"),
        str(study.root / "nanostudy.db"),
        "tiny",
    ]
    return subprocess.Popen([*command, *args], stdout=log, stderr=subprocess.STDOUT)


def _live_attempt(study, cell_id: str):
    attempts = [a for a in attempts_of(study.store, cell_id) if a.ended_at is None and a.pid is not None]
    return attempts[0] if attempts else None


def _steps(study, cell_id: str) -> int:
    return get_cell(study.store, cell_id).steps_done


def test_mode_all_runs_parent_then_child_from_its_final_checkpoint_and_a_rerun_trains_nothing(study):
    _cells(study, [{"id": "pre"}])
    add_tiny_cells(
        study.store,
        study.id,
        study.data.pre,
        study.runs,
        [{"id": "mid", "parent": "pre", "mid_data": study.data.mid, "config": {"train": {"num_steps": 6}}}],
    )
    assert make_loop(study.store, study.id).run() is False
    assert {s.id: s.state for s in cell_statuses(study.store, study.id)} == {
        "pre": CellState.DONE,
        "mid": CellState.DONE,
    }
    parent, child = attempts_of(study.store, "pre")[0], attempts_of(study.store, "mid")[0]
    assert child.started_at >= parent.ended_at
    final = [e for e in _events(study, "pre") if e["kind"] == "checkpoint" and e["final"]][-1]
    child_start = next(e for e in _events(study, "mid") if e["kind"] == "start")
    assert child_start["init_from"] == str((study.runs / "pre" / final["path"]).resolve())
    config = json.loads((study.runs / "mid" / "config.json").read_text())
    assert config["init_from"] == child_start["init_from"] and config["mode"] == "mid-training"
    for cell in ("pre", "mid"):
        _assert_stored_once(study, cell)
        vals = {e["step"]: e["val_bpb"] for e in _events(study, cell) if e["kind"] == "val"}
        assert {point.step: point.val_bpb for point in val_curve(study.store, cell)} == pytest.approx(vals)
        assert get_cell(study.store, cell).val_bpb == pytest.approx(vals[max(vals)])

    assert make_loop(study.store, study.id).run() is False
    assert len(attempts_of(study.store, "pre")) == len(attempts_of(study.store, "mid")) == 1


def test_kill9_of_the_runner_then_a_new_runner_adopts_the_live_trainer(study):
    _cells(study, [{"id": "a", "config": LONG}])
    runner = _runner(study)
    attempt = wait_for(lambda: _live_attempt(study, "a"), timeout_s=60, what="the trainer to start")
    wait_for(lambda: _steps(study, "a") >= 10, timeout_s=60, what="steps ingested")
    kill9(runner.pid)
    runner.wait()
    assert psutil.pid_exists(attempt.pid)  # the trainer lives on in its own session

    log: list[str] = []
    assert make_loop(study.store, study.id, log=log).run() is False
    assert any("re-adopted attempt 1" in line for line in log)
    assert [(a.outcome, a.pid) for a in attempts_of(study.store, "a")] == [(AttemptOutcome.DONE, attempt.pid)]
    _assert_stored_once(study, "a")
    assert _fresh_starts(study, "a") == 1


def test_kill9_of_runner_and_trainer_then_the_cell_resumes_from_its_checkpoint(study):
    _cells(study, [{"id": "a", "config": LONG}])
    runner = _runner(study)
    attempt = wait_for(lambda: _live_attempt(study, "a"), timeout_s=60, what="the trainer to start")
    wait_for(lambda: _steps(study, "a") >= 45, timeout_s=60, what="two checkpoints and more")
    kill9(runner.pid)
    kill9(attempt.pid)
    runner.wait()
    wait_for(lambda: not _alive(attempt.pid), timeout_s=10, what="the trainer to die")
    checkpoint = newest_checkpoint_step(study.runs / "a")
    assert checkpoint is not None and checkpoint >= 40

    assert make_loop(study.store, study.id).run() is False
    attempts = attempts_of(study.store, "a")
    assert [(a.outcome, a.resume_step) for a in attempts] == [
        (AttemptOutcome.FAILED, None),
        (AttemptOutcome.DONE, checkpoint),
    ]
    assert "while no runner watched it" in attempts[0].reason
    _assert_stored_once(study, "a")
    assert _fresh_starts(study, "a") == 1


def test_ctrl_c_stops_trainers_at_a_checkpoint_and_the_next_run_resumes(study):
    _cells(study, [{"id": "a", "config": LONG, "flops": 2e9}, {"id": "b", "flops": 1e9}])
    runner = _runner(study)
    wait_for(lambda: _live_attempt(study, "a"), timeout_s=60, what="the trainer to start")
    wait_for(lambda: _steps(study, "a") >= 10, timeout_s=60, what="steps ingested")
    runner.send_signal(signal.SIGINT)
    assert runner.wait(timeout=60) == 130
    states = {s.id: s.state for s in cell_statuses(study.store, study.id)}
    assert states == {"a": CellState.PENDING, "b": CellState.PENDING}
    first = attempts_of(study.store, "a")[0]
    assert first.outcome is AttemptOutcome.INTERRUPTED and first.exit_code == 143
    stopped_at = newest_checkpoint_step(study.runs / "a")
    assert stopped_at == _steps(study, "a")  # the trainer checkpointed the step it stopped at
    assert attempts_of(study.store, "b") == []  # nothing new started after Ctrl-C

    assert make_loop(study.store, study.id).run() is False
    second = attempts_of(study.store, "a")[1]
    assert (second.outcome, second.resume_step) == (AttemptOutcome.DONE, stopped_at)
    resumed = [e for e in _events(study, "a") if e["kind"] == "start"][-1]
    assert resumed["resumed_from"] == f"checkpoints/step_{stopped_at:06d}"
    _assert_stored_once(study, "a")
    assert get_cell(study.store, "b").state is CellState.DONE


def test_a_trainer_killed_under_the_runner_fails_with_the_reason_and_is_retried(study):
    _cells(study, [{"id": "a", "config": LONG}])
    loop = make_loop(study.store, study.id, options=LoopOptions(poll_s=0.1, heartbeat_s=1.0, max_attempts=2))
    killed = []

    def watch() -> None:
        attempt = _live_attempt(study, "a")
        if not killed and attempt is not None and _steps(study, "a") >= 25:
            kill9(attempt.pid)
            wait_for(lambda: not _alive(attempt.pid), timeout_s=10, what="the trainer to die")
            killed.append(newest_checkpoint_step(study.runs / "a"))

    original = loop._watch

    def watch_then_kill() -> None:
        watch()
        original()

    loop._watch = watch_then_kill  # type: ignore[method-assign]
    assert loop.run() is False
    attempts = attempts_of(study.store, "a")
    assert [a.outcome for a in attempts] == [AttemptOutcome.FAILED, AttemptOutcome.DONE]
    assert attempts[0].exit_code == -9 and "killed by SIGKILL" in attempts[0].reason
    # The trainer may be ahead of what was ingested: it resumes from the newest checkpoint it left.
    assert killed[0] >= 20 and attempts[1].resume_step == killed[0]
    _assert_stored_once(study, "a")
    assert _fresh_starts(study, "a") == 1


def test_a_diverging_cell_is_diverged_and_not_retried(study):
    huge = {"matrix_lr": 1e30, "embedding_lr": 1e30, "unembedding_lr": 1e30}
    _cells(study, [{"id": "a", "config": {"optim": huge}}])
    assert make_loop(study.store, study.id).run() is False
    cell = get_cell(study.store, "a")
    assert cell.state is CellState.DIVERGED and "loss is nan" in cell.reason
    [attempt] = attempts_of(study.store, "a")
    assert attempt.exit_code == 3 and attempt.outcome is AttemptOutcome.DIVERGED


def test_under_torchrun_a_refused_input_is_the_trainers_exit_2_and_not_retried(study):
    """torchrun exits 1 for any failed worker: the trainer's own exit 2 (its data refused) reaches the
    runner through the attempt's exit record, so the cell fails at once with the trainer's one-line error,
    as under the plain launcher, rather than being retried as a crash."""
    (study.root / "empty").mkdir()
    _cells(study, [{"id": "a", "config": {"data": {"train_dir": str(study.root / "empty")}}}])
    options = LoopOptions(poll_s=0.1, heartbeat_s=1.0, max_attempts=3)
    assert make_loop(study.store, study.id, launcher="torchrun", options=options).run() is False
    [attempt] = attempts_of(study.store, "a")
    assert attempt.outcome is AttemptOutcome.FAILED and attempt.exit_code == 2
    assert attempt.reason.startswith("bad config or input: ") and "empty" in attempt.reason
    assert get_cell(study.store, "a").state is CellState.FAILED
    assert (study.runs / "a" / "logs" / "attempt_1.exit").read_text() == '{"rank": 0, "code": 2}\n'


def test_torchrun_launcher_stop_is_read_from_the_events(study):
    """Under torchrun the exit code is torchrun's (1 for any failed worker); a clean stop is recognised by the
    checkpoint the trainer wrote on its way out."""
    [cell] = _cells(study, [{"id": "a", "config": LONG}])
    config = dict(cell.config)
    run_dir = study.runs / "a"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config))
    executor = LocalExecutor(launcher="torchrun", env={"OMP_NUM_THREADS": "1"}, stop_grace_s=60)
    request = LaunchRequest(cell_id="a", attempt_id=1, attempt_number=1, run_dir=run_dir, gpus=None)
    assert executor.command(request)[1:3] == ["-m", "torch.distributed.run"]
    handle = executor.submit(request)
    tail = EventTail(study.store, "a", run_dir, attempt_id=None)
    wait_for(
        lambda: (tail.pump(), _steps(study, "a") >= 5)[1], timeout_s=90, what="torchrun's worker to step"
    )
    assert executor.pids(handle) - {handle.pid}  # the worker, seen under torchrun
    executor.cancel(handle)
    status = wait_for(
        lambda: s if isinstance(s := executor.poll(handle), Exited) else None, timeout_s=60, what="the stop"
    )
    assert status == Exited(code=1, from_trainer=False)
    trace = AttemptTrace()
    for event in _events(study, "a"):
        trace.see(event)
    assert trace.stopped_at_checkpoint
    outcome, _ = decide_outcome(trace, status, stop_requested=False, error_tail=None)
    assert outcome is AttemptOutcome.INTERRUPTED
    assert not any(_alive(pid) for pid in executor.pids(handle))


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
