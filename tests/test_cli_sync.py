"""`syncer sync` as a user runs it: a real process, exit codes, one-line errors, no key leaks."""
import os
import sqlite3
import subprocess
import sys

import pytest
from support import KEY, assert_exact, assert_exact_except_gaps, wait_for

from syncer.simulator import Behaviour, SimulatorServer, generate


def run(args, env_extra=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTYPE_", "SYNCER_"))}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "syncer", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def served():
    upstream = generate(seed=31, conversations=40, big_conversations=1)
    with SimulatorServer(upstream, Behaviour(message_paging="offset")) as server:
        yield upstream, server


LIST = "/v1/messaging/conversations"


def env_for(server, key=KEY):
    return {"RUNTYPE_BASE_URL": server.base_url, "RUNTYPE_API_KEY": key}   # added to run()'s


def test_sync_prints_a_summary_and_exits_0(served, tmp_path):
    upstream, server = served
    db = tmp_path / "m.db"
    r = run(["--db", str(db), "sync"], env_for(server))
    assert r.returncode == 0, r.stderr
    assert "sync ok" in r.stdout and "40 conversations walked" in r.stdout
    assert_exact(db, upstream)
    assert oct(os.stat(db).st_mode & 0o777) == "0o600"


def test_refused_key_exits_3_with_one_line(served, tmp_path):
    upstream, server = served
    r = run(["--db", str(tmp_path / "m.db"), "sync"], env_for(server, "rt_test_wrong_key_123"))
    assert r.returncode == 3
    assert "refused the API key" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert "rt_test_wrong_key_123" not in r.stderr + r.stdout


def test_missing_key_exits_2(tmp_path):
    r = run(["--db", str(tmp_path / "m.db"), "sync"], {"RUNTYPE_BASE_URL": "http://127.0.0.1:9"})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: no API key: set RUNTYPE_API_KEY (or [api].key in the config file)"]


@pytest.mark.parametrize("text, needle", [
    ('[api]\ntimeout = "x"\n', "[api].timeout"),
    ('[sync]\nlookback = "forever"\n', "[sync].lookback"),
    ('[sync]\nbogus = 1\n', "unknown key [sync].bogus"),
    ('[api]\nbase_url = "http://example.com"\n', "plain http"),
])
def test_bad_config_exits_2_with_one_line(tmp_path, text, needle):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    r = run(["--config", str(cfg), "--db", str(tmp_path / "m.db"), "sync"],
            {"RUNTYPE_API_KEY": KEY})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "m.db").exists()


def test_foreign_database_is_refused(tmp_path, served):
    upstream, server = served
    db = tmp_path / "other.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE mine (x)")
    conn.commit()
    conn.close()
    r = run(["--db", str(db), "sync"], env_for(server))
    assert r.returncode == 2 and "not made by syncer" in r.stderr
    assert sqlite3.connect(db).execute("SELECT name FROM sqlite_master").fetchall() == [("mine",)]


def test_key_never_reaches_output_logs_or_database(served, tmp_path):
    upstream, server = served
    secret = "rt_test_simulator"
    db = tmp_path / "m.db"
    outputs = []
    for fmt in ("text", "json"):
        r = run(["-vv", "--log-format", fmt, "--db", str(db), "sync", "--full"], env_for(server))
        assert r.returncode == 0, r.stderr
        assert "GET /v1/messaging/conversations" in r.stderr     # -vv logs requests
        outputs.append(r.stdout + r.stderr)
    r = run(["--db", str(db), "sync"], env_for(server, "rt_live_leaky_key_999"))
    outputs.append(r.stdout + r.stderr)
    assert all(secret not in o and "rt_live_leaky_key_999" not in o for o in outputs)
    for path in tmp_path.iterdir():
        data = path.read_bytes()
        assert secret.encode() not in data and b"leaky_key" not in data, path


def test_sigkill_at_observed_moments_then_rerun_is_exact(tmp_path):
    """Kill a real sync process part-way, several times, changing upstream in between; a final
    run leaves the mirror equal to upstream, with no duplicates. Each kill waits for an event
    the test sees (requests served), not for a fixed delay, so that a slow
    machine cannot make it land before the sync did anything."""
    upstream = generate(seed=37, conversations=400, big_conversations=2)
    behaviour = Behaviour(latency_ms=15, message_paging="none", list_order="shuffled")
    db = tmp_path / "m.db"
    with SimulatorServer(upstream, behaviour) as server:
        env = env_for(server)
        env_all = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTYPE_", "SYNC"))}
        env_all.update(env)
        messages = lambda: server.count(LIST + "/")  # noqa: E731 - message pages served
        moments = (("during the first list pages", lambda: server.count(LIST) >= 2),
                   ("early in the fetching", lambda: messages() >= 30),
                   ("late in the fetching", lambda: messages() >= 150),
                   ("as a resumed run fetches", lambda: messages() >= 10))
        for i, (what, moment) in enumerate(moments):
            server.reset_log()
            p = subprocess.Popen([sys.executable, "-m", "syncer", "--db", str(db), "sync"],
                                 env=env_all, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            wait_for(lambda: moment() or p.poll() is not None, what, timeout=60)
            assert p.poll() is None, f"the sync ended before the kill {what}"
            p.kill()
            p.wait()
            ids = upstream.conversation_ids()
            upstream.add_message(ids[i * 7], f"written while sync {i} was dead")
            upstream.update_conversation(ids[i * 7 + 1], status="closed")
        behaviour.latency_ms = 0
        r = run(["--db", str(db), "sync"], env)
        assert r.returncode == 0, r.stdout + r.stderr
        r = run(["--db", str(db), "sync", "--full"], env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert_exact_except_gaps(db, upstream)
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT count(*) FROM _sync_queue").fetchone() == (0,)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        outcomes = [o for (o,) in conn.execute("SELECT outcome FROM _sync_runs ORDER BY id")]
        assert outcomes[-2:] == ["ok", "ok"] and "killed" in outcomes


def test_errors_are_json_lines_under_json_logging(tmp_path):
    import json
    r = run(["--log-format", "json", "--db", str(tmp_path / "m.db"), "sync"],
            {"RUNTYPE_BASE_URL": "http://127.0.0.1:9"})
    assert r.returncode == 2
    entry = json.loads(r.stderr.strip())
    assert entry["level"] == "error" and "no API key" in entry["message"]
