"""Datasette over the mirror: metadata for a search ranked like `syncer search --exact`, facets
on status, surface and role, and a thread view; and a server that uses it. No click.

Datasette's own table search (`?_search=`) lists hits by rowid, not by relevance; the canned
`search` query below orders by bm25 (FTS5's `rank`), newest first on ties, then id, and takes
optional `status`, `surface` (id or type) and `role` parameters (empty: any). Its words are
escaped by Datasette's `escape_fts`, so punctuation is searched, not parsed. It ranks every
match (like `syncer search --exact`): the 200 best are picked first, reading only each
match's message row, and only those get their conversation and a snippet (about 0.4 s for a
word in 78,000 messages), so `serve` raises Datasette's one-second query limit. Datasette
needs the optional extra: pip install 'runtype-syncer[serve]'.
"""
from __future__ import annotations

from pathlib import Path

SEARCH_SQL = """
with hits as materialized (
  select m.rowid as r, messages_fts.rank as rank, m.createdAt as createdAt, m.id as id
  from messages_fts join messages m on m.rowid = messages_fts.rowid
  where messages_fts match escape_fts(:q)
    and m.conversationId not in (select id from conversations where _deleted_at is not null)
    and (:status = '' or m.conversationId in (select id from conversations where status = :status))
    and (:surface = '' or m.conversationId in (
      select id from conversations
      where surfaceId = :surface or json_extract(surface, '$.type') = :surface))
    and (:role = '' or m.role = :role)
  order by rank, m.createdAt desc, m.id
  limit 200
)
select hits.id, m.conversationId, hits.createdAt, m.role, c.status, c.surfaceId, c.subject,
       c.participantName, snippet(messages_fts, 0, '**', '**', '…', 12) as snippet,
       hits.rank as rank
from hits
join messages_fts on messages_fts.rowid = hits.r
join messages m on m.rowid = hits.r
join conversations c on c.id = m.conversationId
where messages_fts match escape_fts(:q)
order by hits.rank, hits.createdAt desc, hits.id
"""

SQL_TIME_LIMIT_MS = 10_000  # a ranked search of a very common word in a large mirror

THREAD_SQL = """
select m.createdAt, m.role, m.direction, m.content, m.id
from messages m
where m.conversationId = :conversation
order by m.createdAt, m.id
"""


def metadata(database: str) -> dict:
    """Datasette metadata for the mirror served under the name `database` (the file's stem)."""
    return {"databases": {database: {
        "tables": {
            "messages": {"facets": ["role", "direction"], "sort_desc": "createdAt"},
            "conversations": {"facets": ["status", "surfaceId", "agentMode"],
                              "sort_desc": "updatedAt"},
            "messages_fts": {"hidden": True},
            "conversations_fts": {"hidden": True},
            "participants_fts": {"hidden": True},
        },
        "queries": {
            "search": {"title": "Search messages, best match first", "sql": SEARCH_SQL.strip(),
                       "description": "Words as typed; status, surface (id or type) and role "
                                      "may be left empty."},
            "thread": {"title": "One conversation's messages in order",
                       "sql": THREAD_SQL.strip()},
        },
    }}}


def database_name(path: str) -> str:
    return Path(path).stem


def serve(path: str, *, host: str, port: int) -> None:
    """Run Datasette on the mirror at `path` with `metadata` until interrupted."""
    import asyncio

    import uvicorn
    from datasette.app import Datasette

    ds = Datasette([path], metadata=metadata(database_name(path)),
                   settings={"sql_time_limit_ms": SQL_TIME_LIMIT_MS})
    asyncio.run(ds.invoke_startup())
    uvicorn.run(ds.app(), host=host, port=port, log_level="warning")
