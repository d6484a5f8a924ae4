"""One sync run, from settings to summary: take the writer lock, open the store and the client,
run, close. A run that finds another writer raises LockedError before touching the database."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from . import binding, lock
from .api import RuntypeClient
from .config import Settings
from .store import Store
from .sync import Summary, Sync


def run_sync(settings: Settings, *, full: bool = False, stop: threading.Event | None = None,
             progress: Callable[[dict], None] | None = None, transport=None,
             max_delete: str | None = None, rebind: bool = False) -> Summary:
    settings.require_key()
    with lock.writing(settings.db_path):
        store = Store.open(settings.db_path)
        try:
            binding.check(store, settings, rebind=rebind)
            stop = stop or threading.Event()
            with RuntypeClient(settings, transport=transport, stop=stop) as client:
                summary = Sync(settings, store, client, full=full, stop=stop,
                               progress=progress, max_delete=max_delete).run()
            if summary.counts.get("pages") and summary.outcome != "auth_failed":
                binding.record(store, settings)
            if settings.on_delete == "purge":
                from .purge import forget_tombstoned
                forget_tombstoned(store)
            return summary
        finally:
            store.close()


def describe(summary: Summary) -> str:
    """The one-line account of a run, for the sync command and the daemon's log."""
    c = summary.counts
    line = (f"sync {summary.outcome} ({summary.mode}) in {summary.seconds:.1f}s: "
            f"{c.get('conversations_seen', 0)} conversations walked, "
            f"{c.get('conversations_changed', 0)} changed, "
            f"{c.get('conversations_deleted', 0)} deleted, "
            f"{c.get('messages_written', 0)} messages written; "
            f"{c.get('requests', 0)} requests ({c.get('retries', 0)} retries, "
            f"{c.get('throttled', 0)} throttled)")
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
