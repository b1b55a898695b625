"""The Slurm executor's parts that need no cluster: the study's slurm keys (checked at their lines), the
generated batch script, reading Slurm's output, what each final job state means for the cell, the checks
when Slurm is missing, and the trainer taking a signal delivered twice for one stop request."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runner.cli import main
from runner.executor import Exited, LaunchRequest
from runner.ingest import AttemptTrace
from runner.scheduler import decide_outcome
from runner.slurm.commands import JobInfo, parse_sacct, parse_scontrol_job, parse_squeue
from runner.slurm.preflight import filesystem_type
from runner.slurm.script import batch_script
from runner.slurm.settings import parse_settings
from runner.study import StudyError, parse
from store import AttemptOutcome

STUDY = """\
name: tiny
data:
  source: {name: python-source, max_bytes: 1MB}
  tokenizer: bpe:300
grid:
  depth: [1]
  flops: [1e9]
  seed: [0]
model:
  aspect_ratio: 16
  head_dim: 16
  sequence_len: 32
train:
  total_batch_tokens: 256
  device_batch_size: 2
  device: cpu
resources:
  executor: slurm
  slurm:
"""


def _study(slurm: str, **kwargs):
    return parse(STUDY + textwrap.indent(textwrap.dedent(slurm), "    "), path="s.yaml", **kwargs)


def _problems(slurm: str) -> list[str]:
    with pytest.raises(StudyError) as caught:
        _study(slurm)
    return list(caught.value.problems)


def _line(needle: str, slurm: str) -> int:
    text = STUDY + textwrap.indent(textwrap.dedent(slurm), "    ")
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# -- the study's keys -------------------------------------------------------------------------------------


def test_slurm_settings_load_with_their_defaults_and_values():
    study = _study(
        """\
        partition: gpu
        account: lab
        time: 90
        nodes: 2
        gpus_per_node: 2
        sbatch: ["#SBATCH --mem=0", "--constraint=h100"]
        setup: module load cuda
        """
    )
    settings = study.resources.slurm
    assert (settings.partition, settings.account, settings.qos, settings.time) == ("gpu", "lab", None, "90")
    assert settings.sbatch == ("--mem=0", "--constraint=h100") and settings.setup == ("module load cuda",)
    assert settings.processes_per_cell == 4 and study.resources.processes_per_cell == 4
    assert study.to_dict()["resources"]["slurm"]["sbatch"] == ["--mem=0", "--constraint=h100"]


def test_an_unquoted_time_of_day_is_slurms_time_and_a_python_in_home_is_expanded(monkeypatch):
    """YAML 1.1 reads 12:00:00 as the base-60 number 43200: 30 days of Slurm minutes, not 12 hours. The
    script quotes the interpreter, so `~` is expanded here (on the login node) or never."""
    monkeypatch.setenv("HOME", "/home/me")
    settings = _study("partition: gpu\ntime: 12:00:00\npython: ~/venv/bin/python\n").resources.slurm
    assert (settings.time, settings.python) == ("12:00:00", "/home/me/venv/bin/python")
    assert _study("partition: gpu\ntime: 1:30\n").resources.slurm.time == "1:30"


def test_an_unlimited_time_and_a_python_path_with_spaces_are_taken():
    """Slurm takes both (the script quotes the interpreter); they were refused. A name with a space is not."""
    settings = _study('time: UNLIMITED\npython: "/opt/my envs/py/bin/python"\n').resources.slurm
    assert (settings.time, settings.python) == ("UNLIMITED", "/opt/my envs/py/bin/python")
    assert _study("time: infinite\n").resources.slurm.time == "infinite"
    (problem,) = _problems('partition: "gpu a"\n')
    assert problem.endswith("resources.slurm.partition: expected a name without spaces, got 'gpu a'")


def test_bad_slurm_keys_are_reported_at_their_lines_all_at_once():
    slurm = """\
    partitoin: gpu
    nodes: 0
    time: soon
    gpus_per_node: 2
    procs_per_node: 2
    sbatch: ["mem=0"]
    poll_s: -1
    """
    expected = [
        ("partitoin", "resources.slurm.partitoin: unknown key (did you mean 'partition'?)"),
        ("nodes: 0", "resources.slurm.nodes: expected an integer >= 1, got 0"),
        (
            "time: soon",
            "resources.slurm.time: expected a Slurm time (minutes, HH:MM:SS, D-HH:MM:SS or UNLIMITED)",
        ),
        ("procs_per_node", "resources.slurm.procs_per_node: only with gpus_per_node: 0"),
        ("sbatch:", "resources.slurm.sbatch: 'mem=0' is not an sbatch option"),
        ("poll_s", "resources.slurm.poll_s: expected a positive number of seconds, got -1"),
    ]
    found = _problems(slurm)
    assert len(found) == len(expected), found
    for (needle, message), problem in zip(expected, found, strict=True):
        assert problem.startswith(f"s.yaml:{_line(needle, slurm)}: {message}"), problem


def test_the_batch_rule_counts_every_process_of_every_node():
    [problem] = _problems("nodes: 3\ngpus_per_node: 1\n")
    assert problem.startswith(
        f"s.yaml:{_line('total_batch_tokens', '')}: train.total_batch_tokens: 256 tokens"
    )
    assert problem.endswith("not a multiple of sequence_len × slurm.nodes × processes per node = 32 × 3")


def test_executor_given_on_the_command_line_overrides_the_study():
    study = parse(STUDY.replace("executor: slurm", "executor: local"), path="s.yaml", executor="slurm")
    assert study.resources.executor == "slurm"


# -- the script -------------------------------------------------------------------------------------------


def test_the_batch_script_holds_every_setting_and_is_valid_bash(tmp_path):
    settings, _ = parse_settings(
        {
            "partition": "gpu",
            "account": "lab",
            "qos": "high",
            "time": "1-00:00:00",
            "nodes": 2,
            "gpus_per_node": 4,
            "sbatch": ["--mem=0"],
            "setup": ["module load cuda/12.4", "source /shared/venv/bin/activate"],
            "rdzv_port": 29400,
        }
    )
    request = LaunchRequest(
        cell_id="abc", attempt_id=7, attempt_number=3, run_dir=tmp_path / "run dir", gpus=None
    )
    script = batch_script(
        request, settings, python="/shared/venv/bin/python", env={"NANOSTUDY_ATTEMPT": "abc:3"}
    )
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    options = [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH")]
    assert options == [
        "--job-name=nanostudy-abc-3",
        f'--output="{tmp_path}/run dir/logs/attempt_3.out"',  # quoted: sbatch refuses the space otherwise
        f'--error="{tmp_path}/run dir/logs/attempt_3.err"',
        "--open-mode=append",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--partition=gpu",
        "--account=lab",
        "--qos=high",
        "--time=1-00:00:00",
        "--gpus-per-node=4",
        "--mem=0",
    ]
    lines = script.splitlines()
    assert lines.index("module load cuda/12.4") < lines.index("export NANOSTUDY_ATTEMPT=abc:3")
    assert "rdzv_port=29400" in script and f"'{tmp_path}/run dir/config.json'" in script
    assert '--nnodes "$SLURM_NNODES" --nproc-per-node 4 \\' in script
    assert script.rstrip().endswith(f"-m nanogpt.train --config '{tmp_path}/run dir/config.json'")


# -- reading Slurm's answers ------------------------------------------------------------------------------


def test_squeue_sacct_and_scontrol_output_is_read():
    jobs = parse_squeue("12|RUNNING|nanostudy-abc-1|None\n13|PENDING|nanostudy-def-1|Priority\n")
    assert jobs["12"] == JobInfo(job_id="12", state="RUNNING", name="nanostudy-abc-1")
    assert jobs["13"].reason == "Priority" and not jobs["13"].final
    sacct = parse_sacct("14|CANCELLED by 1000|0:15|nanostudy-abc-2|None\n14.batch|CANCELLED|0:15||\n")
    assert sacct == {
        "14": JobInfo(job_id="14", state="CANCELLED", name="nanostudy-abc-2", exit_code=0, signal=15)
    }
    scontrol = parse_scontrol_job(
        "JobId=15 JobName=nanostudy-abc-3 UserId=root(0) JobState=TIMEOUT Reason=TimeLimit "
        "Requeue=1 ExitCode=0:15 RunTime=00:01:02"
    )
    assert scontrol == JobInfo(
        job_id="15", state="TIMEOUT", name="nanostudy-abc-3", reason="TimeLimit", exit_code=0, signal=15
    )
    assert scontrol.final
    assert parse_scontrol_job("slurm_load_jobs error: Invalid job id specified") is None


# -- what a job's end means -------------------------------------------------------------------------------


def _trace(*kinds: str) -> AttemptTrace:
    trace = AttemptTrace()
    for step, kind in enumerate(kinds, 1):
        trace.see({"kind": kind, "step": step, "final": False})
    return trace


@pytest.mark.parametrize(
    ("kinds", "state", "code", "stop", "outcome", "reason"),
    [
        (("start", "step", "checkpoint", "step"), "TIMEOUT", -15, False, "interrupted", "ended TIMEOUT"),
        (("start", "step"), "TIMEOUT", -15, False, "failed", "time limit before writing a checkpoint"),
        (("start", "step"), "PREEMPTED", 0, False, "interrupted", "ended PREEMPTED; the cell resumes"),
        (("start",), "NODE_FAIL", None, False, "interrupted", "ended NODE_FAIL"),
        ((), "BOOT_FAIL", None, False, "interrupted", "ended BOOT_FAIL"),
        (("start", "step", "checkpoint"), "CANCELLED", -15, False, "failed", "cancelled outside nanostudy"),
        (("start", "step", "checkpoint"), "CANCELLED", -15, True, "interrupted", "stopped by the runner"),
        (("start", "step"), "FAILED", 1, False, "failed", "the Slurm job ended FAILED without an end event"),
        (("start", "step"), "OUT_OF_MEMORY", 0, False, "failed", "ended OUT_OF_MEMORY"),
        (("start", "step", "checkpoint"), "FAILED", 1, False, "interrupted", "stopped after a checkpoint"),
    ],
)
def test_final_job_states_decide_the_attempt(kinds, state, code, stop, outcome, reason):
    exited = Exited(code=code, from_trainer=False, job_state=state)
    decided, why = decide_outcome(_trace(*kinds), exited, stop_requested=stop, error_tail=None)
    assert decided is AttemptOutcome(outcome)
    assert reason in why


def test_an_end_event_decides_whatever_the_job_state():
    trace = _trace("start", "step")
    trace.see({"kind": "end", "status": "done"})
    exited = Exited(code=0, from_trainer=False, job_state="COMPLETED")
    assert decide_outcome(trace, exited, stop_requested=False, error_tail=None) == (AttemptOutcome.DONE, None)


# -- bad input before anything is submitted ---------------------------------------------------------------


def test_slurm_missing_is_a_clear_error_at_the_executor_key(tmp_path, monkeypatch, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(STUDY + "    partition: gpu\n")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert main(["run", str(path), "--data-root", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    line = STUDY.splitlines().index("  executor: slurm") + 1
    assert (
        f"{path}:{line}: resources.executor: slurm: sbatch, squeue, scontrol, scancel not found on PATH"
        in err
    )
    assert not (tmp_path / "nanostudy.db").exists()


def test_the_filesystem_type_under_a_path_is_read_from_the_mounts():
    assert filesystem_type(Path("/proc/self")) == "proc"
    assert filesystem_type(Path("/proc/no/such/dir")) == "proc"  # its nearest existing ancestor


# -- the trainer's stop -----------------------------------------------------------------------------------

STOP = """
import os, signal, sys, time
from nanogpt.train import _StopRequest
with _StopRequest() as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGTERM)  # the same stop, delivered again (Slurm and torchrun)
    time.sleep(0.2)
    print("alive", stop.requested, flush=True)
    stop._first_at -= stop.DUPLICATE_SIGNAL_S + 1
    os.kill(os.getpid(), signal.SIGTERM)  # a second request, later: dies now
    time.sleep(5)
    print("survived", flush=True)
"""


def test_a_signal_repeated_at_once_is_one_stop_request_and_a_later_one_kills():
    result = subprocess.run([sys.executable, "-c", STOP], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["alive", "True"]
    assert result.returncode == -15
