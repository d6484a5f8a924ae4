"""Pure rules over plain values: the safe watermark, list-order checks, dirty detection.

Timestamps here are the store's fixed-width UTC strings, so string order is time order.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from .transform import PARTIAL_SIGNATURE, format_instant


def safe_watermark(walk_started: datetime, lookback_seconds: float) -> str:
    """The watermark a completed walk may commit: the server time at which the walk began, minus
    the lookback, so that records changed while the walk ran are seen again next time."""
    return format_instant(walk_started - timedelta(seconds=lookback_seconds))


EVIDENCE_NEEDED = 1   # conversations seen to gain a message with their updatedAt moving


class OrderCheck:
    """Tracks, page by page, whether the list so far is ordered by updatedAt, newest first, and
    what the records say about whether a new message bumps updatedAt (`bumps`: what earlier
    walks concluded, True, False or None for not known yet).

    Only positive evidence proves that it does: conversations the mirror held that are listed
    with more messages and a later updatedAt than it holds. Many records that merely do not
    contradict the rule prove nothing (a list ordered so that none contradicts it in its first
    pages would stop a walk early on a belief). It does not when a record's lastMessageAt is
    after its updatedAt, or a conversation gained messages and kept its updatedAt."""

    def __init__(self, bumps: bool | None = None) -> None:
        self.sorted_desc = True
        self.bumps = bumps
        self.evidence = 0
        self.last: str | None = None
        self.count = 0

    def feed(self, rows: list[dict], held: dict[str, tuple] | None = None) -> None:
        """Take a page's rows, with what the mirror held of them before:
        {id: (updatedAt, messageCount)}."""
        held = held or {}
        for row in rows:
            updated = row["updatedAt"]
            if self.last is not None and updated > self.last:
                self.sorted_desc = False
            last_message = row.get("lastMessageAt")
            if last_message is not None and last_message > updated:
                self.bumps = False
            before = held.get(row.get("id"))
            count = row.get("messageCount")
            if before is not None and None not in (before[1], count) and count > before[1]:
                if updated > before[0]:
                    self.evidence += 1
                else:
                    self.bumps = False
            self.last = updated
            self.count += 1
        if self.bumps is None and self.evidence >= EVIDENCE_NEEDED:
            self.bumps = True

    def may_stop(self, watermark: str | None, min_records: int = 2) -> bool:
        """True when everything after the records read so far is older than the watermark:
        the list is proven newest-first by updatedAt, messages are known to bump updatedAt, and
        the last record read is strictly older than the watermark (ties at it are read)."""
        return (watermark is not None and self.sorted_desc and self.bumps is True
                and self.count >= min_records and self.last is not None
                and self.last < watermark)


def is_dirty(stored_sig: str | None, deleted: bool, sig: str, known: bool) -> bool:
    """A conversation is dirty when new, tombstoned but listed again, or its listed fields
    (updatedAt, lastMessageAt, messageCount, ...) differ from what the mirror holds."""
    return not known or deleted or not signature_holds(stored_sig, sig)


def signature_holds(stored_sig: str | None, sig: str) -> bool:
    """Whether the signature the mirror holds is that of the listed record. One ending in
    PARTIAL_SIGNATURE (a forgotten conversation signed before schema 9, whose agent fields the
    mirror never kept: migrations.V9) covers the first part of a signature only."""
    if stored_sig is not None and stored_sig.endswith(PARTIAL_SIGNATURE):
        return stored_sig[:-len(PARTIAL_SIGNATURE)] == sig[:16]
    return stored_sig == sig
