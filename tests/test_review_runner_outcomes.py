"""How the runner's loop closes attempts that end unusually (real processes, stand-in trainers)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from runner_fixtures import add_tiny_cells, fake_python, make_loop, new_study, write_plan
from trainer_fixtures import make_data_dir

from runner.run import LoopOptions
from store import AttemptOutcome, CellState, attempts_of, cell_statuses, final_checkpoint


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("data") / "tiny", train_tokens=4_000, val_tokens=1_000)


@pytest.fixture
def study(tmp_path, data_dir):
    store, study_id = new_study(tmp_path / "nanostudy.db")
    yield SimpleNamespace(store=store, id=study_id, root=tmp_path, data=data_dir, runs=tmp_path / "runs")
    store.close()


def _silent_python(tmp_path: Path) -> Path:
    """An interpreter that exits 0 at once and writes nothing: no event, no checkpoint."""
    path = tmp_path / "silent-python"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_a_trainer_that_exits_0_without_any_event_or_checkpoint_is_not_done(study, tmp_path):
    """Done is final, so a cell that never trained must not become done because its trainer exited 0."""
    add_tiny_cells(study.store, study.id, study.data, study.runs, [{"id": "one"}])
    options = LoopOptions(poll_s=0.1, heartbeat_s=1.0, max_attempts=2)
    loop = make_loop(study.store, study.id, python=_silent_python(tmp_path), options=options)
    assert loop.run() is False
    assert [status.state for status in cell_statuses(study.store, study.id)] == [CellState.FAILED]
    attempts = attempts_of(study.store, "one")
    assert [attempt.outcome for attempt in attempts] == [AttemptOutcome.FAILED] * 2
    assert attempts[0].reason.startswith("the trainer exited 0 without writing any event")


def test_a_trainer_that_exits_0_without_any_event_on_a_finished_run_directory_is_done(study, tmp_path):
    """The real trainer's 'already done' (its newest checkpoint is the final one) writes nothing: done."""
    [cell] = add_tiny_cells(study.store, study.id, study.data, study.runs, [{"id": "one"}])
    (Path(cell.run_dir) / "checkpoints" / f"step_{cell.steps_total:06d}").mkdir(parents=True)
    loop = make_loop(study.store, study.id, python=_silent_python(tmp_path))
    assert loop.run() is False
    assert [status.state for status in cell_statuses(study.store, study.id)] == [CellState.DONE]
    assert final_checkpoint(study.store, "one").step == cell.steps_total


def test_the_runner_says_why_a_failed_parents_mid_training_cells_stay_pending(study, tmp_path):
    add_tiny_cells(
        study.store,
        study.id,
        study.data,
        study.runs,
        [{"id": "pre", "flops": 4e9}, {"id": "mid", "parent": "pre", "mid_data": study.data}],
    )
    plan = write_plan(tmp_path, {"pre": ["crash"]})
    options = LoopOptions(poll_s=0.1, heartbeat_s=1.0, max_attempts=1)
    log: list[str] = []
    loop = make_loop(study.store, study.id, python=fake_python(tmp_path), plan=plan, options=options, log=log)
    assert loop.run() is False
    states = {status.id: status.state for status in cell_statuses(study.store, study.id)}
    assert states == {"pre": CellState.FAILED, "mid": CellState.PENDING}
    assert log[-1] == (
        "1 mid-training cell(s) not started: their parent is failed "
        "(`nanostudy run --rerun failed` trains it again)"
    )


def test_a_launch_the_backend_did_not_answer_is_tried_again_later_without_counting_a_failure(
    study, tmp_path, monkeypatch
):
    """A Slurm controller restarting made sbatch fail: each such attempt counted as a failed one, so a
    minute's outage used up every ready cell's retries."""
    import runner.run
    from runner.executor import BackendUnavailable

    add_tiny_cells(study.store, study.id, study.data, study.runs, [{"id": "one"}])
    monkeypatch.setattr(runner.run, "BACKEND_RETRY_S", 0.2)
    log: list[str] = []
    options = LoopOptions(poll_s=0.05, heartbeat_s=1.0, max_attempts=1)
    loop = make_loop(study.store, study.id, python=fake_python(tmp_path), options=options, log=log)
    real_submit, calls = loop.executor.submit, []

    def submit_unanswered_twice(request):
        calls.append(request.attempt_number)
        if len(calls) <= 2:
            raise BackendUnavailable("sbatch: error: Batch job submission failed: Socket timed out")
        return real_submit(request)

    monkeypatch.setattr(loop.executor, "submit", submit_unanswered_twice)
    assert loop.run() is False
    assert [status.state for status in cell_statuses(study.store, study.id)] == [CellState.DONE]
    attempts = attempts_of(study.store, "one")
    assert [a.outcome for a in attempts] == [AttemptOutcome.INTERRUPTED] * 2 + [AttemptOutcome.DONE]
    assert attempts[0].reason == "not started: sbatch: error: Batch job submission failed: Socket timed out"
    assert sum("not started" in line and "trying again in" in line for line in log) == 2
