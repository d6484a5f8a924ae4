"""Schema versions. The database shape is declared here as data and applied in order.

`PRAGMA user_version` holds the version a database is at. Each entry of MIGRATIONS moves a
database from the version before it to its own, in one transaction with the new user_version,
so a database is never half-way through a version.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from . import upgrades
from .errors import StoreError

APPLICATION_ID = 0x52545359  # "RTSY": marks a database made by syncer

V1 = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    createdAt TEXT,
    updatedAt TEXT,
    lastMessageAt TEXT,
    status TEXT,
    subject TEXT,
    participantName TEXT,
    participantEmail TEXT,
    externalParticipantId TEXT,
    externalThreadId TEXT,
    surfaceId TEXT,
    timezone TEXT,
    messageCount INTEGER,
    context TEXT,
    participantMetadata TEXT,
    surface TEXT,
    _raw TEXT NOT NULL,
    _list_sig TEXT,
    _synced_at TEXT NOT NULL,
    _deleted_at TEXT,
    _messages_held INTEGER NOT NULL DEFAULT 0,
    _messages_missing INTEGER NOT NULL DEFAULT 0,
    _messages_complete INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS idx_conversations_updatedAt ON conversations (updatedAt);
CREATE INDEX IF NOT EXISTS idx_conversations_lastMessageAt ON conversations (lastMessageAt);
CREATE INDEX IF NOT EXISTS idx_conversations_createdAt ON conversations (createdAt);
CREATE INDEX IF NOT EXISTS idx_conversations_status ON conversations (status, surfaceId);
CREATE INDEX IF NOT EXISTS idx_conversations_surfaceId ON conversations (surfaceId);

CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    conversationId TEXT NOT NULL,
    createdAt TEXT,
    role TEXT,
    direction TEXT,
    content TEXT,
    externalMessageId TEXT,
    flowStepResultId TEXT,
    metadata TEXT,
    _raw TEXT NOT NULL,
    _synced_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_messages_conversation ON messages (conversationId, createdAt);
CREATE INDEX IF NOT EXISTS idx_messages_createdAt ON messages (createdAt);

CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING FTS5 (
    content, content="messages"
);
CREATE VIRTUAL TABLE IF NOT EXISTS conversations_fts USING FTS5 (
    subject, participantName, participantEmail, content="conversations"
);

CREATE TABLE IF NOT EXISTS _sync_state (
    key TEXT PRIMARY KEY,
    value TEXT
);
CREATE TABLE IF NOT EXISTS _sync_queue (
    id TEXT PRIMARY KEY,
    queued_at TEXT NOT NULL,
    reason TEXT NOT NULL,
    record TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS _walk_seen (
    id TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS _sync_runs (
    id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    outcome TEXT NOT NULL,
    mode TEXT NOT NULL,
    pages INTEGER NOT NULL DEFAULT 0,
    conversations_seen INTEGER NOT NULL DEFAULT 0,
    conversations_changed INTEGER NOT NULL DEFAULT 0,
    conversations_deleted INTEGER NOT NULL DEFAULT 0,
    conversations_failed INTEGER NOT NULL DEFAULT 0,
    messages_written INTEGER NOT NULL DEFAULT 0,
    rejects INTEGER NOT NULL DEFAULT 0,
    gaps INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    throttled INTEGER NOT NULL DEFAULT 0,
    walk_started_at TEXT,
    watermark TEXT,
    early_stop INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE TABLE IF NOT EXISTS _rejects (
    id INTEGER PRIMARY KEY,
    endpoint TEXT NOT NULL,
    record_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    raw TEXT,
    first_seen_at TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    times INTEGER NOT NULL DEFAULT 1,
    UNIQUE (endpoint, record_id, reason)
);
"""

# A watermark belongs to the scope (status, surfaces) of the runs that made it; a queued
# conversation's generation grows with every newer record the walk queues for it, so a fetch
# started from an older record does not take it off the queue.
# Forgetting (purge.py): a purged conversation keeps its id, timestamps, status, tombstone and,
# when it is live upstream, its list signature, so that a sync does not fetch it again unless it
# changes. A sync that writes it again (it changed, or came back) makes it an ordinary
# conversation again: the trigger clears the mark whenever the row's _synced_at is written.
V2 = """
ALTER TABLE _sync_runs ADD COLUMN scope TEXT;
ALTER TABLE _sync_queue ADD COLUMN gen INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN _purged_at TEXT;
CREATE TRIGGER IF NOT EXISTS conversations_written_again
AFTER UPDATE OF _synced_at ON conversations WHEN NEW._purged_at IS NOT NULL
BEGIN UPDATE conversations SET _purged_at = NULL WHERE rowid = NEW.rowid; END;
CREATE TABLE IF NOT EXISTS _purges (
    id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    outcome TEXT NOT NULL,
    criteria TEXT NOT NULL,
    conversations INTEGER NOT NULL DEFAULT 0,
    messages INTEGER NOT NULL DEFAULT 0,
    scrubbed_at TEXT
);
"""

# The change feed (feed.py): every write of a row of conversations or messages stamps it with
# the next value of one counter, in the same statement's transaction, so `_seq` only grows and a
# reader that saw everything up to N has seen every change up to N (SQLite has one writer; a
# counter value is committed with its row). A row deleted outright leaves a tombstone in
# _deleted_rows with the counter value of its deletion; writing the id again removes it, so an
# id is live or tombstoned, never both. Triggers, so every writer (sync, verify --fix, purge)
# is covered without knowing of the feed. The inner UPDATE does not fire its own trigger again
# (recursive_triggers is off, SQLite's default, and the WHEN clause says so too).
_NOW = "strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')"  # as transform.format_instant


_BUMP = "UPDATE _seq_counter SET value = value + 1 WHERE id = 1;"


def _stamp(table: str) -> str:
    return (f"UPDATE {table} SET _seq = (SELECT value FROM _seq_counter WHERE id = 1) "
            "WHERE rowid = NEW.rowid;")


def _seq_update_trigger(table: str) -> str:
    return f"""CREATE TRIGGER {table}_seq_update AFTER UPDATE ON {table} WHEN NEW._seq IS OLD._seq
BEGIN {_BUMP} {_stamp(table)} END;"""


def _seq_triggers(table: str, parent: str) -> str:
    bump, stamp = _BUMP, _stamp(table)
    return f"""
CREATE TRIGGER {table}_seq_insert AFTER INSERT ON {table}
BEGIN {bump} {stamp}
  DELETE FROM _deleted_rows WHERE tbl = '{table}' AND id = NEW.id; END;
{_seq_update_trigger(table)}
CREATE TRIGGER {table}_seq_delete AFTER DELETE ON {table}
BEGIN {bump}
  INSERT INTO _deleted_rows (tbl, id, conversationId, createdAt, _seq, _deleted_at)
  VALUES ('{table}', OLD.id, OLD.{parent}, OLD.createdAt,
          (SELECT value FROM _seq_counter WHERE id = 1), {_NOW})
  ON CONFLICT (tbl, id) DO UPDATE SET conversationId = excluded.conversationId,
    createdAt = excluded.createdAt, _seq = excluded._seq, _deleted_at = excluded._deleted_at;
END;
"""


V3 = f"""
CREATE TABLE _seq_counter (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
CREATE TABLE _deleted_rows (
    tbl TEXT NOT NULL,
    id TEXT NOT NULL,
    conversationId TEXT,
    createdAt TEXT,
    _seq INTEGER NOT NULL,
    _deleted_at TEXT NOT NULL,
    PRIMARY KEY (tbl, id)
);
CREATE INDEX idx_deleted_rows_seq ON _deleted_rows (tbl, _seq);
CREATE TABLE _consumers (
    name TEXT NOT NULL,
    tbl TEXT NOT NULL,
    position INTEGER NOT NULL DEFAULT 0,
    exports INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT,
    PRIMARY KEY (name, tbl)
);
ALTER TABLE conversations ADD COLUMN _seq INTEGER;
ALTER TABLE messages ADD COLUMN _seq INTEGER;
UPDATE conversations SET _seq = rowid;
UPDATE messages SET _seq = rowid + (SELECT coalesce(max(rowid), 0) FROM conversations);
INSERT INTO _seq_counter (id, value) VALUES (1, max(
    (SELECT coalesce(max(_seq), 0) FROM conversations),
    (SELECT coalesce(max(_seq), 0) FROM messages)));
CREATE INDEX idx_conversations_seq ON conversations (_seq);
CREATE INDEX idx_messages_seq ON messages (_seq);
{_seq_triggers("conversations", "id")}
{_seq_triggers("messages", "conversationId")}
"""

# What `syncer stats` needs, kept at write time (query.stats reads it instead of scanning every
# message). _turns holds each answered user turn: a user message whose previous message in its
# conversation (by createdAt, id) is not from the user, with the seconds to the first later
# message that is not from the user. A message written, deleted or moved changes the turns of
# its neighbourhood only: the run of messages between the last non-user message before it and
# the first non-user message after it; the triggers recompute that run, in the same statement.
def _turns_refresh(c: str, t: str, i: str) -> str:
    def bound(op: str, order: str, sentinel: str) -> str:
        return (f"(SELECT * FROM (SELECT createdAt, id FROM messages WHERE conversationId = {c} "
                f"AND role IS NOT 'user' AND (createdAt, id) {op} ({t}, {i}) ORDER BY "
                f"createdAt {order}, id {order} LIMIT 1) UNION ALL SELECT '{sentinel}', '' "
                "LIMIT 1)")
    low, high = bound("<", "DESC", ""), bound(">", "ASC", "~")
    return f"""
  DELETE FROM _turns WHERE conversationId = {c} AND (at, messageId) > {low}
    AND (at, messageId) < {high};
  INSERT INTO _turns (messageId, conversationId, at, delay)
  SELECT u.id, u.conversationId, u.createdAt,
         round((julianday(r.createdAt) - julianday(u.createdAt)) * 86400, 3)
  FROM messages u JOIN messages r ON r.rowid = (
      SELECT x.rowid FROM messages x WHERE x.conversationId = u.conversationId
      AND x.role IS NOT 'user' AND (x.createdAt, x.id) > (u.createdAt, u.id)
      ORDER BY x.createdAt, x.id LIMIT 1)
  WHERE u.conversationId = {c} AND u.role = 'user'
    AND (u.createdAt, u.id) > {low} AND (u.createdAt, u.id) < {high}
    AND (SELECT p.role FROM messages p WHERE p.conversationId = u.conversationId
         AND (p.createdAt, p.id) < (u.createdAt, u.id)
         ORDER BY p.createdAt DESC, p.id DESC LIMIT 1) IS NOT 'user';"""


# _daily: messages per (day, role, direction); _conversation_counts: messages per conversation.
def _count(row: str, n: int) -> str:
    return f"""
  INSERT INTO _daily (key, day, role, direction, n)
  VALUES (json_array(substr({row}.createdAt, 1, 10), {row}.role, {row}.direction),
          substr({row}.createdAt, 1, 10), {row}.role, {row}.direction, {n})
  ON CONFLICT (key) DO UPDATE SET n = n + ({n});
  INSERT INTO _conversation_counts (conversationId, n) VALUES ({row}.conversationId, {n})
  ON CONFLICT (conversationId) DO UPDATE SET n = n + ({n});"""


V4 = f"""
CREATE TABLE _turns (
    messageId TEXT PRIMARY KEY,
    conversationId TEXT NOT NULL,
    at TEXT NOT NULL,
    delay REAL NOT NULL
);
INSERT INTO _turns (messageId, conversationId, at, delay)
SELECT id, conversationId, at, round((julianday(reply) - julianday(at)) * 86400, 3) FROM (
    SELECT id, conversationId, createdAt AS at, role, lag(role) OVER win AS prev,
           min(CASE WHEN role IS NOT 'user' THEN createdAt END) OVER (
               win ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING) AS reply
    FROM messages WINDOW win AS (PARTITION BY conversationId ORDER BY createdAt, id))
WHERE role = 'user' AND prev IS NOT 'user' AND reply IS NOT NULL;
CREATE INDEX idx_turns_conversation ON _turns (conversationId, at);
CREATE INDEX idx_turns_at ON _turns (at, conversationId, delay);
CREATE INDEX idx_turns_delay ON _turns (delay, conversationId);
CREATE INDEX idx_messages_stats ON messages (createdAt, conversationId, role, direction);
CREATE INDEX idx_messages_turns ON messages (conversationId, createdAt, id, role);
CREATE INDEX idx_conversations_stats
    ON conversations (updatedAt, status, surfaceId, _deleted_at, _purged_at);
CREATE INDEX idx_conversations_groups
    ON conversations (status, surfaceId, _deleted_at, _purged_at, updatedAt);
CREATE INDEX idx_conversations_participant
    ON conversations (id, participantEmail, participantName, _deleted_at, _purged_at);
CREATE INDEX idx_conversations_gone ON conversations (id)
    WHERE _purged_at IS NOT NULL OR _deleted_at IS NOT NULL;
CREATE INDEX idx_conversations_purged ON conversations (id) WHERE _purged_at IS NOT NULL;
CREATE TABLE _daily (
    key TEXT PRIMARY KEY,
    day TEXT,
    role TEXT,
    direction TEXT,
    n INTEGER NOT NULL
);
INSERT INTO _daily (key, day, role, direction, n)
SELECT json_array(substr(createdAt, 1, 10), role, direction), substr(createdAt, 1, 10), role,
       direction, count(*) FROM messages GROUP BY 2, 3, 4;
CREATE TABLE _conversation_counts (conversationId TEXT PRIMARY KEY, n INTEGER NOT NULL);
INSERT INTO _conversation_counts SELECT conversationId, count(*) FROM messages GROUP BY 1;
CREATE TRIGGER messages_counts_insert AFTER INSERT ON messages
BEGIN {_count("NEW", 1)} END;
CREATE TRIGGER messages_counts_delete AFTER DELETE ON messages
BEGIN {_count("OLD", -1)} END;
CREATE TRIGGER messages_counts_update AFTER UPDATE OF conversationId, createdAt, role, direction
ON messages WHEN OLD.conversationId IS NOT NEW.conversationId
     OR OLD.createdAt IS NOT NEW.createdAt OR OLD.role IS NOT NEW.role
     OR OLD.direction IS NOT NEW.direction
BEGIN {_count("OLD", -1)} {_count("NEW", 1)} END;
CREATE TRIGGER messages_turns_insert AFTER INSERT ON messages
BEGIN {_turns_refresh("NEW.conversationId", "NEW.createdAt", "NEW.id")} END;
CREATE TRIGGER messages_turns_delete AFTER DELETE ON messages
BEGIN {_turns_refresh("OLD.conversationId", "OLD.createdAt", "OLD.id")} END;
CREATE TRIGGER messages_turns_update AFTER UPDATE OF conversationId, createdAt, role ON messages
WHEN OLD.conversationId IS NOT NEW.conversationId OR OLD.createdAt IS NOT NEW.createdAt
     OR OLD.role IS NOT NEW.role
BEGIN {_turns_refresh("OLD.conversationId", "OLD.createdAt", "OLD.id")}
      {_turns_refresh("NEW.conversationId", "NEW.createdAt", "NEW.id")} END;
"""

# Indexes that V4's wider ones cover (same leading columns) cost every write and answer nothing
# the wider ones cannot; `syncer status` counts tombstones and gaps off two small partial indexes.
V5 = """
DROP INDEX IF EXISTS idx_messages_conversation;
DROP INDEX IF EXISTS idx_messages_createdAt;
CREATE INDEX IF NOT EXISTS idx_conversations_deleted ON conversations (_deleted_at)
    WHERE _deleted_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_conversations_gaps ON conversations (_messages_missing)
    WHERE _messages_complete = 0 AND _deleted_at IS NULL;
"""

# Search filters (query.py) that an index can answer, so that a filter keeping few rows narrows
# the search before ranking: messages by role (and time), conversations by surface type, and
# participants by any part of the name or email: a trigram index, kept by triggers (whoever
# writes), folded by SQLite's simple case folding. Where that folding and Python's casefold
# part ways (ß → ss, Georgian Mtavruli, ...: the characters of UNFOLDED_CLASS), the trigram
# index may miss a match, so the rows holding such characters are listed by a partial index
# and always checked too.
UNFOLDED = ((0xDF, 0xDF), (0x130, 0x130), (0x149, 0x149), (0x1F0, 0x1F0), (0x37F, 0x37F),
            (0x390, 0x390), (0x3B0, 0x3B0), (0x528, 0x528), (0x52A, 0x52A), (0x52C, 0x52C),
            (0x52E, 0x52E), (0x587, 0x587), (0x13F8, 0x13FD), (0x1C80, 0x1C88),
            (0x1C90, 0x1CBA), (0x1CBD, 0x1CBF), (0x1E96, 0x1E9A), (0x1E9E, 0x1E9E),
            (0x1F50, 0x1F50), (0x1F52, 0x1F52), (0x1F54, 0x1F54), (0x1F56, 0x1F56),
            (0x1F80, 0x1FAF), (0x1FB2, 0x1FB4), (0x1FB6, 0x1FB7), (0x1FBC, 0x1FBC),
            (0x1FC2, 0x1FC4), (0x1FC6, 0x1FC7), (0x1FCC, 0x1FCC), (0x1FD2, 0x1FD3),
            (0x1FD6, 0x1FD7), (0x1FE2, 0x1FE4), (0x1FE6, 0x1FE7), (0x1FF2, 0x1FF4),
            (0x1FF6, 0x1FF7), (0x1FFC, 0x1FFC), (0x2C2F, 0x2C2F), (0xA698, 0xA698),
            (0xA69A, 0xA69A), (0xA796, 0xA796), (0xA798, 0xA798), (0xA79A, 0xA79A),
            (0xA79C, 0xA79C), (0xA79E, 0xA79E), (0xA7AB, 0xA7AE), (0xA7B0, 0xA7B4),
            (0xA7B6, 0xA7B6), (0xA7B8, 0xA7B8), (0xA7BA, 0xA7BA), (0xA7BC, 0xA7BC),
            (0xA7BE, 0xA7BE), (0xA7C0, 0xA7C0), (0xA7C2, 0xA7C2), (0xA7C4, 0xA7C7),
            (0xA7C9, 0xA7C9), (0xA7D0, 0xA7D0), (0xA7D6, 0xA7D6), (0xA7D8, 0xA7D8),
            (0xA7F5, 0xA7F5), (0xAB70, 0xABBF), (0xFB00, 0xFB06), (0xFB13, 0xFB17),
            (0x104B0, 0x104D3), (0x10570, 0x1057A), (0x1057C, 0x1058A), (0x1058C, 0x10592),
            (0x10594, 0x10595), (0x10C80, 0x10CB2), (0x118A0, 0x118BF), (0x16E40, 0x16E5F),
            (0x1E900, 0x1E921))
UNFOLDED_CLASS = "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in UNFOLDED)
# the exact expression of the partial index: a query must repeat it to be answered by it
UNFOLDED_ROWS = (f"(participantName GLOB '*[{UNFOLDED_CLASS}]*' "
                 f"OR participantEmail GLOB '*[{UNFOLDED_CLASS}]*')")


def _participants_fts(row: str, delete: bool = False) -> str:
    return ("INSERT INTO participants_fts (participants_fts, rowid, participantName, "
            f"participantEmail) VALUES ('delete', {row}.rowid, {row}.participantName, "
            f"{row}.participantEmail);" if delete else
            "INSERT INTO participants_fts (rowid, participantName, participantEmail) "
            f"VALUES ({row}.rowid, {row}.participantName, {row}.participantEmail);")


V6 = f"""
CREATE INDEX IF NOT EXISTS idx_messages_role ON messages (role, createdAt);
CREATE INDEX IF NOT EXISTS idx_conversations_surface_type
    ON conversations (json_extract(surface, '$.type'), surfaceId);
CREATE INDEX IF NOT EXISTS idx_conversations_unfolded ON conversations (id)
    WHERE {UNFOLDED_ROWS};
CREATE VIRTUAL TABLE participants_fts USING FTS5 (
    participantName, participantEmail, content="conversations", tokenize="trigram"
);
INSERT INTO participants_fts (participants_fts) VALUES ('rebuild');
CREATE TRIGGER participants_fts_insert AFTER INSERT ON conversations
BEGIN {_participants_fts("NEW")} END;
CREATE TRIGGER participants_fts_delete AFTER DELETE ON conversations
BEGIN {_participants_fts("OLD", delete=True)} END;
CREATE TRIGGER participants_fts_update AFTER UPDATE OF participantName, participantEmail
ON conversations WHEN OLD.participantName IS NOT NEW.participantName
     OR OLD.participantEmail IS NOT NEW.participantEmail
BEGIN {_participants_fts("OLD", delete=True)} {_participants_fts("NEW")} END;
"""


# Filtered stats (stats.py): messages per conversation, UTC day, role and direction, so that a
# filter on the conversations (status, surface, participant) sums the rows of the conversations
# it keeps instead of reading their messages. It replaces _conversation_counts (the sum of a
# conversation's rows), so a message write still costs two upserts. A row whose count falls to
# zero is removed, so a purge leaves nothing behind. idx_conversations_kept holds what stats
# reads of a conversation, so the ids a filter keeps are found without reading the rows; the
# delay index holds each turn's time, so a median over a long window walks it alone. Written
# to apply on top of V5 or V6, in either order: it names nothing V6 adds, and every statement
# can run on a database that has it already.
def _conv_day(row: str, n: int) -> str:
    return f"""
  INSERT INTO _conv_days (conversationId, key, day, role, direction, n)
  VALUES ({row}.conversationId, json_array(substr({row}.createdAt, 1, 10), {row}.role,
          {row}.direction), substr({row}.createdAt, 1, 10), {row}.role, {row}.direction, {n})
  ON CONFLICT (conversationId, key) DO UPDATE SET n = n + ({n});"""


def _day(row: str, n: int) -> str:
    return f"""
  INSERT INTO _daily (key, day, role, direction, n)
  VALUES (json_array(substr({row}.createdAt, 1, 10), {row}.role, {row}.direction),
          substr({row}.createdAt, 1, 10), {row}.role, {row}.direction, {n})
  ON CONFLICT (key) DO UPDATE SET n = n + ({n});"""


_GONE_ROW = """
  DELETE FROM _conv_days WHERE conversationId = OLD.conversationId AND n = 0
    AND key = json_array(substr(OLD.createdAt, 1, 10), OLD.role, OLD.direction);"""

V7 = f"""
CREATE TABLE IF NOT EXISTS _conv_days (
    conversationId TEXT NOT NULL,
    key TEXT NOT NULL,
    day TEXT,
    role TEXT,
    direction TEXT,
    n INTEGER NOT NULL,
    PRIMARY KEY (conversationId, key)
) WITHOUT ROWID;
DELETE FROM _conv_days;
INSERT INTO _conv_days (conversationId, key, day, role, direction, n)
SELECT conversationId, json_array(substr(createdAt, 1, 10), role, direction),
       substr(createdAt, 1, 10), role, direction, count(*) FROM messages GROUP BY 1, 3, 4, 5;
DROP TRIGGER IF EXISTS messages_counts_insert;
DROP TRIGGER IF EXISTS messages_counts_delete;
DROP TRIGGER IF EXISTS messages_counts_update;
DROP TABLE IF EXISTS _conversation_counts;
CREATE INDEX IF NOT EXISTS idx_conversations_kept ON conversations (_purged_at, _deleted_at,
    status, surfaceId, json_extract(surface, '$.type'), updatedAt, id, participantEmail,
    participantName);
DROP INDEX IF EXISTS idx_turns_delay;
CREATE INDEX idx_turns_delay ON _turns (delay, conversationId, at);
CREATE TABLE IF NOT EXISTS _stats_deferred (id INTEGER PRIMARY KEY CHECK (id = 1));
CREATE TRIGGER messages_counts_insert AFTER INSERT ON messages
WHEN NOT EXISTS (SELECT 1 FROM _stats_deferred)
BEGIN {_day("NEW", 1)} {_conv_day("NEW", 1)} END;
DROP TRIGGER IF EXISTS messages_turns_insert;
CREATE TRIGGER messages_turns_insert AFTER INSERT ON messages
WHEN NOT EXISTS (SELECT 1 FROM _stats_deferred)
BEGIN {_turns_refresh("NEW.conversationId", "NEW.createdAt", "NEW.id")} END;
CREATE TRIGGER messages_counts_delete AFTER DELETE ON messages
BEGIN {_day("OLD", -1)} {_conv_day("OLD", -1)} {_GONE_ROW} END;
CREATE TRIGGER messages_counts_update AFTER UPDATE OF conversationId, createdAt, role, direction
ON messages WHEN OLD.conversationId IS NOT NEW.conversationId
     OR OLD.createdAt IS NOT NEW.createdAt OR OLD.role IS NOT NEW.role
     OR OLD.direction IS NOT NEW.direction
BEGIN {_day("OLD", -1)} {_conv_day("OLD", -1)} {_GONE_ROW} {_day("NEW", 1)} {_conv_day("NEW", 1)}
END;
"""

# The writer's fast path for a conversation new to the mirror (store._insert_new) marks
# _stats_deferred, inserts the messages without the insert triggers, clears the mark and
# counts the conversation's stats in a few statements, all in one savepoint: cheaper than a
# trigger per message, and the same result (a conversation's stats are a function of its
# messages). Any other write keeps the triggers.
CONVERSATION_STATS = [
    """UPDATE _daily SET n = _daily.n - k.n FROM (SELECT key, n FROM _conv_days
       WHERE conversationId = :cid) AS k WHERE _daily.key = k.key""",
    "DELETE FROM _conv_days WHERE conversationId = :cid",
    "DELETE FROM _turns WHERE conversationId = :cid",
    """INSERT INTO _conv_days (conversationId, key, day, role, direction, n)
       SELECT conversationId, json_array(substr(createdAt, 1, 10), role, direction),
              substr(createdAt, 1, 10), role, direction, count(*) FROM messages
       WHERE conversationId = :cid GROUP BY 3, 4, 5""",
    """INSERT INTO _daily (key, day, role, direction, n)
       SELECT key, day, role, direction, n FROM _conv_days WHERE conversationId = :cid
       ON CONFLICT (key) DO UPDATE SET n = _daily.n + excluded.n""",
    """INSERT INTO _turns (messageId, conversationId, at, delay)
       SELECT id, conversationId, at, round((julianday(reply) - julianday(at)) * 86400, 3)
       FROM (SELECT id, conversationId, createdAt AS at, role, lag(role) OVER win AS prev,
                    min(CASE WHEN role IS NOT 'user' THEN createdAt END) OVER (
                        win ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING) AS reply
             FROM messages WHERE conversationId = :cid
             WINDOW win AS (PARTITION BY conversationId ORDER BY createdAt, id))
       WHERE role = 'user' AND prev IS NOT 'user' AND reply IS NOT NULL""",
]

# The text columns of each table that the CSV export builds with printf(), which ends a value
# at a NUL (export.csv_line); JSON text escapes its control characters. The triggers name a
# table in _text_nul once a write puts a NUL in one of them, and only then does the export
# test each row for one. The mark stays: a later write may remove that NUL, but finding out
# would cost the scan the mark saves.
NUL_TEXT_V8 = {
    "messages": ("id", "conversationId", "role", "direction", "content", "externalMessageId",
                 "flowStepResultId"),
    "conversations": ("id", "status", "subject", "participantName", "participantEmail",
                      "externalParticipantId", "externalThreadId", "surfaceId", "timezone",
                      "_purged_at"),
}
AGENT_TEXT = ("agentMode", "takeoverActorId", "takeoverActorType", "takeoverReason")  # V9
NUL_TEXT = {"messages": NUL_TEXT_V8["messages"],
            "conversations": NUL_TEXT_V8["conversations"] + AGENT_TEXT}


def holds_nul(values) -> str:
    """SQL: whether one of the text `values` (SQL expressions) holds a NUL. length() counts
    characters up to a NUL: below the length in bytes only then, or for non-ASCII text,
    which alone pays for instr()."""
    return " OR ".join(f"(length({x}) < length(CAST({x} AS BLOB)) AND instr({x}, char(0)))"
                       for x in values)


def _holds_nul(row: str, columns) -> str:
    return holds_nul(f"{row}.{c}" for c in columns)


def _nul_triggers(table: str, columns: tuple[str, ...] | None = None) -> str:
    """The triggers marking `table` for a NUL written in `columns` (by default NUL_TEXT's)."""
    columns = NUL_TEXT[table] if columns is None else columns
    mark = f"INSERT OR IGNORE INTO _text_nul (tbl) VALUES ('{table}');"
    return "".join(f"""
DROP TRIGGER IF EXISTS {table}_nul_{name};
CREATE TRIGGER {table}_nul_{name} AFTER {event} ON {table}
WHEN {_holds_nul("NEW", columns)}
BEGIN {mark} END;""" for name, event in (("insert", "INSERT"),
                                         ("update", f"UPDATE OF {', '.join(columns)}")))


V8 = f"""
CREATE TABLE IF NOT EXISTS _text_nul (tbl TEXT PRIMARY KEY) WITHOUT ROWID;
INSERT OR IGNORE INTO _text_nul (tbl)
SELECT 'messages' WHERE EXISTS (SELECT 1 FROM messages t
                                WHERE {_holds_nul("t", NUL_TEXT_V8["messages"])})
    OR EXISTS (SELECT 1 FROM _deleted_rows t WHERE t.tbl = 'messages'
               AND ({_holds_nul("t", ("id", "conversationId"))}));
INSERT OR IGNORE INTO _text_nul (tbl)
SELECT 'conversations' WHERE EXISTS (SELECT 1 FROM conversations t
                                     WHERE {_holds_nul("t", NUL_TEXT_V8["conversations"])})
    OR EXISTS (SELECT 1 FROM _deleted_rows t WHERE t.tbl = 'conversations'
               AND ({_holds_nul("t", ("id",))}));
{_nul_triggers("messages", NUL_TEXT_V8["messages"])}
{_nul_triggers("conversations", NUL_TEXT_V8["conversations"])}
"""


# The vendor's agent mode and human takeover (transform.AGENT_FIELDS) as columns, filled from
# `_raw` for the conversations whose record has them, as a sync would write them (text kept,
# another type left NULL, takeoverAt normalised, NULL when it does not parse: upgrades.py).
# Those rows change, so the change feed carries them again; their list signatures, valid
# before, are re-signed to cover the new fields (transform.list_signature), so a sync does not
# fetch them again (the others' stay valid as they are). A forgotten conversation keeps no
# record to re-sign from: its signature is marked as covering the older fields only
# (watermark.signature_holds), without moving it in the change feed (its exported columns do
# not change). The takeover index holds the conversations a person took over, for stats.
TAKEN_OVER = "(agentMode = 'human' OR takeoverAt IS NOT NULL)"  # the takeover index's rows
_AGENT_FIELDS = ("agentMode", "takeoverActorId", "takeoverActorType", "takeoverAt",
                 "takeoverReason")

V9_BODY = f"""
{_nul_triggers("conversations")}
DROP TRIGGER IF EXISTS conversations_seq_update;
UPDATE conversations SET _list_sig = _list_sig || '~'
WHERE _purged_at IS NOT NULL AND length(_list_sig) = 16;
{_seq_update_trigger("conversations")}
UPDATE conversations SET {", ".join(f"{n} = syncer_field(_raw, '{n}')" for n in _AGENT_FIELDS)},
    _list_sig = syncer_resigned(_raw, _list_sig)
WHERE _purged_at IS NULL AND json_valid(_raw)
  AND ({" OR ".join(f"json_extract(_raw, '$.{n}') IS NOT NULL" for n in _AGENT_FIELDS)});
CREATE INDEX IF NOT EXISTS idx_conversations_takeover ON conversations (updatedAt, _purged_at,
    _deleted_at, agentMode, takeoverAt, id) WHERE {TAKEN_OVER};
"""


def V9(conn: sqlite3.Connection) -> str:
    """V9_BODY after adding the columns the database lacks: like the versions before, it can
    run on a database that has it already (SQLite has no ADD COLUMN IF NOT EXISTS)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(conversations)")}
    return "".join(f"ALTER TABLE conversations ADD COLUMN {name} TEXT;\n"
                   for name in _AGENT_FIELDS if name not in have) + V9_BODY


# a script, or a function of the database giving one
MIGRATIONS: list = [V1, V2, V3, V4, V5, V6, V7, V8, V9]
LATEST = len(MIGRATIONS)


def check_ours(conn: sqlite3.Connection) -> int:
    """The schema version of a database syncer made (0: an empty file); StoreError, before
    anything is written to it, for any other database or a newer schema."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if version > LATEST:
        raise StoreError(f"database schema version {version} is newer than this syncer "
                         f"understands ({LATEST}); upgrade syncer")
    foreign = app_id not in (0, APPLICATION_ID) or (
        version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0])
    if foreign:
        raise StoreError("this database was not made by syncer; "
                         "point --db at a new file or at a syncer mirror")
    return version


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a database made by syncer (or an empty one) up to LATEST, one version at a time."""
    version = check_ours(conn)
    upgrades.register(conn)
    for target in range(version + 1, LATEST + 1):
        # one script, one transaction: SQLite parses the statements (triggers included)
        try:
            script = MIGRATIONS[target - 1]
            script = script(conn) if callable(script) else script
            conn.executescript(f"BEGIN IMMEDIATE;\n{script};\n"
                               f"PRAGMA application_id = {APPLICATION_ID};\n"
                               f"PRAGMA user_version = {target};\nCOMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def connect_untouched(path: str | Path) -> sqlite3.Connection:
    """A read-only connection for checking a file that may not be a mirror, or not ours to
    change. Without a WAL beside it, every committed page is in the file itself, so it is
    opened immutable: SQLite then creates no -wal/-shm companions either."""
    p = Path(path).resolve()
    immutable = "" if Path(f"{p}-wal").exists() else "&immutable=1"
    return sqlite3.connect(f"{p.as_uri()}?mode=ro{immutable}", uri=True, isolation_level=None,
                           timeout=30)
