"""Checks before anything is submitted: Slurm's commands are installed, the controller answers, and Slurm
accepts the jobs' options (partition, account, QOS, GPUs, nodes, time limit) by `sbatch --test-only`, which
submits nothing. Each refusal is reported at the study key it concerns.

The run directories must be on a filesystem that the login node and every compute node share; a local
filesystem type under them is a warning (every node may be this machine), and each job's script checks
that it can read its config before it starts the trainer.
"""

import re
import shutil
from collections.abc import Callable
from pathlib import Path

from runner.slurm import commands
from runner.slurm.commands import SlurmError
from runner.slurm.script import sbatch_options
from runner.slurm.settings import SlurmSettings

# Filesystems that live on one machine's disks or memory.
LOCAL_FILESYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "vfat"}
)
# Words of sbatch's refusals, and the study key each one points at.
_REFUSAL_KEYS = (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("time", "time"))


def check_cluster(
    settings: SlurmSettings, *, runs_dir: Path, problem: Callable[[str, str], str]
) -> list[str]:
    """Raise SlurmError, its message from `problem(key, message)` ("path:LINE: key: message"), when the
    jobs cannot be submitted; return warnings otherwise."""
    missing = [name for name in commands.COMMANDS if shutil.which(name) is None]
    if missing:
        raise SlurmError(
            problem(
                "resources.executor",
                f"slurm: {', '.join(missing)} not found on PATH; run nanostudy on a login node of the "
                "cluster, where Slurm's client commands are installed",
            )
        )
    try:
        commands.cluster_config()
    except SlurmError as error:
        raise SlurmError(problem("resources.executor", f"slurm: {error}")) from None
    try:
        commands.check_submission(sbatch_options(settings))
    except SlurmError as error:
        raise SlurmError(problem(_refused_key(str(error), settings), str(error))) from None
    return _filesystem_warnings(runs_dir)


def _refused_key(message: str, settings: SlurmSettings) -> str:
    """The key of the set value whose word Slurm's message names first, as a whole word: "Invalid account
    or account/partition combination" is the account's, "Socket timed out" no key's."""
    lowered = message.lower()
    named = [
        (match.start(), key)
        for word, key in _REFUSAL_KEYS
        if getattr(settings, key) is not None and (match := re.search(rf"\b{word}\b", lowered))
    ]
    return f"resources.slurm.{min(named)[1]}" if named else "resources.slurm"


def _filesystem_warnings(runs_dir: Path) -> list[str]:
    fstype = filesystem_type(runs_dir)
    if fstype not in LOCAL_FILESYSTEMS:
        return []
    return [
        f"the run directories ({runs_dir}) are on a local filesystem ({fstype}): jobs on other nodes will "
        "not see them; put them on a filesystem every node shares (--runs-dir), unless every node is this "
        "machine"
    ]


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding `path` (its nearest existing ancestor), from /proc/mounts."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    best, fstype = "", None
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best, fstype = mount, fields[2]
    return fstype
