"""`syncer daemon` as a real process against the simulator: convergence, signals, failures."""
import os
import signal
import sqlite3
import subprocess
import sys
import threading

import pytest
from support import (KEY, assert_exact, fts_ok, mirror, process_env, settings_for,
                     upstream_tables, wait_for)

from syncer import lock
from syncer.errors import ConfigError
from syncer.runner import run_sync
from syncer.scheduler import _crontab_weekdays, make_trigger
from syncer.simulator import Behaviour, SimulatorServer, generate

LIST = "/v1/messaging/conversations"


env_for = process_env


class Daemon:
    """A `syncer daemon` subprocess whose stderr goes to a file the test can poll."""

    def __init__(self, tmp_path, server, *args, config=""):
        (tmp_path / "syncer.toml").write_text(config)
        self.db = tmp_path / "m.db"
        self.log = tmp_path / "daemon.log"
        self._err = open(self.log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncer", "--config", str(tmp_path / "syncer.toml"),
             "--db", str(self.db), "daemon", *args],
            cwd=tmp_path, env=env_for(server), stdout=subprocess.DEVNULL, stderr=self._err)

    def text(self):
        return self.log.read_text()

    def wait_log(self, fragment, times=1, timeout=30.0):
        wait_for(lambda: self.text().count(fragment) >= times or self.proc.poll() is not None,
                 f"{fragment!r} in the daemon's log", timeout)
        assert self.text().count(fragment) >= times, self.text()

    def outcomes(self):
        if not self.db.exists():
            return []
        conn = sqlite3.connect(self.db)
        try:
            return [r[0] for r in conn.execute("SELECT outcome FROM _sync_runs ORDER BY id")]
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()

    def finish(self, timeout=30.0):
        try:
            return self.proc.wait(timeout)
        finally:
            self._err.close()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._err.close()


@pytest.fixture
def daemons():
    started = []
    yield started
    for d in started:
        d.kill()



def converged(db, upstream):
    try:
        return mirror(db) == upstream_tables(upstream)
    except (sqlite3.Error, AssertionError):
        return False


def test_daemon_converges_on_upstream_changes_then_stops_on_sigterm(tmp_path, daemons):
    upstream = generate(seed=11, conversations=80, messages_per_conversation=4)
    with SimulatorServer(upstream, Behaviour(message_paging="offset")) as server:
        d = Daemon(tmp_path, server, config='[schedule]\ninterval = "1s"\n'
                                             '[sync]\nreconcile_every = "2s"\n')
        daemons.append(d)
        wait_for(lambda: "ok" in d.outcomes(), "the initial run")
        assert_exact(d.db, upstream)
        ids = upstream.conversation_ids()
        upstream.update_conversation(ids[0], subject="renamed upstream", status="closed")
        upstream.add_message(ids[1], "a reply that arrived later")
        upstream.delete_conversation(ids[2])
        upstream.create_conversation(subject="brand new", participantName="Ada")
        wait_for(lambda: converged(d.db, upstream), "the mirror to converge")
        assert_exact(d.db, upstream)
        d.proc.send_signal(signal.SIGTERM)
        assert d.finish() == 0, d.text()
    log = d.text()
    assert "daemon started: syncing" in log and "every 1s" in log
    assert "SIGTERM: stopping after the work in hand" in log
    assert log.rstrip().endswith("daemon stopped")
    assert lock.holder(str(d.db)) is None
    assert set(d.outcomes()) <= {"ok", "interrupted"}


def hold_after(n):
    """A simulator hook that holds every conversation fetch after the n-th until `opened` is
    set; `reached` tells the test the sync is mid-run."""
    reached, opened, details = threading.Event(), threading.Event(), []

    def hook(method, path, query):
        if path.startswith(LIST + "/") and not path.endswith("/messages"):
            details.append(path)
            if len(details) > n:
                reached.set()
                opened.wait(60)
    return hook, reached, opened


def test_sigterm_mid_run_exits_0_consistent_and_the_next_run_resumes(tmp_path, daemons):
    upstream = generate(seed=12, conversations=250, messages_per_conversation=3)
    hook, reached, opened = hold_after(30)
    behaviour = Behaviour(message_paging="offset", on_request=hook)
    with SimulatorServer(upstream, behaviour) as server:
        d = Daemon(tmp_path, server, config='[api]\nconcurrency = 2\n'
                                             '[schedule]\ninterval = "1h"\n')
        daemons.append(d)
        assert reached.wait(30), d.text()
        d.proc.send_signal(signal.SIGTERM)
        d.wait_log("SIGTERM: stopping")         # the signal is in before the API answers
        opened.set()
        assert d.finish() == 0, d.text()
        behaviour.on_request = None
        assert d.outcomes() == ["interrupted"]
        conn = sqlite3.connect(d.db)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        held = conn.execute("SELECT count(*) FROM conversations").fetchone()[0]
        queued = conn.execute("SELECT count(*) FROM _sync_queue").fetchone()[0]
        conn.close()
        assert fts_ok(d.db)
        assert 30 <= held < 250 and queued > 0
        assert "the next run resumes" in d.text()

        server.reset_log()
        summary = run_sync(settings_for(server, d.db))
        assert summary.outcome == "ok"
        assert summary.counts["conversations_changed"] == 250 - held   # nothing fetched twice
        first_list = next(q for m, p, q, s in server.requests if p == LIST)
        assert "cursor" not in first_list     # a fresh walk: what moved meanwhile is seen
        assert_exact(d.db, upstream)


def test_a_second_signal_exits_at_once_and_the_database_stays_consistent(tmp_path, daemons):
    upstream = generate(seed=15, conversations=150, messages_per_conversation=3)
    hook, reached, opened = hold_after(20)
    behaviour = Behaviour(message_paging="offset", on_request=hook)
    with SimulatorServer(upstream, behaviour) as server:
        d = Daemon(tmp_path, server, config='[schedule]\ninterval = "1h"\n')
        daemons.append(d)
        assert reached.wait(30), d.text()
        d.proc.send_signal(signal.SIGTERM)
        d.wait_log("SIGTERM: stopping")
        d.proc.send_signal(signal.SIGINT)          # the API still holds its requests
        assert d.finish() == 130
        opened.set()
        behaviour.on_request = None
        conn = sqlite3.connect(d.db)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.close()
        assert fts_ok(d.db)
        assert lock.holder(str(d.db)) is None      # the kernel dropped the lock
        summary = run_sync(settings_for(server, d.db))
        assert summary.outcome == "ok"
        assert_exact(d.db, upstream)


def test_failing_runs_are_retried_and_refused_key_stops_with_3(tmp_path, daemons):
    upstream = generate(seed=13, conversations=30, messages_per_conversation=3)
    behaviour = Behaviour(message_paging="offset", fault_rate=1.0, fault_kinds=("500", "503"))
    with SimulatorServer(upstream, behaviour) as server:
        d = Daemon(tmp_path, server, config='[api]\nmax_retries = 0\n'
                                             '[schedule]\ninterval = "1s"\n')
        daemons.append(d)
        d.wait_log("retrying at", times=2)
        assert d.proc.poll() is None                 # still alive after failing runs
        assert "sync failed" in d.text() and "HTTP 5" in d.text()
        behaviour.fault_rate = 0.0
        wait_for(lambda: "ok" in d.outcomes(), "a run to succeed once the API is back")
        assert_exact(d.db, upstream)
        behaviour.api_key = "rt_rotated_key"         # ours is refused from now on
        assert d.finish(timeout=60) == 3, d.text()
    log = d.text()
    assert log.count("sync auth_failed") == 3
    assert log.rstrip().splitlines()[-1] == (
        "error: the API refused the key 3 runs in a row (refused the API key (HTTP 401); "
        "check RUNTYPE_API_KEY); daemon stopped")
    assert lock.holder(str(d.db)) is None


@pytest.mark.parametrize("args, message", [
    (["--cron", "every monday"], "error: cron expression 'every monday': expected 5 fields"),
    (["--cron", "61 * * * *"], "error: cron expression '61 * * * *': "),
    (["--cron", "0 3 * * 9"], "error: cron expression '0 3 * * 9': bad weekday '9'"),
    (["--interval", "5 parsecs"], "error: --interval: not a duration: '5 parsecs'"),
    (["--interval", "0s"], "error: schedule interval must be at least 1s"),
    (["--interval", "5m", "--cron", "* * * * *"], "error: --interval and --cron exclude"),
])
def test_a_schedule_that_does_not_parse_exits_2(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "syncer", "--db", str(tmp_path / "m.db"),
                             "daemon", *args], cwd=tmp_path, capture_output=True, text=True,
                            env=dict(os.environ, RUNTYPE_API_KEY=KEY), timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "m.db").exists()


def test_a_second_daemon_exits_4(tmp_path, daemons):
    upstream = generate(seed=14, conversations=10)
    with SimulatorServer(upstream, Behaviour(message_paging="offset")) as server:
        first = Daemon(tmp_path, server, config='[schedule]\ninterval = "1h"\n')
        daemons.append(first)
        wait_for(lambda: "ok" in first.outcomes(), "the first daemon's run")
        second = subprocess.run([sys.executable, "-m", "syncer", "--db", str(first.db),
                                 "daemon"], cwd=tmp_path, env=env_for(server),
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 4
        assert second.stderr.startswith(
            f"error: another syncer daemon (pid {first.proc.pid}, since ")
        first.proc.send_signal(signal.SIGINT)
        assert first.finish() == 0


@pytest.mark.parametrize("field, names", [
    ("0", "sun"), ("7", "sun"), ("1-5", "mon,tue,wed,thu,fri"), ("0,6", "sun,sat"),
    ("1-7/2", "mon,wed,fri,sun"), ("*", "*"), ("mon-fri", "mon-fri"), ("*/2", "*/2"),
])
def test_crontab_weekday_numbers_mean_what_cron_means(field, names):
    assert _crontab_weekdays(field) == names


def test_interval_jitter_stays_small():
    trigger, text = make_trigger(1.0, None, 10.0)
    assert (trigger.interval_length, trigger.jitter, text) == (1.0, 0.1, "every 1s (jitter 0.1s)")
    trigger, text = make_trigger(900.0, "*/5 * * * 1-5", 10.0)
    assert str(trigger) == ("cron[month='*', day='*', day_of_week='mon,tue,wed,thu,fri', "
                            "hour='*', minute='*/5']")
    with pytest.raises(ConfigError):
        make_trigger(None, None, 10.0)
