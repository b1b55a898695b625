"""A real Slurm cluster for the Slurm executor's tests: one slurmctld and two slurmd (nodes n1 and n2, each
with two fake GPUs) on this machine, started by hand in a temporary directory, stopped by PID.

Needs Debian's slurmctld, slurmd and slurm-client (scripts/install-slurm.sh) and root (slurmd runs jobs as
their user and makes the fake GPU device files with mknod); the tests skip with the reason otherwise.
Every Slurm client finds the cluster through SLURM_CONF, which the fixture sets for the session.

`python tests/slurm_fixtures.py DB STUDY SETTINGS_JSON [--fake PLAN]` runs the runner's loop over the
study's cells with the Slurm executor, as `nanostudy run` does; the tests start it as a process of its own
so that they can kill it.
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from runner_fixtures import TRAINER_ENV, fake_python, study_loop, wait_for

DAEMONS = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
NODES = ("n1", "n2")
GPUS_PER_NODE = 2
CPUS_PER_NODE = 2
PARTITION = "debug"
URGENT = "urgent"  # a partition of higher priority tier: its jobs preempt (cancel) the debug partition's


@dataclass(frozen=True, slots=True)
class Cluster:
    root: Path
    conf: Path
    name: str = "nstest"


def why_no_slurm() -> str | None:
    """Why a private cluster cannot start here, or None."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing; scripts/install-slurm.sh installs it)"
    if os.geteuid() != 0:
        return "the test cluster's slurmd must run as root (it starts jobs and makes fake GPU devices)"
    return None


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def write_config(root: Path, name: str = "nstest") -> Path:
    """slurm.conf and gres.conf for two nodes of this host, and the fake GPUs' device files."""
    for sub in ("state", "log", "dev", *(f"spool/{node}" for node in NODES)):
        (root / sub).mkdir(parents=True, exist_ok=True)
    controller_port, *node_ports = _free_ports(1 + len(NODES))
    host = socket.gethostname()
    gres = ["AutoDetect=off"]
    nodes = []
    for index, (node, port) in enumerate(zip(NODES, node_ports, strict=True)):
        first = index * GPUS_PER_NODE
        for minor in range(first, first + GPUS_PER_NODE):
            device = root / "dev" / f"nvidia{minor}"
            if not device.exists():
                os.mknod(device, 0o666 | 0o020000, os.makedev(195, minor))  # like /dev/nvidiaN
        gres.append(f"NodeName={node} Name=gpu File={root}/dev/nvidia[{first}-{first + GPUS_PER_NODE - 1}]")
        nodes.append(
            f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs={CPUS_PER_NODE} "
            f"RealMemory=2000 Gres=gpu:{GPUS_PER_NODE} State=UNKNOWN"
        )
    conf = f"""\
ClusterName={name}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={controller_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_min_interval=100000
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
GresTypes=gpu
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.%n.log
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
KillWait=30
MinJobAge=600
InactiveLimit=0
Waittime=0
{chr(10).join(nodes)}
PartitionName={PARTITION} Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName={URGENT} Nodes={",".join(NODES)} MaxTime=INFINITE State=UP PriorityTier=10
"""
    (root / "slurm.conf").write_text(conf)
    (root / "gres.conf").write_text("\n".join(gres) + "\n")
    return root / "slurm.conf"


@contextlib.contextmanager
def running_cluster(root: Path):
    """Start slurmctld and both slurmd in the foreground (-D) as our children; yield once every node is
    idle; stop them by PID (jobs still running are cancelled first)."""
    conf = write_config(root)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    log = open(root / "log" / "daemons.out", "ab")  # noqa: SIM115 (closed below)
    started: list[subprocess.Popen] = []
    try:
        started.append(_daemon(["slurmctld", "-D", "-i", "-f", str(conf)], env, log))
        for node in NODES:
            started.append(_daemon(["slurmd", "-D", "-N", node, "-f", str(conf)], env, log))
        wait_for(lambda: _nodes_idle(env), timeout_s=60, what="both test nodes to be idle", interval_s=0.3)
        yield Cluster(root=root, conf=conf)
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["scancel", "--full", "--user=root"], env=env, timeout=10, check=False)
        for process in reversed(started):
            _stop(process)
        log.close()


@contextlib.contextmanager
def cluster_for_tests(root: Path):
    """`running_cluster`, skipping the test where Slurm is not installed, with SLURM_CONF pointing at it
    while it runs (and put back after)."""
    import pytest

    reason = why_no_slurm()
    if reason is not None:
        pytest.skip(reason)
    previous = os.environ.get("SLURM_CONF")
    with running_cluster(root) as cluster:
        os.environ["SLURM_CONF"] = str(cluster.conf)
        try:
            yield cluster
        finally:
            if previous is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = previous


def _daemon(args: list[str], env: dict[str, str], log) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _nodes_idle(env: dict[str, str]) -> bool:
    result = subprocess.run(
        ["sinfo", "--noheader", "--Node", "--format=%N %T"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    states = dict(line.split() for line in result.stdout.splitlines() if line.strip())
    return sorted(states) == sorted(NODES) and all(state == "idle" for state in states.values())


def squeue_state(job_id: str) -> str | None:
    """The job's state as squeue says it, or None."""
    result = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or None


def job_nodes(job_id: str) -> str | None:
    result = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True, check=False
    )
    fields = dict(part.split("=", 1) for part in result.stdout.split() if "=" in part)
    return fields.get("NodeList")


# -- a runner process ------------------------------------------------------------------------------------


def main() -> int:
    from runner.lock import StudyLock, lock_path
    from runner.run import LoopOptions
    from runner.slurm.settings import parse_settings
    from store import get_study, open_store

    parser = argparse.ArgumentParser()
    parser.add_argument("db", type=Path)
    parser.add_argument("study")
    parser.add_argument("settings", help="resources.slurm as JSON")
    parser.add_argument("--fake", type=Path, help="a fake-trainer plan: run the fake trainer")
    parser.add_argument("--max-attempts", type=int, default=3)
    args = parser.parse_args()
    settings, problems = parse_settings(json.loads(args.settings))
    assert not problems, problems
    store = open_store(args.db)
    study = get_study(store, args.study)
    assert study is not None and study.id is not None
    options = LoopOptions(poll_s=0.2, heartbeat_s=1.0, max_attempts=args.max_attempts)
    with StudyLock(lock_path(store, study.name), study.name):
        loop = slurm_loop(store, study.id, settings, root=args.db.parent, plan=args.fake, options=options)
        print(f"runner pid {os.getpid()}", flush=True)
        interrupted = loop.run()
    return 130 if interrupted else 0


def slurm_loop(
    store, study_id: int, settings, *, root: Path, plan: Path | None = None, options=None, log=None
):
    """The runner's loop over every cell of the study, with the Slurm executor (the fake trainer when
    `plan` is given: it runs as `python -m torch.distributed.run ... --config`, and ignores torchrun)."""
    from runner.run import LoopOptions
    from runner.slurm.executor import SlurmExecutor

    env = dict(TRAINER_ENV)
    python = sys.executable
    if plan is not None:
        env["FAKE_TRAINER_PLAN"] = str(plan)
        python = str(fake_python(root))
    executor = SlurmExecutor(settings, python=python, env=env, stop_grace_s=60)
    return study_loop(
        store,
        study_id,
        executor,
        pool=None,
        options=options or LoopOptions(poll_s=0.2, heartbeat_s=1.0),
        log=log,
    )


if __name__ == "__main__":
    sys.exit(main())
