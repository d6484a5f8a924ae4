"""Forgetting: remove what the mirror holds of conversations deleted upstream, or inactive for
longer than a retention period, and scrub the file so that their text is gone from its bytes.

A purged conversation keeps a row with only `id`, its timestamps, `status`, `_deleted_at` and,
while it is live upstream, `_list_sig`; `_purged_at` marks it. Its messages, their full-text
entries, its personal fields (subject, participant, context, metadata, `_raw`, ...), the list
record queued for it and the records of it quarantined in `_rejects` are removed. The kept
signature is what stops a sync from fetching it again unless it changes upstream; a sync that
does write it again clears the mark (a trigger, see migrations.V2).

Each batch of conversations is one transaction (rows, FTS entries and the `_purges` record's
counters together), so a purge killed at any instant leaves a consistent database and a rerun
finishes it. `scrub()` then makes the forgetting physical: the FTS indexes are merged (a deleted
entry's tokens stay in old segments until then), the file is rebuilt with VACUUM (free pages and
the free space inside pages still hold earlier copies of rows), and the WAL is checkpointed to
zero bytes. The `_sync_state` key `purge_scrub` says a scrub is owed; it is cleared only after
the checkpoint finished, so an interrupted scrub is redone by the next purge.
"""
from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from . import lock, migrations
from .errors import StoreError
from .store import Store, now_utc
from .transform import CONVERSATION_FIELDS, DETAIL_FIELDS, format_instant

log = logging.getLogger(__name__)

SCRUB_STATE = "purge_scrub"
BATCH = 200
CHECKPOINT_WAIT_MS = 5000    # readers (search, status, export) are waited for this long
KEPT = ("id", "createdAt", "updatedAt", "lastMessageAt", "status")
CLEARED = tuple(c for c in CONVERSATION_FIELDS + DETAIL_FIELDS if c not in KEPT)
_LAST_ACTIVITY = ("max(coalesce(updatedAt, ''), coalesce(lastMessageAt, ''), "
                  "coalesce(createdAt, ''))")


@dataclass(frozen=True)
class Criteria:
    """Which conversations to forget: tombstoned ones (`deleted`, only those tombstoned more
    than `older_than` seconds ago if given), and/or those whose last activity is more than
    `retain` seconds old; within `ids` only, if given. `label` names them in `_purges`."""
    deleted: bool = False
    older_than: float | None = None
    retain: float | None = None
    ids: tuple[str, ...] | None = None
    label: str = ""

    def describe(self) -> str:
        if self.label:
            return self.label
        parts = []
        if self.deleted:
            parts.append("deleted" + (f" older than {self.older_than:g}s"
                                      if self.older_than is not None else ""))
        if self.retain is not None:
            parts.append(f"retain {self.retain:g}s")
        if self.ids is not None:
            parts.append(f"{len(self.ids)} given ids")
        return ", ".join(parts)


@dataclass
class Result:
    conversations: int = 0
    deleted: int = 0            # of which tombstoned upstream; the rest were inactive
    messages: int = 0
    sample: list[str] = field(default_factory=list)
    purge_id: int | None = None
    scrubbed: bool = False


def _before(now: datetime, seconds: float) -> str:
    try:
        return format_instant(now - timedelta(seconds=seconds))
    except OverflowError:
        return ""          # further back than time goes: nothing is older


def _where(criteria: Criteria, now: datetime, has_mark: bool = True) -> tuple[str, list]:
    """The SQL condition (and its arguments) for the conversations to forget."""
    either, args = [], []
    if criteria.deleted:
        clause = "_deleted_at IS NOT NULL"
        if criteria.older_than is not None:
            clause += " AND _deleted_at < ?"
            args.append(_before(now, criteria.older_than))
        either.append(f"({clause})")
    if criteria.retain is not None:
        either.append(f"{_LAST_ACTIVITY} < ?")
        args.append(_before(now, criteria.retain))
    if not either:
        raise ValueError("a purge needs `deleted` or `retain`")
    pending = "_purged_at IS NULL AND " if has_mark else ""
    return f"{pending}({' OR '.join(either)})", args


def _candidates(conn: sqlite3.Connection, criteria: Criteria, now: datetime,
                has_mark: bool = True) -> list[tuple[str, bool]]:
    """(id, tombstoned) of every conversation to forget, in id order."""
    where, args = _where(criteria, now, has_mark)
    sql = f"SELECT id, _deleted_at IS NOT NULL FROM conversations WHERE {where}"
    if criteria.ids is None:
        return [(cid, bool(d)) for cid, d in conn.execute(sql + " ORDER BY id", args)]
    out = []
    ids = sorted(set(criteria.ids))
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        out += [(cid, bool(d)) for cid, d in conn.execute(
            f"{sql} AND id IN ({','.join('?' * len(chunk))}) ORDER BY id", [*args, *chunk])]
    return out


def _forget(conn: sqlite3.Connection, ids: list[str], at: str) -> tuple[list[str], int]:
    """Forget those of these conversations not purged yet, in the caller's transaction.
    Returns (the ids forgotten, messages removed)."""
    marks = ",".join("?" * len(ids))
    ids = [r[0] for r in conn.execute(
        f"SELECT id FROM conversations WHERE id IN ({marks}) AND _purged_at IS NULL", ids)]
    if not ids:
        return [], 0
    marks = ",".join("?" * len(ids))
    # external-content FTS: an entry is deleted with the values it was indexed with, so before
    # the rows change
    conn.execute("INSERT INTO messages_fts (messages_fts, rowid, content) SELECT 'delete', "
                 f"rowid, content FROM messages WHERE conversationId IN ({marks})", ids)
    messages = conn.execute(f"DELETE FROM messages WHERE conversationId IN ({marks})",
                            ids).rowcount
    conn.execute("INSERT INTO conversations_fts (conversations_fts, rowid, subject, "
                 "participantName, participantEmail) SELECT 'delete', rowid, subject, "
                 f"participantName, participantEmail FROM conversations WHERE id IN ({marks})",
                 ids)
    cleared = ", ".join(f"{c} = NULL" for c in CLEARED)
    raw = "json_object(" + ", ".join(f"'{c}', {c}" for c in KEPT) + ")"
    conn.execute(
        f"UPDATE conversations SET {cleared}, _raw = {raw}, "
        "_list_sig = CASE WHEN _deleted_at IS NULL THEN _list_sig END, "
        "_messages_held = 0, _messages_missing = 0, _messages_complete = 1, _purged_at = ? "
        f"WHERE id IN ({marks})", [at, *ids])
    # the index holds an (empty) entry for every row, as the store's upsert expects
    conn.execute("INSERT INTO conversations_fts (rowid, subject, participantName, "
                 f"participantEmail) SELECT rowid, NULL, NULL, NULL FROM conversations "
                 f"WHERE id IN ({marks})", ids)
    # a queued conversation stays queued (it changed upstream), without its listed record
    conn.execute(f"UPDATE _sync_queue SET record = NULL, last_error = NULL "
                 f"WHERE id IN ({marks})", ids)
    conn.execute(
        f"DELETE FROM _rejects WHERE record_id IN ({marks}) OR (CASE WHEN json_valid(raw) "
        f"THEN json_extract(raw, '$.conversationId') END) IN ({marks})", ids * 2)
    return ids, messages


def _start_record(conn: sqlite3.Connection, criteria: Criteria, at: str) -> int:
    # the caller holds the writer lock: a purge still marked running was killed
    conn.execute("UPDATE _purges SET outcome = 'killed' WHERE outcome = 'running'")
    return conn.execute("INSERT INTO _purges (started_at, outcome, criteria) "
                        "VALUES (?, 'running', ?)", (at, criteria.describe())).lastrowid


def _count(conn: sqlite3.Connection, purge_id: int, conversations: int, messages: int) -> None:
    conn.execute("UPDATE _purges SET conversations = conversations + ?, "
                 "messages = messages + ? WHERE id = ?", (conversations, messages, purge_id))


def _finish_record(conn: sqlite3.Connection, purge_id: int) -> None:
    conn.execute("UPDATE _purges SET finished_at = ?, outcome = 'ok' WHERE id = ?",
                 (now_utc(), purge_id))


@contextlib.contextmanager
def _secure_delete(conn: sqlite3.Connection) -> Iterator[None]:
    """What is deleted in the block is overwritten with zeros (the page images written at
    commit already hold the zeros, so the setting can be restored before it)."""
    before = conn.execute("PRAGMA secure_delete").fetchone()[0]
    conn.execute("PRAGMA secure_delete = 1")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA secure_delete = {int(before)}")


def purge(store: Store, criteria: Criteria, *, in_transaction: bool = False,
          scrub_after: bool = True, batch: int = BATCH, now: datetime | None = None) -> Result:
    """Forget the conversations `criteria` selects; the caller holds the writer lock.

    By default one transaction per `batch` conversations (each taken through
    `store.transaction()`, so a writer thread's transaction is never joined), then the scrub
    unless `scrub_after` is false. With `in_transaction`, the calling thread is inside its own
    transaction: everything is done in it and the scrub is left owed (call `scrub(store)` once
    the writing is over)."""
    now = now or datetime.now(timezone.utc)
    conn = store.conn
    result = Result()
    if criteria.ids is not None and not criteria.ids:
        return result
    if in_transaction:
        if not conn.in_transaction:
            raise ValueError("purge(in_transaction=True) called outside a transaction")
        with _secure_delete(conn):
            _purge_here(store, criteria, now, result)
        return result
    with store.transaction():
        result.purge_id = _start_record(conn, criteria, now_utc())
        todo = _candidates(conn, criteria, now)
    result.sample = [cid for cid, _ in todo[:10]]
    tombstoned = {cid for cid, deleted in todo if deleted}
    for i in range(0, len(todo), batch):
        with store.transaction(), _secure_delete(conn):
            gone, messages = _forget(conn, [cid for cid, _ in todo[i:i + batch]], now_utc())
            _count(conn, result.purge_id, len(gone), messages)
            if gone:
                store.set_state(SCRUB_STATE, "owed")
        result.conversations += len(gone)
        result.messages += messages
        result.deleted += len(tombstoned.intersection(gone))
    with store.transaction():
        _finish_record(conn, result.purge_id)
    log.info("purged %d conversations and %d messages", result.conversations, result.messages)
    if scrub_after:
        result.scrubbed = scrub(store)
    return result


def _purge_here(store: Store, criteria: Criteria, now: datetime, result: Result) -> None:
    conn = store.conn
    result.purge_id = _start_record(conn, criteria, now_utc())
    todo = _candidates(conn, criteria, now)
    result.sample = [cid for cid, _ in todo[:10]]
    for i in range(0, len(todo), BATCH):
        gone, messages = _forget(conn, [cid for cid, _ in todo[i:i + BATCH]], now_utc())
        result.conversations += len(gone)
        result.messages += messages
    result.deleted = sum(1 for _, deleted in todo if deleted)
    _count(conn, result.purge_id, result.conversations, result.messages)
    _finish_record(conn, result.purge_id)
    if result.conversations:
        store.set_state(SCRUB_STATE, "owed")


def purge_deleted(store: Store, ids: list[str] | None = None, older_than: float | None = None,
                  *, in_transaction: bool = False, scrub_after: bool = True) -> Result:
    """Forget conversations tombstoned upstream: those among `ids` if given (e.g. the ones a run
    just tombstoned; an empty list does nothing), only those tombstoned more than `older_than`
    seconds ago if given.

    For `[store].on_delete = "purge"`: call it inside the transaction that tombstones, with
    `in_transaction=True` (the conversations are then never tombstoned with their data still
    held), or right after it with `scrub_after=False`; either way call `scrub(store)` once the
    run's writing is over (no other thread writing through the store)."""
    label = "on delete" if ids is not None else ""
    criteria = Criteria(deleted=True, older_than=older_than,
                        ids=tuple(ids) if ids is not None else None, label=label)
    return purge(store, criteria, in_transaction=in_transaction, scrub_after=scrub_after)


def _checkpoint(conn: sqlite3.Connection) -> bool:
    """Copy the WAL into the database and truncate it to zero bytes. False if a reader kept it
    from finishing for CHECKPOINT_WAIT_MS (a reader's snapshot needs the frames it reads)."""
    before = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(before)}")
    return busy == 0


def scrub_owed(store: Store) -> bool:
    return store.get_state(SCRUB_STATE) is not None


def scrub(store: Store) -> bool:
    """Make owed forgetting physical: merge the FTS indexes, rebuild the file (VACUUM), empty
    the WAL. Call holding the writer lock, with no transaction open on the store's connection
    (no other thread writing through it). True when nothing is owed any more; False when a
    reader kept the WAL from being emptied (still owed: the next purge or scrub finishes it)."""
    if not scrub_owed(store):
        return True
    conn = store.conn
    with _secure_delete(conn):
        with store.transaction():
            for fts in ("messages_fts", "conversations_fts", "participants_fts"):
                conn.execute(f"INSERT INTO {fts}({fts}) VALUES ('optimize')")
        conn.execute("VACUUM")
    if not _checkpoint(conn):
        log.info("a reader kept the write-ahead log of %s from being emptied; the scrub stays "
                 "owed", store.path)
        return False
    with store.transaction():
        store.set_state(SCRUB_STATE, None)
        conn.execute("UPDATE _purges SET scrubbed_at = ? WHERE scrubbed_at IS NULL "
                     "AND outcome <> 'running'", (now_utc(),))
    _checkpoint(conn)       # leaves the WAL empty again; what it held was bookkeeping only
    return True


# -- the command's side: checking the file, planning, running under the lock --------------------
def check_mirror(path: str) -> None:
    """StoreError unless `path` is an existing database made by syncer. Reads only, so that a
    file that is not a mirror is left exactly as it was."""
    conn = _open_readonly(path)
    conn.close()


def _open_readonly(path: str) -> sqlite3.Connection:
    p = Path(path)
    if not p.is_file():
        raise StoreError(f"no database at {path}: nothing to purge (check --db)")
    try:
        conn = migrations.connect_untouched(p)
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path} is not a SQLite database ({e}); purge only changes a "
                         "mirror made by syncer") from None
    if app_id != migrations.APPLICATION_ID or version < 1:
        conn.close()
        raise StoreError(f"{path} was not made by syncer; purge only changes a syncer mirror")
    if version > migrations.LATEST:
        conn.close()
        raise StoreError(f"{path} has schema version {version}, newer than this syncer; "
                         "upgrade syncer")
    return conn


def plan(path: str, criteria: Criteria, now: datetime | None = None) -> Result:
    """What a purge would forget, read from a read-only connection; changes nothing."""
    now = now or datetime.now(timezone.utc)
    conn = _open_readonly(path)
    try:
        has_mark = any(r[1] == "_purged_at"
                       for r in conn.execute("PRAGMA table_info(conversations)"))
        todo = _candidates(conn, criteria, now, has_mark)
        result = Result(conversations=len(todo), deleted=sum(1 for _, d in todo if d),
                        sample=[cid for cid, _ in todo[:10]])
        ids = [cid for cid, _ in todo]
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            result.messages += conn.execute(
                f"SELECT count(*) FROM messages WHERE conversationId IN "
                f"({','.join('?' * len(chunk))})", chunk).fetchone()[0]
        return result
    finally:
        conn.close()


def run_purge(path: str, criteria: Criteria) -> Result:
    """The `syncer purge` command: check the file, take the writer lock, purge, scrub."""
    check_mirror(path)
    with lock.writing(path, role="purge"):
        store = Store.open(path)
        try:
            return purge(store, criteria)
        finally:
            store.close()


def forget_tombstoned(store: Store) -> Result | None:
    """`[store].on_delete = "purge"`, after a run's writing is over: forget every conversation
    tombstoned and not yet forgotten (this run's, or one a killed run tombstoned), then scrub.
    None, writing nothing, when there is nothing to forget or scrub."""
    pending = store.conn.execute("SELECT 1 FROM conversations WHERE _deleted_at IS NOT NULL "
                                 "AND _purged_at IS NULL LIMIT 1").fetchone()
    if pending is None:
        if scrub_owed(store) and not scrub(store):
            log.warning("a reader kept forgotten text in the write-ahead log of %s; the next "
                        "run scrubs it", store.path)
        return None
    result = purge_deleted(store)
    if not result.scrubbed:
        log.warning("a reader kept forgotten text in the write-ahead log of %s; the next run "
                    "scrubs it", store.path)
    return result
