"""The only module that writes SQL: the mirror's tables, full-text index, queue and checkpoints.

Every write happens inside `Store.transaction()`; a unit of progress (a page and its checkpoint,
a conversation and its messages) is one transaction. The FTS5 indexes are external-content
tables kept in step here, row by row, with every insert, update and delete.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from . import migrations
from .errors import DamagedError, LockedError, StoreError
from .transform import CONVERSATION_FIELDS, DETAIL_FIELDS, MESSAGE_FIELDS, format_instant

if TYPE_CHECKING:
    import sqlite_utils

CONVERSATION_FTS = ("subject", "participantName", "participantEmail")
CONVERSATION_COLUMNS = CONVERSATION_FIELDS + DETAIL_FIELDS + ("_raw",)
MESSAGE_COLUMNS = MESSAGE_FIELDS + ("_raw",)
RUN_COUNTERS = ("pages", "conversations_seen", "conversations_changed", "conversations_deleted",
                "conversations_failed", "messages_written", "rejects", "gaps", "requests",
                "retries", "throttled")
_CHUNK = 500
WAL_CHECKPOINT_PAGES = 50_000     # about 200 MB of WAL between checkpoints
# what a record (not the disk or the database) can make SQLite refuse
RECORD_FAULTS = (OverflowError, ValueError, TypeError, sqlite3.InterfaceError,
                 sqlite3.DataError, sqlite3.IntegrityError, sqlite3.ProgrammingError)


def now_utc() -> str:
    return format_instant(datetime.now(timezone.utc))


def prune_tombstones(conn: sqlite3.Connection) -> int:
    """Drop the tombstones of deleted rows (`_deleted_rows`, migrations.V3) that every
    change-feed consumer of their table has received (at or below the lowest position), or all
    of a table's when it has no consumer: a consumer that starts later starts from the current
    table and never needs a tombstone of a row it never got (feed.py). Returns how many."""
    dropped = 0
    for table in ("conversations", "messages"):
        dropped += conn.execute(
            "DELETE FROM _deleted_rows WHERE tbl = ?1 AND _seq <= coalesce("
            "(SELECT min(position) FROM _consumers WHERE tbl = ?1), "
            "(SELECT value FROM _seq_counter WHERE id = 1))", (table,)).rowcount
    return dropped


def _chunks(items: list, size: int = _CHUNK) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@dataclass
class Fetched:
    """A conversation as read from the API, ready to commit.

    `drop_others`: `messages` are the conversation's whole upstream set, so held messages not
    among them were deleted upstream. `new`: the mirror did not hold the conversation when it
    was queued (a hint for the fast path; checked). `gen`: the conversation leaves the queue
    only if no newer record was queued since (None: whatever is queued)."""
    row: dict
    messages: list[dict]
    complete: bool
    drop_others: bool
    new: bool = False
    rejects: list[tuple[str, object, str]] = field(default_factory=list)
    gen: int | None = None           # the queue generation the fetch began from
    gone: list[str] = field(default_factory=list)   # held messages known deleted upstream


@dataclass(frozen=True)
class Stored:
    """What the store holds of one conversation, for dirty detection and message planning."""
    list_sig: str | None
    deleted: bool
    updated_at: str | None = None
    message_count: int | None = None


class Store:
    def __init__(self, conn: sqlite3.Connection, path: str,
                 db: sqlite_utils.Database | None = None):
        self.db = db  # None when read-only: readers skip importing sqlite-utils (start-up time)
        self.conn = conn
        self.path = path
        self._lock = threading.RLock()

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str) -> "Store":
        """Open (creating if needed) a mirror for writing, migrated to the latest schema.

        Before anything is written: StoreError (exit 2) if the file is not a database, is
        damaged (PRAGMA quick_check) or cannot be written, so a run never talks to the API
        only to fail at its first commit."""
        p = Path(path)
        if p.is_dir():
            raise StoreError(f"database path {path} is a directory")
        if not p.parent.exists():
            raise StoreError(f"directory of database {path} does not exist")
        if not p.exists():
            try:
                # personal data: owner-only from the first byte
                os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o600))
            except OSError as e:
                raise StoreError(cls._cannot_write(path, e.strerror)) from None
        conn = None
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   timeout=30)
            migrations.check_ours(conn)       # a file not ours is refused untouched
            cls._check_intact(conn, path)
            cls._check_writable(conn)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=OFF")
            # a page rewritten by many commits reaches the file once per checkpoint
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            migrations.migrate(conn)
        except (sqlite3.Error, StoreError) as e:
            raise cls._given_up(conn, path, e) from None
        import sqlite_utils           # only writers use it; read commands start faster
        return cls(conn, path, sqlite_utils.Database(conn))

    @classmethod
    def open_readonly(cls, path: str, *, check: bool = False) -> "Store":
        """Open an existing mirror for reading only; never creates or changes the file.

        A database in a directory this process cannot write (a read-only mount) and with no
        write-ahead log beside it (no writer is active: a clean close removes the log) is opened
        as immutable, which needs no `-shm` file. `check` runs PRAGMA quick_check first (verify
        does; the read commands learn of damage from the query that meets it)."""
        p = Path(path)
        if not p.is_file():
            raise StoreError(f"no database at {path}: run `syncer sync` first (or pass --db)")
        uri = p.resolve().as_uri()
        conn = None
        try:
            try:
                conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None,
                                       check_same_thread=False, timeout=30)
                version = conn.execute("PRAGMA user_version").fetchone()[0]
            except sqlite3.OperationalError as e:
                if not cls._can_be_immutable(p, e):
                    raise
                if conn is not None:
                    conn.close()
                conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True,
                                       isolation_level=None, check_same_thread=False)
                version = conn.execute("PRAGMA user_version").fetchone()[0]
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            if check:
                cls._check_intact(conn, path)
        except (sqlite3.Error, StoreError) as e:
            raise cls._given_up(conn, path, e) from None
        if app_id != migrations.APPLICATION_ID or version < 1:
            conn.close()
            raise StoreError(f"{path} was not made by syncer")
        if version > migrations.LATEST:
            conn.close()
            raise StoreError(f"{path} has schema version {version}, newer than this syncer")
        if version < migrations.LATEST:
            conn.close()
            raise StoreError(f"{path} has an older schema; run `syncer sync` once to upgrade it")
        return cls(conn, path)

    @classmethod
    def _given_up(cls, conn: sqlite3.Connection | None, path: str,
                  e: sqlite3.Error | StoreError) -> StoreError:
        """Opening failed: close the connection (a daemon retrying every tick must not leak
        one) and say what to do in one line."""
        if conn is not None:
            conn.close()
        return e if isinstance(e, StoreError) else cls.error_for(path, e)

    _RECOVERY = "restore it from a backup, or move it aside and run `syncer sync` to rebuild it"

    @classmethod
    def error_for(cls, path: str, e: sqlite3.Error) -> StoreError | LockedError:
        """The one-line error, saying what to do, for an SQLite error on the database `path`."""
        code = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF
        if code == sqlite3.SQLITE_CORRUPT:
            return DamagedError(cls.damaged(path, str(e)))
        if code == sqlite3.SQLITE_NOTADB:
            return StoreError(f"{path} is not a SQLite database ({e}): check --db; if it is "
                              f"the mirror, it is damaged: {cls._RECOVERY}")
        if code == sqlite3.SQLITE_READONLY:
            return StoreError(cls._cannot_write(path, str(e)))
        if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM):
            return StoreError(f"cannot open the database {path}: {e}; check the permissions "
                              "of the file and its directory")
        if code == sqlite3.SQLITE_FULL:
            return StoreError(f"cannot write the database {path}: the disk is full; free some "
                              "space (what was committed before is intact)")
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return LockedError(f"the database {path} stayed locked by another process ({e}); "
                               "try again")
        return StoreError(f"cannot use the database {path}: {e}")

    @classmethod
    def damaged(cls, path: str, detail: str) -> str:
        detail = " ".join(detail.replace("*** in database main ***", "").split())
        return f"the database {path} is damaged ({detail[:160]}): {cls._RECOVERY}"

    @staticmethod
    def _cannot_write(path: str, reason: str) -> str:
        return (f"cannot write the database {path}: {reason}; check permissions (the file and "
                "its directory must be writable) and that its disk is not mounted read-only")

    @classmethod
    def _check_intact(cls, conn: sqlite3.Connection, path: str) -> None:
        """StoreError if SQLite's quick_check finds damage (it reads every page once)."""
        first = conn.execute("PRAGMA quick_check(1)").fetchone()
        if first is not None and first[0] != "ok":
            raise DamagedError(cls.damaged(path, first[0]))

    @staticmethod
    def _check_writable(conn: sqlite3.Connection) -> None:
        """Raises SQLite's own error if the file cannot be written: SQLite opens an unwritable
        file read-only without a word, so a write is tried, and rolled back."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"PRAGMA user_version = {int(version)}")
        finally:
            conn.execute("ROLLBACK")

    @staticmethod
    def _can_be_immutable(p: Path, e: sqlite3.OperationalError) -> bool:
        return (e.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY)
                and not os.access(p.parent, os.W_OK)
                and not p.with_name(p.name + "-wal").exists())

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction, holding the store's lock: other threads' reads (which take the same
        lock) see it whole or not at all. A failed COMMIT is rolled back, never left open."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    def _rows(self, sql: str, args: Iterable = ()) -> list[tuple]:
        """A read that never sees another thread's transaction half-done."""
        with self._lock:
            return self.conn.execute(sql, tuple(args)).fetchall()

    def _one(self, sql: str, args: Iterable = ()) -> tuple | None:
        rows = self._rows(sql, args)
        return rows[0] if rows else None

    # -- state and queue ---------------------------------------------------------------------
    def get_state(self, key: str) -> str | None:
        row = self._one("SELECT value FROM _sync_state WHERE key = ?", (key,))
        return row[0] if row else None

    def set_state(self, key: str, value: str | None) -> None:
        if value is None:
            self.conn.execute("DELETE FROM _sync_state WHERE key = ?", (key,))
        else:
            self.conn.execute(
                "INSERT INTO _sync_state (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def stored(self, ids: list[str]) -> dict[str, Stored]:
        out: dict[str, Stored] = {}
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for cid, sig, deleted, updated, count in self._rows(
                    f"SELECT id, _list_sig, _deleted_at, updatedAt, messageCount "
                    f"FROM conversations WHERE id IN ({marks})", chunk):
                out[cid] = Stored(sig, deleted is not None, updated, count)
        return out

    def enqueue_records(self, items: Iterable[tuple[str, str, str | None]]) -> None:
        """Queue (id, reason, list record as JSON or None). A queued id keeps its place, takes
        the newer record and a new generation: a fetch begun from an older one leaves it queued."""
        at = now_utc()
        self.conn.executemany(
            "INSERT INTO _sync_queue (id, queued_at, reason, record) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET record = coalesce(excluded.record, record), "
            "gen = gen + (coalesce(excluded.record, record) IS NOT record)",
            [(cid, at, reason, record) for cid, reason, record in items])

    def queue_entry(self, cid: str) -> tuple[dict | None, int | None]:
        """(the queued list record or None, its generation or None when not queued)."""
        row = self._one("SELECT record, gen FROM _sync_queue WHERE id = ?", (cid,))
        if row is None:
            return None, None
        return (json.loads(row[0]) if row[0] else None), row[1]

    def dequeue(self, cid: str, gen: int | None = None) -> None:
        """Take a conversation off the queue; with `gen`, only if no newer record came since."""
        if gen is None:
            self.conn.execute("DELETE FROM _sync_queue WHERE id = ?", (cid,))
        else:
            self.conn.execute("DELETE FROM _sync_queue WHERE id = ? AND gen = ?", (cid, gen))

    def queued(self, limit: int | None = None) -> list[str]:
        sql = "SELECT id FROM _sync_queue ORDER BY queued_at, id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [r[0] for r in self._rows(sql)]

    def queue_size(self) -> int:
        return self._one("SELECT count(*) FROM _sync_queue")[0]

    def record_failure(self, cid: str, error: str, run_id: int | None = None) -> None:
        with self.transaction():
            self.conn.execute("UPDATE _sync_queue SET attempts = attempts + 1, last_error = ? "
                              "WHERE id = ?", (error[:500], cid))
            if run_id is not None:
                self.add_to_run(run_id, {"conversations_failed": 1})

    def live_in_scope(self, status: str, surfaces: tuple[str, ...]) -> list[str]:
        """Live conversations the mirror holds within a scope (status, surfaces)."""
        sql, args = "SELECT id FROM conversations WHERE _deleted_at IS NULL", []
        if status != "all":
            sql, args = sql + " AND status = ?", [status]
        if surfaces:
            sql += f" AND surfaceId IN ({','.join('?' * len(surfaces))})"
            args += list(surfaces)
        return [r[0] for r in self._rows(sql + " ORDER BY id", args)]

    def message_count(self) -> int:
        """Messages held (read off the smallest index: 6-26 ms for a million)."""
        return self._one("SELECT count(*) FROM messages")[0]

    def live_count(self) -> int:
        return self._one("SELECT count(*) FROM conversations WHERE _deleted_at IS NULL")[0]

    # -- conversations and messages ----------------------------------------------------------
    def message_ids(self, cid: str) -> list[str]:
        return [r[0] for r in self._rows(
            "SELECT id FROM messages WHERE conversationId = ?", (cid,))]

    def message_state(self, cid: str) -> tuple[int, str | None, bool]:
        """(messages held, id of the newest held, whether the held set was complete)."""
        with self._lock:
            held = self._one("SELECT count(*) FROM messages WHERE conversationId = ?", (cid,))[0]
            newest = self._one(
                "SELECT id FROM messages WHERE conversationId = ? "
                "ORDER BY createdAt DESC, id DESC LIMIT 1", (cid,))
            recorded = self._one("SELECT _messages_complete, _messages_held FROM conversations "
                                 "WHERE id = ?", (cid,))
        complete = bool(recorded and recorded[0])
        if recorded is not None and recorded[1] != held:
            # rows changed behind the sync's back (verify --fix repairs so): the held set
            # proves nothing, so the reader reads all the server serves
            return held, None, complete
        return held, newest[0] if newest else None, complete

    def held_times(self, cid: str) -> dict[str, str]:
        """The messages the mirror holds of a conversation: {id: createdAt}."""
        return dict(self._rows("SELECT id, createdAt FROM messages WHERE conversationId = ?",
                               (cid,)))

    def held_among(self, ids: list[str]) -> set[str]:
        """Which of these message ids the mirror holds."""
        out: set[str] = set()
        for chunk in _chunks(ids):
            out.update(r[0] for r in self._rows(
                f"SELECT id FROM messages WHERE id IN ({','.join('?' * len(chunk))})", chunk))
        return out

    def held_messages(self, cid: str) -> int:
        return self.conn.execute("SELECT count(*) FROM messages WHERE conversationId = ?",
                                 (cid,)).fetchone()[0]

    def _upsert_conversation(self, row: dict, synced_at: str) -> None:
        old = self.conn.execute(
            "SELECT rowid, subject, participantName, participantEmail FROM conversations "
            "WHERE id = ?", (row["id"],)).fetchone()
        cols = [c for c in CONVERSATION_COLUMNS if c in row] + ["_list_sig", "_synced_at"]
        values = [row.get(c) for c in cols[:-2]] + [row["_list_sig"], synced_at]
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c != "id")
        self.conn.execute(
            f"INSERT INTO conversations ({', '.join(cols)}) VALUES ({','.join('?' * len(cols))}) "
            f"ON CONFLICT(id) DO UPDATE SET {updates}, _deleted_at = NULL", values)
        new_fts = tuple(row.get(c) for c in CONVERSATION_FTS)
        if old is not None:
            if tuple(old[1:]) == new_fts:
                return
            self.conn.execute(
                "INSERT INTO conversations_fts (conversations_fts, rowid, subject, "
                "participantName, participantEmail) VALUES ('delete', ?, ?, ?, ?)", tuple(old))
            rowid = old[0]
        else:
            rowid = self.conn.execute("SELECT rowid FROM conversations WHERE id = ?",
                                      (row["id"],)).fetchone()[0]
        self.conn.execute("INSERT INTO conversations_fts (rowid, subject, participantName, "
                          "participantEmail) VALUES (?, ?, ?, ?)", (rowid, *new_fts))

    def _upsert_messages(self, rows: list[dict], synced_at: str) -> int:
        """Insert new messages, update changed ones, skip identical ones; returns rows written."""
        written = 0
        for chunk in _chunks(rows):
            marks = ",".join("?" * len(chunk))
            existing = {r[1]: r for r in self.conn.execute(
                f"SELECT rowid, id, content, _raw FROM messages WHERE id IN ({marks})",
                [r["id"] for r in chunk])}
            fresh, changed = [], []
            for r in chunk:
                old = existing.get(r["id"])
                if old is None:
                    fresh.append(r)
                elif old[3] != r["_raw"]:
                    changed.append((old, r))
            values = [[r[c] for c in MESSAGE_COLUMNS] + [synced_at] for r in fresh]
            cols = ", ".join(MESSAGE_COLUMNS) + ", _synced_at"
            marks_row = ",".join("?" * (len(MESSAGE_COLUMNS) + 1))
            self.conn.executemany(f"INSERT INTO messages ({cols}) VALUES ({marks_row})", values)
            if fresh:
                ids = [r["id"] for r in fresh]
                self.conn.execute(
                    f"INSERT INTO messages_fts (rowid, content) SELECT rowid, content "
                    f"FROM messages WHERE id IN ({','.join('?' * len(ids))})", ids)
            for old, r in changed:
                self.conn.execute("INSERT INTO messages_fts (messages_fts, rowid, content) "
                                  "VALUES ('delete', ?, ?)", (old[0], old[2]))
                sets = ", ".join(f"{c} = ?" for c in MESSAGE_COLUMNS[1:])
                self.conn.execute(f"UPDATE messages SET {sets}, _synced_at = ? WHERE rowid = ?",
                                  [r[c] for c in MESSAGE_COLUMNS[1:]] + [synced_at, old[0]])
                self.conn.execute("INSERT INTO messages_fts (rowid, content) VALUES (?, ?)",
                                  (old[0], r["content"]))
            written += len(fresh) + len(changed)
        return written

    def _delete_messages(self, ids: list[str]) -> None:
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            self.conn.execute(
                f"INSERT INTO messages_fts (messages_fts, rowid, content) "
                f"SELECT 'delete', rowid, content FROM messages WHERE id IN ({marks})", chunk)
            self.conn.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk)

    def _insert_new(self, row: dict, messages: list[dict], synced_at: str) -> bool:
        """The fast path for a conversation the mirror has never held: plain inserts, the FTS
        rows in one statement. False (and nothing written) if any id already exists."""
        self.conn.execute("SAVEPOINT new_conversation")
        try:
            cols = [c for c in CONVERSATION_COLUMNS if c in row] + ["_list_sig", "_synced_at"]
            rowid = self.conn.execute(
                f"INSERT INTO conversations ({', '.join(cols)}) "
                f"VALUES ({','.join('?' * len(cols))})",
                [row.get(c) for c in cols[:-2]] + [row["_list_sig"], synced_at]).lastrowid
            self.conn.execute("INSERT INTO conversations_fts (rowid, subject, participantName, "
                              "participantEmail) VALUES (?, ?, ?, ?)",
                              (rowid, *(row.get(c) for c in CONVERSATION_FTS)))
            marks = ",".join("?" * (len(MESSAGE_COLUMNS) + 1))
            self.conn.execute("INSERT INTO _stats_deferred (id) VALUES (1)")
            self.conn.executemany(
                f"INSERT INTO messages ({', '.join(MESSAGE_COLUMNS)}, _synced_at) "
                f"VALUES ({marks})", [[m[c] for c in MESSAGE_COLUMNS] + [synced_at]
                                      for m in messages])
            self.conn.execute("DELETE FROM _stats_deferred")
            for sql in migrations.CONVERSATION_STATS:   # instead of a trigger per message
                self.conn.execute(sql, {"cid": row["id"]})
            if messages:
                self.conn.execute("INSERT INTO messages_fts (rowid, content) SELECT rowid, "
                                  "content FROM messages WHERE conversationId = ?", (row["id"],))
        except sqlite3.IntegrityError:
            self.conn.execute("ROLLBACK TO new_conversation")
            self.conn.execute("RELEASE new_conversation")
            return False
        self.conn.execute("RELEASE new_conversation")
        return True

    def save_conversations(self, batch: list["Fetched"], run_id: int | None = None
                           ) -> list[tuple[int, int] | None]:
        """Commit fetched conversations in one transaction: for each, its row, its messages,
        its completeness, the records rejected while reading it and the run's counters, and
        its removal from the queue. Returns (messages written, messages missing) for each, or
        None for one SQLite cannot store: it goes to _rejects alone and the rest commit."""
        synced_at = now_utc()
        with self.transaction():
            return [self._save_isolated(item, synced_at, run_id) for item in batch]

    def save_conversation(self, item: "Fetched", run_id: int | None = None
                          ) -> tuple[int, int] | None:
        return self.save_conversations([item], run_id)[0]

    def _save_isolated(self, item: "Fetched", synced_at: str, run_id: int | None
                       ) -> tuple[int, int] | None:
        self.conn.execute("SAVEPOINT conversation")
        try:
            result = self._save_one(item, synced_at, run_id)
        except RECORD_FAULTS as e:
            self.conn.execute("ROLLBACK TO conversation")
            self.conn.execute("RELEASE conversation")
            try:
                record = json.loads(item.row["_raw"])
            except (KeyError, TypeError, ValueError):
                record = {"id": item.row.get("id")}
            self.reject("store", record, f"cannot be stored: {type(e).__name__}: {e}")
            self.dequeue(item.row["id"])
            if run_id is not None:
                self.add_to_run(run_id, {"rejects": 1})
            return None
        self.conn.execute("RELEASE conversation")
        return result

    def _save_one(self, item: "Fetched", synced_at: str, run_id: int | None) -> tuple[int, int]:
        row, messages = item.row, item.messages
        for endpoint, record, reason in item.rejects:
            self.reject(endpoint, record, reason)
        if item.new and self._insert_new(row, messages, synced_at):
            written = held = len(messages)
        else:
            self._upsert_conversation(row, synced_at)
            written = self._upsert_messages(messages, synced_at)
            if item.drop_others:
                keep = {m["id"] for m in messages}
                gone = [i for i in self.message_ids(row["id"]) if i not in keep]
            else:
                gone = item.gone
            self._delete_messages(gone)
            written += len(gone)
            held = self.held_messages(row["id"])
        count = row["messageCount"]
        missing = 0 if item.complete or count is None else max(count - held, 0)
        self.conn.execute(
            "UPDATE conversations SET _messages_held = ?, _messages_missing = ?, "
            "_messages_complete = ? WHERE id = ?",
            (held, missing, int(item.complete), row["id"]))
        self.dequeue(row["id"], item.gen)
        if run_id is not None:
            self.add_to_run(run_id, {"conversations_changed": 1, "messages_written": written,
                                     "gaps": int(missing > 0), "rejects": len(item.rejects)})
        return written, missing

    def mark_deleted(self, ids: list[str], run_id: int | None = None) -> int:
        """Tombstone conversations gone upstream (rows and messages are kept) and dequeue them."""
        at = now_utc()
        n = 0
        with self.transaction():
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                n += self.conn.execute(
                    f"UPDATE conversations SET _deleted_at = ? "
                    f"WHERE id IN ({marks}) AND _deleted_at IS NULL", [at, *chunk]).rowcount
                self.conn.execute(f"DELETE FROM _sync_queue WHERE id IN ({marks})", chunk)
            if run_id is not None:
                self.add_to_run(run_id, {"conversations_deleted": n})
        return n

    def optimize_fts(self) -> None:
        """Merge the full-text indexes' segments into one: searches of common words score
        their matches faster. Worth it after a large batch of writes (seconds per million)."""
        with self.transaction():
            for fts in ("messages_fts", "conversations_fts", "participants_fts"):
                self.conn.execute(f"INSERT INTO {fts}({fts}) VALUES ('optimize')")

    def reject(self, endpoint: str, record: object, reason: str) -> None:
        """Quarantine a record that failed validation. Call inside a transaction."""
        import hashlib    # here: readers never quarantine, and OpenSSL is slow to load
        rid = record.get("id") if isinstance(record, dict) else None
        raw = json.dumps(record, ensure_ascii=False, default=str)
        key = (str(rid) if isinstance(rid, (str, int)) and rid != ""
               else "sha1:" + hashlib.sha1(raw.encode("utf-8", "replace")).hexdigest())
        at = now_utc()
        self.conn.execute(
            "INSERT INTO _rejects (endpoint, record_id, reason, raw, first_seen_at, last_seen_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(endpoint, record_id, reason) DO UPDATE SET "
            "raw = excluded.raw, last_seen_at = excluded.last_seen_at, times = times + 1",
            (endpoint, key, reason[:500], raw[:1_000_000], at, at))

    def rejects_since(self, at: str, limit: int = 3) -> tuple[int, list[str]]:
        """Records quarantined (again) since `at`: how many, and the first reasons."""
        n = self._one("SELECT count(*) FROM _rejects WHERE last_seen_at >= ?", (at,))[0]
        return n, [f"{rid}: {reason}" for rid, reason in self._rows(
            "SELECT record_id, reason FROM _rejects WHERE last_seen_at >= ? ORDER BY id "
            "LIMIT ?", (at, limit))]

    def forget_rejects_unlisted(self, listed: set[str], since: str) -> None:
        """After a whole walk: conversations rejected before `since` (the run's start), not
        rejected again and no longer listed, are gone upstream: their quarantined records are
        no longer a gap of the mirror."""
        ids = [rid for (rid,) in self._rows(
            "SELECT DISTINCT record_id FROM _rejects WHERE endpoint IN ('list', 'detail', "
            "'store') AND record_id NOT IN (SELECT record_id FROM _rejects "
            "WHERE last_seen_at >= ?)", (since,)) if rid not in listed]
        if ids:
            with self.transaction():
                for chunk in _chunks(ids):
                    self.conn.execute(
                        f"DELETE FROM _rejects WHERE endpoint IN ('list', 'detail', 'store') "
                        f"AND record_id IN ({','.join('?' * len(chunk))})", chunk)

    # -- runs --------------------------------------------------------------------------------
    def start_run(self, mode: str, scope: str | None = None) -> int:
        """Record a new run. Runs still marked running were killed: the caller holds the
        writer's lock, so no other run can be alive."""
        with self.transaction():
            self.conn.execute("UPDATE _sync_runs SET outcome = 'killed' "
                              "WHERE outcome = 'running'")
            return self.conn.execute(
                "INSERT INTO _sync_runs (started_at, outcome, mode, scope) "
                "VALUES (?, 'running', ?, ?)", (now_utc(), mode, scope)).lastrowid

    def add_to_run(self, run_id: int, counts: dict[str, int]) -> None:
        """Add counters to the run record. Call inside the transaction of the unit counted."""
        counts = {k: v for k, v in counts.items() if v}
        if not counts:
            return
        unknown = set(counts) - set(RUN_COUNTERS)
        if unknown:
            raise ValueError(f"unknown run counters {unknown}")
        sets = ", ".join(f"{k} = {k} + ?" for k in counts)
        self.conn.execute(f"UPDATE _sync_runs SET {sets} WHERE id = ?", [*counts.values(), run_id])

    def finish_run(self, run_id: int, outcome: str, *, error: str | None = None,
                   walk_started_at: str | None = None, watermark: str | None = None,
                   early_stop: bool = False, counts: dict[str, int] | None = None) -> None:
        with self.transaction():
            self.add_to_run(run_id, counts or {})
            self.conn.execute(
                "UPDATE _sync_runs SET finished_at = ?, outcome = ?, error = ?, "
                "walk_started_at = ?, watermark = ?, early_stop = ? WHERE id = ?",
                (now_utc(), outcome, error, walk_started_at, watermark, int(early_stop), run_id))
            prune_tombstones(self.conn)

    def run(self, run_id: int) -> dict:
        with self._lock:
            cur = self.conn.execute("SELECT * FROM _sync_runs WHERE id = ?", (run_id,))
            names = [d[0] for d in cur.description]
            return dict(zip(names, cur.fetchone()))

    def watermark(self, scope: str | None) -> str | None:
        """The newest watermark a run of this scope committed: every change before it, within
        the scope, is in the mirror. Another scope's watermark says nothing of this one."""
        return self._one("SELECT max(watermark) FROM _sync_runs WHERE scope = ?", (scope,))[0]

    def last_full_walk(self, scope: str | None) -> str | None:
        """When (by our clock) the last run of this scope that walked the whole list, and so
        concluded deletions, began; only runs that ended ok count."""
        return self._one(
            "SELECT max(started_at) FROM _sync_runs WHERE early_stop = 0 "
            "AND outcome = 'ok' AND scope = ?", (scope,))[0]

    def gaps(self) -> list[tuple[str, int, int]]:
        return self._rows(
            "SELECT id, messageCount, _messages_held FROM conversations "
            "WHERE _messages_complete = 0 AND _deleted_at IS NULL ORDER BY id")
