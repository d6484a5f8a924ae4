"""A server that cannot be reached is named with the reason. Refused connections and failed
name lookups before any answer fail at once (a wrong URL is not worth six retries); once the
server has answered, they are retried like any dropped connection (it may be restarting)."""
import os
import socket
import ssl
import subprocess
import sys

import httpx
import pytest
from slow_server import Trickler, server_context, tls_files
from support import KEY, settings_for

from syncer.api import RuntypeClient, connect_failure
from syncer.errors import RetriesExhausted, UnreachableError
from syncer.simulator import Behaviour, SimulatorServer, generate


@pytest.fixture
def closed_port():
    """A loopback port bound but not listening: connecting to it is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


class At:
    def __init__(self, base_url):
        self.base_url = base_url


def list_once(client):
    return client.list_conversations(cursor=None, limit=10, status="all")


def test_sync_against_a_refused_port_fails_at_once_naming_url_and_reason(tmp_path, closed_port):
    url = f"http://127.0.0.1:{closed_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTYPE_", "SYNCER_"))}
    env.update(RUNTYPE_BASE_URL=url, RUNTYPE_API_KEY=KEY)
    r = subprocess.run([sys.executable, "-m", "syncer", "--db", str(tmp_path / "m.db"), "sync"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"error: cannot reach {url} (connection refused)"]
    assert "1 request (0 retries" in r.stdout
    assert KEY not in r.stdout + r.stderr

    verbose = subprocess.run([sys.executable, "-m", "syncer", "-v", "--db",
                              str(tmp_path / "m.db"), "sync"],
                             capture_output=True, text=True, env=env, timeout=60)
    assert verbose.returncode == 1
    assert "retrying" not in verbose.stderr and "Traceback" not in verbose.stderr
    assert KEY not in verbose.stdout + verbose.stderr


def test_a_failed_name_lookup_fails_at_once(tmp_path):
    settings = settings_for(At("http://no-such-host.invalid"), tmp_path / "m.db")
    with RuntypeClient(settings) as client:
        with pytest.raises(UnreachableError) as caught:
            list_once(client)
        # the resolver's own words follow (they differ between systems)
        assert str(caught.value).startswith(
            "cannot reach http://no-such-host.invalid (DNS lookup failed")
        assert client.counters.snapshot() == {"requests": 1, "retries": 0, "throttled": 0}


def test_a_certificate_not_trusted_fails_at_once(tmp_path, monkeypatch):
    files = tls_files(tmp_path)
    if files is None:
        pytest.skip("no openssl command to make a certificate")
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with Trickler(tls=server_context(files)) as server:
        with RuntypeClient(settings_for(server, tmp_path / "m.db")) as client:
            with pytest.raises(UnreachableError) as caught:
                list_once(client)
            assert str(caught.value).startswith(
                f"cannot reach {server.base_url} (TLS certificate not accepted")
            assert client.counters.snapshot()["retries"] == 0


def test_a_server_gone_after_answering_is_retried(tmp_path):
    server = SimulatorServer(generate(seed=3, conversations=5), Behaviour())
    server.start()
    settings = settings_for(server, tmp_path / "m.db", max_retries=2)
    with RuntypeClient(settings) as client:
        list_once(client)
        server.stop()
        with pytest.raises(RetriesExhausted) as caught:
            list_once(client)
        assert f"cannot reach {server.base_url} (connection refused)" in str(caught.value)
        assert "gave up after 3 attempts" in str(caught.value)
        assert client.counters.snapshot()["retries"] == 2


def _chained(*errors):
    """An httpx error raised from the chain of causes the transport would give it."""
    inner = None
    for error in reversed(errors):
        error.__cause__ = inner
        inner = error
    return inner


@pytest.mark.parametrize("error, reason, at_once", [
    (_chained(httpx.ConnectError("x"), ConnectionRefusedError(111, "Connection refused")),
     "connection refused", True),
    (_chained(httpx.ConnectError("x"), socket.gaierror(-2, "Name or service not known")),
     "DNS lookup failed: Name or service not known", True),
    (_chained(httpx.ConnectError("x"), ssl.SSLCertVerificationError(1, "certificate verify "
                                                                       "failed")),
     "TLS certificate not accepted", True),
    (_chained(httpx.ConnectError("x"), ssl.SSLError(1, "wrong version number")),
     "TLS handshake failed", False),
    (httpx.ConnectTimeout("x"), "connection timed out", False),
    (_chained(httpx.ConnectError("x"), OSError(101, "Network is unreachable")),
     "network is unreachable", False),
    (httpx.ConnectError("x"), "ConnectError", False),
])
def test_connect_failures_are_named(error, reason, at_once):
    assert connect_failure(error) == (reason, at_once)
