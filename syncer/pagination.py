"""Walking the cursor-paginated conversation list, with its stop conditions.

A walk stops when a page has no next cursor, says `hasMore: false`, or is empty. It fails loudly
(ProtocolError) when a cursor repeats, and when the walk runs far past the page count the
server announced, so a misbehaving server can never make it loop.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

from .api import ListPage, RuntypeClient
from .errors import ProtocolError

log = logging.getLogger(__name__)

STALE_PAGES = 3     # pages in a row listing only conversations already listed: a loop


@dataclass
class Step:
    """One page of a walk, with the cursor that fetched it and the cursor to resume after it."""
    page: ListPage
    cursor: str | None
    next_cursor: str | None      # None: the walk ends with this page
    suspect_end: bool = False    # ended on an empty page that claimed more: not proof of the end


class Walker:
    def __init__(self, client: RuntypeClient, *, limit: int, status: str,
                 surface_id: str | None = None):
        self.client = client
        self.limit = limit
        self.status = status
        self.surface_id = surface_id

    def pages(self, cursor: str | None = None) -> Iterator[Step]:
        seen: set[str] = set() if cursor is None else {cursor}
        count, max_pages = 0, None
        ids: set[str] = set()        # listed so far: without a count, the guard is progress
        stale = 0                    # pages in a row that listed nothing new
        while True:
            page = self.client.list_conversations(cursor=cursor, limit=self.limit,
                                                  status=self.status, surface_id=self.surface_id)
            count += 1
            if max_pages is None and isinstance(page.total_count, int) and page.total_count >= 0:
                max_pages = 2 * math.ceil(page.total_count / self.limit) + 10
            nxt = page.next_cursor if page.has_more and page.next_cursor else None
            if not page.records:
                suspect = nxt is not None
                if suspect:
                    log.warning("list page %d is empty but claims more; ending the walk there "
                                "(not trusted as a complete walk)", count)
                yield Step(page, cursor, None, suspect_end=suspect)
                return
            if nxt is not None and nxt in seen:
                raise ProtocolError(f"the conversation list repeated a cursor after {count} pages; "
                                    "stopping so as not to loop")
            fresh = {r.get("id") for r in page.records if isinstance(r, dict)} - ids
            ids |= fresh
            stale = 0 if fresh else stale + 1
            if nxt is not None and stale >= STALE_PAGES:
                raise ProtocolError(f"the conversation list served {stale} pages in a row with "
                                    f"nothing new after {count} pages; stopping so as not to loop")
            if nxt is not None and max_pages is not None and count >= max_pages:
                raise ProtocolError(f"the conversation list ran to {count} pages, far past the "
                                    f"{page.total_count} conversations it announced; stopping")
            yield Step(page, cursor, nxt)
            if nxt is None:
                return
            seen.add(nxt)
            cursor = nxt
