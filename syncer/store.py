"""The only module that writes SQL: the mirror's tables, full-text index, queue and checkpoints.

Every write happens inside `Store.transaction()`; a unit of progress (a page and its checkpoint,
a conversation and its messages) is one transaction. The FTS5 indexes are external-content
tables kept in step here, row by row, with every insert, update and delete.
"""
from __future__ import annotations

import contextlib
import hashlib
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
from .errors import StoreError
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


def now_utc() -> str:
    return format_instant(datetime.now(timezone.utc))


def _chunks(items: list, size: int = _CHUNK) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@dataclass
class Fetched:
    """A conversation as read from the API, ready to commit.

    `drop_others`: `messages` are the conversation's whole upstream set, so held messages not
    among them were deleted upstream. `new`: the mirror did not hold the conversation when it
    was queued (a hint for the fast path; checked)."""
    row: dict
    messages: list[dict]
    complete: bool
    drop_others: bool
    new: bool = False
    rejects: list[tuple[str, object, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Stored:
    """What the store holds of one conversation, for dirty detection and message planning."""
    list_sig: str | None
    deleted: bool


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
        """Open (creating if needed) a mirror for writing, migrated to the latest schema."""
        p = Path(path)
        if p.is_dir():
            raise StoreError(f"database path {path} is a directory")
        if not p.parent.exists():
            raise StoreError(f"directory of database {path} does not exist")
        if not p.exists():
            # personal data: owner-only from the first byte
            os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=OFF")
            migrations.migrate(conn)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open database {path}: {e}") from None
        import sqlite_utils
        return cls(conn, path, sqlite_utils.Database(conn))

    @classmethod
    def open_readonly(cls, path: str) -> "Store":
        """Open an existing mirror for reading only; never creates or changes the file."""
        p = Path(path)
        if not p.is_file():
            raise StoreError(f"no database at {path}: run `syncer sync` first (or pass --db)")
        try:
            conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True,
                                   isolation_level=None, check_same_thread=False, timeout=30)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path} is not a SQLite database ({e})") from None
        if app_id != migrations.APPLICATION_ID or version < 1:
            raise StoreError(f"{path} was not made by syncer")
        if version > migrations.LATEST:
            raise StoreError(f"{path} has schema version {version}, newer than this syncer")
        if version < migrations.LATEST:
            raise StoreError(f"{path} has an older schema; run `syncer sync` once to upgrade it")
        return cls(conn, path)

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    # -- state and queue ---------------------------------------------------------------------
    def get_state(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM _sync_state WHERE key = ?", (key,)).fetchone()
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
            for cid, sig, deleted in self.conn.execute(
                    f"SELECT id, _list_sig, _deleted_at FROM conversations WHERE id IN ({marks})",
                    chunk):
                out[cid] = Stored(sig, deleted is not None)
        return out

    def enqueue_records(self, items: Iterable[tuple[str, str, str | None]]) -> None:
        """Queue (id, reason, list record as JSON or None). A queued id keeps its place and
        takes the newer record."""
        at = now_utc()
        self.conn.executemany(
            "INSERT INTO _sync_queue (id, queued_at, reason, record) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET record = coalesce(excluded.record, record)",
            [(cid, at, reason, record) for cid, reason, record in items])

    def queued_record(self, cid: str) -> dict | None:
        row = self.conn.execute("SELECT record FROM _sync_queue WHERE id = ?", (cid,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def dequeue(self, cid: str) -> None:
        self.conn.execute("DELETE FROM _sync_queue WHERE id = ?", (cid,))

    def queued(self, limit: int | None = None) -> list[str]:
        sql = "SELECT id FROM _sync_queue ORDER BY queued_at, id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [r[0] for r in self.conn.execute(sql)]

    def queue_size(self) -> int:
        return self.conn.execute("SELECT count(*) FROM _sync_queue").fetchone()[0]

    def record_failure(self, cid: str, error: str, run_id: int | None = None) -> None:
        with self.transaction():
            self.conn.execute("UPDATE _sync_queue SET attempts = attempts + 1, last_error = ? "
                              "WHERE id = ?", (error[:500], cid))
            if run_id is not None:
                self.add_to_run(run_id, {"conversations_failed": 1})

    def mark_seen(self, ids: list[str]) -> None:
        self.conn.executemany("INSERT OR IGNORE INTO _walk_seen (id) VALUES (?)",
                              [(i,) for i in ids])

    def clear_seen(self) -> None:
        self.conn.execute("DELETE FROM _walk_seen")

    def unseen_live_ids(self) -> list[str]:
        """Live conversations the completed walk did not see: candidates for deletion."""
        return [r[0] for r in self.conn.execute(
            "SELECT id FROM conversations WHERE _deleted_at IS NULL "
            "AND id NOT IN (SELECT id FROM _walk_seen) ORDER BY id")]

    # -- conversations and messages ----------------------------------------------------------
    def message_ids(self, cid: str) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT id FROM messages WHERE conversationId = ?", (cid,))]

    def message_state(self, cid: str) -> tuple[int, str | None, bool]:
        """(messages held, id of the newest held, whether the held set was complete)."""
        held = self.conn.execute("SELECT count(*) FROM messages WHERE conversationId = ?",
                                 (cid,)).fetchone()[0]
        newest = self.conn.execute(
            "SELECT id FROM messages WHERE conversationId = ? ORDER BY createdAt DESC, id DESC "
            "LIMIT 1", (cid,)).fetchone()
        complete = self.conn.execute("SELECT _messages_complete FROM conversations WHERE id = ?",
                                     (cid,)).fetchone()
        return held, newest[0] if newest else None, bool(complete and complete[0])

    def held_among(self, ids: list[str]) -> set[str]:
        """Which of these message ids the mirror holds."""
        out: set[str] = set()
        for chunk in _chunks(ids):
            out.update(r[0] for r in self.conn.execute(
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
            self.conn.executemany(
                f"INSERT INTO messages ({', '.join(MESSAGE_COLUMNS)}, _synced_at) "
                f"VALUES ({marks})", [[m[c] for c in MESSAGE_COLUMNS] + [synced_at]
                                      for m in messages])
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
                           ) -> list[tuple[int, int]]:
        """Commit fetched conversations in one transaction: for each, its row, its messages,
        its completeness, the records rejected while reading it and the run's counters, and
        its removal from the queue. Returns (messages written, messages missing) for each."""
        synced_at = now_utc()
        with self.transaction():
            return [self._save_one(item, synced_at, run_id) for item in batch]

    def save_conversation(self, item: "Fetched", run_id: int | None = None) -> tuple[int, int]:
        return self.save_conversations([item], run_id)[0]

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
                self._delete_messages(gone)
                written += len(gone)
            held = self.held_messages(row["id"])
        missing = 0 if item.complete else max(row["messageCount"] - held, 0)
        self.conn.execute(
            "UPDATE conversations SET _messages_held = ?, _messages_missing = ?, "
            "_messages_complete = ? WHERE id = ?",
            (held, missing, int(item.complete), row["id"]))
        self.conn.execute("DELETE FROM _sync_queue WHERE id = ?", (row["id"],))
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
            for fts in ("messages_fts", "conversations_fts"):
                self.conn.execute(f"INSERT INTO {fts}({fts}) VALUES ('optimize')")

    def reject(self, endpoint: str, record: object, reason: str) -> None:
        """Quarantine a record that failed validation. Call inside a transaction."""
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

    # -- runs --------------------------------------------------------------------------------
    def start_run(self, mode: str) -> int:
        """Record a new run. Runs still marked running were killed: the caller holds the
        writer's lock, so no other run can be alive."""
        with self.transaction():
            self.conn.execute("UPDATE _sync_runs SET outcome = 'killed' "
                              "WHERE outcome = 'running'")
            return self.conn.execute(
                "INSERT INTO _sync_runs (started_at, outcome, mode) VALUES (?, 'running', ?)",
                (now_utc(), mode)).lastrowid

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

    def run(self, run_id: int) -> dict:
        cur = self.conn.execute("SELECT * FROM _sync_runs WHERE id = ?", (run_id,))
        names = [d[0] for d in cur.description]
        return dict(zip(names, cur.fetchone()))

    def watermark(self) -> str | None:
        """The newest watermark a run committed: every change before it is in the mirror."""
        row = self.conn.execute("SELECT max(watermark) FROM _sync_runs").fetchone()
        return row[0]

    def last_full_walk(self) -> str | None:
        row = self.conn.execute(
            "SELECT max(walk_started_at) FROM _sync_runs WHERE mode = 'full' "
            "AND outcome IN ('ok', 'partial')").fetchone()
        return row[0]

    def gaps(self) -> list[tuple[str, int, int]]:
        return list(self.conn.execute(
            "SELECT id, messageCount, _messages_held FROM conversations "
            "WHERE _messages_complete = 0 AND _deleted_at IS NULL ORDER BY id"))
