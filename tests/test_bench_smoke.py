"""The behaviour behind the sync benchmark (benchmarks/bench_sync.py), checked quickly: request
counts and database writes of incremental runs, in every list order the simulator offers.
No timing is asserted here; the benchmark reports speed."""
import importlib.util
import math
import sqlite3
from pathlib import Path

import pytest
from support import settings_for, show_bumps

from syncer.runner import run_sync
from syncer.simulator import Behaviour, SimulatorServer, generate
from syncer.simulator.behaviour import LIST_ORDERS
from syncer.store import Store

LIST = "/v1/messaging/conversations"
N = 300          # conversations: three list pages of 100


def list_pages(server) -> int:
    return sum(1 for method, path, _, _ in server.requests if method == "GET" and path == LIST)


def data_state(db) -> tuple:
    """Everything but the run record: any write to a data row sets its _synced_at."""
    conn = sqlite3.connect(db)
    try:
        return (conn.execute("SELECT count(*), max(_synced_at) FROM conversations").fetchone(),
                conn.execute("SELECT count(*), max(_synced_at) FROM messages").fetchone(),
                tuple(conn.execute("SELECT * FROM _sync_state ORDER BY key")),
                tuple(conn.execute("SELECT * FROM _sync_queue ORDER BY id")),
                tuple(conn.execute("SELECT * FROM _rejects ORDER BY id")))
    finally:
        conn.close()


@pytest.fixture
def rows_written(monkeypatch):
    """Rows changed on the sync's connection (sqlite3 total_changes), split into the run
    record's and the rest."""
    tally = {"run": 0, "total": 0, "depth": 0}

    def measured(name):
        original = getattr(Store, name)

        def wrapper(self, *a, **kw):
            if tally["depth"]:
                return original(self, *a, **kw)
            tally["depth"] += 1
            before = self.conn.total_changes
            try:
                return original(self, *a, **kw)
            finally:
                tally["run"] += self.conn.total_changes - before
                tally["depth"] -= 1
        monkeypatch.setattr(Store, name, wrapper)

    for name in ("start_run", "add_to_run", "finish_run"):
        measured(name)
    original_close = Store.close

    def close(self):
        tally["total"] = self.conn.total_changes
        original_close(self)
    monkeypatch.setattr(Store, "close", close)

    def outside_run_record() -> int:
        return tally["total"] - tally["run"]
    return outside_run_record


@pytest.fixture(params=LIST_ORDERS)
def mirrored(request, tmp_path):
    """A complete mirror of N conversations, and the server (log cleared) in a list order."""
    order = request.param
    upstream = generate(seed=41, conversations=N, messages_per_conversation=4,
                        big_conversations=0, message_bumps_updated=True)
    behaviour = Behaviour(list_order=order, message_bumps_updated=True)
    with SimulatorServer(upstream, behaviour) as server:
        db = tmp_path / "mirror.db"
        assert run_sync(settings_for(server, db)).outcome == "ok"
        show_bumps(upstream, settings_for(server, db))
        server.reset_log()
        yield order, upstream, server, db


def change_one_percent(upstream) -> list[str]:
    """Every 100th conversation by id: even ones get a message, odd ones a new subject."""
    chosen = sorted(upstream.conversation_ids())[::100]
    for n, cid in enumerate(chosen):
        if n % 2 == 0:
            upstream.add_message(cid, "benchmark reply about the invoice")
        else:
            upstream.update_conversation(cid, subject="Benchmark subject")
    return chosen


def test_no_change_run_lists_only_and_writes_nothing(mirrored, rows_written):
    order, upstream, server, db = mirrored
    before = data_state(db)
    summary = run_sync(settings_for(server, db))
    assert summary.outcome == "ok"
    # an early stop is provable only on a newest-first updatedAt list whose messages bump it
    expected = 1 if order == "updated_desc" else math.ceil(N / 100)
    assert list_pages(server) == expected
    assert summary.counts["requests"] == expected == len(server.requests)
    assert summary.early_stop == (order == "updated_desc")
    assert summary.counts["conversations_changed"] == 0
    assert summary.counts["messages_written"] == 0
    assert rows_written() == 0
    assert data_state(db) == before


def test_one_percent_changed_costs_pages_plus_two_per_conversation(mirrored):
    order, upstream, server, db = mirrored
    changed = change_one_percent(upstream)
    assert len(changed) == N // 100
    summary = run_sync(settings_for(server, db))
    assert summary.outcome == "ok"
    assert summary.counts["conversations_changed"] == len(changed)
    pages = list_pages(server)
    assert pages == (1 if order == "updated_desc" else math.ceil(N / 100))
    with_messages = sum(1 for cid in changed if upstream.get(cid)["messageCount"])
    assert summary.counts["requests"] == pages + len(changed) + with_messages
    assert summary.counts["requests"] <= pages + 2 * len(changed)
    # only the changed conversations are read, each once
    detail_paths = [p for m, p, _, _ in server.requests if p.startswith(LIST + "/")]
    assert sorted({p.split("/")[4] for p in detail_paths}) == sorted(changed)
    assert len(detail_paths) == len(set(detail_paths))


def _bench_module():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_sync.py"
    spec = importlib.util.spec_from_file_location("bench_sync", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_replaces_only_its_own_section():
    replace = _bench_module().replace_section
    other = "## Read commands\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    first = replace("# Benchmarks\n\n" + other, "## Sync\n\nold\n")
    assert first == "# Benchmarks\n\n" + other + "\n## Sync\n\nold\n"
    second = replace(first, "## Sync\n\nnew\n")
    assert second == "# Benchmarks\n\n" + other + "\n## Sync\n\nnew\n"
    # a section after ours is kept too
    third = replace("# B\n\n## Sync\n\nold\n\n" + other, "## Sync\n\nnew\n")
    assert third == "# B\n\n## Sync\n\nnew\n\n" + other
    assert replace("", "## Sync\n\nx\n") == "# Benchmarks\n\n## Sync\n\nx\n"
