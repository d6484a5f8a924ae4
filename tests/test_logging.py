"""Log output of real `syncer` processes: levels, formats, request lines, and never the key."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from syncer.simulator import Behaviour, SimulatorServer, generate

SECRET = "rt_live_S3CRET_do_not_log_9f8e7d"
LIST = "/v1/messaging/conversations"


@pytest.fixture
def server():
    upstream = generate(seed=31, conversations=25, messages_per_conversation=3)
    with SimulatorServer(upstream, Behaviour(api_key=SECRET, message_paging="offset")) as s:
        yield s


def syncer(tmp_path, server, *args, key=SECRET):
    env = dict(os.environ, RUNTYPE_BASE_URL=server.base_url, RUNTYPE_API_KEY=key)
    env.pop("SYNCER_DB", None)
    return subprocess.run([sys.executable, "-m", "syncer", "--db", str(tmp_path / "m.db"),
                           *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)


def no_secret(result):
    assert SECRET not in result.stdout and SECRET not in result.stderr
    assert SECRET[8:] not in result.stdout + result.stderr   # not even part of it


def test_default_sync_prints_its_summary_and_logs_nothing(tmp_path, server):
    result = syncer(tmp_path, server, "sync")
    assert result.returncode == 0
    assert result.stdout.startswith("sync ok (full) in ")
    assert result.stderr == ""
    no_secret(result)


def test_quiet_is_silent_on_success_and_speaks_on_failure(tmp_path, server):
    ok = syncer(tmp_path, server, "-q", "sync")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")
    refused = syncer(tmp_path, server, "-q", "sync", key="rt_live_wrong_key_123")
    assert refused.returncode == 3
    assert refused.stdout.startswith("sync auth_failed (incremental) in ")   # cron mails it
    assert refused.stderr == ("error: refused the API key (HTTP 401); check RUNTYPE_API_KEY\n")
    assert "rt_live_wrong_key_123" not in refused.stderr


def test_vv_logs_every_request_with_status_and_timing_never_the_key(tmp_path, server):
    result = syncer(tmp_path, server, "-vv", "sync")
    assert result.returncode == 0
    no_secret(result)
    requests = [line for line in result.stderr.splitlines() if " GET " in line]
    assert len(requests) == server.count()
    first = requests[0].split(" ", 4)[4]   # after "date time UTC LEVEL"
    assert first.startswith(f"GET {LIST} ") and " -> 200 (" in first and " ms, " in first
    assert all(line.split()[3] == "DEBUG" for line in requests)


def test_v_logs_progress_lines_but_not_requests(tmp_path, server):
    server.behaviour.message_paging = "none"      # big conversations come back short
    result = syncer(tmp_path, server, "-v", "sync")
    assert result.returncode == 0
    no_secret(result)
    levels = [line.split()[3] for line in result.stderr.splitlines()]
    assert levels and set(levels) == {"INFO"}     # what the engine noticed, e.g. short pages
    assert " -> 200 (" not in result.stderr


def test_json_logs_are_one_object_per_line_without_the_key(tmp_path, server):
    result = syncer(tmp_path, server, "--log-format", "json", "-vv", "sync")
    assert result.returncode == 0
    no_secret(result)
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert len(entries) >= server.count()
    assert all(set(e) == {"time", "level", "logger", "message"} for e in entries)
    assert {"syncer.api"} <= {e["logger"] for e in entries}
    assert any(e["message"].startswith(f"GET {LIST} ") for e in entries)


def test_daemon_json_logs_without_the_key(tmp_path, server):
    env = dict(os.environ, RUNTYPE_BASE_URL=server.base_url, RUNTYPE_API_KEY=SECRET)
    env.pop("SYNCER_DB", None)
    err = tmp_path / "daemon.log"
    with open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "syncer", "--log-format", "json",
                                 "--db", str(tmp_path / "m.db"), "daemon", "--interval", "1h"],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=stderr,
                                text=True)
        try:
            deadline = time.monotonic() + 30
            while "sync ok" not in err.read_text():
                assert time.monotonic() < deadline and proc.poll() is None, err.read_text()
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = err.read_text()
    assert proc.returncode == 0 and out == ""
    assert SECRET not in text
    entries = [json.loads(line) for line in text.splitlines()]
    messages = [e["message"] for e in entries]
    assert messages[0].startswith("daemon started: syncing ")
    assert any(m.startswith("sync ok (full)") for m in messages)
    assert "SIGTERM: stopping after the work in hand (signal again to quit at once)" in messages
    assert messages[-1] == "daemon stopped"
    conn = sqlite3.connect(tmp_path / "m.db")
    assert conn.execute("SELECT outcome FROM _sync_runs").fetchall() == [("ok",)]
    conn.close()


def test_text_log_times_are_utc_and_say_so_whatever_the_machine_zone(tmp_path, server,
                                                                      monkeypatch):
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")   # UTC+14: a local time would differ by hours
    before = time.gmtime()
    result = syncer(tmp_path, server, "-vv", "sync")
    after = time.gmtime()
    assert result.returncode == 0, result.stderr
    stamps = [line[:23] for line in result.stderr.splitlines() if " DEBUG " in line]
    assert stamps, result.stderr
    allowed = {time.strftime("%Y-%m-%d %H", t) for t in (before, after)}
    for stamp in stamps:
        assert stamp.endswith(" UTC") and stamp[:13] in allowed, stamp
