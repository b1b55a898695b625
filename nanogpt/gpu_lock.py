"""One trainer trains on a GPU at a time; the next one may get ready beside it.

The runner starts a cell's trainer on a GPU that another cell of the study is still training on, so that the
new trainer's start-up (interpreter, imports, CUDA, model, data, compilation) happens while the GPU is busy,
and its first step follows the other's exit at once. Each GPU has a lock file; the runner names this rank's
in the trainer's environment (`GPU_LOCKS_ENV`: one path per local rank, joined with os.pathsep). A trainer
holds its lock (fcntl.flock, exclusive) from its first training step until its process exits; the kernel
releases it then, however the process ends (a crash, kill -9), so a lock is never left behind.

A trainer whose lock is taken is *on standby*: it sets up within the GPU memory the other leaves free,
compiles by a throwaway step (nanogpt.train), and waits for the lock before it writes its `start` event.
Without the variable (a trainer run by hand, Slurm) there is no lock and nothing changes.
"""

import fcntl
import os
import tempfile
from pathlib import Path

GPU_LOCKS_ENV = "NANOSTUDY_GPU_LOCKS"


class GpuLock:
    """This rank's GPU lock file, opened (created if missing), not yet taken."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Never closed: the lock lasts as long as the process (the descriptor is not inherited by children).
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.held = False

    @classmethod
    def from_env(cls, local_rank: int, environ: dict[str, str] | None = None) -> "GpuLock | None":
        """The lock the runner named for this local rank, or None when it named none."""
        value = (os.environ if environ is None else environ).get(GPU_LOCKS_ENV, "")
        paths = [path for path in value.split(os.pathsep) if path]
        if not paths:
            return None
        if local_rank >= len(paths):
            raise ValueError(
                f"{GPU_LOCKS_ENV}: names {len(paths)} lock file(s), none for local rank {local_rank}"
            )
        return cls(paths[local_rank])

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it; True if this process holds it now."""
        if not self.held:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            self.held = True
        return True

    def acquire(self) -> None:
        """Wait until the lock is free and take it (a signal's default action still ends the wait)."""
        if not self.held:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            self.held = True

    def release(self) -> None:
        """Let the next trainer have the GPU (a trainer never calls this: its exit does it)."""
        if self.held:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self.held = False


def default_lock_dir() -> Path:
    """The GPU locks of this user on this host: every study's runner uses the same ones (another user's
    processes are someone else's, and a runner never starts a cell on a GPU they use)."""
    return Path(tempfile.gettempdir()) / f"nanostudy-{os.getuid()}" / "gpu-locks"


def lock_path(directory: str | os.PathLike, gpu: int | str) -> Path:
    """The lock file of GPU `gpu` (its NVML index on this host) under `directory`."""
    return Path(directory) / f"gpu{gpu}.lock"
