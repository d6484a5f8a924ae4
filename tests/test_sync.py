"""The core sync against the simulator over loopback, compared whole-table with upstream."""
import sqlite3

import pytest
from support import assert_exact, assert_exact_except_gaps, settings_for

from syncer.runner import run_sync
from syncer.simulator import Behaviour, SimulatorServer, generate

LIST = "/v1/messaging/conversations"


@pytest.fixture
def world(tmp_path):
    """An upstream, a server in front of it and the mirror's path; tests set the behaviour."""
    upstream = generate(seed=7, conversations=120, messages_per_conversation=5,
                        big_conversations=3)
    with SimulatorServer(upstream, Behaviour(message_paging="offset")) as server:
        yield upstream, server, tmp_path / "mirror.db"


def list_pages(server):
    return sum(1 for method, path, query, status in server.requests if path == LIST)


def sync(server, db, **kw):
    full = kw.pop("full", False)
    return run_sync(settings_for(server, db, **kw), full=full)


def test_first_sync_equals_upstream(world):
    upstream, server, db = world
    summary = sync(server, db)
    assert summary.outcome == "ok" and summary.exit_code == 0
    assert summary.gaps == []
    assert_exact(db, upstream)
    assert summary.counts["conversations_changed"] == 120


def test_second_run_with_nothing_changed_writes_nothing(world):
    upstream, server, db = world
    sync(server, db)
    conn = sqlite3.connect(db)
    before = conn.execute("SELECT count(*), max(_synced_at) FROM messages").fetchone(), \
        conn.execute("SELECT max(_synced_at) FROM conversations").fetchone()
    server.reset_log()
    summary = sync(server, db)
    assert summary.outcome == "ok"
    assert summary.counts["conversations_changed"] == 0
    assert summary.counts["messages_written"] == 0
    # only list pages: never a detail or message request for an unchanged conversation
    assert server.count(LIST + "/") == 0
    assert list_pages(server) == 2        # 120 conversations, 100 a page, no early stop proof
    after = conn.execute("SELECT count(*), max(_synced_at) FROM messages").fetchone(), \
        conn.execute("SELECT max(_synced_at) FROM conversations").fetchone()
    assert before == after


def test_incremental_picks_up_every_kind_of_change(world):
    upstream, server, db = world
    sync(server, db)
    ids = upstream.conversation_ids()
    upstream.add_message(ids[0], "a brand new message about the invoice")
    upstream.add_message(ids[1], "another one", role="assistant")
    upstream.update_conversation(ids[2], status="archived", subject="Renamed subject")
    new = upstream.create_conversation(subject="fresh", participantName="Zoë Fresh")
    upstream.add_message(new["id"], "first words")
    upstream.delete_conversation(ids[3])
    server.reset_log()
    summary = sync(server, db)
    assert summary.outcome == "ok"
    assert summary.counts["conversations_changed"] == 4
    assert summary.counts["messages_written"] == 3
    # this list's order allows no early stop: the walk saw the whole list, so the deletion
    # is concluded at once (confirmed by one 404)
    assert summary.counts["conversations_deleted"] == 1
    assert server.count(f"{LIST}/{ids[3]}") == 1
    assert_exact(db, upstream)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT _deleted_at IS NOT NULL, _messages_held FROM conversations "
                        "WHERE id = ?", (ids[3],)).fetchone()[0] == 1


def test_deleted_conversation_found_by_404_during_fetch(world):
    upstream, server, db = world
    sync(server, db)
    cid = upstream.conversation_ids()[4]
    upstream.add_message(cid, "changes, then vanishes")

    def vanish(method, path, query):
        if path == f"{LIST}/{cid}":
            upstream.delete_conversation(cid)
    server.upstream.behaviour.on_request = vanish
    summary = sync(server, db)
    assert summary.counts["conversations_deleted"] == 1
    server.upstream.behaviour.on_request = None
    assert_exact(db, upstream)


@pytest.mark.parametrize("order", ["updated_desc", "created_desc", "last_message_desc",
                                   "id_asc", "shuffled"])
@pytest.mark.parametrize("bumps", [True, False])
def test_every_list_order_converges_exactly(tmp_path, order, bumps):
    upstream = generate(seed=3, conversations=250, messages_per_conversation=3,
                        big_conversations=0, message_bumps_updated=bumps)
    behaviour = Behaviour(list_order=order, message_bumps_updated=bumps)
    db = tmp_path / "m.db"
    with SimulatorServer(upstream, behaviour) as server:
        sync(server, db)
        ids = upstream.conversation_ids()
        for cid in ids[::37]:
            upstream.add_message(cid, "late reply to an old thread")
        upstream.update_conversation(ids[5], status="closed")
        server.reset_log()
        summary = sync(server, db, lookback=0)
        assert_exact(db, upstream)
        if summary.early_stop:
            assert order == "updated_desc" and bumps
        if order != "updated_desc":
            assert list_pages(server) == 3   # the whole list, 100 a page
        # nothing changed now: an order that allows it stops after one page
        server.reset_log()
        summary = sync(server, db, lookback=0)
        assert summary.counts["conversations_changed"] == 0
        expected_pages = 1 if (order == "updated_desc" and bumps) else 3
        assert list_pages(server) == expected_pages
        assert server.count(LIST + "/") == 0


def test_messages_not_bumping_updated_at_are_not_missed_by_early_stop(tmp_path):
    """The list is newest-first by updatedAt but a new message leaves updatedAt alone: the
    data shows it (lastMessageAt after updatedAt), so the walk never stops early."""
    upstream = generate(seed=5, conversations=300, message_bumps_updated=False)
    with SimulatorServer(upstream, Behaviour(message_bumps_updated=False)) as server:
        db = tmp_path / "m.db"
        sync(server, db)
        oldest = min(upstream.snapshot()[0], key=lambda c: c["updatedAt"])["id"]
        upstream.add_message(oldest, "reply to the oldest thread")
        summary = sync(server, db, lookback=0)
        assert not summary.early_stop
        assert_exact_except_gaps(db, upstream)


def test_default_status_narrower_than_all_is_not_trusted(tmp_path):
    upstream = generate(seed=9, conversations=80)
    with SimulatorServer(upstream, Behaviour(default_status="open")) as server:
        db = tmp_path / "m.db"
        sync(server, db)
        assert {q.get("status") for m, p, q, s in server.requests if p == LIST} == {"all"}
        assert_exact_except_gaps(db, upstream)


@pytest.mark.parametrize("paging", ["none", "offset"])
def test_conversations_over_100_messages(tmp_path, paging):
    upstream = generate(seed=11, conversations=30, big_conversations=4)
    counts = sorted(c["messageCount"] for c in upstream.snapshot()[0])[-4:]
    assert counts[-1] > 200 and counts[0] > 100
    with SimulatorServer(upstream, Behaviour(message_paging=paging)) as server:
        db = tmp_path / "m.db"
        summary = sync(server, db)
        if paging == "offset":
            assert summary.gaps == []
            assert_exact(db, upstream)
        else:
            gaps = assert_exact_except_gaps(db, upstream)
            # the first 100 and the last 100 are readable: only conversations over 200 have gaps
            assert {cid: (h, c) for cid, c, h in summary.gaps} == gaps
            assert all(count > 200 and held == 200 for held, count in gaps.values())
            assert summary.outcome == "ok"
        # and a rerun neither loops nor duplicates nor re-reads them
        server.reset_log()
        again = sync(server, db)
        assert again.counts["messages_written"] == 0
        assert server.count(LIST + "/") == 0


def test_new_messages_on_a_big_conversation_read_incrementally(tmp_path):
    upstream = generate(seed=11, conversations=10, big_conversations=1)
    big = max(upstream.snapshot()[0], key=lambda c: c["messageCount"])["id"]
    with SimulatorServer(upstream, Behaviour(message_paging="none")) as server:
        db = tmp_path / "m.db"
        sync(server, db)
        for n in range(3):
            upstream.add_message(big, f"new message {n}")
        server.reset_log()
        summary = sync(server, db)
        assert summary.counts["messages_written"] == 3
        # the detail and one page of newest messages: the held newest message was reached
        assert server.count(f"{LIST}/") == 2
        assert_exact_except_gaps(db, upstream)


@pytest.mark.parametrize("style", ["z", "fraction", "offset", "mixed"])
def test_timestamp_styles_store_one_form(tmp_path, style):
    upstream = generate(seed=2, conversations=40)
    upstream.subsecond = True
    with SimulatorServer(upstream, Behaviour(timestamp_style=style)) as server:
        upstream.add_message(upstream.conversation_ids()[0], "sub-second stamp")
        db = tmp_path / "m.db"
        sync(server, db)
        assert_exact_except_gaps(db, upstream)
        conn = sqlite3.connect(db)
        lengths = {n for (n,) in conn.execute(
            "SELECT DISTINCT length(updatedAt) FROM conversations UNION "
            "SELECT DISTINCT length(createdAt) FROM messages")}
        assert lengths == {27}


def test_extra_fields_are_kept(world):
    upstream, server, db = world
    sync(server, db)
    conn = sqlite3.connect(db)
    extras = conn.execute("SELECT count(*) FROM conversations "
                          "WHERE json_extract(_raw, '$.priorityScore') IS NOT NULL").fetchone()[0]
    want = sum(1 for c in upstream.snapshot()[0] if "priorityScore" in c)
    assert extras == want > 0


def test_records_shifting_during_the_walk_converge(tmp_path):
    """Deletions and insertions while the offset-backed list is paged skip and repeat items in
    that walk; the next run picks up what was skipped."""
    upstream = generate(seed=13, conversations=350, message_bumps_updated=True)
    with SimulatorServer(upstream, Behaviour(message_bumps_updated=True,
                                             list_order="created_desc")) as server:
        db = tmp_path / "m.db"
        sync(server, db)
        ids = upstream.conversation_ids()
        pages = {"n": 0}

        def churn(method, path, query):
            if path == LIST:
                pages["n"] += 1
                if pages["n"] == 2:
                    for cid in ids[:5]:
                        upstream.delete_conversation(cid)
                    for n in range(3):
                        upstream.create_conversation(subject=f"created mid-walk {n}")
                    upstream.add_message(ids[200], "message mid-walk")
        server.upstream.behaviour.on_request = churn
        sync(server, db)
        server.upstream.behaviour.on_request = None
        sync(server, db, full=True)
        assert_exact_except_gaps(db, upstream)


def test_ties_on_one_second_are_not_lost(tmp_path):
    upstream = generate(seed=17, conversations=120, message_bumps_updated=True)
    with SimulatorServer(upstream, Behaviour(message_bumps_updated=True)) as server:
        db = tmp_path / "m.db"
        sync(server, db, lookback=0)
        stamp = upstream.now().replace(microsecond=0)
        ids = upstream.conversation_ids()
        for cid in ids[:40]:   # forty updates in the same second, around the watermark
            upstream.update_conversation(cid, status="closed", updatedAt=stamp)
        sync(server, db, lookback=0)
        for cid in ids[40:60]:
            upstream.update_conversation(cid, status="archived", updatedAt=stamp)
        sync(server, db, lookback=0)
        assert_exact_except_gaps(db, upstream)


def test_faults_and_429s_end_in_an_exact_mirror(tmp_path):
    upstream = generate(seed=19, conversations=60, big_conversations=1)
    behaviour = Behaviour(fault_rate=0.2, fault_seed=4, fault_timeout_s=0.8, message_paging="offset",
                          fault_kinds=("500", "503", "429", "429_no_retry_after", "timeout",
                                       "drop", "invalid_json", "html_200"))
    with SimulatorServer(upstream, behaviour) as server:
        db = tmp_path / "m.db"
        outcomes = []
        for _ in range(5):
            s = sync(server, db, timeout=0.4, max_retries=6)
            outcomes.append(s.outcome)
            if s.outcome == "ok":
                break
        assert outcomes[-1] == "ok", outcomes
        assert s.counts["retries"] > 0 or len(outcomes) > 1
        behaviour.fault_rate = 0
        assert_exact(db, upstream)


def test_rate_limit_is_respected(tmp_path):
    upstream = generate(seed=23, conversations=30)
    with SimulatorServer(upstream, Behaviour(rate_limit=40, rate_window=1.0)) as server:
        db = tmp_path / "m.db"
        summary = sync(server, db, concurrency=8)
        assert summary.outcome == "ok"
        total = summary.counts["requests"]
        assert summary.counts["throttled"] <= max(2, total // 20)
        assert_exact_except_gaps(db, upstream)


def test_bad_records_are_quarantined_and_the_run_goes_on(world):
    upstream, server, db = world
    ids = upstream.conversation_ids()
    with upstream.lock:
        upstream._record(ids[0])["messageCount"] = "many"
        upstream._record(ids[1])["id"] = ""
        upstream._message_records(ids[2])[0]["conversationId"] = ids[3]
    summary = sync(server, db)
    conn = sqlite3.connect(db)
    rejects = conn.execute("SELECT endpoint, reason FROM _rejects ORDER BY id").fetchall()
    reasons = " | ".join(r for _, r in rejects)
    assert "messageCount" in reasons and "id" in reasons and "belongs to conversation" in reasons
    assert summary.counts["rejects"] == 3
    assert conn.execute("SELECT _messages_complete, _messages_missing FROM conversations "
                        "WHERE id = ?", (ids[2],)).fetchone() == (0, 1)
    stored = {r[0] for r in conn.execute("SELECT id FROM conversations")}
    assert ids[0] not in stored and len(stored) == 118
    # a rerun quarantines the same records again without duplicating them
    sync(server, db)
    assert conn.execute("SELECT count(*), max(times) FROM _rejects").fetchone() == (3, 2)


def test_server_clock_caps_the_watermark(tmp_path):
    """The watermark comes from the server's Date header at the start of the walk, not the
    local clock: a server an hour behind gives a watermark an hour behind."""
    from datetime import timedelta
    upstream = generate(seed=29, conversations=20)
    upstream.clock_skew = timedelta(hours=-1)
    with SimulatorServer(upstream, Behaviour()) as server:
        db = tmp_path / "m.db"
        summary = sync(server, db, lookback=60)
        server_now = upstream.now()
        from syncer.transform import parse_instant
        wm = parse_instant(summary.watermark)
        assert timedelta(seconds=55) < server_now - wm < timedelta(seconds=75)


def test_large_runs_merge_the_full_text_index(world, monkeypatch):
    import syncer.sync
    upstream, server, db = world
    monkeypatch.setattr(syncer.sync, "OPTIMIZE_AFTER", 100)
    sync(server, db)
    conn = sqlite3.connect(db)
    # one merged segment per index: a single structure record plus one segment's leaves
    levels = conn.execute("SELECT count(*) FROM messages_fts_idx WHERE segid > 0 "
                          "GROUP BY segid").fetchall()
    assert len(levels) == 1
    word = conn.execute("SELECT content FROM messages LIMIT 1").fetchone()[0].split()[0]
    hits = conn.execute("SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ?",
                        (f'"{word.strip(".,!?")}"',)).fetchone()[0]
    assert hits > 0
    assert_exact(db, upstream)


@pytest.mark.parametrize("full", [False, True])
def test_a_finished_walk_killed_while_draining_is_not_resumed(world, full):
    """Killed after its last page was checkpointed but before its queue drained: the next run
    drains the queue and walks again, so it sees what changed meanwhile (found by the soak)."""
    import json
    upstream, server, db = world
    sync(server, db)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO _sync_state VALUES ('walk', ?)", (json.dumps(
            {"status": "all", "surfaces": [None], "mode": "full" if full else "incremental",
             "index": 1, "cursor": None, "started": "2024-01-01T00:00:00.000000Z"}),))
    new = upstream.create_conversation(subject="created after the walk")
    summary = sync(server, db, full=full)
    assert summary.outcome == "ok" and summary.counts["pages"] >= 1
    assert_exact(db, upstream)
    assert conn.execute("SELECT count(*) FROM conversations WHERE id = ?",
                        (new["id"],)).fetchone() == (1,)
