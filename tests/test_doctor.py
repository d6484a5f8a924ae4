"""`syncer doctor` through a real process: every value with its source (the key only as set),
the database and its upstream, a live request to the API; each line OK or what to fix; exit 0
only when everything is OK."""
import os
import socket
import subprocess
import sys

import pytest
from support import KEY, build_mirror

from syncer.simulator import Behaviour, SimulatorServer, generate


def doctor(*args, cwd, **env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTYPE_", "SYNCER_"))}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "syncer", *args, "doctor"], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120)


def lines(r) -> dict[str, str]:
    """The value lines: name -> (shown, source) as printed."""
    out = {}
    for line in r.stdout.split("checks:")[0].splitlines()[1:]:
        name, rest = line.split(None, 1)
        out[name] = " ".join(rest.split())
    return out


def checks(r) -> list[str]:
    return [" ".join(line.split()) for line in r.stdout.split("checks:\n")[1].splitlines()]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    upstream = generate(seed=3, conversations=15)
    with SimulatorServer(upstream, Behaviour(rate_limit=500, rate_window=60)) as server:
        yield server


def test_all_ok_names_every_source_and_never_the_key(served, tmp_path):
    db = tmp_path / "mirror.db"
    (tmp_path / "syncer.toml").write_text('[api]\ntimeout = 12.5\n[sync]\nreconcile_every = "1d"\n'
                                          '[schedule]\njitter = 90\n')
    from syncer.config import Settings
    from syncer.runner import run_sync
    run_sync(Settings(base_url=served.base_url, api_key=KEY, db_path=str(db)))
    r = doctor("--db", str(db), cwd=tmp_path, RUNTYPE_API_KEY=KEY,
               RUNTYPE_BASE_URL=served.base_url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert KEY not in r.stdout + r.stderr
    values = lines(r)
    assert values["[api].key"] == "set (RUNTYPE_API_KEY)"
    assert values["[api].base_url"] == f"{served.base_url} (RUNTYPE_BASE_URL)"
    assert values["[api].timeout"] == "12.5 (syncer.toml)"
    assert values["[store].path"] == f"{db} (--db)"
    assert values["[api].page_size"] == "100 (default)"
    assert values["[sync].reconcile_every"] == "1d (syncer.toml)"   # as written, not 86400.0
    assert values["[schedule].jitter"] == "90s (syncer.toml)"
    assert values["[sync].lookback"] == "10m (default)"
    found = checks(r)
    assert all(c.startswith("OK ") for c in found), found
    assert f"OK database: {db} (15 live conversations)" in found
    assert f"OK upstream: {served.base_url} (the base URL in use)" in found
    assert "OK API key accepted, 15 conversations listed" in found
    assert any(c.startswith("OK rate limit: 500 requests a window") for c in found), found


def test_a_refused_key_is_named_with_its_source(served, tmp_path):
    r = doctor(cwd=tmp_path, RUNTYPE_API_KEY="rt_live_wrong", RUNTYPE_BASE_URL=served.base_url)
    assert r.returncode == 1
    found = checks(r)
    assert f"OK API at {served.base_url}: reachable" in found
    assert "FIX API key refused (HTTP 401): check RUNTYPE_API_KEY" in found, found
    assert "rt_live_wrong" not in r.stdout + r.stderr


def test_unreachable_api_and_missing_key_say_what_to_fix(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # closed once the block ends: nothing listens there
    url = f"http://127.0.0.1:{port}"
    r = doctor(cwd=tmp_path, RUNTYPE_API_KEY=KEY, RUNTYPE_BASE_URL=url)
    assert r.returncode == 1
    assert any(c.startswith(f"FIX API at {url}:") and "refused" in c for c in checks(r)), r.stdout
    r = doctor(cwd=tmp_path, RUNTYPE_BASE_URL=url)
    assert r.returncode == 1
    assert "FIX API key: not set: export RUNTYPE_API_KEY=rt_live_... (or [api].key in the " \
           "config file)" in checks(r)
    assert lines(r)["[api].key"] == "unset (set RUNTYPE_API_KEY)"


def test_a_mirror_of_another_upstream_is_named(served, tmp_path):
    db = build_mirror(tmp_path / "mirror.db", seed=4, conversations=10)
    r = doctor("--db", str(db), cwd=tmp_path, RUNTYPE_API_KEY=KEY,
               RUNTYPE_BASE_URL=served.base_url)
    assert r.returncode == 1
    fix = [c for c in checks(r) if c.startswith("FIX upstream: this mirror belongs to http://")]
    assert len(fix) == 1 and "`syncer sync --rebind`" in fix[0], checks(r)


def test_a_bad_config_file_is_one_fix_line(tmp_path):
    (tmp_path / "syncer.toml").write_text("[api]\ntimeout = 'soon'\n")
    r = doctor(cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert [c for c in checks(r) if c.startswith("FIX")][0].startswith(
        "FIX config file: [api].timeout")
