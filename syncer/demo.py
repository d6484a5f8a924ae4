"""`syncer demo`: the whole tool end to end with no network and no key.

Starts the simulator on a free loopback port, mirrors it into a fresh database, changes data
upstream, syncs again incrementally, and searches the mirror.

The demo never overwrites a mirror: it writes only to a path where nothing exists, or to a
database an earlier demo made (marked with the `_sync_state` key `demo` before its first sync).
Anything else is refused before a byte of it is touched.
"""
from __future__ import annotations

import shlex
import sqlite3
from collections.abc import Callable
from pathlib import Path

from . import config, lock
from .errors import StoreError
from .migrations import APPLICATION_ID, connect_untouched
from .outputs import companion_clash
from .runner import run_sync
from .simulator import Behaviour, SimulatorServer, generate
from .store import Store
from .sync import Summary

DEMO_KEY = "rt_test_demo"
DEMO_STATE = "demo"
COMPANIONS = ("-wal", "-shm", "-journal")


def _made_by_demo(path: Path) -> bool:
    """Whether `path` is a syncer database that `syncer demo` made. Reads only."""
    try:
        conn = connect_untouched(path)
        try:
            if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                return False
            row = conn.execute("SELECT value FROM _sync_state WHERE key = ?",
                               (DEMO_STATE,)).fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False
    return row is not None and row[0] == "1"


def _check_free(path: Path) -> bool:
    """Whether `path` holds an earlier demo (True) or nothing (False); StoreError for anything
    else. Reads only."""
    if path.is_dir():
        raise StoreError(f"{path} is a directory; pass --db with a new file for the demo")
    if what := companion_clash(str(path)):
        raise StoreError(f"{path} is {what}; pass --db with a new file for the demo")
    if not path.exists():
        leftover = [f"{path}{s}" for s in COMPANIONS if Path(f"{path}{s}").exists()]
        if leftover:
            raise StoreError(f"{leftover[0]} exists without its database (it may hold data); "
                             "move it away or pass --db with a new file for the demo")
        return False
    if not _made_by_demo(path):
        raise StoreError(f"{path} exists and is not a database made by `syncer demo`; the demo "
                         "writes only a new file or its own earlier demo: pass --db NEW.db")
    return True


def _claim(path: Path) -> None:
    """Make `path` free for a new demo database by removing an earlier demo's files. Call
    holding the writer lock."""
    if _check_free(path):
        for suffix in ("", *COMPANIONS):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def _create(path: Path) -> None:
    """A new, empty mirror marked as the demo's own, so that a later demo may replace it."""
    store = Store.open(str(path))
    try:
        with store.transaction():
            store.set_state(DEMO_STATE, "1")
    finally:
        store.close()


def _line(title: str, s: Summary) -> str:
    c = s.counts
    return (f"{title}: {s.outcome} in {s.seconds:.2f}s, {c['conversations_seen']} conversations "
            f"walked, {c['conversations_changed']} fetched, {c['conversations_deleted']} deleted, "
            f"{c['messages_written']} messages written, {c['requests']} requests, "
            f"{len(s.gaps)} conversations with message gaps")


def run_demo(path: Path, conversations: int, echo: Callable[[str], None] = print,
             command: str = "syncer") -> None:
    """Run the demo into `path` (see the module's docstring for which paths it accepts).
    `command` is how the user runs syncer, for the hint at the end."""
    _check_free(path)      # refuse before even a lock file appears beside someone's file
    with lock.writing(str(path), role="demo"):
        _claim(path)
        _create(path)
        _run(path, conversations, echo)
    echo(f"mirror: {path} (try: {command} --db {shlex.quote(str(path))} search refund)")


def _run(path: Path, conversations: int, echo: Callable[[str], None]) -> None:
    upstream = generate(seed=1, conversations=conversations)
    behaviour = Behaviour(api_key=DEMO_KEY, default_status="open", message_bumps_updated=False)
    with SimulatorServer(upstream, behaviour) as server:
        echo(f"simulator: {server.base_url} with {conversations} conversations "
             f"(no network, no real key)")
        settings = config.Settings(base_url=server.base_url, api_key=DEMO_KEY,
                                   db_path=str(path), concurrency=4)
        echo(_line("first sync ", run_sync(settings)))
        ids = upstream.conversation_ids()
        for cid in ids[:5]:
            upstream.add_message(cid, "Following up: the refund arrived, thanks a lot!")
        upstream.update_conversation(ids[5], status="closed")
        upstream.create_conversation(subject="Demo: printer on fire", participantName="Ada Demo")
        upstream.delete_conversation(ids[6])
        echo("upstream: 5 new messages, 1 status change, 1 new and 1 deleted conversation")
        echo(_line("second sync", run_sync(settings)))
        echo(_line("full sync  ", run_sync(settings, full=True)))
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    hits = conn.execute(
        "SELECT m.conversationId, m.role, snippet(messages_fts, 0, '[', ']', '…', 8) "
        "FROM messages_fts JOIN messages m ON m.rowid = messages_fts.rowid "
        "WHERE messages_fts MATCH ? ORDER BY rank LIMIT 3", ('"refund"',)).fetchall()
    conn.close()
    echo(f"search 'refund' in {path}:")
    for cid, role, snippet in hits:
        echo(f"  {cid} {role}: {snippet}")
