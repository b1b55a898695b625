"""One writer per data (or tokenizer) directory: an exclusive flock on `ROOT/.locks/<its name>.lock`.

Two processes asking for the same data at once (two `nanostudy prepare`, or two studies run together) would
otherwise write the same resumable state files and delete each other's (`.prepare/` is removed when done).
The second one waits for the first, then finds the manifest and uses the data. The kernel drops the lock
with its process, however it ends, so a crashed preparation never leaves the directory locked. The lock
files stay (removing one would race with a process about to lock it); they are empty but for a pid, and kept
apart in `.locks/` so that a failed preparation leaves nothing beside the data directories.
"""

import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCKS_DIR = ".locks"


@contextmanager
def exclusive(directory: Path, *, root: Path, doing: str = "preparing") -> Iterator[None]:
    """Hold `directory`'s lock (under the data root `root`) for the body, waiting, with one line on stderr
    naming the holder's pid, while another process holds it."""
    path = root / LOCKS_DIR / f"{directory.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"prepare: waiting for another process {doing} {directory} ({_holder(path)})", file=sys.stderr
            )
            fcntl.flock(fd, fcntl.LOCK_EX)
        record = f"{os.getpid()}\n".encode()
        os.pwrite(fd, record, 0)
        os.ftruncate(fd, len(record))
        yield
    finally:
        os.close(fd)  # closing the descriptor drops the flock


def _holder(path: Path) -> str:
    try:
        return f"pid {int(path.read_text())}"
    except (OSError, ValueError):
        return "pid unknown"
