"""The sync engine: walk the list, queue what changed, fetch it, commit it, conclude deletions,
advance the watermark.

Units of progress, each one transaction:
- a list page with something new: its dirty conversations into the persistent queue, the run
  counters (a page with nothing new writes nothing);
- a conversation: its row, its messages, their FTS entries, its completeness, off the queue
  (the writer thread commits several in one transaction; see writer.py);
- the run's end: the conversations proven gone, tombstoned together under the mass-deletion
  guard, and the run record with the watermark.
A run killed at any instant leaves its work in the queue; the next run drains the queue and
walks the list afresh from the top down to the watermark, which only an `ok` run advances.

What an `ok` run (exit 0) guarantees: every conversation of its scope that was dirty when the
run began is in the mirror as listed then or later. So a run claims `ok` only when
- its last walk reached the end of the list or the watermark, and the list did not shrink under
  it (an offset-backed list that shrinks shifts items past the walk's cursor: walked again);
- nothing failed and the queue is empty;
- deletions, when the walk saw the whole list, were concluded (each confirmed by a 404).
A watermark belongs to a scope (status and surfaces): a scope without one walks the whole list.
How a conversation's messages are read is messages.py.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from .api import RuntypeClient
from .binding import canonical_url
from .config import Settings, delete_limit
from .errors import ApiError, AuthError, Interrupted, NotFoundError, SyncerError
from .messages import MessageReader
from .pagination import Walker
from .store import Fetched, Store, now_utc
from .transform import (ANOMALY, BadRecord, checked_conversation_row, format_instant,
                        list_signature, parse_instant)
from .validate import checker
from .watermark import OrderCheck, is_dirty, safe_watermark
from .writer import BatchWriter

log = logging.getLogger(__name__)

OPTIMIZE_AFTER = 20_000              # messages written in a run before the FTS index is merged
MAX_WALKS = 3                        # walks of one run before a shifting list ends it partial
STATE_WALK = "walk"                  # the walk checkpoint of earlier versions (no longer kept)
# "yes" / "no", learnt from the data; a new key, as what earlier versions learnt from an
# absence of counter-examples is not evidence
STATE_BUMPS = "messages_bump_updatedAt_seen"

_check_conversation = checker("conversation")
_check_detail = checker("conversation_detail")


def scope_key(settings: Settings) -> str:
    """What a watermark is valid for: the part of which upstream's list a run walks."""
    return json.dumps({"upstream": canonical_url(settings.base_url), "status": settings.status,
                       "surfaces": sorted(settings.surface_ids)}, sort_keys=True)


def _covers(walk: Walk, earlier: Walk, floor: str | None) -> bool:
    """Whether `walk` lists every conversation `earlier` listed at or above the floor: then
    nothing left the list while `earlier` was walked, and no item shifted past its cursor."""
    return all(cid in walk.seen for cid, at in earlier.stamps.items()
               if floor is None or at >= floor)


@dataclass
class Summary:
    run_id: int
    mode: str
    outcome: str = "running"
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    gaps: list[tuple[str, int, int]] = field(default_factory=list)
    gaps_changed: bool = True        # the incomplete ones are not those the last run left
    early_stop: bool = False
    watermark: str | None = None
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return {"ok": 0, "auth_failed": 3}.get(self.outcome, 1)


@dataclass
class Walk:
    """One walk of the list (every filter of the scope) and what it shows."""
    started: str | None = None      # server time of its first page
    complete: bool = True           # reached the end of the list, or the watermark
    shrank: bool = False            # totalCount fell between two pages: items may be skipped
    early: bool = False             # stopped at the watermark
    counted: bool = False           # some page announced a totalCount
    stamps: dict[str, str] = field(default_factory=dict)   # updatedAt listed, by id
    seen: set[str] = field(default_factory=set)
    listed: set[str] = field(default_factory=set)   # ids of every listed record, valid or not


class Sync:
    def __init__(self, settings: Settings, store: Store, client: RuntypeClient, *,
                 full: bool = False, stop: threading.Event | None = None,
                 progress: Callable[[dict], None] | None = None,
                 max_delete: str | None = None):
        self.settings = settings
        self.store = store
        self.client = client
        self.stop = stop or threading.Event()
        self.progress = progress
        self.max_delete = max_delete or settings.max_delete
        self.scope = scope_key(settings)
        self.full = full or self._reconcile_due()
        self.mode = "full" if self.full else "incremental"
        self._messages = MessageReader(client, store.held_among, store.held_times)
        self._inflight: set[str] = set()          # queued to the pool, not yet committed
        self._failed: set[str] = set()            # failed in this run: stay queued
        self._gone: set[str] = set()              # 404 on a direct fetch: tombstoned at the end
        self._save = self._save_now               # the batch writer's put during a walk
        self._lock = threading.Lock()
        self._walks = 0                           # walks of the list so far, for progress
        self._read = [0, 0]                       # conversations and messages read, for progress
        self._counts = {"conversations_changed": 0, "conversations_deleted": 0,
                        "conversations_failed": 0, "messages_written": 0, "gaps": 0,
                        "rejects": 0, "pages": 0, "conversations_seen": 0, "anomalies": 0,
                        "messages_oversized": 0}

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> Summary:
        started = time.monotonic()
        run_id = self.run_id = self.store.start_run(self.mode, self.scope)
        summary = Summary(run_id=run_id, mode=self.mode)
        before = self.client.counters.snapshot()
        walk = Walk(complete=False)
        try:
            walk = self._walk_and_fetch(run_id)
            summary.early_stop = walk.early
            if walk.complete and not walk.early and not self.stop.is_set():
                self.store.forget_rejects_unlisted(walk.listed,
                                                   self.store.run(run_id)["started_at"])
            refused = self._conclude_deletions()
            if self.stop.is_set():
                summary.outcome = "interrupted"
            elif refused:
                summary.outcome, summary.error = "partial", refused
            elif self._counts["conversations_failed"] or not walk.complete:
                summary.outcome = "partial"
            elif self._counts["rejects"]:
                # the mirror lacks what it quarantined: not exact, so not ok (and the
                # watermark stays, so the next run walks past those records again)
                summary.outcome, summary.error = "partial", self._rejected_text()
            elif self.store.queue_size():
                summary.outcome = "partial"
                left = self.store.queue_size()
                summary.error = (f"{left} conversation{' is' if left == 1 else 's are'} still "
                                 "queued (changed again while fetched); the next run fetches "
                                 f"{'it' if left == 1 else 'them'}")
            else:
                summary.outcome = "ok"
                summary.watermark = safe_watermark(parse_instant(walk.started),
                                                   self.settings.lookback)
            if self._counts["messages_written"] >= OPTIMIZE_AFTER and not self.stop.is_set():
                log.info("merging the full-text index after %d messages written",
                         self._counts["messages_written"])
                self.store.optimize_fts()
        except AuthError as e:
            summary.outcome, summary.error = "auth_failed", str(e)
        except Interrupted:
            summary.outcome = "interrupted"
        except SyncerError as e:
            summary.outcome, summary.error = "failed", str(e)
        except sqlite3.Error as e:
            summary.outcome, summary.error = "failed", str(self.store.error_for(self.store.path,
                                                                                e))
        except BaseException as e:
            summary.outcome, summary.error = "interrupted", type(e).__name__
            self._finish(summary, before, walk.started, started)
            raise
        self._finish(summary, before, walk.started, started)
        return summary

    def _finish(self, summary: Summary, before: dict, walk_started: str | None,
                started: float) -> None:
        after = self.client.counters.snapshot()
        api_counts = {k: after[k] - before[k] for k in after}
        try:
            self.store.finish_run(summary.run_id, summary.outcome, error=summary.error,
                                  walk_started_at=walk_started, watermark=summary.watermark,
                                  early_stop=summary.early_stop, counts=api_counts)
        except sqlite3.Error as e:   # the run stays "running": the next one closes it as killed
            raise self.store.error_for(self.store.path, e) from None
        summary.counts = {**self._counts, **api_counts}
        summary.gaps = self.store.gaps()
        summary.seconds = time.monotonic() - started

    def _rejected_text(self) -> str:
        n, reasons = self.store.rejects_since(self.store.run(self.run_id)["started_at"])
        n = max(n, self._counts["rejects"])
        return (f"{n:,} record{' was' if n == 1 else 's were'} rejected and quarantined in "
                f"_rejects, so the mirror lacks {'it' if n == 1 else 'them'} "
                f"(first: {'; '.join(reasons)}); see `syncer status`")

    def _reconcile_due(self) -> bool:
        last = self.store.last_full_walk(self.scope)
        if last is None:
            return True
        age = (parse_instant(now_utc()) - parse_instant(last)).total_seconds()
        return age >= self.settings.reconcile_every

    def _count(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                self._counts[name] += n

    # -- walking -----------------------------------------------------------------------------
    def _filters(self) -> list[str | None]:
        return list(self.settings.surface_ids) or [None]

    def _walk_and_fetch(self, run_id: int) -> Walk:
        """Drain the queue, walk the list (again while it shrinks under the walk) feeding dirty
        conversations to the fetch pool, check what a whole walk did not list, and drain the
        queue of what changed again meanwhile. Returns the last walk."""
        if self.store.get_state(STATE_WALK) is not None:
            with self.store.transaction():
                self.store.set_state(STATE_WALK, None)
        floor = None if self.full else self.store.watermark(self.scope)
        seen: set[str] = set()
        with BatchWriter(self.store, run_id, self._saved) as writer, \
                ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="fetch") as pool:
            self._save = writer.put
            pending: set[Future] = set()
            try:
                queued = self.store.queued()
                if self.progress is not None:
                    self._report({"queued": len(queued), "whole": floor is None,
                                  "held_messages": self.store.message_count()})
                for cid in queued:
                    pending = self._submit(pool, pending, cid)
                previous = None
                for attempt in range(1, MAX_WALKS + 1):
                    walk, pending = self._walk(run_id, floor, pool, pending)
                    seen |= walk.seen
                    if walk.complete and not walk.counted:
                        # no count to see the list shrink by: the walk is proven unshifted by
                        # the next one listing all it listed (above the floor)
                        if previous is not None and _covers(walk, previous, floor):
                            walk.started = previous.started
                            break
                        previous, walk.shrank = walk, True
                    if not walk.shrank or not walk.complete or self.stop.is_set():
                        break
                    if attempt == MAX_WALKS:
                        log.warning("the list kept changing under %d walks; the run ends "
                                    "partial and the next one walks again", MAX_WALKS)
                        walk.complete = False
                    else:
                        log.info("the list shrank while it was walked (an item may have "
                                 "been skipped): walking it again")
                if walk.complete and not walk.early and not self.stop.is_set():
                    pending = self._check_unseen(seen, pool, pending)
                self._drain(pending)
                pending = set()
                self._drain_queue(pool, writer)
            except BaseException:
                self.stop.set()
                for f in pending:
                    f.cancel()
                raise
        self._save = self._save_now
        walk.complete = walk.complete and not self.stop.is_set()
        return walk

    def _walk(self, run_id: int, floor: str | None, pool: ThreadPoolExecutor,
              pending: set[Future]) -> tuple[Walk, set[Future]]:
        walk = Walk()
        self._walks += 1
        bumps = {"yes": True, "no": False}.get(self.store.get_state(STATE_BUMPS) or "")
        for surface in self._filters():
            if self.stop.is_set():
                walk.complete = False
                break
            order = OrderCheck(bumps)
            pending = self._walk_one(run_id, surface, order, floor, walk, pool, pending)
            if order.bumps is not None and order.bumps != bumps and bumps is not False:
                with self.store.transaction():
                    self.store.set_state(STATE_BUMPS, "yes" if order.bumps else "no")
                bumps = order.bumps
            if not walk.complete:
                break
        return walk, pending

    def _walk_one(self, run_id: int, surface: str | None, order: OrderCheck, floor: str | None,
                  walk: Walk, pool: ThreadPoolExecutor, pending: set[Future]) -> set[Future]:
        walker = Walker(self.client, limit=self.settings.page_size, status=self.settings.status,
                        surface_id=surface)
        total: int | None = None
        before = len(walk.seen)          # listed under the scope's earlier filters
        for step in walker.pages(None):
            if walk.started is None:
                walk.started = self._walk_start(step.page)
            announced = step.page.total_count
            if isinstance(announced, int):
                walk.counted = True
                if total is not None and announced < total:
                    walk.shrank = True
                total = announced
            dirty, rows, held = self._take_page(run_id, step)
            walk.seen.update(row["id"] for row in rows)
            walk.stamps.update((row["id"], row["updatedAt"]) for row in rows)
            walk.listed.update(r["id"] for r in step.page.records
                               if isinstance(r, dict) and isinstance(r.get("id"), str))
            order.feed(rows, held)
            self._report({"walk": self._walks, "walked": len(walk.seen),
                          "total": None if total is None else before + total})
            for cid, new in dirty:
                pending = self._submit(pool, pending, cid, new=new)
            if step.suspect_end:
                walk.complete = False
                return pending
            if step.next_cursor is None:
                return pending
            if order.may_stop(floor):
                log.info("list is newest-first by updatedAt and past the watermark %s: "
                         "stopping the walk early", floor)
                walk.early = True
                return pending
            if self.stop.is_set():
                walk.complete = False
                return pending
        return pending

    @staticmethod
    def _walk_start(page) -> str:
        """The server time a walk began. A server that sends no `Date` leaves only our clock,
        which may run ahead of the one that stamps updatedAt (then changes made just after the
        walk began would fall below the watermark): no later than the newest updatedAt listed
        first, so the lookback is never spent on a skew."""
        start = page.server_time
        if not page.dated:
            stamps = []
            for record in page.records:
                try:
                    stamps.append(parse_instant(record["updatedAt"]))
                except (BadRecord, KeyError, TypeError):
                    continue
            if stamps:
                start = min(start, max(stamps))
        return format_instant(start)

    def _take_page(self, run_id: int, step) -> tuple[list[tuple[str, bool]], list[dict], dict]:
        """Validate a page and queue its dirty conversations, in one transaction when anything
        is written (a page with nothing new writes nothing). Returns the dirty ones as (id, new
        to the mirror), the page's valid rows, and what the mirror held of them before:
        {id: (updatedAt, messageCount)} of the live ones."""
        rows: dict[str, dict] = {}
        records: dict[str, dict] = {}
        rejects = []
        for record in step.page.records:
            row, reason = checked_conversation_row(record, _check_conversation)
            if row is None:
                rejects.append(("list", record, reason))
                continue
            rows[row["id"]] = row            # a page with the same id twice: the last wins
            records[row["id"]] = record
        stored = self.store.stored(list(rows))
        held = {cid: (s.updated_at, s.message_count) for cid, s in stored.items()
                if not s.deleted}
        dirty = self._dirty(rows, stored)
        self._count(pages=1, conversations_seen=len(rows), rejects=len(rejects))
        if dirty or rejects:
            with self.store.transaction():
                # again inside the transaction: a conversation committed meanwhile is clean
                dirty = self._dirty({cid: rows[cid] for cid, _ in dirty})
                for endpoint, record, reason in rejects:
                    self.store.reject(endpoint, record, reason)
                self.store.enqueue_records(
                    [(cid, "changed", json.dumps(records[cid])) for cid, _ in dirty])
                self.store.add_to_run(run_id, {"pages": 1, "conversations_seen": len(rows),
                                               "rejects": len(rejects)})
        return dirty, list(rows.values()), held

    def _dirty(self, rows: dict[str, dict], stored: dict | None = None
               ) -> list[tuple[str, bool]]:
        """(id, new to the mirror) of the rows whose listed fields the mirror does not hold."""
        stored = self.store.stored(list(rows)) if stored is None else stored
        dirty = []
        for cid, row in rows.items():
            s = stored.get(cid)
            if is_dirty(s.list_sig if s else None, s.deleted if s else False,
                        list_signature(row), s is not None):
                dirty.append((cid, s is None))
        return dirty

    # -- fetching ----------------------------------------------------------------------------
    def _submit(self, pool: ThreadPoolExecutor, pending: set[Future], cid: str,
                new: bool = False, check: bool = False) -> set[Future]:
        """Fetch a conversation in the pool, holding the walk back while too many are in flight
        (memory stays flat). One already in flight is not fetched twice (a shifting list can
        show it twice): if a newer record was queued meanwhile, it stays queued and the
        drain at the end of the run fetches it again."""
        with self._lock:
            if cid in self._inflight:
                return pending
            self._inflight.add(cid)
        while len(pending) >= self.settings.concurrency * 4:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                f.result()
        pending.add(pool.submit(self._process, cid, new, check))
        return pending

    def _drain(self, pending: set[Future]) -> None:
        for f in list(pending):
            f.result()

    def _drain_queue(self, pool: ThreadPoolExecutor, writer: BatchWriter) -> None:
        """Fetch what is still queued and did not fail or vanish in this run: conversations
        that changed again while being fetched."""
        for _ in range(MAX_WALKS):
            writer.flush()
            if self.stop.is_set():
                return
            left = [cid for cid in self.store.queued()
                    if cid not in self._failed and cid not in self._gone]
            if not left:
                return
            pending: set[Future] = set()
            for cid in left:
                pending = self._submit(pool, pending, cid)
            self._drain(pending)

    def _process(self, cid: str, new: bool = False, check: bool = False) -> None:
        handed_over = False
        try:
            handed_over = self._process_one(cid, new, check)
        finally:
            if not handed_over:
                with self._lock:
                    self._inflight.discard(cid)

    def _save_now(self, fetched: Fetched) -> None:
        self._saved([fetched], [self.store.save_conversation(fetched, self.run_id)])

    def _saved(self, batch: list[Fetched], results: list[tuple[int, int] | None]) -> None:
        """Called once a batch is committed."""
        with self._lock:
            for fetched, result in zip(batch, results):
                self._inflight.discard(fetched.row["id"])
                if result is None:           # SQLite refused it: quarantined alone
                    self._counts["rejects"] += 1
                    continue
                written, missing = result
                self._counts["conversations_changed"] += 1
                self._counts["messages_written"] += written
                self._counts["rejects"] += len(fetched.rejects)
                self._counts["gaps"] += bool(missing)
            written = self._counts["messages_written"]
        self._report({"messages": written})

    def _process_one(self, cid: str, new: bool, check: bool) -> bool:
        """Fetch a conversation and hand it to the writer; True once handed over. With
        `check`, the conversation was not listed by a whole walk: its details are fetched first,
        a 404 means it is gone, an answer that the walk missed it."""
        if self.stop.is_set():
            return False
        try:
            detail = None
            if check:
                detail = self.client.get_conversation(cid)
                with self.store.transaction():
                    self.store.enqueue_records([(cid, "missed by walk", None)])
            fetched = self._fetch(cid, new, detail)
            if fetched is None:
                return False
            self._save(fetched)
            if self.progress is not None:
                with self._lock:     # read, not yet committed: the writer commits in batches
                    self._read[0] += 1
                    self._read[1] += len(fetched.messages)
                    read = {"fetched": self._read[0], "read": self._read[1]}
                self._report(read)
            return True
        except NotFoundError:
            with self._lock:
                self._gone.add(cid)
        except AuthError:
            self.stop.set()
            raise
        except (ApiError, BadRecord) as e:
            if check:
                log.warning("could not check whether %s still exists: %s", cid, e)
            else:
                log.warning("conversation %s failed, will retry next run: %s", cid, e)
            self.store.record_failure(cid, str(e), self.run_id)
            with self._lock:
                self._failed.add(cid)
                self._counts["conversations_failed"] += 1
        return False

    def _fetch(self, cid: str, new: bool, detail: dict | None) -> Fetched | None:
        rejects: list[tuple[str, object, str]] = []
        listed, gen = self.store.queue_entry(cid)
        if gen is None and detail is None:
            return None          # committed since it was handed to the pool: nothing to do
        if detail is not None:
            record, endpoint = detail, "detail"
        elif self.settings.fetch_details or listed is None:
            record, endpoint = self.client.get_conversation(cid), "detail"
        else:
            record, endpoint = listed, "list"
        row, reason = checked_conversation_row(
            record, _check_detail if endpoint == "detail" else _check_conversation)
        if row is None:
            with self.store.transaction():
                self.store.reject(endpoint, record, reason)
                self.store.dequeue(cid, gen)
                self.store.add_to_run(self.run_id, {"rejects": 1})
            self._count(rejects=1)
            return None
        if row["id"] != cid:
            raise BadRecord(f"asked for conversation {cid!r}, got {row['id']!r}")
        row["_list_sig"] = list_signature(row)
        anomaly = row.pop(ANOMALY, None)
        if anomaly is not None:
            log.warning("conversation %s: %s", cid, anomaly)
            self._count(anomalies=1)
        state = (0, None, False) if new else self.store.message_state(cid)
        read = self._messages.read(cid, row["messageCount"], state, rejects)
        if read.oversized:
            self._count(messages_oversized=read.oversized)
        return Fetched(row, read.messages, read.complete, read.drop_others, new, rejects,
                       gen=gen, gone=read.gone)

    # -- deletions ---------------------------------------------------------------------------
    def _check_unseen(self, seen: set[str], pool: ThreadPoolExecutor,
                      pending: set[Future]) -> set[Future]:
        """After a whole walk: live conversations of the mirror within the scope that the walk
        did not list are fetched directly, concurrently, one GET each (a shifting list can
        skip a live one): a 404 marks them gone, an answer is saved."""
        unseen = [cid for cid in self.store.live_in_scope(self.settings.status,
                                                          self.settings.surface_ids)
                  if cid not in seen]
        if unseen:
            log.info("%d conversations of the mirror were not listed: checking each", len(unseen))
        for cid in unseen:
            if self.stop.is_set():
                break
            pending = self._submit(pool, pending, cid, check=True)
        return pending

    def _conclude_deletions(self) -> str | None:
        """Tombstone the conversations proven gone (a 404 on a direct fetch), all in one
        transaction, unless they are more than [sync].max_delete of the live mirror: then
        none, and the reason is returned (a wrong account or a broken server looks like this)."""
        ids = sorted(self._gone)
        if not ids:
            return None
        stored = self.store.stored(ids)
        live_gone = [cid for cid in ids if cid in stored and not stored[cid].deleted]
        live = self.store.live_count()
        if live_gone and len(live_gone) > delete_limit(self.max_delete, live):
            return (f"{len(live_gone)} of the mirror's {live} live conversations answered 404, "
                    f"over the max_delete limit of {self.max_delete}: nothing was marked deleted."
                    " If they are really gone upstream, run "
                    "`syncer sync --full --max-delete 100%`")
        n = self.store.mark_deleted(ids, self.run_id)
        self._count(conversations_deleted=n)
        return None

    def _report(self, info: dict) -> None:
        if self.progress is not None:
            self.progress(info)
