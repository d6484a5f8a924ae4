"""A run that exits 0 leaves the mirror equal to upstream as of the run's start: after a resumed
walk, a list that shifts under the walk, a change of scope, a queue drained from stale records,
a conversation whose gap cannot be closed, and a record SQLite cannot store."""
import sqlite3
import threading
from datetime import timedelta

import pytest

from support import assert_as_of, settings_for, show_bumps

from syncer.errors import LockedError
from syncer.runner import run_sync
from syncer.simulator import Behaviour, SimulatorServer, generate
from syncer.simulator.app import HTTPError

LIST = "/v1/messaging/conversations"


def oldest_first(upstream):
    return [c["id"] for c in sorted(upstream.snapshot()[0], key=lambda c: (c["updatedAt"], c["id"]))]


def as_listed(snapshot):
    """What a mirror made without detail requests holds: the list's fields."""
    conversations, messages = snapshot
    detail = ("context", "participantMetadata", "surface")
    return [{k: v for k, v in c.items() if k not in detail} for c in conversations], messages


def stop_after_pages(behaviour, n) -> threading.Event:
    """A stop event set (as by a signal) when the walk asks for its n-th list page."""
    stop, pages = threading.Event(), []

    def count(method, path, query):
        if path == LIST:
            pages.append(query)
            if len(pages) == n:
                stop.set()
    behaviour.on_request = count
    return stop


def test_a_resumed_walk_also_covers_what_moved_above_its_cursor(tmp_path):
    upstream = generate(seed=3, conversations=600, messages_per_conversation=2,
                        big_conversations=0)
    behaviour = Behaviour()
    with SimulatorServer(upstream, behaviour) as server:
        db = tmp_path / "m.db"
        stop = stop_after_pages(behaviour, 3)
        first = run_sync(settings_for(server, db, page_size=50), stop=stop)
        assert first.outcome == "interrupted"
        behaviour.on_request = None
        # conversations the walk had not reached change: they move above its saved cursor
        for cid in oldest_first(upstream)[:40]:
            upstream.update_conversation(cid, subject="changed while syncer was down")
        upstream.create_conversation(subject="created while syncer was down")
        at_start = upstream.snapshot()
        resumed = run_sync(settings_for(server, db, page_size=50))
        assert resumed.exit_code == 0, resumed
        assert_as_of(db, at_start)


def test_a_resumed_full_walk_finds_what_was_created_while_it_was_down(tmp_path):
    upstream = generate(seed=4, conversations=300, messages_per_conversation=2,
                        big_conversations=0)
    behaviour = Behaviour(list_order="id_asc")
    with SimulatorServer(upstream, behaviour) as server:
        db = tmp_path / "m.db"
        assert run_sync(settings_for(server, db)).exit_code == 0
        stop = stop_after_pages(behaviour, 2)
        assert run_sync(settings_for(server, db, page_size=50), full=True,
                        stop=stop).outcome == "interrupted"
        behaviour.on_request = None
        for k in range(5):     # ids that sort before the saved cursor
            upstream.create_conversation(id=f"conv_0000{k}", subject="created while down")
        at_start = upstream.snapshot()
        resumed = run_sync(settings_for(server, db, page_size=50), full=True)
        assert resumed.exit_code == 0, resumed
        assert_as_of(db, at_start)


def test_a_list_that_shifts_under_an_incremental_walk_is_walked_again(tmp_path):
    upstream = generate(seed=5, conversations=400, messages_per_conversation=2,
                        big_conversations=0, message_bumps_updated=True)
    behaviour = Behaviour(message_bumps_updated=True)
    upstream.behaviour = behaviour
    with SimulatorServer(upstream, behaviour) as server:
        db = tmp_path / "m.db"
        assert run_sync(settings_for(server, db)).exit_code == 0
        # two hours later: 250 conversations changed an hour ago, older than the lookback
        upstream.clock_skew += timedelta(hours=2)
        an_hour_ago = upstream.now() - timedelta(hours=1)
        for cid in oldest_first(upstream)[:250]:
            upstream.update_conversation(cid, subject="changed an hour ago",
                                         updatedAt=an_hour_ago)
        at_start = upstream.snapshot()
        first_listed = oldest_first(upstream)[-1]
        pages = []

        def delete_one_during_the_walk(method, path, query):
            if path == LIST:
                pages.append(query)
                if len(pages) == 2:
                    upstream.delete_conversation(first_listed)
        behaviour.on_request = delete_one_during_the_walk
        second = run_sync(settings_for(server, db))
        behaviour.on_request = None
        if second.exit_code == 0:
            assert_as_of(db, at_start, pending={first_listed}, whole_walk=False)
        third = run_sync(settings_for(server, db))
        assert third.exit_code == 0
        assert_as_of(db, upstream.snapshot(), whole_walk=False)


def test_a_wider_scope_starts_with_a_whole_walk(tmp_path):
    upstream = generate(seed=9, conversations=300, messages_per_conversation=2,
                        big_conversations=0, message_bumps_updated=True)
    behaviour = Behaviour(message_bumps_updated=True)
    upstream.behaviour = behaviour
    with SimulatorServer(upstream, behaviour) as server:
        db = tmp_path / "m.db"
        one = run_sync(settings_for(server, db, surface_ids=("surface_001",)))
        assert one.exit_code == 0
        assert_as_of(db, upstream.snapshot(), in_scope=lambda c: c["surfaceId"] == "surface_001")
        upstream.clock_skew += timedelta(hours=1)
        for _ in range(2):
            wide = run_sync(settings_for(server, db))
            assert wide.exit_code == 0
            assert_as_of(db, upstream.snapshot())


def test_a_queued_conversation_is_saved_from_its_newest_record(tmp_path):
    upstream = generate(seed=11, conversations=40, messages_per_conversation=2,
                        big_conversations=0)
    behaviour = Behaviour()
    with SimulatorServer(upstream, behaviour) as server:
        db = tmp_path / "m.db"
        settings = settings_for(server, db, fetch_details=False, max_retries=0)
        assert run_sync(settings).exit_code == 0
        cid = upstream.conversation_ids()[0]
        upstream.update_conversation(cid, subject="first change")
        upstream.add_message(cid, "a message whose read fails")

        def fail_its_messages(method, path, query):
            if path == f"{LIST}/{cid}/messages":
                raise HTTPError(500, "internal_error", "down for this one")
        behaviour.on_request = fail_its_messages
        assert run_sync(settings).exit_code == 1
        upstream.update_conversation(cid, subject="second change, while syncer was down")

        def slow_its_messages(method, path, query):
            if path == f"{LIST}/{cid}/messages":
                threading.Event().wait(0.5)
        behaviour.on_request = slow_its_messages
        at_start = as_listed(upstream.snapshot())
        again = run_sync(settings)
        assert again.exit_code == 0
        assert_as_of(db, at_start, whole_walk=False)


def test_a_gap_is_not_claimed_closed_by_a_count_that_happens_to_match(tmp_path):
    upstream = generate(seed=12, conversations=5, messages_per_conversation=2,
                        big_conversations=0)
    big = upstream.create_conversation(subject="long thread")["id"]
    first = upstream.now() - timedelta(days=1)
    for k in range(201):
        upstream.add_message(big, f"message {k}", createdAt=first + timedelta(minutes=k))
    with SimulatorServer(upstream, Behaviour(message_paging="none")) as server:
        db = tmp_path / "m.db"
        assert run_sync(settings_for(server, db)).exit_code == 0
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT _messages_held, _messages_complete FROM conversations "
                            "WHERE id = ?", (big,)).fetchone() == (200, 0)
        held_one = upstream.messages_of(big)[-10]["id"]     # among the newest 100
        upstream.delete_message(big, held_one)
        upstream.add_message(big, "one more")
        at_start = upstream.snapshot()
        again = run_sync(settings_for(server, db))
        assert again.exit_code == 0
        assert_as_of(db, at_start)
        assert conn.execute("SELECT _messages_complete, _messages_missing FROM conversations "
                            "WHERE id = ?", (big,)).fetchone() == (0, 1)
        assert [big] == [cid for cid, _, _ in again.gaps]


def test_a_count_sqlite_cannot_store_costs_only_its_column(tmp_path):
    upstream = generate(seed=13, conversations=30, messages_per_conversation=2,
                        big_conversations=0)
    poison = upstream.conversation_ids()[4]
    with upstream.lock:
        upstream._record(poison)["messageCount"] = 2 ** 63
        upstream._changed()
    with SimulatorServer(upstream, Behaviour()) as server:
        db = tmp_path / "m.db"
        for _ in range(2):
            summary = run_sync(settings_for(server, db))
            assert summary.exit_code == 0, summary
            assert_as_of(db, upstream.snapshot(), pending={poison})
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT messageCount FROM conversations WHERE id = ?",
                            (poison,)).fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM _rejects").fetchone() == (0,)


def test_a_server_without_a_date_header_and_a_slow_clock_loses_nothing(tmp_path):
    upstream = generate(seed=14, conversations=150, messages_per_conversation=2,
                        big_conversations=0, message_bumps_updated=True)
    behaviour = Behaviour(message_bumps_updated=True, date_header=False)
    upstream.behaviour = behaviour
    upstream.clock_skew = -timedelta(hours=1)         # its stamps run an hour behind ours
    with SimulatorServer(upstream, behaviour) as server:
        db = tmp_path / "m.db"
        settings = settings_for(server, db, page_size=20)
        assert run_sync(settings).exit_code == 0
        show_bumps(upstream, settings)
        changed = oldest_first(upstream)[0]
        upstream.update_conversation(changed, subject="changed after the first run")
        again = run_sync(settings)
        assert again.exit_code == 0 and again.early_stop
        assert_as_of(db, upstream.snapshot(), whole_walk=False)


def test_a_partial_whole_walk_does_not_reset_the_reconcile_timer(tmp_path):
    upstream = generate(seed=15, conversations=60, messages_per_conversation=2,
                        big_conversations=0, message_bumps_updated=True)
    behaviour = Behaviour(message_bumps_updated=True)
    upstream.behaviour = behaviour
    with SimulatorServer(upstream, behaviour) as server:
        db = tmp_path / "m.db"
        settings = settings_for(server, db, page_size=20, max_retries=0)
        broken = upstream.conversation_ids()[0]
        upstream.update_conversation(broken, subject="its details fail")

        def fail_it(method, path, query):
            if path == f"{LIST}/{broken}":
                raise HTTPError(500, "internal_error", "down for this one")
        behaviour.on_request = fail_it
        first = run_sync(settings)
        assert first.mode == "full" and first.outcome == "partial"
        behaviour.on_request = None
        again = run_sync(settings)          # the deletions of a whole walk are still owed
        assert again.mode == "full" and again.exit_code == 0
        assert run_sync(settings).mode == "incremental"


def test_a_database_error_in_a_fetch_thread_is_one_line_and_loses_nothing(tmp_path,
                                                                         monkeypatch):
    """Another process holds the database's write lock (sqlite3 on the command line, say)
    while conversations are fetched: the run fails with one line, the next converges."""
    from syncer.store import Store
    real_open = Store.open.__func__

    def impatient(cls, path):
        store = real_open(cls, path)
        store.conn.execute("PRAGMA busy_timeout = 200")
        return store
    monkeypatch.setattr(Store, "open", classmethod(impatient))
    upstream = generate(seed=16, conversations=30, messages_per_conversation=2,
                        big_conversations=0)
    behaviour = Behaviour()
    with SimulatorServer(upstream, behaviour) as server:
        db = tmp_path / "m.db"
        assert run_sync(settings_for(server, db)).exit_code == 0
        for cid in upstream.conversation_ids()[:10]:
            upstream.add_message(cid, "while the database is locked")
        holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)

        def lock_while_fetching(method, path, query):
            if path.endswith("/messages") and not holder.in_transaction:
                holder.execute("BEGIN IMMEDIATE")
        behaviour.on_request = lock_while_fetching
        with pytest.raises(LockedError) as failed:
            run_sync(settings_for(server, db))
        behaviour.on_request = None
        holder.execute("ROLLBACK")
        holder.close()
        assert "stayed locked by another process" in str(failed.value)
        assert "\n" not in str(failed.value) and failed.value.exit_code == 4
        again = run_sync(settings_for(server, db))
        assert again.exit_code == 0
        assert_as_of(db, upstream.snapshot())
