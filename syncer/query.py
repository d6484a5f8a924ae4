"""Read-only queries: search, show and list (stats: stats.py). No click, no printing.

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
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING

from .config import parse_duration
from .errors import SyncerError
from .migrations import UNFOLDED_ROWS
from .transform import JSON_FIELDS, format_instant

if TYPE_CHECKING:
    from .store import Store

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
    agent_mode: str | None = None   # agentMode equal to this (a NULL one matches none)

    def conversation_sql(self, c: str = "c", *,
                         walk_sorted: bool = False) -> tuple[list[str], list]:
        """`walk_sorted`: the caller lists a page in an indexed order, so keep the planner off
        the index of what nearly every conversation is (live and not forgotten, the start of
        `idx_conversations_kept`), which reads and sorts them all (a unary + on the columns)."""
        plus = "+" if walk_sorted else ""
        where, args = [f"{plus}{c}._purged_at IS NULL"], []   # forgotten: only ids and times left
        if not self.include_deleted:
            where.append(f"{plus}{c}._deleted_at IS NULL")
        if self.status:
            where.append(f"{c}.status IN ({_marks(self.status)})")
            args += self.status
        if self.surface:
            clause, more = _surface_sql(self, c)
            where.append(clause)
            args += more
        if self.conversation:
            where.append(f"{c}.id = ?")
            args.append(self.conversation)
        if self.participant:
            clause, more = self.participant_sql(c)
            where.append(clause)
            args += more
        if self.agent_mode:
            where.append(f"{c}.agentMode = ?")
            args.append(self.agent_mode)
        return where, args

    def participant_sql(self, c: str = "c") -> tuple[str, list]:
        """Case-insensitive (case-folded) part of the name or the email."""
        return (f"(instr(syncer_fold({c}.participantName), ?) > 0 OR "
                f"instr(syncer_fold({c}.participantEmail), ?) > 0)",
                [self.participant.casefold()] * 2)

    def message_sql(self, m: str = "m", c: str = "c", *,
                    by_rowid: bool = False) -> tuple[list[str], list]:
        """`by_rowid`: the caller looks messages up by rowid, so keep the planner off the
        createdAt and role indexes (a unary + on the columns)."""
        where, args = self.conversation_sql(c)
        plus = "+" if by_rowid else ""
        if self.role:
            where.append(f"{plus}{m}.role IN ({_marks(self.role)})")
            args += self.role
        column = f"{plus}{m}.createdAt"
        return _time_sql(where, args, column, self.since, self.until)

    def conversation_time_sql(self, c: str = "c", *,
                              walk_sorted: bool = False) -> tuple[list[str], list]:
        """Conversation filters plus time (updatedAt) and role (has a message of that role)."""
        where, args = self.conversation_sql(c, walk_sorted=walk_sorted)
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
# Scoring policy (see `search` and BENCHMARKS.md). bm25 costs about 1.5 µs a match in SQLite
# 3.40, so scoring every match of a word found in 8 % of a million messages takes over 100 ms,
# while reading the list of matches without scores costs about 0.03 µs a match.
EXACT_UP_TO = 10_000    # up to this many matches in scope, every one is scored
NEWEST_SCORED = 5_000   # beyond that, only the newest this many are
DRIVE_UP_TO = 10_000    # a filter selecting at most this many rows narrows the scope

_MESSAGE_HIT = """
SELECT 'message' AS kind, m.id, m.conversationId, m.createdAt, m.role, m.direction, m.content,
       snippet(messages_fts, 0, ?, ?, '…', 12) AS snippet, c.subject, c.participantName,
       c.participantEmail, c.status, c.surfaceId
FROM messages_fts JOIN messages m ON m.rowid = messages_fts.rowid
JOIN conversations c ON c.id = m.conversationId
WHERE messages_fts MATCH ? AND messages_fts.rowid = ?"""
_CONVERSATION_HIT = """
SELECT 'conversation' AS kind, c.id, c.id AS conversationId, c.updatedAt AS createdAt,
       NULL AS role, NULL AS direction, c.subject AS content,
       snippet(conversations_fts, -1, ?, ?, '…', 12) AS snippet, c.subject, c.participantName,
       c.participantEmail, c.status, c.surfaceId
FROM conversations_fts JOIN conversations c ON c.rowid = conversations_fts.rowid
WHERE conversations_fts MATCH ? AND conversations_fts.rowid = ?"""


@dataclass(frozen=True)
class Scoring:
    """Which matches bm25 scores (see `search`). `exact`: every one, however many."""
    exact: bool = False
    exact_up_to: int = EXACT_UP_TO
    newest_scored: int = NEWEST_SCORED
    drive_up_to: int = DRIVE_UP_TO

    def __post_init__(self):
        if not 1 <= self.newest_scored <= self.exact_up_to:
            raise ValueError("need 1 <= newest_scored <= exact_up_to")


@dataclass(frozen=True)
class _Index:
    """A full-text index, the check of its rows against the filters, and its scope."""
    kind: str
    fts: str
    check_sql: str        # rowid, time and id of the rows `rowid IN ({})` that pass the filters
    check_args: list
    scope_sql: str = ""   # further conditions on the FTS rowid
    scope_args: tuple = ()
    scope_size: int | None = None  # rows in scope, when known


class _NoSuchColumn(Exception):
    """An --fts column filter naming the other index's columns."""


def search(store: Store, text: str, filters: Filters = Filters(), *, limit: int = 20,
           offset: int = 0, fts: bool = False, scope: str = "all",
           scoring: Scoring = Scoring()) -> list[dict]:
    """Messages (and conversations, by subject and participant) matching `text`.

    Order: when the words match at most `scoring.exact_up_to` rows in scope, by bm25 (lower
    `rank` is better), newest first on ties, then by id. When they match more, only the
    `scoring.newest_scored` newest matches (the last stored) are scored; they come first, in
    that order, and the other matches follow, the last stored first. `scoring.exact` scores
    every match however many there are.

    Scope: every row, or, when a filter (or a filter together with the role and time) selects
    at most `scoring.drive_up_to` rows and an index can list them (conversation, role, time,
    status, surface by id or type, participant by the trigram index), only those rows. Every
    filter is then applied to the ranked matches.

    A conversation hit is its own row with kind="conversation", id = conversation id,
    createdAt = the conversation's updatedAt and content = its subject; it is left out when
    `role` is given. Message and conversation hits are merged by rank, the unscored ones
    after the scored ones, alternately.
    """
    conn = prepare(store)
    query = text if fts else fts_phrases(text)
    if not query.strip():
        return []
    want = offset + limit
    participants = _Participants(conn, filters, scoring.drive_up_to)
    indexes = []
    if scope in ("all", "messages"):
        indexes.append(_message_index(conn, filters, scoring, participants))
    if scope in ("all", "conversations") and not filters.role:
        indexes.append(_conversation_index(conn, filters, scoring, participants))
    hits, unknown = [], 0
    for index in indexes:
        try:
            hits += _walk(conn, index, query, want, scoring)
        except _NoSuchColumn:
            unknown += 1
    if indexes and unknown == len(indexes):
        raise QueryError(f"bad full-text query {query!r}: no such column in the searched index")
    hits.sort(key=lambda h: h[0])
    page = hits[offset:want]
    ranks = {(kind, rowid): rank for _, kind, rowid, rank in page}
    for index in indexes:
        unscored = [rowid for _, kind, rowid, rank in page if kind == index.kind and rank is None]
        if unscored:
            ranks.update(((index.kind, r), rank) for r, rank in _scores(conn, index, query,
                                                                         unscored))
    out = []
    for _, kind, rowid, _ in page:
        cur = conn.execute(_MESSAGE_HIT if kind == "message" else _CONVERSATION_HIT,
                           (*MARK, query, rowid))
        out.append(row_dict(cur, cur.fetchone()) | {"rank": ranks[kind, rowid]})
    return out


def _scores(conn, index: _Index, query: str, rowids: list[int]) -> list[tuple[int, float]]:
    """bm25 of a few matches, in one statement: bm25 counts every match of each phrase once
    per statement, so a statement per row would cost that count for each."""
    return conn.execute(
        f"SELECT rowid, bm25({index.fts}) FROM {index.fts} WHERE {index.fts} MATCH ? "
        f"AND rowid BETWEEN ? AND ? AND +rowid IN ({_marks(rowids)})",
        [query, min(rowids), max(rowids), *rowids]).fetchall()


def _desc(created: str | None) -> tuple:
    """Sort key that puts newer fixed-width timestamps first (and missing ones last)."""
    return tuple(-ord(ch) for ch in created) if created else (1,)


def _walk(conn, index: _Index, query: str, want: int, scoring: Scoring) -> list[tuple]:
    """The index's matches that pass the filters, in policy order, as (sort key, kind, rowid,
    bm25 or None when not scored): at least `want` of them when there are that many, and
    every one tied with the last."""
    match = f"{index.fts} MATCH ?{index.scope_sql}"
    args = [query, *index.scope_args]
    boundary = None
    if not scoring.exact and (index.scope_size is None
                              or index.scope_size > scoring.exact_up_to):
        def nth_newest(n: int, below: int | None = None) -> int | None:
            """The n-th newest match (below `below`): FTS5 walks the matches newest first."""
            row = _execute(conn, f"SELECT rowid FROM {index.fts} WHERE {match}"
                                 f"{'' if below is None else ' AND rowid < ?'} "
                                 "ORDER BY rowid DESC LIMIT 1 OFFSET ?",
                           [*args, *([] if below is None else [below]), n - 1], query).fetchone()
            return row and row[0]
        last_scored = nth_newest(scoring.newest_scored)
        if last_scored is not None and nth_newest(
                scoring.exact_up_to + 1 - scoring.newest_scored, below=last_scored) is not None:
            boundary = last_scored
    ranked = _execute(conn, f"SELECT rowid, bm25({index.fts}) AS r FROM {index.fts} "
                            f"WHERE {match}{'' if boundary is None else ' AND rowid >= ?'} "
                            "ORDER BY r", args + ([] if boundary is None else [boundary]), query)
    kept: list[tuple] = []
    size = min(2 * want + 10, 500)  # most searches want 20: check few rows first
    while batch := ranked.fetchmany(size):
        ranks = dict(batch)
        for rowid, created, rid in _passing(conn, index, ranks):
            kept.append(((0, ranks[rowid], _desc(created), rid), index.kind, rowid,
                         ranks[rowid]))
        if len(kept) >= want and batch[-1][1] > sorted(k[0][1] for k in kept)[want - 1]:
            break
        size = min(size * 2, 4_000)
    ranked.close()
    if boundary is None or len(kept) >= want:
        return kept
    rest = conn.execute(f"SELECT rowid FROM {index.fts} WHERE {match} AND rowid < ? "
                        "ORDER BY rowid DESC", [*args, boundary])
    position = 0
    while len(kept) < want and (batch := [r for (r,) in rest.fetchmany(size)]):
        passing = {row[0] for row in _passing(conn, index, batch)}
        for rowid in (r for r in batch if r in passing):
            kept.append(((1, position, index.kind), index.kind, rowid, None))
            position += 1
        size = min(size * 2, 4_000)
    rest.close()
    return kept


def _passing(conn, index: _Index, rowids) -> list[tuple]:
    return conn.execute(index.check_sql.format(_marks(rowids)),
                        [*rowids, *index.check_args]).fetchall()


def _execute(conn, sql: str, args: list, query: str) -> sqlite3.Cursor:
    try:
        return conn.execute(sql, args)
    except sqlite3.OperationalError as e:
        if "no such column" in str(e):
            raise _NoSuchColumn() from None
        raise QueryError(f"bad full-text query {query!r}: {e}") from None


# Scope. A filter that an index can answer lists the rowids it selects; when they are few,
# the FTS query reads only the matches between the smallest and the largest of them and tests
# each against the list (`+rowid IN`: one test a match; without the `+`, FTS5 would look each
# listed rowid up, a far slower plan). So a filter that leaves nothing costs no more than one
# that leaves everything. Each candidate list is counted first, up to the cap, and applies
# every other condition its index holds (a message's role and time are in each message index),
# so two filters that each keep many rows but few together still narrow the scope.
class _Participants:
    """Rowids and ids of the conversations the participant filter may keep, up to `cap` + 1
    of them, each list found at most once per search and only when asked for: by the trigram
    index (migrations.V6) and the rows it may fold differently, or, for fewer than three
    characters, which the trigram index cannot look up, by one scan of the conversations.
    A superset: the filter itself is applied to every hit."""

    def __init__(self, conn, filters: Filters, cap: int):
        self.conn, self.filters, self.cap = conn, filters, cap
        self.needle = filters.participant.casefold() if filters.participant else ""
        self._rowids: list[int] | None = None
        self._rows: list[tuple[int, str]] | None = None

    @property
    def indexed(self) -> bool:
        return len(self.needle) >= 3

    def rowids(self) -> list[int]:
        """The conversations' rowids alone (from the trigram index, no conversation read)."""
        if self._rowids is None:
            if self.indexed:
                self._rowids = [r for (r,) in self.conn.execute(
                    "SELECT rowid FROM participants_fts WHERE participants_fts MATCH ? UNION "
                    "SELECT rowid FROM conversations INDEXED BY idx_conversations_unfolded "
                    f"WHERE {UNFOLDED_ROWS} LIMIT ?",
                    ['"' + self.needle.replace('"', '""') + '"', self.cap + 1])]
            else:
                self._rowids = [rowid for rowid, _ in self.rows()]
        return self._rowids

    def rows(self) -> list[tuple[int, str]]:
        """(rowid, id) of each: the ids are read off the conversations' rows."""
        if self._rows is None:
            if self.indexed:
                self._rows = self.conn.execute(
                    "SELECT c.rowid, c.id FROM json_each(?) j CROSS JOIN conversations c "
                    "ON c.rowid = j.value", [json.dumps(self.rowids())]).fetchall()
            else:
                clause, args = self.filters.participant_sql()
                self._rows = self.conn.execute(
                    f"SELECT c.rowid, c.id FROM conversations c WHERE {clause} LIMIT ?",
                    [*args, self.cap + 1]).fetchall()
        return self._rows

    def few(self) -> bool:
        return len(self.rowids()) <= self.cap

    def at_most(self, n: int) -> bool:
        """At most n conversations, known cheaply (by the trigram index); False when the
        filter cannot be looked up there."""
        return self.indexed and len(self.rowids()) <= n

    def ids(self) -> list[str]:
        return [cid for _, cid in self.rows()]


def _surface_sql(filters: Filters, c: str = "c") -> tuple[str, list]:
    marks = _marks(filters.surface)
    return (f"({c}.surfaceId IN ({marks}) OR json_extract({c}.surface, '$.type') IN ({marks}))",
            list(filters.surface) * 2)


def _surface_ids_of_types(conn, types) -> set:
    """The surface ids (None for a missing one) of the conversations of these surface types:
    one lookup per id in the index of (type, surfaceId), however many conversations."""
    type_of = "json_extract(surface, '$.type')"
    ids = set()
    for kind in types:
        if conn.execute(f"SELECT 1 FROM conversations WHERE {type_of} = ? AND surfaceId IS NULL "
                        "LIMIT 1", (kind,)).fetchone():
            ids.add(None)
        last = ""
        while (last := conn.execute(f"SELECT min(surfaceId) FROM conversations WHERE "
                                    f"{type_of} = ? AND surfaceId > ?",
                                    (kind, last)).fetchone()[0]) is not None:
            ids.add(last)
    return ids


def _indexed_conversation_sql(conn, filters: Filters, c: str = "c") -> tuple[list[str], list]:
    """Status and surface as conditions the conversation indexes answer without reading a
    row: a surface type becomes the surface ids of the conversations of that type (found by
    the type's index; with a NULL id, any conversation without one). Keeps a superset of
    what the filters keep (deletion is not looked at)."""
    where, args = [], []
    if filters.status:
        where.append(f"{c}.status IN ({_marks(filters.status)})")
        args += filters.status
    if filters.surface:
        ids = _surface_ids_of_types(conn, filters.surface)
        listed = sorted(set(filters.surface) | (ids - {None}))
        where.append(f"({c}.surfaceId IN ({_marks(listed)})"
                     + (f" OR {c}.surfaceId IS NULL)" if None in ids else ")"))
        args += listed
    return where, args


def _messages_per_conversation(conn) -> float:
    """About how many messages a conversation holds (largest rowids: two index lookups)."""
    messages, conversations = conn.execute(
        "SELECT (SELECT max(rowid) FROM messages), (SELECT max(rowid) FROM conversations)"
    ).fetchone()
    return max((messages or 0) / (conversations or 1), 1.0)


def _message_index(conn, filters: Filters, scoring: Scoring, participants) -> _Index:
    where, args = filters.message_sql(by_rowid=True)
    index = _Index("message", "messages_fts",
                   "SELECT m.rowid, m.createdAt, m.id FROM messages m NOT INDEXED "
                   "CROSS JOIN conversations c "
                   f"ON c.id = m.conversationId WHERE m.rowid IN ({{}}) AND {_where(where)}",
                   args)
    # the message's own conditions, answered inside any of the message indexes
    own, own_args = _time_sql([], [], "m.createdAt", filters.since, filters.until)
    if filters.role:
        own.insert(0, f"m.role IN ({_marks(filters.role)})")
        own_args[:0] = filters.role
    cap = scoring.drive_up_to
    candidates = []
    if filters.conversation:
        candidates.append(("SELECT m.rowid AS r FROM messages m WHERE " + _where(
            ["m.conversationId = ?", *own]), [filters.conversation, *own_args]))
    elif own:
        candidates.append(("SELECT m.rowid AS r FROM messages m WHERE " + _where(own),
                           own_args))
    # status and surface: the messages of the conversations they keep, when those are few
    # (and, without a role or time, when their messages may be: an estimate by the rowids)
    per = _messages_per_conversation(conn)
    kept, kept_args = _indexed_conversation_sql(conn, filters)
    if kept and (n := _count(conn, f"SELECT 1 FROM conversations c WHERE {_where(kept)}",
                             kept_args, cap)) <= cap and (own or n * per <= 2 * cap):
        candidates.append(("SELECT m.rowid AS r FROM conversations c CROSS JOIN messages m "
                           "ON m.conversationId = c.id WHERE " + _where([*kept, *own]),
                           [*kept_args, *own_args]))
    # the participant's: skipped when so many conversations hold more than `cap` messages
    # anyway (half the cap), unless a role or time may leave few of them
    # (their ids read one conversation at a time, so a count that reaches the cap stops early)
    return _narrowed(conn, index, candidates, scoring, filters.participant and (lambda: (
        "SELECT m.rowid AS r FROM json_each(?) j CROSS JOIN conversations c "
        "ON c.rowid = j.value CROSS JOIN messages m ON m.conversationId = c.id WHERE "
        + _where(own), [json.dumps(participants.rowids()), *own_args])
        if (own or participants.at_most(int(2 * cap / per))) and participants.few() else None),
        participants)


def _conversation_index(conn, filters: Filters, scoring: Scoring, participants) -> _Index:
    where, args = filters.conversation_time_sql()
    index = _Index("conversation", "conversations_fts",
                   "SELECT c.rowid, c.updatedAt, c.id FROM conversations c NOT INDEXED "
                   f"WHERE c.rowid IN ({{}}) AND {_where(where)}", args)
    candidates = []
    if filters.conversation:
        candidates.append(("SELECT rowid AS r FROM conversations WHERE id = ?",
                           [filters.conversation]))
    # status, surface and time together, from one covering index: with a time, the one led
    # by updatedAt (`+`: not the index of surface ids alone, which would read every row)
    kept, kept_args = _indexed_conversation_sql(conn, filters)
    if filters.since or filters.until:
        kept = [k.replace("(c.surfaceId", "(+c.surfaceId") for k in kept]
    kept, kept_args = _time_sql(kept, kept_args, "c.updatedAt", filters.since, filters.until)
    if kept:
        candidates.append(("SELECT c.rowid AS r FROM conversations c WHERE " + _where(kept),
                           kept_args))
    return _narrowed(conn, index, candidates, scoring, filters.participant and (
        lambda: ("SELECT value AS r FROM json_each(?)", [json.dumps(rowids)])
        if len(rowids := participants.rowids()) <= scoring.drive_up_to else None), participants)


_FEW_PARTICIPANTS = 500  # conversations: their candidate list is tried first, being cheap


def _narrowed(conn, index: _Index, candidates: list, scoring: Scoring, participant,
              participants: _Participants | None = None) -> _Index:
    """`index` scoped to the smallest candidate list if one is small enough. The participant's
    (`participant()`, which reads up to `cap` conversations; None when they are more) comes
    first when it names few conversations, else is tried only when no other list is small
    enough. An empty list ends the counting."""
    def counted(sql, args):
        rowids = [r for (r,) in conn.execute(f"{sql} LIMIT ?", [*args, scoring.drive_up_to + 1])]
        return (len(rowids), rowids) if len(rowids) <= scoring.drive_up_to else None

    small = []
    first = participant and participants.at_most(_FEW_PARTICIPANTS)
    for listed in [participant if first else None, *candidates,
                   None if first else participant]:
        if callable(listed):
            if small:
                continue
            listed = listed()
        if listed and (found := counted(*listed)):
            small.append(found)
            if not found[0]:
                break
    if not small:
        return index
    n, rowids = min(small, key=lambda c: c[0])
    # an empty list leaves an empty range: the FTS query still runs, so bad syntax is seen
    low, high = (min(rowids), max(rowids)) if rowids else (1, 0)
    # the list itself, not its query again: it is read once, and a query may be slow to rerun
    return _Index(index.kind, index.fts, index.check_sql, index.check_args,
                  " AND rowid BETWEEN ? AND ? AND +rowid IN (SELECT value FROM json_each(?))",
                  (low, high, json.dumps(rowids)), n)


def _count(conn, sql: str, args: list, cap: int) -> int:
    """Rows of `sql`, counted up to cap + 1."""
    return conn.execute(f"SELECT count(*) FROM ({sql} LIMIT ?)", [*args, cap + 1]).fetchone()[0]


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
    # a status or surface filter is better served by the covering index (measured at 1 M)
    where, args = filters.conversation_time_sql(
        walk_sorted=not (filters.status or filters.surface))
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
