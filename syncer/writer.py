"""One thread commits what the fetch threads read, many conversations per transaction.

Fetch threads only talk HTTP; this thread alone writes their results. Batching cuts the cost
that dominates a large first sync on a small machine: every commit rewrites, in the WAL, each
index page it touched, and message ids and conversation ids are random, so a commit touches
pages all over the messages' indexes (and starts a full-text segment). Few large commits write
the file a few times over; many small ones wrote it 8-17 times (BENCHMARKS.md). A batch is
bounded by count and by bytes, so memory stays flat. Each conversation is still all-or-nothing
(a batch is one transaction) and stays in `_sync_queue` until its batch commits, so a kill at
any instant loses nothing but the fetching of at most one batch.

A disk that fills during a commit does not lose the batch: it is committed again in halves,
and halves of those, so that every conversation that fits is kept; the first single one that
does not fit ends the writer with DiskFull, which says what was kept, what stays queued and
about how much more space the rest needs (at the bytes per conversation this run wrote).
"""
from __future__ import annotations

import os
import queue
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable

from .errors import SyncerError
from .store import Fetched, Store

BATCH = 4096                  # conversations per transaction at most
BATCH_BYTES = 16 * 1024 ** 2  # ... and about this much record text
LINGER = 10.0                 # seconds a batch waits to fill before it is committed anyway
QUEUE = 64                    # conversations waiting for the writer at most
_DONE = object()              # commit what is batched and stop
_FLUSH = object()             # commit what is batched now


def _size(item: Fetched) -> int:
    return len(item.row.get("_raw") or "") + sum(len(m.get("_raw") or "") for m in item.messages)


class WriterFailed(SyncerError):
    """The writer thread died (disk full, I/O error); the original error is its __cause__.
    What it had not committed stays queued for the next run."""


class DiskFull(SyncerError):
    """The disk filled: what fit is committed, the rest stays queued."""


def is_full(e: BaseException) -> bool:
    return (isinstance(e, sqlite3.OperationalError)
            and (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_FULL)


def _megabytes(n: float) -> str:
    n = max(n, 0)
    return f"{n / 1_048_576:,.0f} MB" if n >= 1_048_576 else f"{n / 1024:,.0f} kB"


class BatchWriter:
    def __init__(self, store: Store, run_id: int,
                 on_saved: Callable[[list[Fetched], list[tuple[int, int]]], None],
                 capacity: int = QUEUE):
        self.store = store
        self.run_id = run_id
        self.on_saved = on_saved
        self._queue: queue.Queue = queue.Queue(capacity)
        self._error: BaseException | None = None
        self._outstanding = 0             # handed over, not yet committed
        self._committed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._kept = 0                    # conversations committed by this writer
        self._start_bytes = self._file_bytes()

    def __enter__(self) -> "BatchWriter":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, item: Fetched) -> None:
        """Hand a conversation over; blocks while the queue is full."""
        with self._committed:
            self._outstanding += 1
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def flush(self) -> None:
        """Commit what is handed over now and wait for it; re-raises the thread's error."""
        while self._thread.is_alive() and self._outstanding:
            try:
                self._queue.put(_FLUSH, timeout=0.5)
                break
            except queue.Full:
                self._raise_if_failed()
        with self._committed:
            while self._outstanding and self._error is None:
                self._committed.wait(0.5)
        self._raise_if_failed()

    def close(self) -> None:
        """Commit what is queued and stop the thread; re-raises the thread's error."""
        if self._thread.is_alive():
            while self._thread.is_alive():
                try:
                    self._queue.put(_DONE, timeout=0.5)
                    break
                except queue.Full:
                    continue
            self._thread.join()
        self._raise_if_failed()

    def _commit(self, batch: list[Fetched]) -> None:
        """Commit the batch; on a full disk, commit it in halves, down to one conversation."""
        try:
            results = self.store.save_conversations(batch, self.run_id)
        except sqlite3.OperationalError as e:
            if not is_full(e):
                raise
            if len(batch) == 1:
                raise self._disk_full(batch[0]) from e
            half = len(batch) // 2
            self._commit(batch[:half])
            self._commit(batch[half:])
            return
        self._kept += len(batch)
        self.on_saved(batch, results)
        with self._committed:
            self._outstanding -= len(batch)
            self._committed.notify_all()

    def _file_bytes(self) -> int:
        path = self.store.path
        return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))

    def _disk_full(self, first: Fetched) -> DiskFull:
        """What a full disk kept, what it left queued and about what the rest needs."""
        queued = len(self.store.queued())
        grown = self._file_bytes() - self._start_bytes
        per = grown / self._kept if self._kept >= 10 and grown > 0 else 3 * _size(first)
        where = os.path.dirname(os.path.abspath(self.store.path))
        free = shutil.disk_usage(where).free
        return DiskFull(f"the disk of {where} is full ({_megabytes(free)} free): "
                        f"{self._kept} conversations of this run were committed and stay, "
                        f"{queued} are queued; about {_megabytes(queued * per - free)} more "
                        "are needed: free some space and run `syncer sync` again, it resumes "
                        "from there")

    def _raise_if_failed(self) -> None:
        if isinstance(self._error, DiskFull):
            raise self._error
        if self._error is not None:
            raise WriterFailed(f"writing the mirror failed: {self._error}") from self._error

    def _run(self) -> None:
        try:
            done = False
            while not done:
                first = self._queue.get()
                if first is _DONE:
                    return
                if first is _FLUSH:
                    continue
                batch, size = [first], _size(first)
                deadline = time.monotonic() + LINGER
                while len(batch) < BATCH and size < BATCH_BYTES:
                    try:
                        item = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
                    except queue.Empty:
                        break
                    if item is _DONE:
                        done = True
                        break
                    if item is _FLUSH:
                        break
                    batch.append(item)
                    size += _size(item)
                self._commit(batch)
        except BaseException as e:  # recorded, and raised in the fetch threads and by close()
            self._error = e
            with self._committed:
                self._committed.notify_all()
