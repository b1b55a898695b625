"""A runner restarted after its job ended, while squeue still lists the job (MinJobAge): the job's exit code
comes from sacct or scontrol, as for a job the runner saw end (squeue's list has none)."""

import subprocess
import time

import pytest
from runner_fixtures import add_tiny_cells, new_study, wait_for, write_plan
from slurm_fixtures import cluster_for_tests, slurm_loop, squeue_state
from trainer_fixtures import make_data_dir

from nanogpt.events import EventWriter
from runner.executor import LaunchRequest
from runner.slurm.commands import SlurmError
from runner.slurm.settings import parse_settings
from store import AttemptOutcome, CellState, attempts_of, claim, get_cell, record_launch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm_conf(tmp_path_factory):
    # A cluster of its own: its cells' job names (nanostudy-c-1) and its `scancel --user` would meet the
    # other Slurm tests' jobs on the session's cluster.
    with cluster_for_tests(tmp_path_factory.mktemp("slurm-adopt")) as cluster:
        yield cluster.conf


def _settings():
    settings, problems = parse_settings({"partition": "debug", "gpus_per_node": 0, "poll_s": 0.3})
    assert not problems
    return settings


def _submitted_and_ended(tmp_path, plan: dict[str, list[str]]):
    """A cell's attempt 1 submitted and recorded by a runner that then "died"; its job ended since."""
    store, study_id = new_study(tmp_path / "nanostudy.db")
    data = make_data_dir(tmp_path / "data", train_tokens=20_000, val_tokens=2_000)
    runs = tmp_path / "runs"
    add_tiny_cells(store, study_id, data, runs, [{"id": "c"}])
    plan_path = write_plan(tmp_path, plan)
    loop = slurm_loop(store, study_id, _settings(), root=tmp_path, plan=plan_path)
    attempt = claim(store, "c", executor=loop.executor.kind, host=loop.executor.host)
    loop._write_config("c", runs / "c")
    handle = loop.executor.submit(
        LaunchRequest(cell_id="c", attempt_id=attempt.id, attempt_number=1, run_dir=runs / "c", gpus=None)
    )
    record_launch(store, attempt.id, pid=None, pid_start_time=None, job_id=handle.job_id)
    wait_for(
        lambda: squeue_state(handle.job_id) in ("COMPLETED", "FAILED"), timeout_s=60, what="the job to end"
    )
    return store, study_id, plan_path, handle.job_id


def test_a_job_that_found_its_run_done_is_done_when_adopted_after_it_ended(slurm_conf, tmp_path):
    """The trainer found the run finished by an earlier attempt and exited 0 with no event: squeue's
    COMPLETED carries no exit code, so the re-adopted attempt was failed ('exit code unknown') and retried."""
    run_dir = tmp_path / "runs" / "c"
    (run_dir / "checkpoints" / "step_000012").mkdir(parents=True)  # the run's final checkpoint (12 steps)
    with EventWriter(run_dir / "events.jsonl") as events:
        counters = {"step": 12, "tokens": 3072, "flops": 1.2e7, "elapsed_s": 0.1}
        events.write("end", status="done", message=None, **counters, val_loss=1.5, val_bpb=0.9)
    time.sleep(1.1)  # the next attempt's events are those written after it started
    store, study_id, plan, job_id = _submitted_and_ended(tmp_path, {"c": ["finished"]})
    assert squeue_state(job_id) == "COMPLETED"
    assert slurm_loop(store, study_id, _settings(), root=tmp_path, plan=plan).run() is False
    [attempt] = attempts_of(store, "c")
    assert (attempt.outcome, attempt.reason) == (AttemptOutcome.DONE, None)
    assert get_cell(store, "c").state is CellState.DONE


def test_a_failed_job_adopted_after_it_ended_has_its_exit_code(slurm_conf, tmp_path):
    store, study_id, plan, job_id = _submitted_and_ended(tmp_path, {"c": ["crash"]})
    assert squeue_state(job_id) == "FAILED"
    assert slurm_loop(store, study_id, _settings(), root=tmp_path, plan=plan).run() is False
    first = attempts_of(store, "c")[0]
    assert first.outcome is AttemptOutcome.FAILED
    assert first.reason.startswith("the Slurm job ended FAILED without an end event (exit code 1)")
    subprocess.run(["scancel", "--user=root"], check=False)


def test_a_job_queued_though_sbatch_timed_out_is_found_once_squeue_answers_again(
    slurm_conf, tmp_path, monkeypatch
):
    """A controller too busy to answer sbatch (its reply timed out) queued the job once it recovered, but
    the lookup by name right after failed too: the attempt was failed and a second job trained the same run
    directory beside the first."""
    from runner.slurm import commands

    store, study_id = new_study(tmp_path / "nanostudy.db")
    data = make_data_dir(tmp_path / "data", train_tokens=20_000, val_tokens=2_000)
    add_tiny_cells(store, study_id, data, tmp_path / "runs", [{"id": "c"}])
    plan = write_plan(tmp_path, {"c": ["done"]})
    submitted, unanswered = [], [2]
    real_submit, real_named = commands.submit, commands.named

    def submit_then_time_out(script):
        submitted.append(real_submit(script))
        raise SlurmError("sbatch refused the job: Batch job submission failed: Socket timed out on send/recv")

    def named_once_the_controller_is_back(name):
        if unanswered[0]:
            unanswered[0] -= 1
            raise SlurmError("squeue: slurm_load_jobs error: Socket timed out on send/recv operation")
        return real_named(name)

    monkeypatch.setattr(commands, "submit", submit_then_time_out)
    monkeypatch.setattr(commands, "named", named_once_the_controller_is_back)
    assert slurm_loop(store, study_id, _settings(), root=tmp_path, plan=plan).run() is False
    [attempt] = attempts_of(store, "c")
    assert attempt.outcome is AttemptOutcome.DONE and [attempt.job_id] == submitted
    assert get_cell(store, "c").state is CellState.DONE


def test_an_outright_cancel_that_slurm_did_not_answer_is_tried_again(slurm_conf, tmp_path, monkeypatch):
    """The job still there after the stop's grace period is scancelled outright; an scancel that failed
    (the controller busy) was never tried again, and the job trained on."""
    from runner.slurm import commands

    store, study_id = new_study(tmp_path / "nanostudy.db")
    data = make_data_dir(tmp_path / "data", train_tokens=20_000, val_tokens=2_000)
    runs = tmp_path / "runs"
    add_tiny_cells(store, study_id, data, runs, [{"id": "c"}])
    plan_path = write_plan(tmp_path, {"c": ["setting_up"]})
    loop = slurm_loop(store, study_id, _settings(), root=tmp_path, plan=plan_path)
    executor = loop.executor
    executor.stop_grace_s = 0.0
    attempt = claim(store, "c", executor=executor.kind, host=executor.host)
    loop._write_config("c", runs / "c")
    handle = executor.submit(
        LaunchRequest(cell_id="c", attempt_id=attempt.id, attempt_number=1, run_dir=runs / "c", gpus=None)
    )
    wait_for(lambda: squeue_state(handle.job_id) == "RUNNING", timeout_s=60, what="the job to run")
    calls, real_cancel = [], commands.cancel

    def cancel_unanswered_once(job_id, *, signal=None):
        calls.append(signal)
        if signal is not None:
            return  # the stop request reaches nothing that stops
        if calls.count(None) == 1:
            raise SlurmError(f"scancel {job_id}: Socket timed out on send/recv operation")
        real_cancel(job_id)

    monkeypatch.setattr(commands, "cancel", cancel_unanswered_once)
    executor.cancel(handle)
    exited = wait_for(lambda: _exited(executor, handle), timeout_s=60, what="the job to end", interval_s=0.3)
    assert exited.job_state == "CANCELLED" and calls.count(None) == 2


def _exited(executor, handle):
    result = executor.poll(handle)
    return result if type(result).__name__ == "Exited" else None
