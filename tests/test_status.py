"""`syncer status`: what it reports, its JSON for monitoring, and `--check` exit codes."""
import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from support import KEY, settings_for

from syncer import status
from syncer.runner import run_sync
from syncer.simulator import Behaviour, SimulatorServer, generate

LIST = "/v1/messaging/conversations"


def syncer(tmp_path, *args, server=None):
    env = dict(os.environ, RUNTYPE_API_KEY=KEY)
    env.pop("SYNCER_DB", None)
    if server is not None:
        env["RUNTYPE_BASE_URL"] = server.base_url
    return subprocess.run([sys.executable, "-m", "syncer", "--db", str(tmp_path / "m.db"),
                           *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def synced(tmp_path):
    """A mirror after one run with a failing conversation (queued), two conversations the
    server serves only in part (gaps) and one record that fails validation (rejects)."""
    upstream = generate(seed=21, conversations=40, messages_per_conversation=3,
                        big_conversations=2)
    ids = upstream.conversation_ids()
    broken, bad = ids[5], ids[6]
    upstream.add_message(bad, "no role", role=None)  # role null: not a valid message record

    def drop_one(method, path, query):
        if path == f"{LIST}/{broken}":
            raise ConnectionResetError("simulated drop")

    with SimulatorServer(upstream, Behaviour(on_request=drop_one)) as server:
        summary = run_sync(settings_for(server, tmp_path / "m.db", max_retries=0))
        assert summary.outcome == "partial"
        yield upstream, server, tmp_path, broken


def test_status_json_reports_runs_queue_gaps_rejects_and_size(synced):
    upstream, server, tmp_path, broken = synced
    result = syncer(tmp_path, "status", "--format", "json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    runs = info.pop("runs")
    assert [r["outcome"] for r in runs] == ["partial"]
    run = runs[0]
    assert run["mode"] == "full" and run["seconds"] >= 0 and run["error"] is None
    served = server.count() + 1                      # the dropped request is not in its log
    assert (run["requests"], run["retries"], run["throttled"]) == (served, 0, 0)
    assert run["conversations_seen"] == 40
    assert info.pop("size_bytes") > 0
    assert info.pop("generated_at").endswith("Z")
    queue = info.pop("queue")
    assert queue["size"] == 1 and queue["failing"] == 1
    assert queue["last_error"]["id"] == broken
    assert "connection failed" in queue["last_error"]["error"]
    assert info.pop("integrity") == {"ok": True, "covered": "every page (SQLite's quick_check)"}
    assert info.pop("check") == {"healthy": False, "max_age_seconds": 3600.0,
                                 "message": "unhealthy: no successful sync yet"}
    rejects = info.pop("rejects")
    assert rejects["records"] >= 1 and rejects["by_endpoint"].get("messages", 0) >= 1
    conn = sqlite3.connect(tmp_path / "m.db")
    messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    gap_rows = conn.execute("SELECT count(*), sum(_messages_missing) FROM conversations "
                            "WHERE _messages_complete = 0").fetchone()
    conn.close()
    assert gap_rows[0] >= 2
    assert info == {
        "database": str(tmp_path / "m.db"),
        "writer": None,
        "upstream": server.base_url,
        "conversations": {"live": 39, "deleted": 0},
        "messages": messages,
        "last_success": None,
        "watermark": None,
        "gaps": {"conversations": gap_rows[0], "messages_missing": gap_rows[1]},
    }


def test_status_text_and_check_once_the_next_run_succeeds(synced):
    upstream, server, tmp_path, broken = synced
    server.behaviour.on_request = None
    assert run_sync(settings_for(server, tmp_path / "m.db")).outcome == "ok"
    result = syncer(tmp_path, "status", "--check")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"database    {tmp_path / 'm.db'} (")
    conn = sqlite3.connect(tmp_path / "m.db")
    messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    conn.close()
    assert lines[1] == f"mirror      40 conversations (0 deleted upstream), {messages} messages"
    assert lines[2] == f"upstream    {server.base_url}"
    assert lines[3] == "writer      none"
    assert lines[6] == "queue       0 conversations waiting"
    assert lines[9] == "integrity   no damage found in every page (SQLite's quick_check)"
    assert lines[-1].startswith("healthy: last successful sync ")
    table = lines[lines.index("") + 1:-1]
    assert table[0].split() == ["started", "took", "outcome", "mode", "changed", "deleted",
                                "messages", "requests", "retries", "429s"]
    assert [row.split()[4] for row in table[1:]] == ["ok", "partial"]   # after "date time UTC took"


def test_check_fails_when_the_last_success_is_older_than_max_age(synced):
    upstream, server, tmp_path, broken = synced
    server.behaviour.on_request = None
    assert run_sync(settings_for(server, tmp_path / "m.db")).outcome == "ok"
    conn = sqlite3.connect(tmp_path / "m.db")
    two_hours_ago = datetime.now(timezone.utc) - timedelta(hours=2)
    conn.execute("UPDATE _sync_runs SET finished_at = ? WHERE outcome = 'ok'",
                 (two_hours_ago.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),))
    conn.commit()
    conn.close()
    stale = syncer(tmp_path, "status", "--check", "--max-age", "90m")
    assert stale.returncode == 1
    assert stale.stdout.splitlines()[-1].startswith("unhealthy: last successful sync ")
    assert stale.stdout.rstrip().endswith("sync 2h ago (more than 1h30m)")
    assert syncer(tmp_path, "status").returncode == 0            # without --check: a report
    fresh = syncer(tmp_path, "status", "--check", "--max-age", "3h", "--format", "json")
    assert fresh.returncode == 0
    assert json.loads(fresh.stdout)["check"]["healthy"] is True


def test_check_fails_when_no_run_ever_succeeded(synced):
    upstream, server, tmp_path, broken = synced
    result = syncer(tmp_path, "status", "--check")
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == "unhealthy: no successful sync yet"


def test_status_without_a_database_exits_2_and_creates_nothing(tmp_path):
    result = syncer(tmp_path, "status", "--check")
    assert result.returncode == 2
    assert result.stderr == (f"error: no database at {tmp_path / 'm.db'}: run `syncer sync` "
                             "first (or pass --db)\n")
    assert list(tmp_path.iterdir()) == []


def test_bad_max_age_exits_2(synced):
    upstream, server, tmp_path, broken = synced
    result = syncer(tmp_path, "status", "--check", "--max-age", "soon")
    assert result.returncode == 2
    assert result.stderr.startswith("error: --max-age: not a duration: 'soon'")


def test_check_age_is_measured_from_the_last_ok_run_end(synced):
    upstream, server, tmp_path, broken = synced
    server.behaviour.on_request = None
    assert run_sync(settings_for(server, tmp_path / "m.db")).outcome == "ok"
    now = datetime.now(timezone.utc)
    info = status.gather(str(tmp_path / "m.db"), now=now + timedelta(hours=2))
    assert 7200 <= info["last_success"]["age_seconds"] < 7300
    assert status.check(info, 3 * 3600)[0] is True
    assert status.check(info, 3600) == (False, status.check(info, 3600)[1])
    assert info["watermark"]["behind_seconds"] >= 7200


def test_status_counts_what_each_run_changed(synced):
    upstream, server, tmp_path, broken = synced
    info = json.loads(syncer(tmp_path, "status", "--format", "json").stdout)
    assert info["runs"][0]["conversations_changed"] == 39
    assert info["runs"][0]["messages_written"] == info["messages"]


def test_message_count_stays_exact_through_deletes_and_moves(synced):
    """The count comes from the daily counts the write triggers keep, not from a scan: it
    equals a count of the rows after any writer deletes, moves or adds messages."""
    upstream, server, tmp_path, broken = synced
    db = str(tmp_path / "m.db")
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM messages WHERE rowid IN (SELECT rowid FROM messages LIMIT 7)")
        conn.execute("UPDATE messages SET createdAt = '2001-01-01T00:00:00.000000Z', "
                     "role = 'system' WHERE rowid IN (SELECT rowid FROM messages LIMIT 3)")
    conn.close()
    assert run_sync(settings_for(server, db)).outcome in ("ok", "partial")
    conn = sqlite3.connect(db)
    held = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    conn.close()
    assert status.gather(db)["messages"] == held > 0
