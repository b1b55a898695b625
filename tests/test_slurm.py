"""The Slurm executor against a real Slurm: a private cluster of two nodes on this machine (slurm_fixtures).

A CPU study through `nanostudy run` to the end; a 2-node × 2-process cell whose four ranks rendezvous;
fake GPUs reaching the job; a job scancelled behind nanostudy's back (failed, then retried); a preempted
job and one that reaches its time limit (each resumed from its SIGTERM checkpoint in a new job); a runner
killed with SIGKILL and restarted (its job re-adopted by id, and by name when the id was never recorded);
sbatch refusing a job (a clear error; the cell failed with the reason, retried after the fix); a bad
partition and an unreachable controller stopped before anything is submitted.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from data_fixtures import write_text_corpus
from runner_fixtures import ROOT, add_tiny_cells, kill9, new_study, tiny_study_yaml, wait_for, write_plan
from slurm_fixtures import URGENT, job_nodes, slurm_loop, squeue_state
from trainer_fixtures import make_data_dir

from nanogpt.events import read_events
from runner.api import rerun
from runner.cli import main
from runner.executor import LaunchRequest
from runner.run import LoopOptions
from runner.slurm.commands import SlurmError
from runner.slurm.preflight import check_cluster
from runner.slurm.settings import parse_settings
from store import (
    AttemptOutcome,
    CellState,
    attempts_of,
    cell_statuses,
    claim,
    get_cell,
    train_curve,
    val_curve,
)

pytestmark = pytest.mark.slow

CPU = {"partition": "debug", "gpus_per_node": 0, "poll_s": 0.3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("slurm-data") / "pre", train_tokens=20_000, val_tokens=2_000)


@pytest.fixture
def study(slurm_cluster, tmp_path, data_dir):
    store, study_id = new_study(tmp_path / "nanostudy.db")
    yield SimpleNamespace(store=store, id=study_id, root=tmp_path, runs=tmp_path / "runs", data=data_dir)
    store.close()


def _settings(**overrides):
    settings, problems = parse_settings({**CPU, **overrides})
    assert not problems
    return settings


def _outcomes(study, cell_id: str) -> list[AttemptOutcome | None]:
    return [attempt.outcome for attempt in attempts_of(study.store, cell_id)]


def _runner(study, settings: dict, *args: str, env: dict | None = None) -> subprocess.Popen:
    log = open(study.root / "runner.log", "a")  # noqa: SIM115 (the process owns it)
    command = [sys.executable, str(ROOT / "tests" / "slurm_fixtures.py"), str(study.root / "nanostudy.db")]
    return subprocess.Popen(
        [*command, "tiny", json.dumps(settings), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )


def _job_of(study, cell_id: str, number: int) -> str | None:
    attempts = [a for a in attempts_of(study.store, cell_id) if a.number == number]
    return attempts[0].job_id if attempts else None


# -- a study through nanostudy run ------------------------------------------------------------------------

SLURM = """\
resources:
  executor: slurm
  slurm:
    partition: {partition}
    gpus_per_node: 0
    poll_s: 0.3
"""


def _study_file(tmp_path: Path, partition: str = "debug") -> Path:
    corpus = tmp_path / "corpus"
    if not corpus.exists():
        write_text_corpus(corpus, num_files=60)
    path = tmp_path / "slurm.yaml"
    grid = "  depth: [1, 2]\n  flops: [2e8]\n  seed: [0]\n"
    path.write_text(tiny_study_yaml("slurm", corpus, grid, sections=SLURM.format(partition=partition)))
    return path


def test_a_cpu_study_runs_through_slurm_to_the_end(slurm_cluster, tmp_path, capsys):
    path = _study_file(tmp_path)
    assert main(["run", str(path), "--data-root", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "study slurm: 2 cells: 2 done; 100% of FLOPs" in out
    assert main(["status", str(path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    from store import open_store

    with open_store(tmp_path / "nanostudy.db", create=False) as store:
        for cell in status["cells"]:
            [attempt] = attempts_of(store, cell["id"])
            assert attempt.executor == "slurm" and attempt.host == slurm_cluster.name
            assert attempt.job_id and attempt.outcome is AttemptOutcome.DONE
            assert attempt.start_event["world_size"] == 1
            assert [p.step for p in train_curve(store, cell["id"])] == list(range(1, cell["steps_total"] + 1))
            run_dir = tmp_path / "runs" / "slurm" / cell["id"]
            script = (run_dir / "slurm" / "attempt_1.sbatch").read_text()
            assert f"#SBATCH --job-name=nanostudy-{cell['id']}-1" in script
            assert "#SBATCH --partition=debug" in script and "--nproc-per-node 1" in script
            assert '--rdzv-backend c10d --rdzv-endpoint "${head_addr:-$head_node}:$rdzv_port"' in script
            events, _ = read_events(run_dir / "events.jsonl")
            assert events[-1]["kind"] == "end" and events[-1]["status"] == "done"
    # Again: nothing to submit.
    assert main(["run", str(path), "--data-root", str(tmp_path / "data")]) == 0
    assert "submitted" not in capsys.readouterr().out


# -- multi-node and GPUs ----------------------------------------------------------------------------------


def test_a_two_node_cell_of_two_processes_each_rendezvous_as_four_ranks(study):
    tiny = {"train": {"num_steps": 6, "device_batch_size": 2}, "checkpoint": {"every_steps": 3}}
    add_tiny_cells(study.store, study.id, study.data, study.runs, [{"id": "wide", "config": tiny}])
    settings = _settings(nodes=2, procs_per_node=2)
    assert slurm_loop(study.store, study.id, settings, root=study.root).run() is False
    [attempt] = attempts_of(study.store, "wide")
    assert attempt.outcome is AttemptOutcome.DONE
    assert attempt.start_event["world_size"] == 4  # two torchrun agents, two workers each, one rendezvous
    assert job_nodes(attempt.job_id) == "n[1-2]"
    assert [p.step for p in train_curve(study.store, "wide")] == list(range(1, 7))
    script = (study.runs / "wide" / "slurm" / "attempt_1.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --cpus-per-task=2" in script
    assert '--nnodes "$SLURM_NNODES" --nproc-per-node 2' in script


def test_a_trainer_refusing_its_input_fails_its_cell_without_a_retry(study):
    """The job's exit code is srun's (torchrun's 1); the trainer's own exit 2 reaches the runner through
    the attempt's exit record, with the trainer's one-line error as the reason."""
    (study.root / "empty").mkdir()
    bad = {"data": {"train_dir": str(study.root / "empty")}}
    add_tiny_cells(study.store, study.id, study.data, study.runs, [{"id": "bad", "config": bad}])
    assert slurm_loop(study.store, study.id, _settings(), root=study.root).run() is False
    [attempt] = attempts_of(study.store, "bad")
    assert attempt.outcome is AttemptOutcome.FAILED and attempt.exit_code == 2
    assert attempt.reason.startswith("bad config or input: ") and "empty" in attempt.reason
    assert get_cell(study.store, "bad").state is CellState.FAILED


def test_a_run_directory_with_a_space_in_its_path_is_submitted(study):
    runs = study.root / "runs with space"
    add_tiny_cells(study.store, study.id, study.data, runs, [{"id": "c"}])
    plan = write_plan(study.root, {"c": ["done"]})
    assert slurm_loop(study.store, study.id, _settings(), root=study.root, plan=plan).run() is False
    assert get_cell(study.store, "c").state is CellState.DONE
    assert (runs / "c" / "logs" / "attempt_1.out").is_file()


def test_the_jobs_gpus_reach_the_trainer(study):
    add_tiny_cells(study.store, study.id, study.data, study.runs, [{"id": "gpu"}])
    plan = write_plan(study.root, {"gpu": ["done"]})
    loop = slurm_loop(study.store, study.id, _settings(gpus_per_node=2), root=study.root, plan=plan)
    loop.run()
    env = json.loads((study.runs / "gpu" / "env_attempt_1.json").read_text())
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"  # the node's two fake GPUs, from Slurm's gres
    assert env["SLURM_JOB_ID"] == _job_of(study, "gpu", 1) and env["NANOSTUDY_ATTEMPT"] == "gpu:1"
    assert get_cell(study.store, "gpu").state is CellState.DONE


# -- jobs ended by others, runners that die ---------------------------------------------------------------


def test_a_job_scancelled_outside_nanostudy_fails_and_is_retried(study):
    add_tiny_cells(study.store, study.id, study.data, study.runs, [{"id": "c"}])
    plan = write_plan(study.root, {"c": ["hang", "done"]})
    runner = _runner(study, CPU, "--fake", str(plan))
    try:
        job_id = wait_for(lambda: _job_of(study, "c", 1), timeout_s=60, what="attempt 1's job id")
        wait_for(lambda: get_cell(study.store, "c").steps_done >= 2, timeout_s=60, what="steps of attempt 1")
        subprocess.run(["scancel", job_id], check=True)
        assert runner.wait(timeout=120) == 0
    finally:
        kill9(runner.pid)
    first, second = attempts_of(study.store, "c")
    assert first.outcome is AttemptOutcome.FAILED
    assert first.reason.startswith("the Slurm job was cancelled outside nanostudy")
    assert second.outcome is AttemptOutcome.DONE and second.job_id != job_id
    assert get_cell(study.store, "c").state is CellState.DONE


def test_a_job_scancelled_while_queued_is_not_taken_for_a_cell_already_done(study):
    """A job cancelled before it started ends with exit code 0 and no events, as a trainer that finds its
    run already done: it was recorded done, never trained, and no run trained it again."""
    add_tiny_cells(study.store, study.id, study.data, study.runs, [{"id": "c"}])
    plan = write_plan(study.root, {"c": ["done"]})
    held = {**CPU, "sbatch": ["--hold"]}
    runner = _runner(study, held, "--fake", str(plan), "--max-attempts", "1")
    try:
        job_id = wait_for(lambda: _job_of(study, "c", 1), timeout_s=60, what="attempt 1's job id")
        subprocess.run(["scancel", job_id], check=True)
        assert runner.wait(timeout=120) == 0
    finally:
        kill9(runner.pid)
    [attempt] = attempts_of(study.store, "c")
    assert attempt.outcome is AttemptOutcome.FAILED
    assert attempt.reason.startswith("the Slurm job was cancelled outside nanostudy")
    assert get_cell(study.store, "c").state is CellState.FAILED


def test_a_preempted_job_is_submitted_again_and_resumes_from_its_checkpoint(study):
    add_tiny_cells(study.store, study.id, study.data, study.runs, [{"id": "c"}])
    plan = write_plan(study.root, {"c": ["hang", "done"]})
    runner = _runner(study, CPU, "--fake", str(plan))
    try:
        job_id = wait_for(lambda: _job_of(study, "c", 1), timeout_s=60, what="attempt 1's job id")
        wait_for(lambda: get_cell(study.store, "c").steps_done >= 3, timeout_s=60, what="steps of attempt 1")
        urgent = ["sbatch", f"--partition={URGENT}", "--nodes=2", "--exclusive", "--output=/dev/null"]
        subprocess.run([*urgent, "--wrap=sleep 1"], check=True, capture_output=True)
        assert runner.wait(timeout=120) == 0
    finally:
        kill9(runner.pid)
    first, second = attempts_of(study.store, "c")
    assert first.outcome is AttemptOutcome.INTERRUPTED and "ended PREEMPTED" in first.reason
    events, _ = read_events(study.runs / "c" / "events.jsonl")
    stop_checkpoint = next(e["step"] for e in events if e["kind"] == "checkpoint")  # the one SIGTERM wrote
    assert second.resume_step == stop_checkpoint and second.job_id != job_id
    assert second.outcome is AttemptOutcome.DONE
    assert [p.step for p in train_curve(study.store, "c")] == list(range(1, stop_checkpoint + 1))


def test_a_job_at_its_time_limit_checkpoints_and_its_cell_resumes_in_a_new_job(study):
    """resources.slurm.time of 1 minute (Slurm's least): at the limit Slurm sends SIGTERM, the trainer
    checkpoints and exits, the job ends TIMEOUT, and the cell resumes from that checkpoint in a new job.
    Slurm's controller checks time limits every 30 s, so the first job runs 60-90 s."""
    add_tiny_cells(study.store, study.id, study.data, study.runs, [{"id": "c"}])
    plan = write_plan(study.root, {"c": ["hang", "done"]})
    runner = _runner(study, {**CPU, "time": "1"}, "--fake", str(plan))
    try:
        assert runner.wait(timeout=240) == 0
    finally:
        kill9(runner.pid)
    first, second = attempts_of(study.store, "c")
    assert "#SBATCH --time=1" in (study.runs / "c" / "slurm" / "attempt_1.sbatch").read_text()
    assert squeue_state(first.job_id) == "TIMEOUT"
    assert first.outcome is AttemptOutcome.INTERRUPTED
    assert first.reason.startswith("the Slurm job ended TIMEOUT; the cell resumes from its last checkpoint")
    assert first.ended_at - first.started_at >= 60  # the limit, not some other end
    events, _ = read_events(study.runs / "c" / "events.jsonl")
    starts = [e for e in events if e["kind"] == "start"]
    [stop] = [e for e in events if e["kind"] == "checkpoint" and not e["final"]]
    assert stop["stopping"] is True  # written on the way out of the SIGTERM, the attempt's only one
    assert second.job_id != first.job_id and second.outcome is AttemptOutcome.DONE
    assert second.resume_step == stop["step"] > 4  # a minute of steps: attempt 2 ("done", 4) has none left
    assert [s["resumed_from"] for s in starts] == [None, stop["path"]]
    assert second.start_event["resumed_from"] == stop["path"]
    assert get_cell(study.store, "c").state is CellState.DONE
    # Each step once, none lost or doubled across the two jobs; the final validation once.
    assert [p.step for p in train_curve(study.store, "c")] == list(range(1, stop["step"] + 1))
    assert [p.step for p in val_curve(study.store, "c")] == [stop["step"]]


def test_a_killed_runner_is_restarted_and_readopts_its_running_job(study):
    add_tiny_cells(study.store, study.id, study.data, study.runs, [{"id": "c"}])
    plan = write_plan(study.root, {"c": ["slow"]})
    slow = {"FAKE_TRAINER_STEP_S": "0.25"}  # 40 steps: 10 s
    first = _runner(study, CPU, "--fake", str(plan), env=slow)
    try:
        job_id = wait_for(lambda: _job_of(study, "c", 1), timeout_s=60, what="attempt 1's job id")
        wait_for(lambda: get_cell(study.store, "c").steps_done >= 2, timeout_s=60, what="the first steps")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert squeue_state(job_id) == "RUNNING"  # the job lives on without its runner
        second = _runner(study, CPU, "--fake", str(plan), env=slow)
        assert second.wait(timeout=120) == 0
    finally:
        kill9(first.pid)
    log = (study.root / "runner.log").read_text()
    assert f"re-adopted attempt 1 (Slurm job {job_id})" in log
    [attempt] = attempts_of(study.store, "c")  # adopted: no second job
    assert attempt.outcome is AttemptOutcome.DONE and attempt.job_id == job_id
    assert [p.step for p in train_curve(study.store, "c")] == list(range(1, 41))


def test_a_job_whose_id_was_never_recorded_is_found_by_its_name(study):
    """The runner died between sbatch and writing the job id: the next one finds the job by its name."""
    add_tiny_cells(study.store, study.id, study.data, study.runs, [{"id": "c"}])
    plan = write_plan(study.root, {"c": ["slow"]})
    loop = slurm_loop(study.store, study.id, _settings(), root=study.root, plan=plan)
    attempt = claim(study.store, "c", executor=loop.executor.kind, host=loop.executor.host)
    loop._write_config("c", study.runs / "c")
    request = LaunchRequest(
        cell_id="c", attempt_id=attempt.id, attempt_number=1, run_dir=study.runs / "c", gpus=None
    )
    handle = loop.executor.submit(request)  # and no record_launch: the runner "died" here
    log: list[str] = []
    again = slurm_loop(study.store, study.id, _settings(), root=study.root, plan=plan, log=log)
    assert again.run() is False
    assert f"cell c (d1 1e+09 FLOPs seed 0): re-adopted attempt 1 (Slurm job {handle.job_id})" in log
    [attempt] = attempts_of(study.store, "c")
    assert attempt.job_id == handle.job_id and attempt.outcome is AttemptOutcome.DONE


def test_nanostudy_cancel_scancels_our_job_when_no_runner_holds_the_study(study):
    add_tiny_cells(study.store, study.id, study.data, study.runs, [{"id": "c"}, {"id": "other"}])
    plan = write_plan(study.root, {"c": ["hang"], "other": ["hang"]})
    runner = _runner(study, CPU, "--fake", str(plan))
    job_id = wait_for(lambda: _job_of(study, "c", 1), timeout_s=60, what="attempt 1's job id")
    other = wait_for(lambda: _job_of(study, "other", 1), timeout_s=60, what="the other job's id")
    wait_for(lambda: get_cell(study.store, "c").steps_done >= 1, timeout_s=60, what="steps")
    wait_for(lambda: squeue_state(other) == "RUNNING", timeout_s=60, what="the other job to run")
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=10)
    from runner.api import cancel

    result = cancel(study.store, "tiny", cell_id="c", wait_s=60)
    assert result.stopped_here == ("c",)
    assert squeue_state(job_id) in ("COMPLETED", "FAILED")  # stopped by SIGTERM: it checkpointed first
    events, _ = read_events(study.runs / "c" / "events.jsonl")
    assert events[-1]["kind"] == "checkpoint" and events[-1]["final"] is False
    assert squeue_state(other) == "RUNNING"  # only the cancelled cell's job
    subprocess.run(["scancel", other], check=True)


def test_nanostudy_cancel_ends_a_job_still_running_its_setup_lines(study):
    """A signal to the job's steps reaches nothing while its batch script runs the study's setup lines (no
    trainer yet): such a job is cancelled outright; it trained on, the cell cancelled, once."""
    add_tiny_cells(study.store, study.id, study.data, study.runs, [{"id": "c"}])
    plan = write_plan(study.root, {"c": ["done"]})
    runner = _runner(study, {**CPU, "setup": ["sleep 60"]}, "--fake", str(plan))
    try:
        job_id = wait_for(lambda: _job_of(study, "c", 1), timeout_s=60, what="attempt 1's job id")
        wait_for(lambda: squeue_state(job_id) == "RUNNING", timeout_s=60, what="the job to run its setup")
    finally:
        kill9(runner.pid)
        runner.wait(timeout=10)
    from runner.api import cancel

    result = cancel(study.store, "tiny", cell_id="c", wait_s=30)
    assert (result.stopped_here, result.still_running) == (("c",), ())
    assert squeue_state(job_id) == "CANCELLED"
    assert not (study.runs / "c" / "events.jsonl").exists()  # no trainer ever started
    assert get_cell(study.store, "c").state is CellState.CANCELLED


# -- refusals ---------------------------------------------------------------------------------------------


def test_a_bad_partition_is_refused_before_anything_is_submitted(slurm_cluster, tmp_path, capsys):
    path = _study_file(tmp_path, partition="nope")
    jobs_before = _all_jobs()
    assert main(["run", str(path), "--data-root", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "partition:" in text)
    assert f"{path}:{line}: resources.slurm.partition: sbatch refused the job: invalid partition" in err
    assert not (tmp_path / "nanostudy.db").exists()  # nothing recorded, nothing submitted
    assert _all_jobs() == jobs_before


def _all_jobs() -> list[str]:
    result = subprocess.run(
        ["squeue", "--noheader", "--states=all", "--format=%i"], capture_output=True, text=True, check=True
    )
    return sorted(result.stdout.split())


def test_sbatch_refusing_a_job_fails_the_cell_with_the_reason_and_a_rerun_runs_it(study):
    """A job refused at submission (the partition went away after the checks): the attempt fails with
    sbatch's words, the cell is failed (retryable), and after the fix a rerun trains it."""
    add_tiny_cells(study.store, study.id, study.data, study.runs, [{"id": "c"}])
    plan = write_plan(study.root, {"c": ["done"]})
    options = LoopOptions(poll_s=0.2, heartbeat_s=1.0, max_attempts=1)
    bad = _settings(partition="gone")
    slurm_loop(study.store, study.id, bad, root=study.root, plan=plan, options=options).run()
    cell = get_cell(study.store, "c")
    assert cell.state is CellState.FAILED
    assert "sbatch refused the job: invalid partition specified: gone" in cell.reason
    [attempt] = attempts_of(study.store, "c")
    assert attempt.job_id is None and "invalid partition" in attempt.reason
    assert rerun(study.store, study.id, {CellState.FAILED}) == ["c"]
    slurm_loop(study.store, study.id, _settings(), root=study.root, plan=plan, options=options).run()
    assert get_cell(study.store, "c").state is CellState.DONE
    assert _outcomes(study, "c") == [AttemptOutcome.FAILED, AttemptOutcome.DONE]


def test_a_job_queued_though_sbatch_failed_is_found_by_its_name_and_watched(study, monkeypatch):
    """sbatch can report an error after the controller queued the job (its reply timed out): that job is
    the attempt's, found by its name, rather than one trained unwatched beside a second submission."""
    from runner.slurm import commands

    add_tiny_cells(study.store, study.id, study.data, study.runs, [{"id": "c"}])
    plan = write_plan(study.root, {"c": ["done"]})
    submitted = []

    def submit_then_time_out(script):
        submitted.append(real_submit(script))
        raise SlurmError("sbatch refused the job: Socket timed out on send/recv operation")

    real_submit = commands.submit
    monkeypatch.setattr(commands, "submit", submit_then_time_out)
    assert slurm_loop(study.store, study.id, _settings(), root=study.root, plan=plan).run() is False
    [attempt] = attempts_of(study.store, "c")
    assert attempt.outcome is AttemptOutcome.DONE and [attempt.job_id] == submitted
    assert get_cell(study.store, "c").state is CellState.DONE


def test_an_unreachable_controller_is_reported_before_anything_is_submitted(
    slurm_cluster, tmp_path, monkeypatch
):
    conf = tmp_path / "slurm.conf"
    text = slurm_cluster.conf.read_text()
    port = next(line for line in text.splitlines() if line.startswith("SlurmctldPort="))
    conf.write_text(text.replace(port, "SlurmctldPort=9"))  # nothing listens there
    monkeypatch.setenv("SLURM_CONF", str(conf))
    with pytest.raises(
        SlurmError, match=r"s\.yaml:7: resources\.executor: slurm: cannot reach the Slurm controller"
    ):
        check_cluster(
            _settings(), runs_dir=tmp_path, problem=lambda key, message: f"s.yaml:7: {key}: {message}"
        )


def test_cells_left_pending_when_the_runner_is_stopped_are_not_lost(study):
    """Ctrl-C of the runner: every job is asked to stop (scancel --signal=TERM), each trainer checkpoints,
    and its cell is pending again, resumable."""
    add_tiny_cells(study.store, study.id, study.data, study.runs, [{"id": "c"}])
    plan = write_plan(study.root, {"c": ["hang", "done"]})
    runner = _runner(study, CPU, "--fake", str(plan))
    try:
        job_id = wait_for(lambda: _job_of(study, "c", 1), timeout_s=60, what="attempt 1's job id")
        wait_for(lambda: get_cell(study.store, "c").steps_done >= 2, timeout_s=60, what="steps")
        runner.send_signal(signal.SIGINT)
        assert runner.wait(timeout=120) == 130
    finally:
        kill9(runner.pid)
    assert _outcomes(study, "c") == [AttemptOutcome.INTERRUPTED]
    assert get_cell(study.store, "c").state is CellState.PENDING
    assert squeue_state(job_id) in ("COMPLETED", "FAILED")
    statuses = {status.id: status.state for status in cell_statuses(study.store, study.id)}
    assert statuses == {"c": CellState.PENDING}
