"""`syncer verify` compares the mirror with a fresh list walk, and --fix queues the difference."""
import json
import sqlite3
import subprocess
import sys

import pytest
from support import (assert_exact, assert_exact_except_gaps, dict_rows, fts_ok, process_env,
                     settings_for)

from syncer.runner import run_sync, run_verify
from syncer.simulator import Behaviour, SimulatorServer, generate
from syncer.simulator.app import DropConnection


@pytest.fixture
def synced(tmp_path):
    upstream = generate(seed=41, conversations=60, big_conversations=2)
    with SimulatorServer(upstream, Behaviour(message_paging="none")) as server:
        db = tmp_path / "m.db"
        run_sync(settings_for(server, db))
        yield upstream, server, db


def check(server, db, fix=False, deep=False):
    return run_verify(settings_for(server, db), fix=fix, deep=deep)


def test_a_fresh_mirror_verifies_clean_with_known_gaps_listed(synced):
    upstream, server, db = synced
    server.reset_log()
    report = check(server, db)
    assert report.differences == 0 and report.walked == 60
    big = {c["id"] for c in upstream.snapshot()[0] if c["messageCount"] > 200}
    assert {g["id"] for g in report.known_gaps} == big
    assert all(path == "/v1/messaging/conversations" for _, path, _, _ in server.requests)


def test_differences_are_found_and_fixed_by_the_next_sync(synced):
    upstream, server, db = synced
    ids = upstream.conversation_ids()
    upstream.delete_conversation(ids[0])
    upstream.update_conversation(ids[1], subject="changed upstream")
    new = upstream.create_conversation(subject="new upstream")
    conn = sqlite3.connect(db)
    with conn:   # simulate local damage: a lost message
        conn.execute("DELETE FROM messages WHERE rowid = (SELECT min(rowid) FROM messages "
                     "WHERE conversationId = ?)", (ids[2],))
        conn.execute("UPDATE conversations SET _messages_held = _messages_held - 1 WHERE id = ?",
                     (ids[2],))
    report = check(server, db)
    assert (report.missing, report.extra, report.stale) == ([new["id"]], [ids[0]], [ids[1]])
    assert [d["id"] for d in report.count_differs] == [ids[2]]
    assert report.fts_out_of_step == ["messages_fts"]   # the plain DELETE left its entry
    assert report.differences == 5
    check(server, db, fix=True)
    assert conn.execute("SELECT count(*) FROM _sync_queue").fetchone() == (4,)
    summary = run_sync(settings_for(server, db))
    assert summary.outcome == "ok"
    assert check(server, db).differences == 0
    conn.close()


def test_verify_command_exit_codes(synced):
    upstream, server, db = synced
    env = process_env(server)
    r = subprocess.run([sys.executable, "-m", "syncer", "--db", str(db), "verify"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "0 differences" in r.stdout, r.stderr
    upstream.update_conversation(upstream.conversation_ids()[3], status="closed")
    r = subprocess.run([sys.executable, "-m", "syncer", "--db", str(db), "verify", "--fix"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "1 stale" in r.stdout and "queued 1" in r.stdout
    r = subprocess.run([sys.executable, "-m", "syncer", "--db", str(db), "sync"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0
    assert_exact_except_gaps(db, upstream)


# -- the rows, not the bookkeeping -------------------------------------------------------------
# A user tampers with sqlite3 as anyone would: plain DELETE/INSERT/UPDATE, nothing else kept in
# step (not the bookkeeping columns, not the full-text index).

def tamper(db, *statements):
    conn = sqlite3.connect(db)
    with conn:
        for sql, args in statements:
            conn.execute(sql, args)
    conn.close()


def by_count(upstream, low, high):
    """The first conversation (by id) with low <= messageCount <= high."""
    return next(c for c in sorted(upstream.snapshot()[0], key=lambda c: c["id"])
                if low <= c["messageCount"] <= high)


def bogus_message(cid, created):
    raw = json.dumps({"id": "msg_bogus", "conversationId": cid, "createdAt": created,
                      "role": "user", "content": "bogus words"})
    return ("INSERT INTO messages (id, conversationId, createdAt, role, content, _raw, "
            "_synced_at) VALUES ('msg_bogus', ?, ?, 'user', 'bogus words', ?, ?)",
            (cid, created, raw, created))


@pytest.fixture
def exact(tmp_path):
    """A mirror holding every message (the server pages messages by offset), verified exact."""
    upstream = generate(seed=43, conversations=30, big_conversations=1)
    with SimulatorServer(upstream, Behaviour(message_paging="offset")) as server:
        db = tmp_path / "m.db"
        run_sync(settings_for(server, db))
        assert_exact(db, upstream)
        yield upstream, server, db


def oldest_message(db, cid):
    conn = sqlite3.connect(db)
    mid = conn.execute("SELECT id FROM messages WHERE conversationId = ? "
                       "ORDER BY createdAt, id LIMIT 1", (cid,)).fetchone()[0]
    conn.close()
    return mid


def newest_message(db, cid):
    conn = sqlite3.connect(db)
    mid = conn.execute("SELECT id FROM messages WHERE conversationId = ? "
                       "ORDER BY createdAt DESC, id DESC LIMIT 1", (cid,)).fetchone()[0]
    conn.close()
    return mid


def delete_message(db, mid):
    return ("DELETE FROM messages WHERE id = ?", (mid,))


TAMPERINGS = {
    # name: (tamper(upstream, db) -> statements, what verify reports)
    "deleted oldest message": (
        lambda up, db: [delete_message(db, oldest_message(db, by_count(up, 3, 99)["id"]))],
        "count_differs"),
    "deleted newest message": (
        lambda up, db: [delete_message(db, newest_message(db, by_count(up, 3, 99)["id"]))],
        "count_differs"),
    "deleted old message past the first 100": (
        lambda up, db: [delete_message(db, oldest_message(db, by_count(up, 101, 999)["id"]))],
        "count_differs"),
    "bogus newest message": (
        lambda up, db: [bogus_message(by_count(up, 3, 99)["id"], "2999-01-01T00:00:00.000000Z")],
        "count_differs"),
    "bogus old message": (
        lambda up, db: [bogus_message(by_count(up, 3, 99)["id"], "2000-01-01T00:00:00.000000Z")],
        "count_differs"),
    "bogus message past the first 100": (
        lambda up, db: [bogus_message(by_count(up, 101, 999)["id"],
                                      "2000-01-01T00:00:00.000000Z")],
        "count_differs"),
    "messageCount edited": (
        lambda up, db: [("UPDATE conversations SET messageCount = messageCount + 1 "
                         "WHERE id = ?", (by_count(up, 3, 99)["id"],))],
        "stale"),
    "subject edited": (
        lambda up, db: [("UPDATE conversations SET subject = 'tampered words' WHERE id = ?",
                         (by_count(up, 3, 99)["id"],))],
        "stale"),
    "status edited": (
        lambda up, db: [("UPDATE conversations SET status = CASE status WHEN 'open' THEN "
                         "'closed' ELSE 'open' END WHERE id = ?", (by_count(up, 3, 99)["id"],))],
        "stale"),
    "updatedAt edited": (
        lambda up, db: [("UPDATE conversations SET updatedAt = '2001-01-01T00:00:00.000000Z' "
                         "WHERE id = ?", (by_count(up, 3, 99)["id"],))],
        "stale"),
    "updatedAt in another form of the same instant": (
        lambda up, db: [("UPDATE conversations SET updatedAt = replace(updatedAt, '.000000Z', "
                         "'Z') WHERE id = ?", (by_count(up, 3, 99)["id"],))],
        "stale"),
}


def reported(report, category):
    value = getattr(report, category)
    return [e["id"] if isinstance(e, dict) else e for e in value]


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_a_tampered_row_is_reported_and_repaired_by_fix_then_sync(exact, name):
    upstream, server, db = exact
    make, category = TAMPERINGS[name]
    statements = make(upstream, db)
    target = statements[0][1][0] if category == "stale" else None
    tamper(db, *statements)
    report = check(server, db)
    assert report.differences >= 1 and not report.exact
    if target is not None:
        assert reported(report, "stale") == [target]
    else:
        assert len(reported(report, category)) == 1
    check(server, db, fix=True)
    summary = run_sync(settings_for(server, db))
    assert summary.outcome == "ok"
    assert_exact(db, upstream)          # rows, messages and the full-text index
    after = check(server, db)
    assert after.differences == 0 and after.exact, after.as_dict()


def test_the_full_text_index_left_behind_by_a_plain_delete_is_reported_and_rebuilt(exact):
    upstream, server, db = exact
    cid = by_count(upstream, 3, 99)["id"]
    tamper(db, delete_message(db, oldest_message(db, cid)))
    report = check(server, db)
    assert report.fts_out_of_step == ["messages_fts"]
    fixed = check(server, db, fix=True)
    assert fixed.fts_rebuilt == ["messages_fts"]
    assert fts_ok(db)


def test_a_stale_queued_record_is_replaced_so_the_sync_reads_the_server(exact):
    upstream, server, db = exact
    conversation = by_count(upstream, 3, 99)
    cid = conversation["id"]
    old = {**conversation, "subject": "what the list said long ago"}
    tamper(db, ("UPDATE conversations SET subject = 'what the list said long ago' WHERE id = ?",
                (cid,)),
           ("INSERT INTO _sync_queue (id, queued_at, reason, record) VALUES (?, ?, 'changed', ?)",
            (cid, "2020-01-01T00:00:00.000000Z", json.dumps(old))))
    assert check(server, db).stale == [cid]
    check(server, db, fix=True)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT record, _list_sig FROM _sync_queue JOIN conversations USING (id) "
                        "WHERE id = ?", (cid,)).fetchall() == [(None, None)]
    conn.close()
    assert run_sync(settings_for(server, db)).outcome == "ok"
    assert_exact(db, upstream)


def test_a_message_of_no_conversation_is_reported_and_removed_by_fix(exact):
    upstream, server, db = exact
    tamper(db, bogus_message("conv_nowhere", "2020-01-01T00:00:00.000000Z"))
    report = check(server, db)
    assert report.orphan_messages == 1 and report.fts_out_of_step == ["messages_fts"]
    assert report.differences == 2
    check(server, db, fix=True)
    assert run_sync(settings_for(server, db)).outcome == "ok"
    assert dict_rows(db, "SELECT count(*) AS n FROM messages WHERE id = 'msg_bogus'") == [{"n": 0}]
    assert_exact(db, upstream)
    assert check(server, db).exact


# -- deep: every held message against the server's ---------------------------------------------

def test_an_edited_message_is_found_only_by_deep_and_repaired_by_fix_then_sync(exact):
    upstream, server, db = exact
    cid = by_count(upstream, 3, 99)["id"]
    mid = oldest_message(db, cid)
    tamper(db, ("UPDATE messages SET content = 'tampered words' WHERE id = ?", (mid,)))
    shallow = check(server, db)
    assert shallow.differences == 0
    server.reset_log()
    report = check(server, db, deep=True)
    assert report.message_differs == [{"id": cid, "missing": [], "extra": [],
                                       "different": [mid]}]
    assert not report.exact
    assert any(path.endswith("/messages") for _, path, _, _ in server.requests)
    check(server, db, fix=True, deep=True)
    assert run_sync(settings_for(server, db)).outcome == "ok"
    assert_exact(db, upstream)
    assert check(server, db, deep=True).exact


def test_deep_finds_a_deleted_and_a_bogus_message_that_cancel_out_in_the_count(exact):
    upstream, server, db = exact
    cid = by_count(upstream, 3, 99)["id"]
    mid = oldest_message(db, cid)
    tamper(db, delete_message(db, mid), bogus_message(cid, "2000-01-01T00:00:00.000000Z"),
           ("UPDATE conversations SET _messages_held = _messages_held WHERE id = ?", (cid,)))
    assert check(server, db).message_differs == []
    report = check(server, db, deep=True)
    assert report.message_differs == [{"id": cid, "missing": [mid], "extra": ["msg_bogus"],
                                       "different": []}]
    check(server, db, fix=True, deep=True)
    assert run_sync(settings_for(server, db)).outcome == "ok"
    assert_exact(db, upstream)
    assert check(server, db, deep=True).exact


def test_deep_on_an_untouched_mirror_finds_nothing_whatever_the_timestamp_style(exact):
    upstream, server, db = exact
    server.behaviour.timestamp_style = "offset"     # the same instants, written another way
    report = check(server, db, deep=True)
    assert report.exact and report.deep_checked == 30, report.as_dict()


def test_a_deep_read_that_fails_leaves_the_verify_inexact(exact):
    upstream, server, db = exact
    broken = by_count(upstream, 3, 99)["id"]

    def refuse(method, path, query):
        if path.endswith(f"{broken}/messages"):
            raise DropConnection()
    server.behaviour.on_request = refuse
    report = run_verify(settings_for(server, db, max_retries=0), deep=True)
    assert report.differences == 0 and not report.exact
    assert [d["id"] for d in report.deep_failed] == [broken]


# -- read-only, and the command line -------------------------------------------------------------

def test_verify_without_fix_leaves_the_file_unchanged(exact):
    upstream, server, db = exact
    tamper(db, delete_message(db, oldest_message(db, by_count(upstream, 3, 99)["id"])))
    before = db.read_bytes()
    report = check(server, db, deep=True)
    assert not report.exact
    assert db.read_bytes() == before
    assert not db.with_name(db.name + "-wal").exists() or \
        db.with_name(db.name + "-wal").stat().st_size == 0


def test_the_verify_command_lists_and_fixes_tampered_rows(exact):
    upstream, server, db = exact
    small = by_count(upstream, 3, 99)["id"]
    other = by_count(upstream, 101, 999)["id"]
    tamper(db, ("UPDATE conversations SET subject = 'tampered' WHERE id = ?", (small,)),
           delete_message(db, oldest_message(db, other)))
    env = process_env(server)
    r = subprocess.run([sys.executable, "-m", "syncer", "--db", str(db), "verify"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    assert f"1 stale: {small} (subject)" in r.stdout and other in r.stdout
    r = subprocess.run([sys.executable, "-m", "syncer", "--db", str(db), "verify", "--deep",
                        "--format", "json"], env=env, capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    got = json.loads(r.stdout)
    assert got["stale_fields"] == {small: ["subject"]}
    assert [d["id"] for d in got["message_differs"]] == [other]
    r = subprocess.run([sys.executable, "-m", "syncer", "--db", str(db), "verify", "--deep",
                        "--fix"], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "queued 2" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "syncer", "--db", str(db), "sync"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert_exact(db, upstream)
    r = subprocess.run([sys.executable, "-m", "syncer", "--db", str(db), "verify", "--deep"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "0 differences" in r.stdout, r.stdout


# -- a conversation whose gap is recorded (the server serves 200 of its messages) ---------------

@pytest.fixture
def gapped(tmp_path):
    """A mirror of two conversations over 200 messages, of which the server serves 200."""
    upstream = generate(seed=45, conversations=40, big_conversations=2)
    with SimulatorServer(upstream, Behaviour(message_paging="none")) as server:
        db = tmp_path / "m.db"
        run_sync(settings_for(server, db))
        assert len(assert_exact_except_gaps(db, upstream)) == 2
        yield upstream, server, db


def test_messages_deleted_from_or_added_to_a_recorded_gap_are_reported(gapped):
    upstream, server, db = gapped
    big = sorted(c["id"] for c in upstream.snapshot()[0] if c["messageCount"] > 200)
    tamper(db, delete_message(db, oldest_message(db, big[0])),
           bogus_message(big[1], "2000-01-01T00:00:00.000000Z"))
    report = check(server, db)
    assert sorted((d["id"], d["held"], d["recorded"]) for d in report.count_differs) == \
        [(big[0], 199, 200), (big[1], 201, 200)]
    assert report.known_gaps == []
    deep = check(server, db, deep=True)
    # the deleted one is served, so missing; the bogus one cannot be told from a message the
    # server once served and no longer does, so it is not called extra
    assert [(d["id"], len(d["missing"]), d["extra"]) for d in deep.message_differs] == \
        [(big[0], 1, [])]


def test_a_message_deleted_from_a_recorded_gap_is_read_again_after_fix(gapped):
    upstream, server, db = gapped
    big = by_count(upstream, 201, 999)["id"]
    mid = oldest_message(db, big)
    tamper(db, delete_message(db, mid))
    check(server, db, fix=True)
    assert run_sync(settings_for(server, db)).outcome == "ok"
    assert_exact_except_gaps(db, upstream)
    assert dict_rows(db, "SELECT count(*) AS n FROM messages WHERE id = ?", (mid,)) == [{"n": 1}]
    assert check(server, db, deep=True).exact
