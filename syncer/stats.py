"""`syncer stats`: counts and simple analytics over the mirror, read from what is kept at
write time rather than from every message. No click, no printing.

What is kept (migrations.V4, V7; by triggers, or counted once for a conversation new to the
mirror): `_daily`, messages per UTC day, role and direction; `_conv_days`, the same per
conversation; `_turns`, each answered user turn with its delay.

How a figure is read depends on the filters:
- No filter on the conversations (only deletion): `_daily`, less the rows in `_conv_days` of
  the conversations left out (the deleted and the forgotten, a small set).
- A filter on the conversations (status, surface, participant, conversation): the ids it keeps
  go once into a temporary table (from a covering index; for a participant filter alone, the
  one that leads with the id, so the table is written in order), and the figures sum those
  conversations' `_conv_days` rows; or, when it keeps over three quarters, `_daily` less the rows
  of those it leaves out (every message belongs to a conversation row: the store writes the
  conversation first and never deletes one).
- A window that is not made of whole UTC days: whole days as above, and the messages of the
  part-days at its ends counted from the messages' covering index.
- A short window (at most SCAN_UP_TO messages in it, by `_daily`) with a conversation filter:
  only the conversations the window touches (a message in it, or updated in it) are tested and
  kept, and their `_conv_days` rows summed, so a month reads ten thousand conversations, not
  every one the filter keeps.
Day counts are grouped by `_conv_days.key` (the day, role and direction as one text), which
sorts faster than the three columns.
The figures are the same whichever way is taken (tests/test_stats.py recounts them).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from .query import Filters, QueryError, _marks, _time_sql, _where, prepare
from .takeovers import takeovers

if TYPE_CHECKING:
    from .store import Store

PERIODS = ("auto", "day", "week", "month")
SCAN_UP_TO = 200_000    # a window with at most this many messages is read from what it touches
MIDNIGHT = "T00:00:00.000000Z"
WHO = "coalesce(lower(c.participantEmail), c.participantName)"


def stats(store: Store, filters: Filters = Filters(), *, per: str = "auto",
          top: int = 10) -> dict:
    """Counts and simple analytics over the conversations and messages passing `filters`.

    Conversations are dated by updatedAt, messages by createdAt (UTC).
    `per`: day, week (buckets start on Monday), month (buckets start on the 1st) or auto (day
    for up to 62 days, else week).
    First response: for each user turn (a user message not preceded by another user message in
    its conversation) dated within the filters, the time to the first later message whose role
    is not "user"; turns never answered are not counted. With --role, turns are those of the
    conversations' messages of those roles only.
    Takeovers: see takeovers.py."""
    if per not in PERIODS:
        raise QueryError(f"unknown period {per!r} (use day, week, month or auto)")
    conn = prepare(store)
    scope = _Scope(conn, filters)
    statuses, surfaces = scope.conversation_counts()
    days: Counter = Counter()
    roles: Counter = Counter()
    directions: Counter = Counter()
    for (day, role, direction), n in scope.day_counts().items():
        days[day] += n
        roles[role] += n
        directions[direction] += n
    first, last = scope.first_and_last(days)
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
            "bySurface": scope.named_surfaces(surfaces),
        },
        "messages": {
            "total": sum(days.values()),
            "first": first, "last": last,
            "byRole": _ranked_counts(roles, "role"),
            "byDirection": _ranked_counts(directions, "direction"),
        },
        "volume": {"per": per, "buckets": [{"start": b, "messages": buckets[b]}
                                           for b in sorted(buckets, key=lambda b: b or "")]},
        "firstResponse": scope.first_response(),
        "takeovers": takeovers(conn, filters, sum(statuses.values())),
        "busiestParticipants": scope.busiest(top),
    }


class _Scope:
    """The conversations and messages `filters` keep, and how to read their figures."""

    def __init__(self, conn, filters: Filters):
        self.conn, self.f = conn, filters
        self.narrowed = replace(filters, role=(), since=None, until=None,
                                include_deleted=False) != Filters()
        self.short = bool(filters.since or filters.until) and self._messages_between(
            filters.since, filters.until) <= SCAN_UP_TO
        if self.narrowed:
            self._keep()
            self.members = "IN (SELECT id FROM temp.stats_kept)"
        else:
            self.members = f"NOT IN (SELECT id FROM {_gone(filters)})"
        self.whole, self.edges = self._split(False)

    def _keep(self) -> None:
        """The conversations the filters keep, into temp.stats_kept. In a short window, only
        those the window can count (a message in it, or updated in it) are looked at."""
        f = self.f
        self.conn.execute("PRAGMA temp_store = MEMORY")   # a file would cost twice the time
        self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS stats_kept (id TEXT PRIMARY KEY, "
                          "who TEXT, name TEXT, email TEXT, status TEXT, surfaceId TEXT, "
                          "updatedAt TEXT) WITHOUT ROWID")
        self.conn.execute("DELETE FROM temp.stats_kept")
        live, args = self._live()
        test, more = self._test()
        columns = (f"c.id, {WHO}, c.participantName, c.participantEmail, c.status, "
                   "c.surfaceId, c.updatedAt")
        if not self.short:
            # status, surface and time are not read from it outside a short window
            source = "conversations c"
            columns = f"c.id, {WHO}, c.participantName, c.participantEmail, NULL, NULL, NULL"
            if not (f.status or f.surface or f.conversation):
                # along the index that leads with the id and holds the names: stats_kept is
                # written in order of its key (a third of the time of writing it out of order)
                source += " INDEXED BY idx_conversations_participant"
            self.conn.execute(f"INSERT INTO temp.stats_kept SELECT {columns} FROM {source} "
                              f"WHERE {_where(live + test)}", args + more)
            return
        active, window = _time_sql([], [], "m.createdAt", f.since, f.until)
        # those updated in the window, read (with their ids) from the index that also holds
        # what the filters test but the participant: not looked up row by row
        updated, most = replace(f, participant=None, role=(), since=None,
                                until=None).conversation_sql("u")
        updated, most = _time_sql(updated, most, "u.updatedAt", f.since, f.until)
        counted = (f"SELECT m.conversationId AS id FROM messages m INDEXED BY "
                   f"idx_messages_stats WHERE {_where(active)} UNION SELECT u.id FROM "
                   f"conversations u INDEXED BY idx_conversations_kept WHERE {_where(updated)}")
        if f.participant:
            # the participant test costs more than a look-up: try it on the window's few
            self.conn.execute(f"INSERT INTO temp.stats_kept SELECT {columns} FROM ({counted}) w "
                              f"CROSS JOIN conversations c ON c.id = w.id "
                              f"WHERE {_where(live + test)}", window + most + args + more)
        else:
            self.conn.execute(f"INSERT INTO temp.stats_kept SELECT {columns} FROM conversations "
                              f"c WHERE {_where(live + test)} AND c.id IN ({counted})",
                              args + more + window + most)

    def _live(self) -> tuple[list[str], list]:
        """Conversations (as `c`) that count at all: not forgotten, not deleted unless asked."""
        return Filters(include_deleted=self.f.include_deleted).conversation_sql("c")

    def _test(self) -> tuple[list[str], list]:
        """The filters' tests on a live conversation (as `c`)."""
        f = self.f
        where, args = replace(f, participant=None).conversation_sql("c")
        live, _ = self._live()
        where = where[len(live):]
        if f.participant:
            where.append(_participant_sql())
            args += [f.participant.casefold()] * 4
        return where, args

    # -- where the figures come from --------------------------------------------------------
    def _split(self, scan: bool) -> tuple[tuple[str | None, str | None] | None, list[tuple]]:
        """The whole UTC days of the window read from the kept counts, as (first day, day
        after the last) with None for no bound, or None for none; and the (since, until)
        intervals whose messages are counted one by one (all of the window if `scan`)."""
        since, until = self.f.since, self.f.until
        if since and until and since >= until:
            return None, []
        if scan:
            return None, [(since, until)]
        low = since and (since[:10] if since.endswith(MIDNIGHT) else _next_day(since[:10]))
        high = until and until[:10]
        if low and high and low >= high:
            return None, [(since, until)]
        edges = []
        if since and not since.endswith(MIDNIGHT):
            edges.append((since, low + MIDNIGHT))
        if until and not until.endswith(MIDNIGHT):
            edges.append((high + MIDNIGHT, until))
        return (low, high), edges

    def _messages_between(self, since: str | None, until: str | None) -> int:
        where, args = _time_sql(["n != 0"], [], "day", since and since[:10],
                                until and _next_day(until[:10]))
        return self.conn.execute(f"SELECT coalesce(sum(n), 0) FROM _daily WHERE "
                                 f"{_where(where)}", args).fetchone()[0]

    def _kept_where(self, whole: tuple, k: str = "k") -> tuple[list[str], list]:
        """Rows of _daily or _conv_days (as `k`) within the whole days and of the roles."""
        low, high = whole
        where, args = _time_sql([f"{k}.n != 0"], [], f"{k}.day", low, high)
        if self.f.role:
            where.append(f"{k}.role IN ({_marks(self.f.role)})")
            args += self.f.role
        return where, args

    def _message_where(self, since: str | None, until: str | None) -> tuple[list[str], list]:
        """Messages (as `m`) of the kept conversations, of the roles, within [since, until)."""
        where, args = [f"m.conversationId {self.members}"], []
        if self.f.role:
            where.append(f"m.role IN ({_marks(self.f.role)})")
            args += self.f.role
        return _time_sql(where, args, "m.createdAt", since, until)

    def _messages(self, since: str | None, until: str | None) -> tuple[str, list]:
        """FROM and WHERE of those messages, read by time from the covering index (not by
        conversation, which the planner may prefer when a filter keeps many)."""
        where, args = self._message_where(since, until)
        return (f"FROM messages m INDEXED BY idx_messages_stats WHERE {_where(where)}", args)

    # -- figures -----------------------------------------------------------------------------
    def conversation_counts(self) -> tuple[Counter, Counter]:
        """Conversations by status and by surface id, dated by updatedAt; with --role, those
        holding a message of one of the roles."""
        if self.narrowed and self.short:
            source, where, args = "temp.stats_kept c", [], []
        else:   # grouped along the index that leads with status and surface: no sort
            source = "conversations c"
            where, args = self._live()
            test, more = self._test()    # the participant test folding in SQL where it can
            where, args = where + test, args + more
        if self.f.role:
            # a short window updates few conversations: look each up; else one pass
            where.append(f"EXISTS (SELECT 1 FROM _conv_days r WHERE r.conversationId = c.id "
                         f"AND r.role IN ({_marks(self.f.role)}))" if self.short else
                         f"c.id IN (SELECT r.conversationId FROM _conv_days r "
                         f"WHERE r.role IN ({_marks(self.f.role)}))")
            args += self.f.role
        where, args = _time_sql(where, args, "c.updatedAt", self.f.since, self.f.until)
        statuses: Counter = Counter()
        surfaces: Counter = Counter()
        for status, surface, n in self.conn.execute(
                f"SELECT c.status, c.surfaceId, count(*) FROM {source} "
                f"WHERE {_where(where)} GROUP BY 1, 2", args):
            statuses[status] += n
            surfaces[surface] += n
        return statuses, surfaces

    def named_surfaces(self, surfaces: Counter) -> list[dict]:
        """Surfaces by count, each with the name and type of its latest conversation."""
        out = []
        for item in _ranked_counts(surfaces, "surfaceId"):
            row = self.conn.execute(
                # newest first along the index that holds updatedAt, surfaceId and the purge
                # mark: one row read, where sorting a surface's rows would read them all
                "SELECT json_extract(surface, '$.name'), json_extract(surface, '$.type') "
                "FROM conversations INDEXED BY idx_conversations_stats WHERE surfaceId IS ? "
                "AND _purged_at IS NULL ORDER BY updatedAt DESC LIMIT 1",
                (item["surfaceId"],)).fetchone() or (None, None)
            out.append({"surfaceId": item["surfaceId"], "name": row[0], "type": row[1],
                        "count": item["count"]})
        return out

    def day_counts(self) -> Counter:
        """{(day, role, direction): messages}."""
        out: Counter = Counter()
        if self.whole is not None:
            where, args = self._kept_where(self.whole)
            left = self._left_out() if self.narrowed and not self.short else None
            if left is None and self.narrowed:
                # grouped by the one column that holds day, role and direction: sorting one
                # text costs about two thirds of sorting three
                rows = [(*json.loads(key), n) for key, n in self.conn.execute(
                    "SELECT k.key, sum(k.n) FROM temp.stats_kept i "
                    f"CROSS JOIN _conv_days k ON k.conversationId = i.id WHERE {_where(where)} "
                    "GROUP BY k.key", args)]
            else:
                # everything, less the conversations left out when they are fewer
                rows = self.conn.execute("SELECT k.day, k.role, k.direction, k.n FROM _daily k "
                                         f"WHERE {_where(where)}", args)
                for source in filter(None, (f"SELECT id FROM {_gone(self.f)}", left)):
                    for d, r, w, n in self.conn.execute(
                            "SELECT k.day, k.role, k.direction, sum(k.n) FROM _conv_days k "
                            f"WHERE k.conversationId IN ({source}) AND {_where(where)} "
                            "GROUP BY 1, 2, 3", args):
                        out[(d, r, w)] -= n
            for d, r, w, n in rows:
                out[(d, r, w)] += n
        for since, until in self.edges:
            source, args = self._messages(since, until)
            for d, r, w, n in self.conn.execute(
                    "SELECT substr(m.createdAt, 1, 10), m.role, m.direction, count(*) "
                    f"{source} GROUP BY 1, 2, 3", args):
                out[(d, r, w)] += n
        return +out

    def _left_out(self) -> str | None:
        """When a filter keeps most conversations, SQL of the ids of those it leaves out
        (besides the deleted and forgotten): summing everything less them reads fewer rows."""
        kept = self.conn.execute("SELECT count(*) FROM temp.stats_kept").fetchone()[0]
        where, _ = self._live()
        live = self.conn.execute(f"SELECT count(*) FROM conversations c "
                                 f"WHERE {_where(where)}").fetchone()[0]
        if kept <= live * 3 / 4:     # measured: below that, listing the rest costs as much
            return None
        self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS stats_left (id TEXT PRIMARY KEY) "
                          "WITHOUT ROWID")
        self.conn.execute("DELETE FROM temp.stats_left")
        if self.f.participant:
            # the participant test costs more than a look-up in stats_kept, made in its order
            self.conn.execute(f"INSERT INTO temp.stats_left SELECT c.id FROM conversations c "
                              f"INDEXED BY idx_conversations_participant WHERE {_where(where)} "
                              "AND c.id NOT IN (SELECT id FROM temp.stats_kept)")
        else:   # the tests again, negated (false or unknown): a few columns of the index
            test, args = self._test()
            self.conn.execute(f"INSERT INTO temp.stats_left SELECT c.id FROM conversations c "
                              f"WHERE {_where(where)} AND NOT coalesce({' AND '.join(test)}, 0)",
                              args)
        return "SELECT id FROM temp.stats_left"

    def first_and_last(self, days: Counter) -> tuple[str | None, str | None]:
        """The first and last message times, read within the first and last days that hold
        any."""
        held = sorted(d for d, n in days.items() if n and d is not None)
        if not held:
            return None, None
        out = []
        for fn, day in (("min", held[0]), ("max", held[-1])):
            since = max(filter(None, (self.f.since, day + MIDNIGHT)))
            until = min(filter(None, (self.f.until, _next_day(day) + MIDNIGHT)))
            source, args = self._messages(since, until)
            out.append(self.conn.execute(f"SELECT {fn}(m.createdAt) {source}",
                                         args).fetchone()[0])
        return out[0], out[1]

    def _per_conversation(self) -> tuple[str, list]:
        """SQL of (cid, n): messages in scope per conversation (of the kept ones when
        narrowed; of all when not, the caller leaves the others out). A short window is
        counted from its messages: _conv_days has no index by day."""
        whole, edges = self._split(self.short and not self.narrowed)
        parts, args = [], []
        if whole is not None:
            where, more = self._kept_where(whole)
            source = ("temp.stats_kept i CROSS JOIN _conv_days k ON k.conversationId = i.id"
                      if self.narrowed else "_conv_days k")
            parts.append(f"SELECT k.conversationId AS cid, sum(k.n) AS n FROM {source} "
                         f"WHERE {_where(where)} GROUP BY 1")
            args += more
        for since, until in edges:
            source, more = self._messages(since, until)
            parts.append(f"SELECT m.conversationId AS cid, count(*) AS n {source} GROUP BY 1")
            args += more
        if not parts:
            return "SELECT NULL AS cid, 0 AS n WHERE 0", []
        if len(parts) == 1:
            return parts[0], args
        return (f"SELECT cid, sum(n) AS n FROM ({' UNION ALL '.join(parts)}) GROUP BY cid",
                args)

    def busiest(self, top: int) -> list[dict]:
        """Participants with the most messages in scope (one participant: one email, or one
        name where there is no email), with how many of their conversations hold them."""
        counts, args = self._per_conversation()
        whole, edges = self._split(self.short and not self.narrowed)
        if self.narrowed and whole is not None and not edges:
            # per kept conversation along stats_kept's key (no sort), its names carried along
            where, args = self._kept_where(whole)
            sql = ("SELECT who, max(name), max(email), sum(n) AS n, count(*) FROM (SELECT "
                   "i.who AS who, i.name AS name, i.email AS email, sum(k.n) AS n FROM "
                   "temp.stats_kept i CROSS JOIN _conv_days k ON k.conversationId = i.id WHERE "
                   f"{_where(where)} GROUP BY i.id) t ")
        elif self.narrowed:
            sql = ("SELECT i.who AS who, max(i.name), max(i.email), sum(t.n) AS n, count(*) "
                   f"FROM ({counts}) t JOIN temp.stats_kept i ON i.id = t.cid ")
        else:
            sql = (f"SELECT {WHO} AS who, max(c.participantName), max(c.participantEmail), "
                   f"sum(t.n) AS n, count(*) FROM ({counts}) t JOIN conversations c "
                   f"INDEXED BY idx_conversations_participant ON c.id = t.cid "
                   f"AND c.id {self.members} ")
        return [{"participantName": name, "participantEmail": email, "messages": n,
                 "conversations": k} for _, name, email, n, k in self.conn.execute(
            sql + "WHERE t.n > 0 AND who IS NOT NULL GROUP BY who ORDER BY n DESC, who "
            "LIMIT ?", [*args, top])]

    def first_response(self) -> dict:
        """From the turns kept at write time: count them, then read the middle one or two in
        order of delay. With --role, a recount when the roles leave out any message."""
        roles = self.f.role
        if roles and ("user" not in roles or set(roles) == {"user"}):
            return _median([])     # no user message, or nothing but: no turn is answered
        if roles and not {r for (r,) in self.conn.execute(
                "SELECT DISTINCT role FROM _daily WHERE n != 0")} <= set(roles):
            return self._first_response_recounted()
        where, args = _time_sql([f"t.conversationId {self.members}"], [], "t.at",
                                self.f.since, self.f.until)
        if self.short:      # a few thousand turns: one pass, sorted here, beats two
            return _median(sorted(d for (d,) in self.conn.execute(
                f"SELECT t.delay FROM _turns t INDEXED BY idx_turns_at WHERE {_where(where)}",
                args)))
        n = self.conn.execute(f"SELECT count(*) FROM _turns t WHERE {_where(where)}",
                              args).fetchone()[0]
        if not n:
            return _median([])
        # over a long window, walking the turns in order of delay beats sorting them
        middle = [d for (d,) in self.conn.execute(
            f"SELECT t.delay FROM _turns t INDEXED BY idx_turns_delay WHERE {_where(where)} "
            "ORDER BY t.delay LIMIT ? OFFSET ?",
            [*args, 2 - n % 2, (n - 1) // 2])]
        return {"turns": n, "medianSeconds": middle[0] if n % 2 else sum(middle) / 2}

    def _first_response_recounted(self) -> dict:
        """Turns among the kept conversations' messages of the roles (a window over them),
        dated within the window."""
        where, args = self._message_where(None, None)
        outer, more = _time_sql([], [], "at", self.f.since, self.f.until)
        return _median(sorted(d for (d,) in self.conn.execute(
            f"""WITH w AS (
                  SELECT m.createdAt AS at, m.role AS role, lag(m.role) OVER win AS prev,
                         min(CASE WHEN m.role IS NOT 'user' THEN m.createdAt END) OVER (
                           win ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING) AS reply
                  FROM messages m WHERE {_where(where)}
                  WINDOW win AS (PARTITION BY m.conversationId ORDER BY m.createdAt, m.id))
                SELECT round((julianday(reply) - julianday(at)) * 86400, 3) FROM w
                WHERE role = 'user' AND prev IS NOT 'user' AND reply IS NOT NULL
                AND {_where(outer)}""", [*args, *more])))


def _participant_sql() -> str:
    """Filters.participant_sql's test (a case-folded part of the name or the email, with four
    arguments: the folded text each time), folding in SQL where it is the same as in Python: a
    value of ASCII folds to its lower case, so only the others cost a call to Python (and
    the email, most often ASCII, is tried first)."""
    def part(column: str) -> str:
        return (f"(CASE WHEN length(CAST({column} AS BLOB)) = length({column}) "
                f"THEN instr(lower({column}), ?) ELSE instr(syncer_fold({column}), ?) END > 0)")
    return f"({part('c.participantEmail')} OR {part('c.participantName')})"


def _gone(filters: Filters) -> str:
    """The conversations left out of every figure (the forgotten, and the deleted unless
    --include-deleted), read from the partial index that holds just their ids."""
    if filters.include_deleted:
        return "conversations INDEXED BY idx_conversations_purged WHERE _purged_at IS NOT NULL"
    return ("conversations INDEXED BY idx_conversations_gone "
            "WHERE _purged_at IS NOT NULL OR _deleted_at IS NOT NULL")


def _next_day(day: str) -> str:
    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()


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


def _median(delays: list[float]) -> dict:
    if not delays:
        return {"turns": 0, "medianSeconds": None}
    mid = len(delays) // 2
    median = delays[mid] if len(delays) % 2 else (delays[mid - 1] + delays[mid]) / 2
    return {"turns": len(delays), "medianSeconds": median}
