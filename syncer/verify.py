"""`syncer verify`: walk the conversation list (no messages) and compare it with the mirror.

Differences: conversations missing from the mirror, extra in it (gone upstream, not yet
tombstoned), stale (listed fields newer or different upstream), and message counts that differ
from what the mirror holds. Conversations whose gap is already recorded (the server serves fewer
messages than it reports) are listed as known gaps, not as differences. `fix` queues every
difference for the next sync.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .api import RuntypeClient
from .config import Settings
from .pagination import Walker
from .store import Store
from .transform import checked_conversation_row, list_signature
from .validate import checker

_check = checker("conversation")


@dataclass
class Report:
    walked: int = 0
    complete_walk: bool = True
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    count_differs: list[dict] = field(default_factory=list)
    known_gaps: list[dict] = field(default_factory=list)
    invalid: int = 0
    queued: int = 0

    @property
    def differences(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.stale) + len(self.count_differs)

    def as_dict(self) -> dict:
        return {**asdict(self), "differences": self.differences}


def _in_scope(settings: Settings, row: dict) -> bool:
    return ((settings.status == "all" or row["status"] == settings.status)
            and (not settings.surface_ids or row["surfaceId"] in settings.surface_ids))


def verify(settings: Settings, store: Store, client: RuntypeClient) -> Report:
    report = Report()
    stored = {r[0]: r for r in store.conn.execute(
        "SELECT id, _list_sig, _deleted_at, _messages_held, _messages_complete, status, "
        "surfaceId, _purged_at FROM conversations")}
    seen: set[str] = set()
    for surface in list(settings.surface_ids) or [None]:
        walker = Walker(client, limit=settings.page_size, status=settings.status,
                        surface_id=surface)
        for step in walker.pages():
            report.complete_walk &= not step.suspect_end
            for record in step.page.records:
                row, reason = checked_conversation_row(record, _check)
                if row is None:
                    report.invalid += 1
                    continue
                cid = row["id"]
                seen.add(cid)
                report.walked += 1
                mine = stored.get(cid)
                if mine is None or mine[2] is not None:
                    report.missing.append(cid)
                    continue
                if mine[1] != list_signature(row):
                    report.stale.append(cid)
                elif mine[7] is None and mine[3] != row["messageCount"]:  # purged: none held
                    entry = {"id": cid, "held": mine[3], "messageCount": row["messageCount"]}
                    (report.count_differs if mine[4] else report.known_gaps).append(entry)
    if report.complete_walk:
        report.extra = sorted(cid for cid, mine in stored.items()
                              if mine[2] is None and cid not in seen
                              and _in_scope(settings, {"status": mine[5], "surfaceId": mine[6]}))
    return report


def queue_differences(store: Store, report: Report) -> int:
    """Queue every difference; the next `syncer sync` fetches each (a 404 tombstones)."""
    ids = (report.missing + report.extra + report.stale
           + [d["id"] for d in report.count_differs])
    with store.transaction():
        store.enqueue_records([(cid, "verify", None) for cid in ids])
    report.queued = len(ids)
    return len(ids)
