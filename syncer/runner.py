"""One sync run, from settings to summary: open the store and the client, run, close."""
from __future__ import annotations

import threading
from collections.abc import Callable

from .api import RuntypeClient
from .config import Settings
from .store import Store
from .sync import Summary, Sync


def run_sync(settings: Settings, *, full: bool = False, stop: threading.Event | None = None,
             progress: Callable[[dict], None] | None = None, transport=None) -> Summary:
    settings.require_key()
    store = Store.open(settings.db_path)
    try:
        with RuntypeClient(settings, transport=transport) as client:
            return Sync(settings, store, client, full=full, stop=stop, progress=progress).run()
    finally:
        store.close()
