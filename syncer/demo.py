"""`syncer demo`: the whole tool end to end with no network and no key.

Starts the simulator on a free loopback port, mirrors it into a fresh database, changes data
upstream, syncs again incrementally, and searches the mirror.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from . import config
from .errors import StoreError
from .migrations import APPLICATION_ID
from .runner import run_sync
from .simulator import Behaviour, SimulatorServer, generate
from .sync import Summary

DEMO_KEY = "rt_test_demo"


def _remove_old_demo(path: Path) -> None:
    if not path.exists():
        return
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        conn.close()
    except sqlite3.DatabaseError:
        app_id = None
    if app_id != APPLICATION_ID:
        raise StoreError(f"{path} exists and is not a syncer mirror; pass --db to use another "
                         "file for the demo")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _line(title: str, s: Summary) -> str:
    c = s.counts
    return (f"{title}: {s.outcome} in {s.seconds:.2f}s, {c['conversations_seen']} conversations "
            f"walked, {c['conversations_changed']} fetched, {c['conversations_deleted']} deleted, "
            f"{c['messages_written']} messages written, {c['requests']} requests, "
            f"{len(s.gaps)} conversations with message gaps")


def run_demo(path: Path, conversations: int, echo: Callable[[str], None] = print) -> None:
    _remove_old_demo(path)
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
    echo(f"mirror: {path} (try: syncer --db {path} search refund)")
