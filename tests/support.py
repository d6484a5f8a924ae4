"""Shared by the tests: build settings for a simulator, read whole tables back, compare."""
from __future__ import annotations

import json
import os
import select
import sqlite3
from collections import Counter

from syncer.config import Settings
from syncer.transform import MAX_INTEGER, TIMESTAMP_FIELDS, normalize_timestamp

KEY = "rt_test_simulator"


def settings_for(server, db_path, **overrides) -> Settings:
    values = dict(base_url=server.base_url, api_key=KEY, db_path=str(db_path), concurrency=4,
                  max_retries=8, timeout=5.0)
    values.update(overrides)
    return Settings(**values)


def _restore(raw: str) -> dict:
    """The record as received, with timestamps in the canonical form the simulator's snapshot
    uses; the mirror keeps both (columns normalised, _raw as received)."""
    record = json.loads(raw)
    for name in TIMESTAMP_FIELDS:
        if record.get(name) is not None:
            record[name] = normalize_timestamp(record[name])
    return record


def mirror(db_path) -> tuple[dict[str, dict], dict[str, dict]]:
    """Live conversations and their messages as records, keyed by id."""
    conn = sqlite3.connect(db_path)
    conversations = {}
    for row in conn.execute("SELECT * FROM conversations WHERE _deleted_at IS NULL"):
        names = [d[0] for d in conn.execute("SELECT * FROM conversations LIMIT 0").description]
        row = dict(zip(names, row))
        record = _restore(row["_raw"])
        # every API column agrees with the record it came from
        for name, value in row.items():
            if name.startswith("_") or name not in record:
                continue
            expected = record[name]
            if name == "messageCount" and value is None and expected > MAX_INTEGER:
                continue              # over what SQLite holds: the column empty, _raw keeps it
            if isinstance(expected, (dict, list)):
                value = json.loads(value)
            assert value == expected, (row["id"], name)
        conversations[row["id"]] = record
    messages = {}
    for cid, raw, content, created in conn.execute(
            "SELECT m.conversationId, m._raw, m.content, m.createdAt FROM messages m "
            "JOIN conversations c ON c.id = m.conversationId WHERE c._deleted_at IS NULL"):
        record = _restore(raw)
        assert (record["content"], record["createdAt"], record["conversationId"]) == \
            (content, created, cid)
        messages[record["id"]] = record
    conn.close()
    return conversations, messages


def upstream_tables(upstream) -> tuple[dict[str, dict], dict[str, dict]]:
    conversations, messages = upstream.snapshot()
    return {c["id"]: c for c in conversations}, {m["id"]: m for m in messages}


def assert_exact(db_path, upstream) -> None:
    """The mirror equals upstream: every live conversation and every message, whole records."""
    got_c, got_m = mirror(db_path)
    want_c, want_m = upstream_tables(upstream)
    assert sorted(got_c) == sorted(want_c)
    assert got_c == want_c
    assert sorted(got_m) == sorted(want_m)
    assert got_m == want_m
    assert fts_ok(db_path)


def assert_exact_except_gaps(db_path, upstream) -> dict[str, tuple[int, int]]:
    """Conversations equal; messages held are exactly upstream's where held; a conversation
    holding fewer than upstream has says so. Returns {id: (held, count)} for the gaps."""
    got_c, got_m = mirror(db_path)
    want_c, want_m = upstream_tables(upstream)
    assert got_c == want_c
    assert set(got_m) <= set(want_m)
    assert all(got_m[i] == want_m[i] for i in got_m)
    conn = sqlite3.connect(db_path)
    gaps = {cid: (held, count) for cid, held, count, missing, complete in conn.execute(
        "SELECT id, _messages_held, messageCount, _messages_missing, _messages_complete "
        "FROM conversations WHERE _deleted_at IS NULL")
        if not complete and (missing == count - held or pytest_fail(cid))}
    for cid, (held, count) in gaps.items():
        assert held < count
    held_per = {}
    for m in got_m.values():
        held_per[m["conversationId"]] = held_per.get(m["conversationId"], 0) + 1
    for cid, c in want_c.items():
        if cid not in gaps:
            assert held_per.get(cid, 0) == c["messageCount"], cid
    conn.close()
    assert fts_ok(db_path)
    return gaps


def assert_as_of(db_path, snapshot, *, pending=frozenset(), in_scope=lambda c: True,
                 whole_walk: bool = True) -> None:
    """The mirror after a run that exited 0, judged against `snapshot` (upstream.snapshot() taken
    when the run began): every conversation in scope is held exactly, with exactly its
    messages or a recorded gap. `pending`: ids changed while the run ran, whose state may be
    either. Live conversations of the mirror that are not upstream in scope are allowed only
    when the run did not walk the whole list (deletions are concluded by whole walks)."""
    got_c, got_m = mirror(db_path)
    want_c = {c["id"]: c for c in snapshot[0] if in_scope(c) and c["id"] not in pending}
    want_m = {m["id"]: m for m in snapshot[1] if m["conversationId"] in want_c}
    for cid, record in want_c.items():
        assert got_c.get(cid) == record, f"conversation {cid}: mirror differs from upstream"
    if whole_walk:
        extra = {cid for cid, c in got_c.items()
                 if cid not in want_c and cid not in pending and in_scope(c)}
        assert not extra, f"live in the mirror, gone upstream after a whole walk: {extra}"
    held = {i: m for i, m in got_m.items() if m["conversationId"] in want_c}
    assert set(held) <= set(want_m), f"messages not upstream: {set(held) - set(want_m)}"
    assert all(held[i] == want_m[i] for i in held)
    conn = sqlite3.connect(db_path)
    recorded = {cid: (complete, missing) for cid, complete, missing in conn.execute(
        "SELECT id, _messages_complete, _messages_missing FROM conversations "
        "WHERE _deleted_at IS NULL")}
    conn.close()
    per = Counter(m["conversationId"] for m in held.values())
    upstream_per = Counter(m["conversationId"] for m in want_m.values())
    for cid, record in want_c.items():
        count = upstream_per.get(cid, 0)
        if per.get(cid, 0) != count:
            complete, missing = recorded[cid]
            assert not complete and missing == record["messageCount"] - per.get(cid, 0), \
                f"{cid}: holds {per.get(cid, 0)} of {count} messages, gap not recorded"
    assert fts_ok(db_path)


def show_bumps(upstream, settings) -> None:
    """Let the mirror see a new message bump a conversation's updatedAt (on a server where it
    does): one message on the newest conversation, one sync. Only such evidence allows a walk
    to stop early at the watermark."""
    from syncer.runner import run_sync
    newest = max(upstream.snapshot()[0], key=lambda c: (c["updatedAt"], c["id"]))["id"]
    upstream.add_message(newest, "a reply that bumps updatedAt")
    assert run_sync(settings).exit_code == 0


def pytest_fail(cid):
    raise AssertionError(f"{cid}: _messages_missing disagrees with messageCount - held")


def fts_ok(db_path) -> bool:
    """FTS5's own integrity check, and the index holds exactly the rows of its table."""
    conn = sqlite3.connect(db_path)
    for table, fts in (("messages", "messages_fts"), ("conversations", "conversations_fts")):
        conn.execute(f"INSERT INTO {fts}({fts}, rank) VALUES ('integrity-check', 1)")
    conn.close()
    return True


def build_mirror(path, *, seed: int, conversations: int, prepare=None,
                 delete: int | None = None) -> str:
    """A mirror synced from a fresh simulator. `prepare(upstream)` changes the data before the
    sync; `delete` is the index (among the generated ids) of a conversation then deleted
    upstream and tombstoned by a full sync."""
    from syncer.runner import run_sync
    from syncer.simulator import Behaviour, SimulatorServer, generate
    upstream = generate(seed=seed, conversations=conversations)
    ids = upstream.conversation_ids()
    if prepare is not None:
        prepare(upstream)
    with SimulatorServer(upstream, Behaviour()) as server:
        settings = Settings(base_url=server.base_url, api_key=KEY, db_path=str(path),
                            concurrency=4)
        run_sync(settings)
        if delete is not None:
            upstream.delete_conversation(ids[delete])
            run_sync(settings, full=True)
    return str(path)


def dict_rows(db, sql, args=()) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    out = [dict(r) for r in conn.execute(sql, args)]
    conn.close()
    return out


def read_store(db):
    """The read-only store as a context manager."""
    import contextlib

    from syncer.store import Store
    return contextlib.closing(Store.open_readonly(str(db)))


def process_env(server, key: str = KEY) -> dict:
    """The environment for a `syncer` subprocess pointed at `server` (nothing else inherited
    that would redirect it)."""
    import os
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTYPE_", "SYNCER_"))}
    env.update(RUNTYPE_BASE_URL=server.base_url, RUNTYPE_API_KEY=key)
    return env


def wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    """Poll until `predicate()` is true; fail naming `what` after `timeout` seconds."""
    import time
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def assert_stats_kept(db_path) -> None:
    """The stats kept at write time (_turns, _daily, _conv_days) equal a recount over the
    mirror's messages, whatever wrote them (sync, purge, verify --fix)."""
    from collections import Counter
    from datetime import datetime
    from itertools import groupby
    from syncer.migrations import LATEST
    conn = sqlite3.connect(db_path)
    if conn.execute("PRAGMA user_version").fetchone()[0] < LATEST:
        conn.close()
        return       # killed before its schema was complete: the next run migrates it
    msgs = conn.execute("SELECT id, conversationId, createdAt, role, direction FROM messages "
                        "ORDER BY conversationId, createdAt, id").fetchall()
    turns = {}
    for _, group in groupby(msgs, key=lambda m: m[1]):
        thread = list(group)
        for k, m in enumerate(thread):
            if m[3] != "user" or (k and thread[k - 1][3] == "user"):
                continue
            reply = next((r for r in thread[k + 1:] if r[3] != "user"), None)
            if reply:
                turns[m[0]] = round((datetime.fromisoformat(reply[2]) -
                                     datetime.fromisoformat(m[2])).total_seconds(), 3)
    assert conn.execute("SELECT count(*) FROM _stats_deferred").fetchone() == (0,)
    assert dict(conn.execute("SELECT messageId, delay FROM _turns")) == turns
    daily = Counter((m[2] and m[2][:10], m[3], m[4]) for m in msgs)
    assert {(d, r, w): n for d, r, w, n in conn.execute(
        "SELECT day, role, direction, n FROM _daily") if n} == daily
    assert {row[:4]: row[4] for row in conn.execute(
        "SELECT conversationId, day, role, direction, n FROM _conv_days")} == Counter(
        (m[1], m[2] and m[2][:10], m[3], m[4]) for m in msgs)
    conn.close()


def read_terminal(master: int, when=None) -> bytes:
    """Everything written to a pseudo-terminal's other side until the child closes it (no
    output for 60 s fails the test). `when(text_so_far)` is called as output arrives."""
    raw = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        assert ready, "no output for 60s"
        try:
            chunk = os.read(master, 65536)
        except OSError:          # EIO: the child closed the terminal
            break
        if not chunk:
            break
        raw += chunk
        if when:
            when(raw.decode(errors="replace"))
    os.close(master)
    return raw
