"""A request ends: within [api].timeout however slowly the server answers, and within a few
seconds of a stop, for the library, `syncer sync` and the daemon. The slow server is a raw
loopback socket (httpx bounds each read, not a whole request: a byte a second never trips it).
In-process tests give the client request bounds on a clock twenty times faster than real time
(`fast_bounds`): the deadlines are the product's, only the seconds are shorter."""
import signal
import subprocess
import sys
import threading

import pytest
from slow_server import Trickler, fast_bounds, server_context, tls_files
from support import KEY, process_env, settings_for, wait_for

from syncer.api import RuntypeClient
from syncer.errors import Interrupted, RetriesExhausted
from syncer.runner import run_sync

MODES = ("body", "headers", "silent")

def in_background(fn):
    """Run fn() in a thread; the returned function waits for its result or exception, failing
    the test if it is still running after the given seconds."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e
    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def result(seconds):
        thread.join(seconds)
        assert not thread.is_alive(), f"still running after {seconds}s"
        return out
    return result


def ends_within(seconds, fn):
    return in_background(fn)(seconds)


def list_once(client):
    return client.list_conversations(cursor=None, limit=10, status="all")


@pytest.mark.parametrize("mode", MODES)
def test_a_slow_answer_ends_at_the_timeout_and_is_retried(tmp_path, mode):
    with Trickler(mode) as server:
        settings = settings_for(server, tmp_path / "m.db", timeout=2.0, max_retries=1)
        with RuntypeClient(settings, bounds=fast_bounds()) as client:
            out = ends_within(30, lambda: list_once(client))
            assert isinstance(out.get("error"), RetriesExhausted), out
            assert "timed out after 2s" in str(out["error"])
            assert "gave up after 2 attempts" in str(out["error"])
            assert client.counters.snapshot()["retries"] == 1
        assert server.requests == 2


@pytest.mark.parametrize("mode", ("body", "headers"))
def test_a_slow_answer_over_tls_ends_at_the_timeout(tmp_path, monkeypatch, mode):
    files = tls_files(tmp_path)
    if files is None:
        pytest.skip("no openssl command to make a certificate")
    monkeypatch.setenv("SSL_CERT_FILE", files[0])          # trust the test's own certificate
    with Trickler(mode, tls=server_context(files)) as server:
        settings = settings_for(server, tmp_path / "m.db", timeout=2.0, max_retries=0)
        with RuntypeClient(settings, bounds=fast_bounds()) as client:
            out = ends_within(30, lambda: list_once(client))
        assert "timed out after 2s" in str(out.get("error")), out
        assert server.requests == 1


def test_a_sync_against_a_trickling_server_ends_and_reports_failure(tmp_path):
    with Trickler("body") as server:
        settings = settings_for(server, tmp_path / "m.db", timeout=2.0, max_retries=1)
        out = ends_within(40, lambda: run_sync(settings, bounds=fast_bounds()))
    summary = out["value"]
    assert summary.outcome == "failed"
    assert "timed out after 2s" in summary.error
    assert summary.exit_code == 1


@pytest.mark.parametrize("mode", MODES)
def test_a_stop_ends_a_request_in_flight_within_seconds(tmp_path, mode):
    stop = threading.Event()
    with Trickler(mode) as server:
        settings = settings_for(server, tmp_path / "m.db", timeout=120.0, max_retries=6)
        with RuntypeClient(settings, bounds=fast_bounds(stop)) as client:
            result = in_background(lambda: list_once(client))
            wait_for(lambda: server.requests >= 1, "the request to arrive")
            stop.set()
            out = result(10)
        assert isinstance(out.get("error"), Interrupted), out
        assert "stopping" in str(out["error"])
        assert server.requests == 1                       # a stopped request is not retried


def _config(tmp_path, text='[api]\ntimeout = 120\n'):
    path = tmp_path / "syncer.toml"
    path.write_text(text)
    return str(path)


def test_sync_command_exits_within_seconds_of_sigterm_during_a_trickle(tmp_path):
    with Trickler("body") as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncer", "--config", _config(tmp_path),
             "--db", str(tmp_path / "m.db"), "sync"],
            env=process_env(server), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: server.requests >= 1, "the first request")
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 1, err
    assert "SIGTERM: stopping" in err and "sync interrupted" in out
    assert "Traceback" not in out + err
    assert KEY not in out + err
    assert server.requests == 1


def test_daemon_exits_within_seconds_of_sigterm_during_a_trickle(tmp_path):
    log = tmp_path / "daemon.log"
    with Trickler("body") as server, open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncer", "--config", _config(tmp_path),
             "--db", str(tmp_path / "m.db"), "daemon", "--interval", "1h"],
            cwd=tmp_path, env=process_env(server), stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_for(lambda: server.requests >= 1, "the first request")
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert code == 0, text
    assert text.rstrip().endswith("daemon stopped"), text
    assert "Traceback" not in text and KEY not in text
