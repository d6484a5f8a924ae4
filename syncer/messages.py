"""Reading a conversation's messages: only the new ones where that is proven, otherwise all
the server will give, never trusting an undocumented parameter blindly.

The API documents 100 messages a request, `order=asc|desc`, and no paging. So: the newest 100
are read; if they reach the newest message the mirror holds, only the newer ones are new. Else,
past 100, a message cursor is followed if the server offers one, or the undocumented `offset` is
tried and trusted only while it returns messages not seen before (learnt once per run); then the
oldest 100 (`order=asc`). Whatever is still missing is a gap the caller records.

An answer over `[api].max_response_mb` (a few messages of megabytes each) is asked again with a
smaller `limit`, down to 1 (`Pages`); the next page grows back. A message that alone is over
the limit cannot be read: with offset paging the reading steps over it, and it is a gap the
run reports (`Read.oversized`).
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from .api import MESSAGE_PAGE, RuntypeClient
from .errors import BadRequestError, TooLargeError
from .transform import BadRecord, message_row
from .validate import checker

log = logging.getLogger(__name__)

_check_message = checker("message")


def valid_messages(cid: str, records: list, rejects: list) -> list[dict]:
    """Rows of the records that are valid messages of `cid`; the others go to `rejects`."""
    out = []
    for record in records:
        reason = _check_message(record)
        if reason is None and record["conversationId"] != cid:
            reason = f"message belongs to conversation {record['conversationId']!r}"
        if reason is None:
            try:
                out.append(message_row(record))
                continue
            except BadRecord as e:
                reason = str(e)
        rejects.append(("messages", record, reason))
    return out


@dataclass
class Read:
    """What reading a conversation's messages found: the messages to write; whether they are
    its whole set (then held messages not among them are gone, `drop_others`); and, when they
    are not, the held messages that the pages read prove gone upstream (`gone`)."""
    messages: list[dict]
    complete: bool
    drop_others: bool
    gone: list[str] = field(default_factory=list)
    oversized: int = 0           # messages that alone are over [api].max_response_mb


@dataclass
class Page:
    """One answer of the messages list. `slots`: the places in the conversation it covers,
    its messages or, when one message alone is over the size limit, that one (unread)."""
    raw: list
    cursor: str | None
    limit: int
    slots: int
    oversized: bool = False

    @property
    def full(self) -> bool:
        """As many as asked for: there may be more beyond."""
        return self.slots >= self.limit


class Pages:
    """The messages pages of one conversation. An answer over [api].max_response_mb is asked
    again with a smaller `limit`; each answer sets the `limit` of the next page to what would
    fit at its bytes per message (at most MESSAGE_PAGE), so that after a large message the
    pages grow back."""

    def __init__(self, client: RuntypeClient, cid: str, count: int):
        self.client, self.cid, self.count = client, cid, count
        self.max_bytes = client.settings.max_response_bytes
        self.limit = MESSAGE_PAGE
        self.oversized: set[tuple[str, int]] = set()    # (order, offset) of unreadable ones

    def get(self, order: str, offset: int = 0, cursor: str | None = None) -> Page:
        limit = self.limit
        while True:
            try:
                raw, next_cursor, size = self.client.list_messages(
                    self.cid, order=order, limit=limit, offset=offset or None, cursor=cursor)
            except TooLargeError as e:
                if limit == 1:
                    log.warning("conversation %s: a message is over the size limit alone and "
                                "cannot be read (%s)", self.cid, e)
                    self.oversized.add((order, offset))
                    self.limit = 1
                    return Page([], None, 1, 1, oversized=True)
                served = max(1, min(limit, self.count))
                fit = fitting(served, self.max_bytes, e.size) if e.size else served // 2
                limit = max(1, min(served - 1, fit))
                continue
            if raw and size:
                self.limit = max(1, min(MESSAGE_PAGE, fitting(len(raw), self.max_bytes, size)))
            return Page(raw, next_cursor, limit, len(raw))


def fitting(served: int, max_bytes: int, size: int) -> int:
    """How many messages fit in `max_bytes` at the bytes per message of an answer of `size`
    bytes holding `served` (nine tenths of it: messages differ)."""
    return int(served * max_bytes * 0.9 / size)


class MessageReader:
    def __init__(self, client: RuntypeClient, held_among: Callable[[list[str]], set[str]],
                 held_times: Callable[[str], dict[str, str]]):
        self.client = client
        self.held_among = held_among              # which of these message ids the mirror holds
        self.held_times = held_times              # {id: createdAt} the mirror holds of one
        self.offset_paging: bool | None = None   # learnt once per run

    def read(self, cid: str, count: int, held_state: tuple[int, str | None, bool],
             rejects: list) -> Read:
        """The messages to write for a conversation of `count` messages, given what the mirror
        holds of it (messages held, newest held id, whether complete). Records that fail
        validation are appended to `rejects`."""
        held, newest, was_complete = held_state
        unknown = count is None      # the server's count could not be stored
        if unknown:
            count = sys.maxsize
        if count == 0 and held == 0:
            return Read([], True, False)
        pages = Pages(self.client, cid, count)
        first = pages.get("desc")
        page = valid_messages(cid, first.raw, rejects)
        ids = [m["id"] for m in page]
        ordered = all(a["createdAt"] >= b["createdAt"] for a, b in zip(page, page[1:]))
        if newest is not None and newest in ids and ordered and first.full:
            # everything newer than the newest held message is in this page; messages of the
            # same second may sit on either side of it, so the mirror says which are held.
            # Messages change after they are created (metadata.deliveryStatus) without an
            # updatedAt: the whole page goes to the store, which rewrites what differs.
            held_here = self.held_among(ids)
            new = sum(m["id"] not in held_here for m in page)
            if was_complete and held + new == count:
                return Read(page, True, False)
            if not was_complete and not rejects:
                # a gap stays a gap (with one, a message gone upstream and a new one balance
                # the count): only this page is read, and held ones it proves gone go
                gone = self._proven_gone(cid, page, ordered, [], set(ids))
                return Read(page, False, False, gone)
        collected = {m["id"]: m for m in page}
        oldest_page: list[dict] = []
        if first.full and len(collected) < count:
            self._read_further(pages, count, first, collected, rejects)
            if len(collected) + len(pages.oversized) < count:
                oldest_page = self._read_oldest(pages, collected, rejects)
        oversized = len(pages.oversized)
        complete = (len(collected) == count or (unknown and not first.full)) \
            and not rejects and not oversized
        if complete:
            return Read(list(collected.values()), True, True)
        log.info("conversation %s: %d of its %s messages read", cid, len(collected),
                 "unknown number of" if unknown else count)
        gone = [] if rejects else self._proven_gone(cid, page, ordered, oldest_page, collected)
        return Read(list(collected.values()), False, False, gone, oversized)

    def _read_oldest(self, pages: Pages, collected: dict, rejects: list) -> list[dict]:
        """The oldest page (`order=asc`): its valid messages, also added to `collected`."""
        page = pages.get("asc")
        oldest = valid_messages(pages.cid, page.raw, rejects)
        for m in oldest:
            collected.setdefault(m["id"], m)
        return oldest

    def _proven_gone(self, cid: str, newest_page: list[dict], newest_ordered: bool,
                     oldest_page: list[dict], collected: dict) -> list[str]:
        """Held messages inside the time ranges the pages read cover whole, and not in them:
        deleted upstream. The newest page holds every message newer than its oldest one; the
        oldest page every message older than its newest one (ties at the edges prove nothing)."""
        bounds = []
        if newest_page and newest_ordered:
            bounds.append(lambda at, edge=newest_page[-1]["createdAt"]: at > edge)
        if oldest_page and all(a["createdAt"] <= b["createdAt"]
                               for a, b in zip(oldest_page, oldest_page[1:])):
            bounds.append(lambda at, edge=oldest_page[-1]["createdAt"]: at < edge)
        if not bounds:
            return []
        return sorted(mid for mid, at in self.held_times(cid).items()
                      if mid not in collected and at is not None
                      and any(inside(at) for inside in bounds))

    def _read_further(self, pages: Pages, count: int, first: Page, collected: dict,
                      rejects: list) -> None:
        """Past the first page: follow a message cursor if the server offers one, else try the
        undocumented `offset` parameter. Either is trusted only while it returns messages not
        seen before; an overlap-only page, a refusal, a repeated cursor, a short page or the
        page budget ends the reading. A message over the size limit alone is stepped over by
        offset (a cursor cannot step over it: the reading ends there)."""
        cursor, offset = first.cursor, first.slots
        if cursor is None and self.offset_paging is False:
            return
        budget, cursors = count + 2, set()
        while len(collected) + len(pages.oversized) < count and budget > 0:
            budget -= 1
            by_cursor = cursor is not None
            if by_cursor and cursor in cursors:
                return
            cursors.add(cursor)
            try:
                page = pages.get("desc", cursor=cursor) if by_cursor else \
                    pages.get("desc", offset=offset)
            except BadRequestError:
                if not by_cursor:
                    self._offset_unsupported()
                return
            if page.oversized:
                if by_cursor or not self.offset_paging:
                    pages.oversized.discard(("desc", offset))   # not known to be one message
                    return
                offset += 1
                continue
            cursor = page.cursor
            fresh = [m for m in valid_messages(pages.cid, page.raw, rejects)
                     if m["id"] not in collected]
            if not fresh:
                if page.raw and not by_cursor:
                    self._offset_unsupported()
                return
            if not by_cursor:
                self.offset_paging = True
            for m in fresh:
                collected[m["id"]] = m
            offset += page.slots
            if (by_cursor and cursor is None) or (not by_cursor and not page.full):
                return

    def _offset_unsupported(self) -> None:
        if self.offset_paging is None:
            log.info("the server does not page messages by offset; conversations over %d "
                     "messages will have gaps", 2 * MESSAGE_PAGE)
        self.offset_paging = False

