"""The study's `resources.slurm` section: where and how each cell's batch job runs.

    resources:
      executor: slurm
      slurm:
        partition: gpu
        account: mylab
        qos: normal
        time: "12:00:00"          # each job's time limit; a cell that reaches it resumes in a new job
        nodes: 2                  # nodes per cell
        gpus_per_node: 8          # one trainer process per GPU; 0: the nodes' CPUs (gloo)
        sbatch: ["--mem=0", "--constraint=h100"]
        setup: ["module load cuda/12.4"]

`parse_settings` checks every key and returns the problems as (key, message) pairs, so the study loader
reports them at their lines with the study's other problems.
"""

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Slurm's time formats (sbatch --time): minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds.
_TIME = re.compile(r"^(\d+-\d+(:\d+){0,2}|\d+(:\d+){0,2}|UNLIMITED|INFINITE)$", re.IGNORECASE)
KEYS = (
    "partition",
    "account",
    "qos",
    "time",
    "nodes",
    "gpus_per_node",
    "procs_per_node",
    "sbatch",
    "setup",
    "python",
    "rdzv_port",
    "poll_s",
)

# sbatch options the executor sets itself, and why a study may not: the job's name finds it again after a
# restart and proves a recorded id is still ours (another name: a restarted runner took the running job for
# ended and submitted a second beside it), its logs are where status reads them, and its nodes are the world
# size that the batch rule was checked against.
_NAME = "nanostudy names each job itself (nanostudy-<cell>-<attempt>), to find it again after a restart"
_LOGS = "nanostudy sends each job's output to RUN_DIR/logs/attempt_N.{out,err}, where status reads it"
_NODES = "set the nodes with resources.slurm.nodes (the batch rule counts the processes of every node)"
_ARRAY = "each attempt is one job, not an array"
_OWN_OPTIONS = {
    **dict.fromkeys(("--job-name", "-J"), _NAME),
    **dict.fromkeys(("--output", "-o", "--error", "-e"), _LOGS),
    **dict.fromkeys(("--nodes", "-N"), _NODES),
    **dict.fromkeys(("--array", "-a"), _ARRAY),
}
# sbatch (getopt_long) takes any unambiguous start of a long option: --job=x renames the job as
# --job-name=x does. The shortest start of each of ours that sbatch takes (shorter ones are ambiguous).
_SHORTEST = {
    "--job-name": "--j",
    "--output": "--ou",
    "--error": "--er",
    "--nodes": "--nodes",
    "--array": "--ar",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class SlurmSettings:
    partition: str | None = None  # None: the cluster's default partition
    account: str | None = None
    qos: str | None = None
    time: str | None = None  # sbatch --time; None: the partition's default
    nodes: int = 1  # per cell
    gpus_per_node: int = 1  # trainer processes per node, one per GPU; 0: CPU processes (procs_per_node)
    procs_per_node: int = 1  # with gpus_per_node 0 only: CPU trainer processes per node
    sbatch: tuple[str, ...] = ()  # extra sbatch options, e.g. "--mem=0"
    setup: tuple[str, ...] = ()  # shell lines run on the first node before srun (module load, ...)
    python: str | None = None  # the interpreter on the nodes; None: the runner's own (a shared filesystem)
    rdzv_port: int | None = None  # None: derived from the job id, so jobs sharing a node do not collide
    poll_s: float = 10.0  # seconds between squeue calls

    @property
    def processes_per_node(self) -> int:
        return self.gpus_per_node or self.procs_per_node

    @property
    def processes_per_cell(self) -> int:
        """The trainer's world size."""
        return self.nodes * self.processes_per_node

    def to_dict(self) -> dict[str, Any]:
        return {key: list(v) if isinstance(v := getattr(self, key), tuple) else v for key in KEYS}


def parse_settings(
    raw: Mapping[str, Any], *, default_gpus_per_node: int = 1
) -> tuple[SlurmSettings, list[tuple[str, str]]]:
    """The settings from the study's mapping, and a (key, message) problem for each bad value (its default
    is kept, so later checks still run)."""
    problems: list[tuple[str, str]] = []
    values: dict[str, Any] = {"gpus_per_node": default_gpus_per_node}

    def bad(key: str, message: str) -> None:
        problems.append((key, message))

    for key, value in raw.items():
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(KEYS)}"
            bad(key, f"unknown key ({hint})")
        elif value is None:
            continue
        elif key in ("partition", "account", "qos", "python"):
            # A path may hold spaces (the script quotes it); Slurm's names may not.
            spaced = key == "python" and isinstance(value, str) and value == value.strip()
            if isinstance(value, str) and value.strip() and (spaced or not any(c.isspace() for c in value)):
                # The script quotes the interpreter: `~` and $HOME are expanded here, on the login node.
                values[key] = os.path.expandvars(os.path.expanduser(value)) if key == "python" else value
            elif isinstance(value, int | float) and not isinstance(value, bool):
                # YAML reads 12345 as a number (and 0123 as octal 83): a name of digits needs quotes.
                bad(key, f"expected a name, got the number {value!r}: write a name of digits in quotes")
            else:
                bad(key, f"expected a name without spaces, got {value!r}")
        elif key == "time":
            text = str(value)  # YAML reads 90 as an int: 90 minutes for Slurm
            if _TIME.match(text):
                values[key] = text
            else:
                bad(key, f"expected a Slurm time (minutes, HH:MM:SS, D-HH:MM:SS or UNLIMITED), got {value!r}")
        elif key in ("nodes", "procs_per_node", "gpus_per_node", "rdzv_port"):
            minimum = {"gpus_per_node": 0, "rdzv_port": 1024}.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                bad(key, f"expected an integer >= {minimum}, got {value!r}")
            elif value > 65535:
                bad(key, f"expected an integer <= 65535, got {value!r}")
            else:
                values[key] = value
        elif key in ("sbatch", "setup"):
            lines = [value] if isinstance(value, str) else value
            if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
                bad(key, f"expected a list of strings, got {value!r}")
            elif key == "sbatch" and (wrong := [s for s in lines if not _sbatch_option(s)]):
                bad(key, f"{wrong[0]!r} is not an sbatch option (write it as '--mem=0' or '#SBATCH --mem=0')")
            elif key == "sbatch" and (ours := [s for s in lines if _why_ours(s)]):
                bad(key, f"{ours[0]!r}: {_why_ours(ours[0])}")
            else:
                values[key] = tuple(_sbatch_option(s) if key == "sbatch" else s for s in lines)
        elif key == "poll_s":
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                values[key] = float(value)
            else:
                bad(key, f"expected a positive number of seconds, got {value!r}")
    if "procs_per_node" in values and values["gpus_per_node"] > 0:
        bad("procs_per_node", "only with gpus_per_node: 0 (on GPUs a node runs one process per GPU)")
        values.pop("procs_per_node")
    return SlurmSettings(**values), problems


def _sbatch_option(line: str) -> str:
    """'--mem=0' from '--mem=0' or '#SBATCH --mem=0'; '' when it is not an option."""
    option = line.strip().removeprefix("#SBATCH").strip()
    return option if option.startswith("-") and "\n" not in option else ""


def _why_ours(line: str) -> str | None:
    """Why a study may not give this sbatch option (the executor sets it itself), or None."""
    option = _sbatch_option(line)
    if not option.startswith("--"):
        return _OWN_OPTIONS.get(option[:2])
    name = option.split("=", 1)[0].split(None, 1)[0]
    ours = [full for full, least in _SHORTEST.items() if name.startswith(least) and full.startswith(name)]
    return _OWN_OPTIONS[ours[0]] if ours else None
