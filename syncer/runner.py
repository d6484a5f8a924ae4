"""One sync run, from settings to summary: take the writer lock, open the store and the client,
run, close. A run that finds another writer raises LockedError before touching the database."""
from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import threading
from collections.abc import Callable

from . import binding, lock
from .api import RuntypeClient
from .config import Settings
from .store import Store
from .sync import Summary, Sync

STATE_GAPS = "gaps_reported"     # a digest of the incomplete conversations the last run left


def run_sync(settings: Settings, *, full: bool = False, stop: threading.Event | None = None,
             progress: Callable[[dict], None] | None = None, transport=None,
             max_delete: str | None = None, rebind: bool = False, bounds=None) -> Summary:
    """One sync. `transport` and `bounds` (the requests' deadlines, with their clock) are for
    tests."""
    settings.require_key()
    with lock.writing(settings.db_path):
        store = Store.open(settings.db_path)
        try:
            binding.check(store, settings, rebind=rebind)
            stop = bounds.stop if bounds is not None else stop or threading.Event()
            with RuntypeClient(settings, transport=transport, stop=stop, bounds=bounds) as client:
                summary = Sync(settings, store, client, full=full, stop=stop,
                               progress=progress, max_delete=max_delete).run()
            summary.gaps_changed = _note_gaps(store, summary.gaps)
            if summary.counts.get("pages") and summary.outcome != "auth_failed":
                binding.record(store, settings)
            if settings.on_delete == "purge":
                from .purge import forget_tombstoned
                forget_tombstoned(store)
            return summary
        finally:
            store.close()


def _note_gaps(store: Store, gaps: list[tuple[str, int, int]]) -> bool:
    """Whether the set of incomplete conversations differs from the one the last run left,
    which is replaced by this one's. A database that refuses the write only costs the
    "unchanged" answer."""
    digest = (hashlib.sha256("\n".join(sorted(cid for cid, _, _ in gaps)).encode()).hexdigest()
              if gaps else None)
    try:
        if store.get_state(STATE_GAPS) == digest:
            return False
        with store.transaction():
            store.set_state(STATE_GAPS, digest)
    except sqlite3.Error:
        pass
    return True


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else many or one + 's'}"


def describe(summary: Summary) -> str:
    """The one-line account of a run, for the sync command and the daemon's log."""
    c = summary.counts
    line = (f"sync {summary.outcome} ({summary.mode}) in {summary.seconds:.1f}s: "
            f"{_n(c.get('conversations_seen', 0), 'conversation')} walked, "
            f"{c.get('conversations_changed', 0):,} changed, "
            f"{c.get('conversations_deleted', 0):,} deleted, "
            f"{_n(c.get('messages_written', 0), 'message')} written; "
            f"{_n(c.get('requests', 0), 'request')} ({_n(c.get('retries', 0), 'retry', 'retries')}, "
            f"{c.get('throttled', 0):,} throttled)")
    if summary.early_stop:
        line += "; stopped early at the watermark"
    return line


def run_verify(settings: Settings, *, fix: bool = False, deep: bool = False):
    """Audit the mirror against the API (with `deep`, every message too); with `fix`, mend
    what only verify can and queue the rest for the next sync. Read-only without `fix`."""
    from .verify import fix_differences, verify
    settings.require_key()
    with lock.writing(settings.db_path) if fix else contextlib.nullcontext():
        store = (Store.open(settings.db_path) if fix
                 else Store.open_readonly(settings.db_path, check=True))
        try:
            binding.check(store, settings)
            with RuntypeClient(settings) as client:
                report = verify(settings, store, client, deep=deep, writable=fix)
            if fix:
                fix_differences(store, report)
            return report
        finally:
            store.close()
