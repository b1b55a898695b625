"""One trainer trains on a GPU at a time; the next one may get ready beside it.

The runner starts a cell's trainer on a GPU that another cell of the study is still training on, so that the
new trainer's start-up (interpreter, imports, CUDA, model, data, compilation) happens while the GPU is busy,
and its first step follows the other's exit at once. Each GPU has a lock file; the runner names this rank's
in the trainer's environment (`GPU_LOCKS_ENV`: one path per local rank, joined with os.pathsep). A trainer
holds its lock (fcntl.flock, exclusive) from its first training step until its process exits; the kernel
releases it then, however the process ends (a crash, kill -9), so a lock is never left behind.

A trainer whose lock is taken is *on standby*: it sets up, compiles by a throwaway step (nanogpt.train),
and waits for the lock before it writes its `start` event. Without the variable (a trainer run by hand,
Slurm) there is no lock and nothing changes.

Memory: a GPU with a lock holds at most two trainers, so each keeps to its half (nanogpt.train caps its
allocations at SHARED_GPU_FRAC of the GPU for its whole life and chooses its micro-batch within that). A
model that does not fit in half a GPU waits for the lock, then *claims the whole GPU*: the holder writes
`whole` into the lock file (the file's content belongs to its holder and is cleared by each new one), and a
trainer that finds the lock taken and claimed waits for it before it puts anything on the GPU.
"""

import fcntl
import os
import tempfile
from pathlib import Path

GPU_LOCKS_ENV = "NANOSTUDY_GPU_LOCKS"
WHOLE_GPU_CLAIM = b"whole\n"


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

    def _taken(self) -> None:
        """Just acquired: the previous holder's claim is void."""
        self.held = True
        os.ftruncate(self._fd, 0)

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it; True if this process holds it now."""
        if not self.held:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            self._taken()
        return True

    def acquire(self) -> None:
        """Wait until the lock is free and take it (a signal's default action still ends the wait)."""
        if not self.held:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._taken()

    def claim_whole_gpu(self) -> None:
        """Tell the trainers that start beside this one (held lock) to wait before touching the GPU."""
        assert self.held, "only the lock's holder claims the GPU"
        os.pwrite(self._fd, WHOLE_GPU_CLAIM, 0)

    def holder_claims_whole_gpu(self) -> bool:
        """Whether the lock's current holder (not this process) claimed the whole GPU."""
        return not self.held and os.pread(self._fd, len(WHOLE_GPU_CLAIM), 0) == WHOLE_GPU_CLAIM

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
