"""The batch script of one attempt: `sbatch` runs it on the first node of the job's allocation, and its
`srun` starts one torchrun per node, which rendezvous (c10d) on the first node and start the trainer's
processes. The script is written to `RUN_DIR/slurm/attempt_N.sbatch` and kept there, so what ran is always
readable (docs/slurm.md shows one).
"""

import shlex
from collections.abc import Mapping
from pathlib import Path

from runner.executor import TRAINER_MODULE, LaunchRequest, log_paths
from runner.slurm.settings import SlurmSettings

SCRIPTS_DIR = "slurm"
# The exit code of the script when the run directory is not visible on the node (the trainer's own "bad
# input" code: the runner reports the script's message, which names the shared-filesystem requirement).
EXIT_NOT_SHARED = 2


def script_path(run_dir: Path, attempt_number: int) -> Path:
    return run_dir / SCRIPTS_DIR / f"attempt_{attempt_number}.sbatch"


def job_name(cell_id: str, attempt_number: int) -> str:
    """The job's name: finds the job of an attempt whose id was never recorded (the runner died between
    sbatch and the database write), and proves a recorded id still names our job."""
    return f"nanostudy-{cell_id}-{attempt_number}"


def sbatch_options(settings: SlurmSettings) -> list[str]:
    """The options every job of these settings gets (also the preflight's `sbatch --test-only`)."""
    options = [f"--nodes={settings.nodes}", "--ntasks-per-node=1"]
    for key in ("partition", "account", "qos", "time"):
        value = getattr(settings, key)
        if value is not None:
            options.append(f"--{key}={value}")
    if settings.gpus_per_node:
        options.append(f"--gpus-per-node={settings.gpus_per_node}")
    else:
        options.append(f"--cpus-per-task={settings.procs_per_node}")
    return [*options, *settings.sbatch]


def _filename(path: Path) -> str:
    """A path as an #SBATCH --output/--error filename: quoted (a space is otherwise "Invalid directive"), a
    quote in it escaped (else "Unmatched `"`"), and `%` doubled (sbatch reads %j, %x, ... as the job's id,
    name, ...: the job found no such directory and failed to launch)."""
    return '"' + str(path).replace("%", "%%").replace('"', '\\"') + '"'


def batch_script(
    request: LaunchRequest, settings: SlurmSettings, *, python: str, env: Mapping[str, str]
) -> str:
    """The script's text: sbatch options, the user's setup lines, our environment, the shared-filesystem
    check, the rendezvous address, and `srun torchrun`."""
    out_path, err_path = log_paths(request.run_dir, request.attempt_number)
    config = shlex.quote(str(request.config_path))
    header = [
        "#!/bin/bash",
        f"# nanostudy: cell {request.cell_id}, attempt {request.attempt_number} (each retry gets its own)",
        f"#SBATCH --job-name={job_name(request.cell_id, request.attempt_number)}",
        f"#SBATCH --output={_filename(out_path)}",
        f"#SBATCH --error={_filename(err_path)}",
        "#SBATCH --open-mode=append",
        *(f"#SBATCH {option}" for option in sbatch_options(settings)),
    ]
    setup = ["", "# resources.slurm.setup", *settings.setup] if settings.setup else []
    exports = ["", *(f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items()))]
    launch = f"""
# The run directory must be on a filesystem that every node shares.
if [[ ! -r {config} ]]; then
    echo "nanostudy: "{config}" is not readable on $(hostname): the run directory must be on a \\
filesystem that the login node and every compute node share" >&2
    exit {EXIT_NOT_SHARED}
fi

# torchrun's c10d rendezvous on the job's first node, at the address Slurm itself reaches it by.
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
head_addr=$(scontrol show node "$head_node" | sed -n 's/.*NodeAddr=\\([^ ]*\\).*/\\1/p')
rdzv_port={settings.rdzv_port or "$((20000 + SLURM_JOB_ID % 20000))"}

srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \\
    {shlex.quote(python)} -m torch.distributed.run \\
    --nnodes "$SLURM_NNODES" --nproc-per-node {settings.processes_per_node} \\
    --rdzv-backend c10d --rdzv-endpoint "${{head_addr:-$head_node}}:$rdzv_port" --rdzv-id "$SLURM_JOB_ID" \\
    -m {TRAINER_MODULE} --config {config}
"""
    return "\n".join([*header, *setup, *exports]) + "\n" + launch
