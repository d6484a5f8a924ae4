"""The sync engine: walk the list, queue what changed, fetch it, commit it, advance the watermark.

Units of progress, each one transaction:
- a list page: its dirty conversations into the persistent queue, the walk checkpoint (cursor and
  the server time the walk began), the run counters;
- a conversation: its row, its messages, their FTS entries, its completeness, off the queue
  (the writer thread commits several in one transaction; see writer.py).
How a conversation's messages are read is messages.py.
The watermark is written with the run record only when the walk completed and the queue drained.
A run killed at any instant resumes from the checkpoint and the queue; every write is an upsert.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from .api import RuntypeClient
from .config import Settings
from .errors import (ApiError, AuthError, BadRequestError, Interrupted, NotFoundError,
                     SyncerError)
from .pagination import Walker
from .store import Fetched, Store, now_utc
from .transform import (BadRecord, checked_conversation_row, format_instant, list_signature,
                        parse_instant)
from .validate import checker
from .messages import MessageReader
from .watermark import OrderCheck, is_dirty, safe_watermark
from .writer import BatchWriter

log = logging.getLogger(__name__)

OPTIMIZE_AFTER = 20_000              # messages written in a run before the FTS index is merged
STATE_WALK = "walk"                  # JSON checkpoint of the walk in progress
STATE_BUMPS = "messages_bump_updatedAt"  # "yes" / "no", learnt from the data

_check_conversation = checker("conversation")
_check_detail = checker("conversation_detail")


@dataclass
class Summary:
    run_id: int
    mode: str
    outcome: str = "running"
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    gaps: list[tuple[str, int, int]] = field(default_factory=list)
    early_stop: bool = False
    watermark: str | None = None
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return {"ok": 0, "auth_failed": 3}.get(self.outcome, 1)


class Sync:
    def __init__(self, settings: Settings, store: Store, client: RuntypeClient, *,
                 full: bool = False, stop: threading.Event | None = None,
                 progress: Callable[[dict], None] | None = None):
        self.settings = settings
        self.store = store
        self.client = client
        self.stop = stop or threading.Event()
        self.progress = progress
        self.full = full or self._reconcile_due()
        self.mode = "full" if self.full else "incremental"
        self._messages = MessageReader(client, store.held_among)
        self._inflight: set[str] = set()          # queued to the pool, not yet committed
        self._save = self._save_now               # the batch writer's put during a walk
        self._lock = threading.Lock()
        self._counts = {"conversations_changed": 0, "conversations_deleted": 0,
                        "conversations_failed": 0, "messages_written": 0, "gaps": 0,
                        "rejects": 0, "pages": 0, "conversations_seen": 0}

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> Summary:
        started = time.monotonic()
        run_id = self.run_id = self.store.start_run(self.mode)
        summary = Summary(run_id=run_id, mode=self.mode)
        before = self.client.counters.snapshot()
        walk_started: str | None = None
        try:
            walk_started, complete, early = self._walk_and_fetch(run_id)
            summary.early_stop = early
            if complete and self.full and not self.stop.is_set():
                self._reconcile(run_id)
            failed = self._counts["conversations_failed"]
            if self.stop.is_set():
                summary.outcome = "interrupted"
            elif failed or not complete:
                summary.outcome = "partial"
            else:
                summary.outcome = "ok"
                if self.store.queue_size() == 0:
                    summary.watermark = safe_watermark(parse_instant(walk_started),
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
        except BaseException as e:
            summary.outcome, summary.error = "interrupted", type(e).__name__
            self._finish(summary, before, walk_started, started)
            raise
        self._finish(summary, before, walk_started, started)
        return summary

    def _finish(self, summary: Summary, before: dict, walk_started: str | None,
                started: float) -> None:
        after = self.client.counters.snapshot()
        api_counts = {k: after[k] - before[k] for k in after}
        self.store.finish_run(summary.run_id, summary.outcome, error=summary.error,
                              walk_started_at=walk_started, watermark=summary.watermark,
                              early_stop=summary.early_stop, counts=api_counts)
        summary.counts = {**self._counts, **api_counts}
        summary.gaps = self.store.gaps()
        summary.seconds = time.monotonic() - started

    def _reconcile_due(self) -> bool:
        last = self.store.last_full_walk()
        if last is None:
            return True
        age = (parse_instant(now_utc()) - parse_instant(last)).total_seconds()
        return age >= self.settings.reconcile_every

    # -- walking -----------------------------------------------------------------------------
    def _filters(self) -> list[str | None]:
        return list(self.settings.surface_ids) or [None]

    def _load_checkpoint(self) -> dict | None:
        raw = self.store.get_state(STATE_WALK)
        if not raw:
            return None
        point = json.loads(raw)
        same = (point.get("status") == self.settings.status
                and point.get("surfaces") == self._filters()
                and point.get("mode") == self.mode)
        # a walk that had finished (killed while its queue drained) is not resumed: the queue
        # is drained first either way, and a new walk sees what changed since
        finished = point.get("index", 0) >= len(self._filters())
        return point if same and not finished else None

    def _walk_and_fetch(self, run_id: int) -> tuple[str, bool, bool]:
        """Walk every filter's list, feeding dirty conversations to the fetch pool.
        Returns (walk start time, walk complete, stopped early)."""
        point = self._load_checkpoint()
        if point is None:
            if self.full or self.store.get_state(STATE_WALK) is not None:
                with self.store.transaction():
                    self.store.set_state(STATE_WALK, None)     # another mode's walk
                    self.store.clear_seen()
            point = {"status": self.settings.status, "surfaces": self._filters(),
                     "mode": self.mode, "index": 0, "cursor": None, "started": None}
        else:
            log.info("resuming the interrupted walk at list %d", point["index"])
        bumps = {"yes": True, "no": False}.get(self.store.get_state(STATE_BUMPS) or "")
        watermark = None if self.full else self.store.watermark()
        complete, early = True, False
        with BatchWriter(self.store, run_id, self._saved) as writer, \
                ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="fetch") as pool:
            self._save = writer.put
            pending: set[Future] = set()
            try:
                for cid in self.store.queued():
                    pending = self._submit(pool, pending, cid)
                for index in range(point["index"], len(point["surfaces"])):
                    if self.stop.is_set():
                        complete = False
                        break
                    cursor = point["cursor"] if index == point["index"] else None
                    order = OrderCheck(bumps)
                    done, stopped, pending = self._walk_one(
                        run_id, point, index, cursor, order, watermark, pool, pending)
                    complete = complete and done
                    early = early or stopped
                    if order.bumps is not None and order.bumps != bumps and bumps is not False:
                        with self.store.transaction():
                            self.store.set_state(STATE_BUMPS, "yes" if order.bumps else "no")
                        bumps = order.bumps
                self._drain(pending)
            except BaseException:
                self.stop.set()
                for f in pending:
                    f.cancel()
                raise
        self._save = self._save_now
        started = point["started"] or now_utc()
        if not self.stop.is_set() and self.store.get_state(STATE_WALK) is not None:
            # done, or ended on a page not to be trusted: the next walk starts afresh
            with self.store.transaction():
                self.store.set_state(STATE_WALK, None)
        return started, complete and not self.stop.is_set(), early

    def _walk_one(self, run_id: int, point: dict, index: int, cursor: str | None,
                  order: OrderCheck, watermark: str | None, pool: ThreadPoolExecutor,
                  pending: set[Future]) -> tuple[bool, bool, set[Future]]:
        walker = Walker(self.client, limit=self.settings.page_size, status=self.settings.status,
                        surface_id=point["surfaces"][index])
        steps = walker.pages(cursor)
        while True:
            try:
                step = next(steps)
            except StopIteration:
                return True, False, pending
            except BadRequestError:
                if cursor is None:
                    raise
                log.warning("the server rejected the saved cursor; restarting the walk")
                cursor = None
                steps = walker.pages(None)
                continue
            if point["started"] is None:
                point["started"] = format_instant(step.page.server_time)
            dirty, rows_seen = self._take_page(run_id, step, point, index)
            order.feed(rows_seen)
            for cid, record, new in dirty:
                pending = self._submit(pool, pending, cid, record, new)
            self._report({"walked": self._counts["conversations_seen"],
                          "total": step.page.total_count})
            if step.suspect_end:
                return False, False, pending
            if step.next_cursor is None:
                return True, False, pending
            if order.may_stop(watermark):
                log.info("list is newest-first by updatedAt and past the watermark %s: "
                         "stopping the walk early", watermark)
                return True, True, pending
            if self.stop.is_set():
                return False, False, pending

    def _take_page(self, run_id: int, step, point: dict,
                   index: int) -> tuple[list[tuple[str, dict, bool]], list]:
        """Validate a page, queue its dirty conversations, checkpoint. One transaction when
        anything is written; a page with nothing new writes nothing. Returns the dirty ones as
        (id, list record, new to the mirror) and the page's rows."""
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
        dirty = []
        for cid, row in rows.items():
            s = stored.get(cid)
            if is_dirty(s.list_sig if s else None, s.deleted if s else False,
                        list_signature(row), s is not None):
                dirty.append((cid, records[cid], s is None))
        self._counts["pages"] += 1
        self._counts["conversations_seen"] += len(rows)
        self._counts["rejects"] += len(rejects)
        nxt = {**point, "index": index, "cursor": step.next_cursor}
        if step.next_cursor is None:
            nxt = {**nxt, "index": index + 1, "cursor": None}
        if dirty or rejects or self.full:
            with self.store.transaction():
                for endpoint, record, reason in rejects:
                    self.store.reject(endpoint, record, reason)
                self.store.enqueue_records(
                    [(cid, "changed", json.dumps(record)) for cid, record, _ in dirty])
                if self.full:
                    self.store.mark_seen(list(rows))
                self.store.set_state(STATE_WALK, json.dumps(nxt))
                self.store.add_to_run(run_id, {"pages": 1, "conversations_seen": len(rows),
                                               "rejects": len(rejects)})
        point.update(nxt)
        return dirty, list(rows.values())

    # -- fetching ----------------------------------------------------------------------------
    def _submit(self, pool: ThreadPoolExecutor, pending: set[Future], cid: str,
                record: dict | None = None, new: bool = False) -> set[Future]:
        """Fetch a conversation in the pool, holding the walk back while too many are in flight
        (memory stays flat). One already in flight is not fetched twice (a shifting list can
        show it twice); one already committed is no longer dirty when it shows again."""
        with self._lock:
            if cid in self._inflight:
                return pending
            self._inflight.add(cid)
        while len(pending) >= self.settings.concurrency * 4:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                f.result()
        pending.add(pool.submit(self._process, cid, record, new))
        return pending

    def _drain(self, pending: set[Future]) -> None:
        for f in list(pending):
            f.result()

    def _process(self, cid: str, record: dict | None = None, new: bool = False) -> None:
        handed_over = False
        try:
            handed_over = self._process_one(cid, record, new)
        finally:
            if not handed_over:
                with self._lock:
                    self._inflight.discard(cid)

    def _save_now(self, fetched: Fetched) -> None:
        self._saved([fetched], [self.store.save_conversation(fetched, self.run_id)])

    def _saved(self, batch: list[Fetched], results: list[tuple[int, int]]) -> None:
        """Called once a batch is committed."""
        with self._lock:
            for fetched, (written, missing) in zip(batch, results):
                self._inflight.discard(fetched.row["id"])
                self._counts["conversations_changed"] += 1
                self._counts["messages_written"] += written
                self._counts["rejects"] += len(fetched.rejects)
                self._counts["gaps"] += bool(missing)
        self._report({"messages": self._counts["messages_written"]})

    def _process_one(self, cid: str, record: dict | None, new: bool) -> bool:
        """Fetch a conversation and hand it to the writer; True once handed over."""
        if self.stop.is_set():
            return False
        try:
            fetched = self._fetch(cid, record, new)
            if fetched is None:
                return False
            self._save(fetched)
            return True
        except NotFoundError:
            n = self.store.mark_deleted([cid], self.run_id)
            with self._lock:
                self._counts["conversations_deleted"] += n
        except AuthError:
            self.stop.set()
            raise
        except (ApiError, BadRecord) as e:
            log.warning("conversation %s failed, will retry next run: %s", cid, e)
            self.store.record_failure(cid, str(e), self.run_id)
            with self._lock:
                self._counts["conversations_failed"] += 1
        return False

    def _fetch(self, cid: str, listed: dict | None, new: bool) -> Fetched | None:
        rejects: list[tuple[str, object, str]] = []
        if listed is None:
            listed = self.store.queued_record(cid)
        if self.settings.fetch_details or listed is None:
            record, endpoint = self.client.get_conversation(cid), "detail"
            row, reason = checked_conversation_row(record, _check_detail)
        else:
            record, endpoint = listed, "list"
            row, reason = checked_conversation_row(record, _check_conversation)
        if row is None:
            with self.store.transaction():
                self.store.reject(endpoint, record, reason)
                self.store.dequeue(cid)
                self.store.add_to_run(self.run_id, {"rejects": 1})
            with self._lock:
                self._counts["rejects"] += 1
            return None
        if row["id"] != cid:
            raise BadRecord(f"asked for conversation {cid!r}, got {row['id']!r}")
        row["_list_sig"] = list_signature(row)
        state = (0, None, False) if new else self.store.message_state(cid)
        messages, complete, drop_others = self._messages.read(cid, row["messageCount"], state,
                                                              rejects)
        return Fetched(row, messages, complete, drop_others, new, rejects)

    # -- deletions ---------------------------------------------------------------------------
    def _reconcile(self, run_id: int) -> None:
        """After a complete walk: conversations the walk did not see are checked one by one
        (a shifting list can skip a live one); only a 404 tombstones."""
        for cid in self.store.unseen_live_ids():
            if self.stop.is_set():
                return
            try:
                self.client.get_conversation(cid)
            except NotFoundError:
                n = self.store.mark_deleted([cid], self.run_id)
                self._counts["conversations_deleted"] += n
                continue
            except AuthError:
                raise
            except ApiError as e:   # unknown either way: neither tombstoned nor refreshed
                log.warning("could not check whether %s still exists: %s", cid, e)
                self._counts["conversations_failed"] += 1
                with self.store.transaction():
                    self.store.add_to_run(self.run_id, {"conversations_failed": 1})
                continue
            with self.store.transaction():
                self.store.enqueue_records([(cid, "missed by walk", None)])
            self._process(cid)

    def _report(self, info: dict) -> None:
        if self.progress is not None:
            self.progress(info)
