"""`syncer verify` compares the mirror with a fresh list walk, and --fix queues the difference."""
import sqlite3

import pytest
from support import assert_exact_except_gaps, settings_for

from syncer.runner import run_sync, run_verify
from syncer.simulator import Behaviour, SimulatorServer, generate


@pytest.fixture
def synced(tmp_path):
    upstream = generate(seed=41, conversations=60, big_conversations=2)
    with SimulatorServer(upstream, Behaviour(message_paging="none")) as server:
        db = tmp_path / "m.db"
        run_sync(settings_for(server, db))
        yield upstream, server, db


def check(server, db, fix=False):
    return run_verify(settings_for(server, db), fix=fix)


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
    assert report.differences == 4
    check(server, db, fix=True)
    assert conn.execute("SELECT count(*) FROM _sync_queue").fetchone() == (4,)
    summary = run_sync(settings_for(server, db))
    assert summary.outcome == "ok"
    assert check(server, db).differences == 0
    conn.close()


def test_verify_command_exit_codes(synced):
    import os
    import subprocess
    import sys
    upstream, server, db = synced
    env = {**os.environ, "RUNTYPE_BASE_URL": server.base_url, "RUNTYPE_API_KEY": "rt_test_simulator"}
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
