"""One runner per study: an exclusive flock on a lock file, released by the kernel however the runner dies.

The file lives beside a SQLite database (`nanostudy.db.<study>.runner.lock`); for a server database it lives
in the user's cache directory, keyed by the URL and the study, so it guards the study on this machine only
(two machines sharing a PostgreSQL study would each need a lease in the database itself). The holder
writes its pid, host and start time into the file, for the message the second runner prints.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from store import Store

# `is_locked` probes with a shared lock for an instant, and `held_if_free` holds a free lock while another
# study's runner takes over an attempt; a runner starting in that instant waits it out.
_ACQUIRE_WAIT_S = 1.0


class StudyLockedError(RuntimeError):
    """Another runner holds the study."""


def lock_path(store: Store, study_name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", study_name)[:80]
    if store.engine.url.get_backend_name() == "sqlite":
        return Path(f"{store.name}.{safe}.runner.lock")
    key = hashlib.sha256(f"{store.name}\n{study_name}".encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "nanostudy" / "locks" / f"{safe}-{key}.runner.lock"


class StudyLock:
    """`with StudyLock(path, study_name):` runs the body as the study's only runner, or raises
    StudyLockedError naming the runner that holds it."""

    def __init__(self, path: Path, study_name: str):
        self.path = Path(path)
        self.study_name = study_name
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _flock_within(fd, _ACQUIRE_WAIT_S):
            os.close(fd)
            raise StudyLockedError(
                f"study {self.study_name!r} is already being run by {holder(self.path)} "
                f"(lock {self.path}); stop that runner first, or watch it with `nanostudy status`"
            ) from None
        os.ftruncate(fd, 0)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.write(fd, (json.dumps(record) + "\n").encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "StudyLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _flock_within(fd: int, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def is_locked(path: Path) -> bool:
    """Whether a runner holds the lock now (a probe: takes and drops it when free)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def held_if_free(path: Path) -> Iterator[bool]:
    """Hold a study's lock for the body if no runner holds it (True), else False at once; the holder's record
    in the file is left as it is.

    Another study's runner takes over an attempt of a dead runner under that runner's study lock: the dead
    runner's successor, starting in that instant, waits for it (`StudyLock` waits up to a second) and then
    finds the attempt taken, so the two never both recover it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            free = True
        except BlockingIOError:
            free = False
        yield free
    finally:
        os.close(fd)  # closing the descriptor drops the flock


def holder(path: Path) -> str:
    """'pid 1234 on host (since 12:00:01)' from the lock file, or 'another runner' if unreadable."""
    try:
        record = json.loads(Path(path).read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["since"]))
        return f"pid {record['pid']} on {record['host']} (since {since})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another runner"
