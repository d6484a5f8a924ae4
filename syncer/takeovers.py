"""`syncer stats`' takeover figures: how many conversations a person took over from the agent,
and how long after the conversation's first message. No click, no printing.

Definitions (README, "stats"):
- Taken over: `agentMode` is `human` (a person answers now) or `takeoverAt` is set (a person
  took over, maybe since handed back to the agent: the server may keep the time). Counted
  among the conversations `conversations.total` counts (the same filters, dated by updatedAt),
  so the share is of that total.
- Time to takeover: from the first message the mirror holds of the conversation to its
  `takeoverAt`. A takeover before the first message counts as 0 (a person took the
  conversation before anyone wrote); a conversation without takeoverAt, or without a message
  held, has no such time and is left out of the median and the 90th percentile (the nearest
  rank: the smallest time that at least 90 % of the times do not exceed).

The conversations taken over are read from the partial index that holds only them
(migrations.V9, idx_conversations_takeover), so the figures cost little when few are.
"""
from __future__ import annotations

import math
from datetime import datetime

from .migrations import TAKEN_OVER
from .query import Filters, _where


def takeover_sql(filters: Filters) -> tuple[str, list]:
    """SQL of (takeoverAt, first message held) of each conversation taken over that passes
    `filters`, and its arguments."""
    where, args = filters.conversation_time_sql("c")
    taken = TAKEN_OVER.replace("agentMode", "c.agentMode").replace("takeoverAt", "c.takeoverAt")
    # along the takeover index, whatever else the filters test: the status or surface index
    # would read every conversation of theirs (one conversation: its own row, by id)
    source = "" if filters.conversation else " INDEXED BY idx_conversations_takeover"
    return (f"SELECT c.takeoverAt, (SELECT min(m.createdAt) FROM messages m "
            f"WHERE m.conversationId = c.id) FROM conversations c{source} "
            f"WHERE {taken} AND {_where(where)}", args)


def takeovers(conn, filters: Filters, total: int) -> dict:
    """The takeover figures of the conversations passing `filters`, of which there are
    `total` (the share's denominator). `conn` has query.prepare's functions."""
    sql, args = takeover_sql(filters)
    rows = conn.execute(sql, args).fetchall()
    delays = sorted(max(_seconds(first, at), 0.0) for at, first in rows if at and first)
    return {"conversations": len(rows), "share": len(rows) / total if total else None,
            "timeToTakeover": durations(delays)}


def durations(delays: list[float]) -> dict:
    """Count, median and nearest-rank 90th percentile of sorted `delays` (None when empty)."""
    n = len(delays)
    if not n:
        return {"conversations": 0, "medianSeconds": None, "p90Seconds": None}
    mid = n // 2
    median = delays[mid] if n % 2 else (delays[mid - 1] + delays[mid]) / 2
    return {"conversations": n, "medianSeconds": median,
            "p90Seconds": delays[math.ceil(0.9 * n) - 1]}


def _seconds(start: str, end: str) -> float:
    """Seconds from one stored timestamp to another, to the millisecond as turn delays are."""
    delta = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    return round(delta.total_seconds(), 3)
