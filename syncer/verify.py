"""`syncer verify`: compare the mirror's rows with the API, and with `fix` queue what differs.

The bookkeeping columns (`_list_sig`, `_messages_held`) say what the last sync wrote; a row
changed or removed since (by hand, by another tool) escapes them. So verify reads the rows:
- every listed conversation's API columns against the list record after the sync's own
  transform (timestamps in the stored form): a column that differs makes it stale;
- the messages actually held, counted, against the list's `messageCount` and against what the
  last sync recorded; a recorded gap (the server serves fewer than it reports) is listed, not
  counted, while the held count is still the recorded one;
- messages of no conversation, and full-text index entries out of step with their tables;
- with `deep`, every held message against the server's record of it (missing, extra,
  different), read as the sync reads them.
`fix` rebuilds an index out of step (the sync keeps an index in step, it cannot mend one),
removes the messages the server contradicts (messages of no conversation; held messages that
differ from the server's, or that the server, serving the whole set, does not have), so the
mirror again holds a subset of the server's messages, which is what the sync's incremental
read assumes; and queues each differing conversation with no list record and no signature,
so the next sync fetches it afresh and reads its messages.
"""
from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field

from .api import RuntypeClient
from .config import Settings
from .errors import ApiError, AuthError
from .messages import MessageReader
from .pagination import Walker
from .store import Store
from .transform import (CONVERSATION_FIELDS, MESSAGE_FIELDS, TIMESTAMP_FIELDS, BadRecord,
                        checked_conversation_row, normalize_timestamp, list_signature)
from .validate import checker
from .watermark import signature_holds

log = logging.getLogger(__name__)

_check = checker("conversation")
FTS_TABLES = (("messages_fts", "messages"), ("conversations_fts", "conversations"))
_CHUNK = 500


@dataclass
class Report:
    walked: int = 0
    complete_walk: bool = True
    deep: bool = False
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    stale_fields: dict[str, list[str]] = field(default_factory=dict)
    count_differs: list[dict] = field(default_factory=list)
    known_gaps: list[dict] = field(default_factory=list)
    message_differs: list[dict] = field(default_factory=list)
    deep_checked: int = 0
    deep_failed: list[dict] = field(default_factory=list)
    orphan_messages: int = 0
    fts_out_of_step: list[str] = field(default_factory=list)
    invalid: int = 0
    queued: int = 0
    fts_rebuilt: list[str] = field(default_factory=list)
    messages_removed: int = 0

    @property
    def differences(self) -> int:
        return (len(self.missing) + len(self.extra) + len(self.stale) + len(self.count_differs)
                + len(self.message_differs) + self.orphan_messages + len(self.fts_out_of_step))

    @property
    def exact(self) -> bool:
        """Nothing differs, and everything was compared."""
        return self.differences == 0 and self.complete_walk and not self.deep_failed

    def differing_ids(self) -> list[str]:
        ids = (self.missing + self.extra + self.stale + [d["id"] for d in self.count_differs]
               + [d["id"] for d in self.message_differs])
        return list(dict.fromkeys(ids))

    def as_dict(self) -> dict:
        return {**asdict(self), "differences": self.differences, "exact": self.exact}


@dataclass
class _Held:
    """What the mirror holds of one conversation."""
    columns: dict
    deleted: bool
    recorded: int          # messages the last sync recorded as held
    complete: bool
    held: int = 0          # messages actually held
    purged: bool = False   # forgotten by `syncer purge`: only id, times, status and signature
    list_sig: str | None = None


def _chunks(items: list, size: int = _CHUNK) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _in_scope(settings: Settings, columns: dict) -> bool:
    return ((settings.status == "all" or columns["status"] == settings.status)
            and (not settings.surface_ids or columns["surfaceId"] in settings.surface_ids))


def _load(conn: sqlite3.Connection) -> tuple[dict[str, _Held], int]:
    """Every conversation of the mirror with its messages counted, and the messages that
    belong to no conversation."""
    names = ", ".join(CONVERSATION_FIELDS)
    stored = {}
    for row in conn.execute(f"SELECT {names}, _purged_at, _list_sig, _deleted_at, "
                            f"_messages_held, _messages_complete FROM conversations"):
        columns = dict(zip(CONVERSATION_FIELDS, row))
        stored[columns["id"]] = _Held(columns, row[-3] is not None, row[-2], bool(row[-1]),
                                      purged=row[-5] is not None, list_sig=row[-4])
    orphans = 0
    for cid, n in conn.execute("SELECT conversationId, count(*) FROM messages "
                               "GROUP BY conversationId"):
        if cid in stored:
            stored[cid].held = n
        else:
            orphans += n
    return stored, orphans


def _compare_counts(report: Report, cid: str, mine: _Held, count: int) -> None:
    entry = {"id": cid, "held": mine.held, "recorded": mine.recorded, "messageCount": count}
    if mine.held != mine.recorded:
        report.count_differs.append(entry)      # rows added or removed outside the sync
    elif cid in report.stale_fields or mine.held == count:
        return                                  # stale: the sync reads its messages anyway
    elif not mine.complete and mine.held < count:
        report.known_gaps.append(entry)
    else:
        report.count_differs.append(entry)


def fts_out_of_step(conn: sqlite3.Connection, thorough: bool) -> list[str]:
    """The full-text indexes that disagree with their tables. `thorough` runs FTS5's own
    integrity check, which compares every token but needs a writable connection; otherwise
    the rows indexed (FTS5's `_docsize` shadow table, one row per indexed rowid) are compared
    with the table's rows, which finds rows deleted or inserted around the index."""
    out = []
    for fts, table in FTS_TABLES:
        if thorough:
            try:
                conn.execute(f"INSERT INTO {fts}({fts}, rank) VALUES ('integrity-check', 1)")
            except sqlite3.DatabaseError as e:
                if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_CORRUPT:
                    raise
                out.append(fts)
            continue
        stray = conn.execute(
            f"SELECT (SELECT count(*) FROM {fts}_docsize WHERE id NOT IN "
            f"(SELECT rowid FROM {table})) + (SELECT count(*) FROM {table} WHERE rowid NOT IN "
            f"(SELECT id FROM {fts}_docsize))").fetchone()[0]
        if stray:
            out.append(fts)
    return out


def verify(settings: Settings, store: Store, client: RuntypeClient, *, deep: bool = False,
           writable: bool = False) -> Report:
    """Compare the mirror with the API. `writable`: the store is open for writing (the FTS
    check is then FTS5's own, token by token)."""
    report = Report(deep=deep)
    stored, report.orphan_messages = _load(store.conn)
    report.fts_out_of_step = fts_out_of_step(store.conn, thorough=writable)
    listed: dict[str, int] = {}
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
                if cid in listed:
                    continue        # a shifting list can show one twice
                listed[cid] = row["messageCount"]
                report.walked += 1
                mine = stored.get(cid)
                if mine is None or mine.deleted:
                    report.missing.append(cid)
                    continue
                if mine.purged:     # forgotten on purpose: only a change upstream differs
                    if not signature_holds(mine.list_sig, list_signature(row)):
                        report.stale.append(cid)
                    continue
                fields = [f for f in CONVERSATION_FIELDS if row.get(f) != mine.columns[f]]
                if fields:
                    report.stale.append(cid)
                    report.stale_fields[cid] = fields
                _compare_counts(report, cid, mine, row["messageCount"])
    if report.complete_walk:
        report.extra = sorted(cid for cid, mine in stored.items()
                              if not mine.deleted and cid not in listed
                              and _in_scope(settings, mine.columns))
    if deep:
        held = {cid: n for cid, n in listed.items()
                if cid in stored and not stored[cid].deleted and not stored[cid].purged}
        _compare_messages(settings, store, client, held, report)
    return report


def describe(report: Report, *, fix: bool = False) -> list[str]:
    """The report as lines of text: a summary, then each kind of difference, ids sampled."""
    def some(items: list[str]) -> str:
        return ", ".join(items[:10]) + (" ..." if len(items) > 10 else "")

    checked = f" and the messages of {report.deep_checked}" if report.deep else ""
    lines = [f"verified {report.walked} conversations{checked}: {report.differences} differences"
             + ("" if report.complete_walk else " (the walk ended early: extras unknown)")]
    for label, items in (("missing from the mirror", report.missing),
                         ("gone upstream", report.extra)):
        if items:
            lines.append(f"  {len(items)} {label}: {some(items)}")
    if report.stale:
        lines.append(f"  {len(report.stale)} stale: " + some(
            [f"{cid} ({', '.join(report.stale_fields[cid])})" for cid in report.stale]))
    for what, entries in (("messages held differ", report.count_differs),
                          ("known gaps (server serves fewer)", report.known_gaps)):
        if entries:
            lines.append(f"  {len(entries)} {what} (held/recorded/messageCount): " + some(
                [f"{e['id']} {e['held']}/{e['recorded']}/{e['messageCount']}" for e in entries]))
    if report.message_differs:
        lines.append(f"  {len(report.message_differs)} with messages unlike the server's "
                     f"(missing/extra/different): " + some(
                         [f"{d['id']} {len(d['missing'])}/{len(d['extra'])}/"
                          f"{len(d['different'])}" for d in report.message_differs]))
    if report.orphan_messages:
        lines.append(f"  {report.orphan_messages} messages of no conversation")
    if report.fts_out_of_step:
        lines.append(f"  full-text index out of step: {', '.join(report.fts_out_of_step)}")
    if report.deep_failed:
        lines.append(f"  {len(report.deep_failed)} conversations' messages could not be read: "
                     + some([d["id"] for d in report.deep_failed]))
    if fix and report.fts_rebuilt:
        lines.append(f"rebuilt {', '.join(report.fts_rebuilt)}")
    if fix and report.messages_removed:
        lines.append(f"removed {report.messages_removed} messages the server contradicts")
    if fix and report.queued:
        lines.append(f"queued {report.queued} conversations for the next sync")
    return lines


# -- deep: every held message against the server's ----------------------------------------------
def _comparable(row: dict) -> tuple:
    """A message row as compared: its columns and its record as received, timestamps as
    instants (a server may write one instant several ways)."""
    try:
        record = json.loads(row["_raw"])
        for name in TIMESTAMP_FIELDS:
            if isinstance(record, dict) and record.get(name) is not None:
                record[name] = normalize_timestamp(record[name])
    except (TypeError, ValueError, BadRecord):
        record = row["_raw"]       # not what the sync wrote: differs from any server record
    return tuple(row.get(name) for name in MESSAGE_FIELDS) + (json.dumps(record, sort_keys=True),)


def _held_messages(conn: sqlite3.Connection, cid: str) -> dict[str, tuple]:
    names = MESSAGE_FIELDS + ("_raw",)
    return {row[0]: _comparable(dict(zip(names, row))) for row in conn.execute(
        f"SELECT {', '.join(names)} FROM messages WHERE conversationId = ?", (cid,))}


def _read_served(reader: MessageReader, cid: str, count: int) -> tuple[list[dict], bool]:
    """All the messages the server serves of a conversation, read as the sync reads them, and
    whether they are its whole set (then a held message not among them is not upstream)."""
    rejects: list = []
    read = reader.read(cid, count, (0, None, False), rejects)
    return read.messages, read.complete


def _compare_messages(settings: Settings, store: Store, client: RuntypeClient,
                      conversations: dict[str, int], report: Report) -> None:
    """Read every conversation's messages from the server, concurrently, and compare them with
    the held ones here, in the calling thread (the fetch threads only talk HTTP)."""
    # nothing held is passed to the reader, so it reads everything and never asks the mirror
    reader = MessageReader(client, held_among=lambda ids: set(), held_times=lambda cid: {})
    log.info("reading the messages of %d conversations to compare", len(conversations))
    pending: dict[Future, str] = {}

    def settle(done) -> None:
        for future in done:
            cid = pending.pop(future)
            try:
                served, whole = future.result()
            except AuthError:
                raise
            except (ApiError, BadRecord) as e:
                report.deep_failed.append({"id": cid, "error": str(e)})
                continue
            report.deep_checked += 1
            _compare_one(report, cid, _held_messages(store.conn, cid), served, whole)

    with ThreadPoolExecutor(settings.concurrency, thread_name_prefix="verify") as pool:
        try:
            for cid, count in conversations.items():
                if len(pending) >= settings.concurrency * 4:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    settle(done)
                pending[pool.submit(_read_served, reader, cid, count)] = cid
            settle(list(pending))
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    report.message_differs.sort(key=lambda d: d["id"])


def _compare_one(report: Report, cid: str, held: dict[str, tuple], served: list[dict],
                 whole: bool) -> None:
    theirs = {m["id"]: _comparable(m) for m in served}
    missing = sorted(set(theirs) - set(held))
    extra = sorted(set(held) - set(theirs)) if whole else []
    different = sorted(i for i in set(theirs) & set(held) if theirs[i] != held[i])
    if missing or extra or different:
        report.message_differs.append({"id": cid, "missing": missing, "extra": extra,
                                       "different": different})


# -- fix -----------------------------------------------------------------------------------------
def _delete_messages(conn: sqlite3.Connection, where: str, args: list) -> int:
    """Delete messages and their index entries (the index must be in step with the table)."""
    conn.execute(f"INSERT INTO messages_fts (messages_fts, rowid, content) "
                 f"SELECT 'delete', rowid, content FROM messages WHERE {where}", args)
    return conn.execute(f"DELETE FROM messages WHERE {where}", args).rowcount


def fix_differences(store: Store, report: Report) -> int:
    """Mend what only verify can and queue the rest for the next `syncer sync`, in one
    transaction; returns the conversations queued. A conversation is queued with no list
    record (a stale queued one is dropped) and its signature cleared, so the sync fetches it
    from the server, not from a record, and reads its messages; a 404 tombstones it."""
    ids = report.differing_ids()
    contradicted = [(d["id"], m) for d in report.message_differs
                    for m in d["extra"] + d["different"]]
    with store.transaction() as conn:
        for fts in report.fts_out_of_step:
            log.info("rebuilding the full-text index %s", fts)
            conn.execute(f"INSERT INTO {fts}({fts}) VALUES ('rebuild')")
        report.fts_rebuilt = list(report.fts_out_of_step)
        if report.orphan_messages:
            report.messages_removed += _delete_messages(
                conn, "conversationId NOT IN (SELECT id FROM conversations)", [])
        for cid, mid in contradicted:
            report.messages_removed += _delete_messages(
                conn, "id = ? AND conversationId = ?", [mid, cid])
        store.enqueue_records([(cid, "verify", None) for cid in ids])
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            conn.execute(f"UPDATE _sync_queue SET record = NULL, reason = 'verify' "
                         f"WHERE id IN ({marks})", chunk)
            conn.execute(f"UPDATE conversations SET _list_sig = NULL WHERE id IN ({marks})",
                         chunk)
    report.queued = len(ids)
    return len(ids)
