"""One writer per mirror: an advisory `flock` on `<db>.lock` beside the database.

Every process that writes the mirror holds it: `syncer sync` for one run, `syncer daemon` for its
whole life. The kernel drops a flock when its holder dies, however it dies (SIGKILL, OOM, power
loss of the process), so a lock left by a killed process never blocks the next run: that is the
stale-lock detection, with no pid guessing. The file is never deleted (deleting a flock file lets
two processes lock two different inodes); it holds the holder's pid, role and start time, for
the "who is writing" message, and is emptied on release. A holder writes its details an instant
after it took the lock, in one write over whatever was there (never through an empty file); a
process that finds the lock held waits up to DETAILS_WAIT for them, so that it can always say
who is writing.

Read commands never take the lock; `holder()` only reads the file.

Within one process the lock is re-entrant through `writing()`: the daemon holds it and each
`run_sync` nested inside counts up. Two threads of one process therefore share it; one run at a
time inside a process is the scheduler's job (`max_instances=1`).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from .errors import LockedError, StoreError

DETAILS_WAIT = 2.0     # seconds a process that finds the lock held waits for the holder's details


def lock_path(db_path: str) -> Path:
    """The lock file of a database: `<db>.lock` in the same directory (symlinks resolved, so
    every spelling of one database path shares one lock)."""
    db = Path(db_path).resolve()
    return db.with_name(db.name + ".lock")


class WriterLock:
    """An exclusive, non-blocking flock on the database's lock file. Not re-entrant."""

    def __init__(self, db_path: str, role: str = "sync"):
        self.db_path = db_path
        self.path = lock_path(db_path)
        self.role = role
        self._fd: int | None = None

    def acquire(self) -> None:
        if Path(self.db_path).is_dir():
            raise StoreError(f"database path {self.db_path} is a directory")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise StoreError(f"directory of database {self.db_path} does not exist") from None
        except OSError as e:
            raise StoreError(f"cannot open the lock file {self.path}: {e.strerror}") from None
        try:
            self._lock(fd)
        except BaseException:
            os.close(fd)
            raise
        info = {"pid": os.getpid(), "role": self.role,
                "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        details = json.dumps(info).encode()
        os.pwrite(fd, details, 0)
        os.ftruncate(fd, len(details))
        self._fd = fd

    def _lock(self, fd: int) -> None:
        """Take the flock, or raise LockedError naming the holder: its details are waited for
        (up to DETAILS_WAIT) while the lock stays held, since a holder writes them an instant
        after taking it; should the lock come free meanwhile, it is taken."""
        deadline = time.monotonic() + DETAILS_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                info = holder(self.db_path)
                if info is not None or time.monotonic() >= deadline:
                    raise LockedError(locked_message(self.db_path, info)) from None
                time.sleep(0.01)
            except OSError as e:
                raise StoreError(f"cannot lock {self.path}: {e.strerror}") from None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(db_path: str) -> dict | None:
    """Who holds the lock, as written in the lock file, if that process is alive. Never locks.
    (A pid reused since a holder was killed can make this a false positive; the lock itself
    cannot be fooled that way.)"""
    try:
        text = lock_path(db_path).read_text()
        info = json.loads(text)
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return info


def locked_message(db_path: str, info: dict | None) -> str:
    if not info:
        return f"another syncer is writing {db_path}"
    what = "syncer daemon" if info.get("role") == "daemon" else "syncer"
    return f"another {what} (pid {info.get('pid')}, since {info.get('since')}) is writing {db_path}"


_held: dict[Path, tuple[WriterLock, int]] = {}
_held_guard = threading.Lock()


@contextlib.contextmanager
def writing(db_path: str, role: str = "sync") -> Iterator[None]:
    """Hold the writer lock of `db_path` for the block; nested uses in one process share it.
    Raises LockedError at once if another process holds it."""
    key = lock_path(db_path)
    with _held_guard:
        if key in _held:
            lock, depth = _held[key]
            _held[key] = (lock, depth + 1)
        else:
            lock = WriterLock(db_path, role)
            lock.acquire()
            _held[key] = (lock, 1)
    try:
        yield
    finally:
        with _held_guard:
            lock, depth = _held[key]
            if depth > 1:
                _held[key] = (lock, depth - 1)
            else:
                del _held[key]
                lock.release()
