"""Read-only queries over the mirror: search, show, list and stats. No click, no printing.

Every function takes a `Store` opened with `Store.open_readonly` and returns plain dicts. SQL is
built only from fixed identifiers and `?` parameters; user text reaches FTS5 only as quoted
phrases (`fts_phrases`) unless the caller asks for raw FTS5 syntax.

Times: a message's time is its `createdAt`; a conversation's time is its `updatedAt`. `since`
is inclusive and `until` exclusive, both canonical UTC strings (see `parse_time`).
"""
from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone

from .config import parse_duration
from .errors import SyncerError
from .store import Store
from .transform import JSON_FIELDS, format_instant

HIDDEN = ("_raw", "_list_sig")  # bookkeeping columns no reader needs
MARK = ("\ue000", "\ue001")  # snippet highlight markers; renderers replace them
SORTS = {"updated": "c.updatedAt DESC", "created": "c.createdAt DESC",
         "last-message": "c.lastMessageAt DESC", "messages": "c.messageCount DESC"}
_BATCH = 500


class QueryError(SyncerError):
    """A bad query, filter or time from the user."""
    exit_code = 2


class NoSuchConversation(QueryError):
    exit_code = 1


def parse_time(text: str, *, end: bool = False, now: datetime | None = None) -> str:
    """'2024-05-01', '2024-05-01T10:00', an ISO instant, or a duration ago ('7d', '12h').

    A bare date given as an end (`until`) means the end of that day."""
    now = now or datetime.now(timezone.utc)
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = date.fromisoformat(text) + timedelta(days=1 if end else 0)
            return format_instant(datetime(day.year, day.month, day.day, tzinfo=timezone.utc))
        if re.match(r"\d{4}-", text):
            dt = datetime.fromisoformat(text)
            return format_instant(dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc))
        return format_instant(now - timedelta(seconds=parse_duration(text)))
    except (ValueError, OverflowError):
        raise QueryError(f"not a date, time or duration: {text!r} "
                         "(use e.g. 2024-05-01, 2024-05-01T10:00Z or 7d)") from None


@dataclass(frozen=True)
class Filters:
    """What to keep. Empty tuples and None mean no restriction."""
    status: tuple[str, ...] = ()
    surface: tuple[str, ...] = ()  # surfaceId or surface type (e.g. email)
    role: tuple[str, ...] = ()
    since: str | None = None
    until: str | None = None
    conversation: str | None = None
    participant: str | None = None  # case-insensitive part of the name or the email
    include_deleted: bool = False

    def conversation_sql(self, c: str = "c") -> tuple[list[str], list]:
        where, args = [f"{c}._purged_at IS NULL"], []   # forgotten: only ids and times left
        if not self.include_deleted:
            where.append(f"{c}._deleted_at IS NULL")
        if self.status:
            where.append(f"{c}.status IN ({_marks(self.status)})")
            args += self.status
        if self.surface:
            marks = _marks(self.surface)
            where.append(f"({c}.surfaceId IN ({marks}) OR "
                         f"json_extract({c}.surface, '$.type') IN ({marks}))")
            args += self.surface * 2
        if self.conversation:
            where.append(f"{c}.id = ?")
            args.append(self.conversation)
        if self.participant:
            where.append(f"(instr(syncer_fold({c}.participantName), ?) > 0 OR "
                         f"instr(syncer_fold({c}.participantEmail), ?) > 0)")
            args += [self.participant.casefold()] * 2
        return where, args

    def message_sql(self, m: str = "m", c: str = "c", *,
                    by_rowid: bool = False) -> tuple[list[str], list]:
        """`by_rowid`: the caller looks messages up by rowid, so keep the planner off the
        createdAt index (a unary + on the column)."""
        where, args = self.conversation_sql(c)
        if self.role:
            where.append(f"{m}.role IN ({_marks(self.role)})")
            args += self.role
        column = f"+{m}.createdAt" if by_rowid else f"{m}.createdAt"
        return _time_sql(where, args, column, self.since, self.until)

    def conversation_time_sql(self, c: str = "c") -> tuple[list[str], list]:
        """Conversation filters plus time (updatedAt) and role (has a message of that role)."""
        where, args = self.conversation_sql(c)
        if self.role:
            where.append(f"EXISTS (SELECT 1 FROM messages r WHERE r.conversationId = {c}.id "
                         f"AND r.role IN ({_marks(self.role)}))")
            args += self.role
        return _time_sql(where, args, f"{c}.updatedAt", self.since, self.until)


def _marks(values) -> str:
    return ",".join("?" * len(values))


def _time_sql(where, args, column, since, until):
    if since:
        where.append(f"{column} >= ?")
        args.append(since)
    if until:
        where.append(f"{column} < ?")
        args.append(until)
    return where, args


def _where(clauses: list[str]) -> str:
    return " AND ".join(clauses) or "1"


def prepare(store: Store) -> sqlite3.Connection:
    """The store's connection with the functions these queries use."""
    store.conn.create_function("syncer_fold", 1, lambda s: s.casefold() if s else s,
                               deterministic=True)
    return store.conn


def fts_phrases(text: str) -> str:
    """Plain words -> an FTS5 query: each whitespace-separated word becomes a quoted phrase
    (quotes doubled), so `don't`, `C++`, `AND`, `"`, `-` or `NEAR` are searched, never parsed.
    Phrases are ANDed; a word with no letters or digits matches nothing and is ignored."""
    return " ".join('"' + word.replace('"', '""') + '"' for word in text.split())


def row_dict(cursor: sqlite3.Cursor, row: tuple, parse_json: bool = True) -> dict:
    out = {}
    for (name, *_), value in zip(cursor.description, row):
        if name in HIDDEN:
            continue
        if parse_json and name in JSON_FIELDS and value is not None:
            value = json.loads(value)
        out[name] = value
    return out


# -- search ------------------------------------------------------------------------------------
_MESSAGE_HIT = """
SELECT 'message' AS kind, m.id, m.conversationId, m.createdAt, m.role, m.direction, m.content,
       snippet(messages_fts, 0, ?, ?, '…', 12) AS snippet, c.subject, c.participantName,
       c.participantEmail, c.status, c.surfaceId
FROM messages_fts JOIN messages m ON m.rowid = messages_fts.rowid
JOIN conversations c ON c.id = m.conversationId
WHERE messages_fts MATCH ? AND m.rowid = ?"""
_CONVERSATION_HIT = """
SELECT 'conversation' AS kind, c.id, c.id AS conversationId, c.updatedAt AS createdAt,
       NULL AS role, NULL AS direction, c.subject AS content,
       snippet(conversations_fts, -1, ?, ?, '…', 12) AS snippet, c.subject, c.participantName,
       c.participantEmail, c.status, c.surfaceId
FROM conversations_fts JOIN conversations c ON c.rowid = conversations_fts.rowid
WHERE conversations_fts MATCH ? AND c.rowid = ?"""


def search(store: Store, text: str, filters: Filters = Filters(), *, limit: int = 20,
           offset: int = 0, fts: bool = False, scope: str = "all") -> list[dict]:
    """Messages (and conversations, by subject and participant) matching `text`.

    Ranked by bm25 (lower `rank` is better), newest first on ties, then by id. A conversation
    hit is its own row with kind="conversation", id = conversation id, createdAt = the
    conversation's updatedAt and content = its subject; it is left out when `role` is given.
    """
    conn = prepare(store)
    query = text if fts else fts_phrases(text)
    if not query.strip():
        return []
    want = offset + limit
    found: list[list[tuple] | None] = []
    if scope in ("all", "messages"):
        where, args = filters.message_sql(by_rowid=True)
        found.append(_ranked(conn, "messages_fts", query, want,
                        "SELECT m.rowid, m.createdAt, m.id FROM messages m CROSS JOIN "
                        "conversations c "
                        f"ON c.id = m.conversationId WHERE m.rowid IN ({{}}) AND {_where(where)}",
                        args, "message"))
    if scope in ("all", "conversations") and not filters.role:
        where, args = filters.conversation_time_sql()
        found.append(_ranked(conn, "conversations_fts", query, want,
                        "SELECT c.rowid, c.updatedAt, c.id FROM conversations c "
                        f"WHERE c.rowid IN ({{}}) AND {_where(where)}", args, "conversation"))
    if found and all(f is None for f in found):
        raise QueryError(f"bad full-text query {query!r}: no such column in the searched index")
    hits = [h for f in found if f for h in f]
    hits.sort(key=lambda h: (h[0], _desc(h[2]), h[3]))
    out = []
    for rank, kind, _, _, rowid in hits[offset:want]:
        sql = _MESSAGE_HIT if kind == "message" else _CONVERSATION_HIT
        cur = conn.execute(sql, (*MARK, query, rowid))
        hit = row_dict(cur, cur.fetchone())
        hit["rank"] = rank
        out.append(hit)
    return out


def _desc(created: str | None) -> tuple:
    """Sort key that puts newer fixed-width timestamps first (and missing ones last)."""
    return tuple(-ord(ch) for ch in created) if created else (1,)


def _ranked(conn, fts_table, query, want, filter_sql, args, kind) -> list[tuple] | None:
    """Walk the FTS index in bm25 order and keep rows that pass the filters until `want` rows
    and every row tied with the last are kept."""
    try:
        cur = conn.execute(f"SELECT rowid, bm25({fts_table}) AS r FROM {fts_table} "
                           f"WHERE {fts_table} MATCH ? ORDER BY r", (query,))
    except sqlite3.OperationalError as e:
        if "no such column" in str(e):
            return None  # an --fts column filter naming the other index's columns
        raise QueryError(f"bad full-text query {query!r}: {e}") from None
    kept: list[tuple] = []
    size = _BATCH
    while batch := cur.fetchmany(size):
        ranks = dict(batch)
        sql = filter_sql.format(_marks(ranks))
        for rowid, created, rid in conn.execute(sql, [*ranks, *args]):
            kept.append((ranks[rowid], kind, created, rid, rowid))
        if len(kept) >= want and kept:
            boundary = sorted(k[0] for k in kept)[want - 1]
            if batch[-1][1] > boundary:
                break
        size = min(size * 2, 4_000)
    cur.close()
    return kept


# -- show and list -----------------------------------------------------------------------------
def show(store: Store, conversation_id: str) -> dict:
    """One conversation (every column but _raw/_list_sig) with `messages` in time order."""
    conn = store.conn
    cur = conn.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
    row = cur.fetchone()
    if row is None:
        raise NoSuchConversation(f"no conversation {conversation_id} in the mirror")
    out = row_dict(cur, row)
    cur = conn.execute("SELECT * FROM messages WHERE conversationId = ? ORDER BY createdAt, id",
                       (conversation_id,))
    out["messages"] = [row_dict(cur, r) for r in cur]
    return out


LIST_COLUMNS = ("id", "createdAt", "updatedAt", "lastMessageAt", "status", "subject",
                "participantName", "participantEmail", "surfaceId", "messageCount",
                "_messages_held", "_messages_complete", "_deleted_at")


def conversations(store: Store, filters: Filters = Filters(), *, sort: str = "updated",
                  limit: int | None = 50, offset: int = 0) -> list[dict]:
    """Conversations passing `filters`, sorted by `sort` (one of SORTS, newest/most first)."""
    if sort not in SORTS:
        raise QueryError(f"unknown sort {sort!r} (use {', '.join(SORTS)})")
    conn = prepare(store)
    where, args = filters.conversation_time_sql()
    cur = conn.execute(
        f"SELECT {', '.join('c.' + n for n in LIST_COLUMNS)} FROM conversations c "
        f"WHERE {_where(where)} ORDER BY {SORTS[sort]}, c.id LIMIT ? OFFSET ?",
        [*args, -1 if limit is None else limit, offset])
    return [row_dict(cur, r) for r in cur]


def count_conversations(store: Store, filters: Filters = Filters()) -> int:
    """How many conversations `conversations` would list without a limit."""
    where, args = filters.conversation_time_sql()
    return prepare(store).execute(
        f"SELECT count(*) FROM conversations c WHERE {_where(where)}", args).fetchone()[0]


# -- stats -------------------------------------------------------------------------------------
def stats(store: Store, filters: Filters = Filters(), *, per: str = "auto",
          top: int = 10) -> dict:
    """Counts and simple analytics over the conversations and messages passing `filters`.

    `per`: day, week (buckets start on Monday), month (buckets start on the 1st) or auto (day
    for up to 62 days, else week).
    First response: for each user turn (a user message not preceded by another user message in
    its conversation) dated within the filters, the time to the first later message whose role
    is not "user"; turns never answered are not counted. The turns are kept at write time
    (`_turns`, migrations.V4); with --role, they are recounted from the messages of those roles.

    Messages are read without their rows: one pass over the index that holds createdAt, role
    and direction, keeping conversations by id."""
    if per not in ("auto", "day", "week", "month"):
        raise QueryError(f"unknown period {per!r} (use day, week, month or auto)")
    conn = prepare(store)
    cw, ca = filters.conversation_time_sql()
    convs = f"FROM conversations c WHERE {_where(cw)}"
    mw, ma = _message_filter(filters)
    msgs = f"FROM messages m WHERE {_where(mw)}"

    statuses: Counter = Counter()
    surfaces: Counter = Counter()
    for status, surface, n in conn.execute(
            f"SELECT c.status, c.surfaceId, count(*) {convs} GROUP BY 1, 2", ca):
        statuses[status] += n
        surfaces[surface] += n

    days: Counter = Counter()
    roles: Counter = Counter()
    directions: Counter = Counter()
    for day, role, direction, n in _daily_counts(conn, filters, msgs, ma):
        days[day] += n
        roles[role] += n
        directions[direction] += n
    first = conn.execute(f"SELECT min(m.createdAt) {msgs}", ma).fetchone()[0]
    last = conn.execute(f"SELECT max(m.createdAt) {msgs}", ma).fetchone()[0]
    if per == "auto":
        span = (datetime.fromisoformat(last) - datetime.fromisoformat(first)) if first else None
        per = "day" if span is None or span <= timedelta(days=62) else "week"
    buckets: Counter = Counter()
    for day, n in days.items():
        buckets[_bucket(day, per)] += n
    return {
        "since": filters.since, "until": filters.until,
        "conversations": {
            "total": sum(statuses.values()),
            "byStatus": _ranked_counts(statuses, "status"),
            "bySurface": _ranked_counts(surfaces, "surfaceId"),
        },
        "messages": {
            "total": sum(n for n in days.values()),
            "first": first, "last": last,
            "byRole": _ranked_counts(roles, "role"),
            "byDirection": _ranked_counts(directions, "direction"),
        },
        "volume": {"per": per, "buckets": [{"start": b, "messages": buckets[b]}
                                           for b in sorted(buckets, key=lambda b: b or "")]},
        "firstResponse": (_first_response_recounted(conn, msgs, ma) if filters.role
                          else _first_response(conn, filters)),
        "busiestParticipants": _busiest(conn, filters, mw, ma, top),
    }


def _plain(filters: Filters) -> bool:
    """Only whole days, and no filter but deletion: the counts kept at write time serve."""
    return (replace(filters, since=None, until=None) == Filters(
        include_deleted=filters.include_deleted) and all(
        t is None or t.endswith("T00:00:00.000000Z") for t in (filters.since, filters.until)))


def _gone(filters: Filters) -> str:
    """The conversations left out of every figure (the forgotten, and the deleted unless
    --include-deleted), read from the partial index that holds just their ids."""
    if filters.include_deleted:
        return "conversations INDEXED BY idx_conversations_purged WHERE _purged_at IS NOT NULL"
    return ("conversations INDEXED BY idx_conversations_gone "
            "WHERE _purged_at IS NOT NULL OR _deleted_at IS NOT NULL")


def _daily_counts(conn, filters: Filters, msgs: str, args: list) -> list[tuple]:
    """(day, role, direction, messages): from `_daily` less the messages of the conversations
    left out, when that answers the filters; else one pass over the messages' stats index."""
    if not _plain(filters):
        return conn.execute(f"SELECT substr(m.createdAt, 1, 10), m.role, m.direction, "
                            f"count(*) {msgs} GROUP BY 1, 2, 3", args).fetchall()
    where, days = _time_sql([], [], "day", filters.since and filters.since[:10],
                            filters.until and filters.until[:10])
    out = Counter({(d, r, w): n for d, r, w, n in conn.execute(
        f"SELECT day, role, direction, n FROM _daily WHERE n != 0 AND {_where(where)}", days)})
    where, times = _time_sql([], [], "m.createdAt", filters.since, filters.until)
    for d, r, w, n in conn.execute(
            "SELECT substr(m.createdAt, 1, 10), m.role, m.direction, count(*) FROM messages m "
            f"WHERE m.conversationId IN (SELECT id FROM {_gone(filters)}) "
            f"AND {_where(where)} GROUP BY 1, 2, 3", times):
        out[(d, r, w)] -= n
    return [(*key, n) for key, n in out.items() if n]


def _message_filter(filters: Filters, m: str = "m") -> tuple[list[str], list]:
    """Conditions on `messages m` alone: its conversation by id (a set built once, rather than a
    join per message), role and createdAt."""
    where, args = _conversation_ids(filters, f"{m}.conversationId")
    if filters.role:
        where.append(f"{m}.role IN ({_marks(filters.role)})")
        args += filters.role
    return _time_sql(where, args, f"{m}.createdAt", filters.since, filters.until)


def _conversation_ids(filters: Filters, column: str) -> tuple[list[str], list]:
    plain = Filters(include_deleted=filters.include_deleted)
    if replace(filters, role=(), since=None, until=None) == plain:
        # only the forgotten (and deleted) are left out: a small set
        return [f"{column} NOT IN (SELECT id FROM {_gone(filters)})"], []
    where, args = filters.conversation_sql("c")
    return [f"{column} IN (SELECT c.id FROM conversations c WHERE {_where(where)})"], args


def _ranked_counts(counter: Counter, name: str) -> list[dict]:
    return [{name: value, "count": n} for value, n in
            sorted(counter.items(), key=lambda kv: (-kv[1], kv[0] is not None, kv[0] or ""))]


def _bucket(day: str | None, per: str) -> str | None:
    if day is None or per == "day":
        return day
    if per == "month":
        return day[:7] + "-01"
    start = date.fromisoformat(day)
    return (start - timedelta(days=start.weekday())).isoformat()


def _busiest(conn, filters: Filters, mw: list[str], ma: list, top: int) -> list[dict]:
    """Participants with the most messages: messages counted per conversation (kept at write
    time when no filter but deletion applies), then summed per participant."""
    who = "coalesce(lower(c.participantEmail), c.participantName)"
    if _plain(filters) and not (filters.since or filters.until):
        where, args = filters.conversation_sql("c")
        sql = (f"SELECT {who} AS who, max(c.participantName), max(c.participantEmail), "
               "sum(k.n) AS n, count(*) FROM conversations c INDEXED BY "
               "idx_conversations_participant JOIN _conversation_counts k "
               f"ON k.conversationId = c.id WHERE k.n > 0 AND {_where(where)} ")
    else:
        args = ma
        sql = (f"SELECT {who} AS who, max(c.participantName), max(c.participantEmail), "
               "sum(t.n) AS n, count(*) FROM (SELECT m.conversationId AS cid, count(*) AS n "
               f"FROM messages m WHERE {_where(mw)} GROUP BY m.conversationId) t "
               "JOIN conversations c ON c.id = t.cid WHERE 1 ")
    return [{"participantName": name, "participantEmail": email, "messages": n,
             "conversations": k} for _, name, email, n, k in conn.execute(
        sql + "AND who IS NOT NULL GROUP BY who ORDER BY n DESC, who LIMIT ?", [*args, top])]


def _median(delays: list[float]) -> dict:
    if not delays:
        return {"turns": 0, "medianSeconds": None}
    mid = len(delays) // 2
    median = delays[mid] if len(delays) % 2 else (delays[mid - 1] + delays[mid]) / 2
    return {"turns": len(delays), "medianSeconds": median}


def _first_response(conn, filters: Filters) -> dict:
    """From the turns kept at write time: count them, then read the middle one or two in
    order of delay."""
    where, args = _conversation_ids(filters, "t.conversationId")
    where, args = _time_sql(where, args, "t.at", filters.since, filters.until)
    source = f"FROM _turns t WHERE {_where(where)}"
    n = conn.execute(f"SELECT count(*) {source}", args).fetchone()[0]
    if not n:
        return _median([])
    middle = [d for (d,) in conn.execute(f"SELECT t.delay {source} ORDER BY t.delay "
                                         "LIMIT ? OFFSET ?", [*args, 2 - n % 2, (n - 1) // 2])]
    return {"turns": n, "medianSeconds": middle[0] if n % 2 else sum(middle) / 2}


def _first_response_recounted(conn, msgs: str, args: list) -> dict:
    """With --role, among the messages of those roles only (a window over them)."""
    return _median(sorted(d for (d,) in conn.execute(
        f"""WITH w AS (
              SELECT m.createdAt AS at, m.role AS role, lag(m.role) OVER win AS prev,
                     min(CASE WHEN m.role IS NOT 'user' THEN m.createdAt END) OVER (
                       win ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING) AS reply
              {msgs} WINDOW win AS (PARTITION BY m.conversationId ORDER BY m.createdAt, m.id))
            SELECT round((julianday(reply) - julianday(at)) * 86400, 3) FROM w
            WHERE role = 'user' AND prev IS NOT 'user' AND reply IS NOT NULL""", args)))
