"""The Slurm executor when the controller does not answer, with Slurm's commands stood in for: a stop request
is asked again at each poll, and the job cancelled outright only after the grace period; a submission that
got no answer and queued nothing is BackendUnavailable (the runner tries again later, counting no failure)."""

import time

import pytest

from runner.executor import BackendUnavailable, Handle, LaunchRequest
from runner.slurm import commands
from runner.slurm import executor as slurm_executor
from runner.slurm.commands import JobInfo, SlurmError, SlurmNoAnswer
from runner.slurm.settings import parse_settings


class FakeSlurm:
    """squeue, the step check and scancel; `busy` calls of squeue fail first (a controller too busy)."""

    def __init__(self, monkeypatch, *, busy: int):
        self.busy, self.cancels = busy, []
        monkeypatch.setattr(commands, "cluster_config", lambda: {"ClusterName": "test"})
        monkeypatch.setattr(commands, "has_accounting", lambda config: False)
        monkeypatch.setattr(commands, "queued", self.queued)
        monkeypatch.setattr(commands, "has_launched_step", lambda job_id: True)
        monkeypatch.setattr(commands, "cancel", lambda job_id, signal=None: self.cancels.append(signal))

    def queued(self, job_ids):
        if self.busy > 0:
            self.busy -= 1
            raise SlurmError("squeue: error: Socket timed out on send/recv operation")
        return {job_id: JobInfo(job_id=job_id, state="RUNNING", name="x") for job_id in job_ids}


def _running_job(monkeypatch, *, busy: int, grace_s: float):
    settings, problems = parse_settings({"partition": "debug", "gpus_per_node": 0, "poll_s": 0.001})
    assert not problems
    slurm = FakeSlurm(monkeypatch, busy=busy)
    executor = slurm_executor.SlurmExecutor(settings, stop_grace_s=grace_s)
    executor._jobs[1] = slurm_executor._Job(job_id="42")
    return slurm, executor, Handle(attempt_id=1, job_id="42", launcher="sbatch")


def test_a_stop_that_slurm_did_not_answer_is_asked_again_not_turned_into_a_kill(monkeypatch):
    # Before: the first failed squeue made the stop an outright scancel at the next poll (the trainer lost
    # its work since its last checkpoint).
    slurm, executor, handle = _running_job(monkeypatch, busy=2, grace_s=3600)
    executor.cancel(handle)  # squeue fails: nothing sent
    assert slurm.cancels == []
    executor.poll(handle)  # the refresh fails (second busy answer); the stop is asked again and taken
    assert slurm.cancels == ["TERM"]
    executor.poll(handle)
    executor.poll(handle)
    assert slurm.cancels == ["TERM"]  # asked once, and never outright within the grace period


def test_a_stop_that_slurm_never_answers_is_an_outright_cancel_after_the_grace_period(monkeypatch):
    slurm, executor, handle = _running_job(monkeypatch, busy=10**6, grace_s=0.05)
    executor.cancel(handle)
    executor.poll(handle)
    assert slurm.cancels == []
    time.sleep(0.06)
    executor.poll(handle)
    assert slurm.cancels == [None]  # scancel without a signal: outright


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (SlurmNoAnswer("sbatch: error: Batch job submission failed: Socket timed out"), BackendUnavailable),
        (SlurmError("sbatch: error: invalid partition specified: nope"), SlurmError),
    ],
)
def test_a_submission_without_an_answer_is_backend_unavailable_and_a_refusal_is_not(
    monkeypatch, tmp_path, error, expected
):
    _, executor, _ = _running_job(monkeypatch, busy=0, grace_s=60)

    def refuse(path):
        raise error

    monkeypatch.setattr(commands, "submit", refuse)
    monkeypatch.setattr(commands, "named", lambda name: [])  # nothing of the attempt's name was queued
    request = LaunchRequest(cell_id="c", attempt_id=2, attempt_number=1, run_dir=tmp_path / "c", gpus=None)
    with pytest.raises(expected) as raised:
        executor.submit(request)
    assert type(raised.value) is expected and str(raised.value) == str(error)
