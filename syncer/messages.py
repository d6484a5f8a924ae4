"""Reading a conversation's messages: only the new ones where that is proven, otherwise all
the server will give, never trusting an undocumented parameter blindly.

The API documents 100 messages a request, `order=asc|desc`, and no paging. So: the newest 100
are read; if they reach the newest message the mirror holds, only the newer ones are new. Else,
past 100, a message cursor is followed if the server offers one, or the undocumented `offset` is
tried and trusted only while it returns messages not seen before (learnt once per run); then the
oldest 100 (`order=asc`). Whatever is still missing is a gap the caller records.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from .api import MESSAGE_PAGE, RuntypeClient
from .errors import BadRequestError
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


class MessageReader:
    def __init__(self, client: RuntypeClient, held_among: Callable[[list[str]], set[str]]):
        self.client = client
        self.held_among = held_among              # which of these message ids the mirror holds
        self.offset_paging: bool | None = None   # learnt once per run

    def read(self, cid: str, count: int, held_state: tuple[int, str | None, bool],
             rejects: list) -> tuple[list[dict], bool, bool]:
        """The messages to write for a conversation of `count` messages, given what the mirror
        holds of it (messages held, newest held id, whether complete): (messages, complete,
        drop_others). Records that fail validation are appended to `rejects`."""
        held, newest, was_complete = held_state
        if count == 0 and held == 0:
            return [], True, False
        raw, next_cursor = self.client.list_messages(cid, order="desc", limit=MESSAGE_PAGE)
        page = valid_messages(cid, raw, rejects)
        ids = [m["id"] for m in page]
        ordered = all(a["createdAt"] >= b["createdAt"] for a, b in zip(page, page[1:]))
        if newest is not None and newest in ids and ordered:
            # everything newer than the newest held message is in this page; messages of the
            # same second may sit on either side of it, so the mirror says which are held
            held_here = self.held_among(ids)
            new = [m for m in page if m["id"] not in held_here]
            if held + len(new) == count:
                return new, True, False
            if not was_complete and not rejects:
                # the gap the server cannot close stays what it was; only the new are read
                return new, False, False
        collected = {m["id"]: m for m in page}
        if len(raw) >= MESSAGE_PAGE and len(collected) < count:
            self._read_further(cid, count, len(raw), next_cursor, collected, rejects)
            if len(collected) < count:
                oldest, _ = self.client.list_messages(cid, order="asc", limit=MESSAGE_PAGE)
                for m in valid_messages(cid, oldest, rejects):
                    collected.setdefault(m["id"], m)
        complete = len(collected) == count and not rejects
        if len(collected) < count:
            log.info("conversation %s: the server serves %d of its %d messages",
                     cid, len(collected), count)
        return list(collected.values()), complete, complete

    def _read_further(self, cid: str, count: int, offset: int, cursor: str | None,
                      collected: dict, rejects: list) -> None:
        """Past the first 100: follow a message cursor if the server offers one, else try the
        undocumented `offset` parameter. Either is trusted only while it returns messages not
        seen before; an overlap-only page, a refusal, a repeated cursor, a short page or the
        page budget ends the reading."""
        if cursor is None and self.offset_paging is False:
            return
        budget, cursors = count // MESSAGE_PAGE + 2, set()
        while len(collected) < count and budget > 0:
            budget -= 1
            by_cursor = cursor is not None
            if by_cursor and cursor in cursors:
                return
            cursors.add(cursor)
            where = {"cursor": cursor} if by_cursor else {"offset": offset}
            try:
                raw, cursor = self.client.list_messages(cid, order="desc", limit=MESSAGE_PAGE,
                                                        **where)
            except BadRequestError:
                if not by_cursor:
                    self._offset_unsupported()
                return
            fresh = [m for m in valid_messages(cid, raw, rejects)
                     if m["id"] not in collected]
            if not fresh:
                if raw and not by_cursor:
                    self._offset_unsupported()
                return
            if not by_cursor:
                self.offset_paging = True
            for m in fresh:
                collected[m["id"]] = m
            offset += len(raw)
            if (by_cursor and cursor is None) or (not by_cursor and len(raw) < MESSAGE_PAGE):
                return

    def _offset_unsupported(self) -> None:
        if self.offset_paging is None:
            log.info("the server does not page messages by offset; conversations over %d "
                     "messages will have gaps", 2 * MESSAGE_PAGE)
        self.offset_paging = False

