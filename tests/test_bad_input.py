"""Bad input through a real `syncer` process: one line on stderr naming the problem, exit 2, no
traceback, nothing created or changed, and the key never printed."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import KEY, assert_exact, build_mirror

from syncer.logs import RedactSecret
from syncer.simulator import Behaviour, SimulatorServer, generate


def run(args, env_extra=None, cwd=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTYPE_", "SYNCER_"))}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "syncer", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)


def one_line(r, code: int) -> str:
    """The process exited `code` with exactly one line on stderr and no traceback; the line."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def served():
    upstream = generate(seed=41, conversations=12, messages_per_conversation=3)
    with SimulatorServer(upstream, Behaviour(message_paging="offset")) as server:
        yield upstream, server


NESTED = "x = " + "[" * 5000 + "]" * 5000 + "\n"


@pytest.mark.parametrize("text, needles", [
    ("[api]\ntimeout = nan\n", ["[api].timeout", "nan"]),
    ("[api]\ntimeout = inf\n", ["[api].timeout", "inf"]),
    ("[api]\ntimeout = -1\n", ["[api].timeout"]),
    ("[sync]\nlookback = nan\n", ["[sync].lookback"]),
    ("[sync]\nlookback = inf\n", ["[sync].lookback"]),
    ("[sync]\nlookback = -5\n", ["[sync].lookback"]),
    ('[sync]\nlookback = "99999999999999d"\n', ["[sync].lookback", "100 years"]),
    ('[sync]\nlookback = "' + "9" * 400 + 's"\n', ["[sync].lookback", "100 years"]),
    ('[sync]\nreconcile_every = 1e300\n', ["[sync].reconcile_every", "100 years"]),
    ('[sync]\nlookback = "600"\n', ["[sync].lookback", "'600' has no unit"]),
    ('[schedule]\ninterval = "15"\n', ["[schedule].interval", "did you mean 15s or 15m"]),
    ('[api]\nbase_url = "http://127.0.0.1:abc"\n', ["[api].base_url", "not a valid URL", "Port"]),
    ('[api]\nbase_url = "https://api.example.com:99999"\n', ["[api].base_url", "Port"]),
    ('[api]\nbase_url = "https://[::1"\n', ["[api].base_url", "not a valid URL"]),
    ('[api]\nbase_url = "https://api.exa mple.com"\n', ["[api].base_url"]),
    ('[api]\nbase_url = "http://api.example.com"\n', ["plain http", "--allow-insecure-http"]),
    ('[api]\nkey = "rt_live_caf\u00e9_000000"\n',
     ["[api].key", "cannot be sent in an HTTP header"]),
    ('[api]\nkey = "rt_live_\\u0001bell_0000"\n',
     ["[api].key", "cannot be sent in an HTTP header"]),
    ('[store]\npath = "a\\u0000b.db"\n', ["[store].path"]),
    (b'[sync]\nstatus = "open"  # caf\xe9\n', ["not UTF-8"]),
    (NESTED, ["not valid TOML", "too deeply"]),
])
def test_bad_config_file_is_one_line_exit_2_and_creates_nothing(tmp_path, text, needles):
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    os.chmod(cfg, 0o600)
    db = tmp_path / "m.db"
    key_in_file = "key =" in str(text)
    r = run(["--config", str(cfg), "--db", str(db), "sync"],
            {} if key_in_file else {"RUNTYPE_API_KEY": KEY})
    line = one_line(r, 2)
    assert str(cfg) in line
    for needle in needles:
        assert needle in line, line
    assert "caf\u00e9_000000" not in line and "bell_0000" not in line   # never the key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


def test_the_longest_durations_still_run_to_the_end(served, tmp_path):
    """At the bound (100 years) a run does all its work and saves its watermark."""
    upstream, server = served
    cfg = tmp_path / "c.toml"
    cfg.write_text('[api]\ntimeout = 3153600000\n[sync]\nlookback = "36500d"\n'
                   'reconcile_every = "36500d"\n')
    for mode in ("full", "incremental"):
        r = run(["--config", str(cfg), "--db", str(tmp_path / "m.db"), "sync"],
                {"RUNTYPE_API_KEY": KEY, "RUNTYPE_BASE_URL": server.base_url})
        assert r.returncode == 0 and r.stdout.startswith(f"sync ok ({mode})"), r.stderr
    assert_exact(tmp_path / "m.db", upstream)


def test_toml_numbers_stay_seconds_in_the_config_file(tmp_path):
    from syncer import config
    cfg = tmp_path / "c.toml"
    cfg.write_text("[sync]\nlookback = 600\n[schedule]\ninterval = 90.5\n")
    s = config.load(str(cfg), env={})
    assert (s.lookback, s.schedule_interval) == (600.0, 90.5)


@pytest.mark.parametrize("url, needles", [
    ("http://127.0.0.1:abc", ["RUNTYPE_BASE_URL", "Port"]),
    ("https://api.run time.com", ["RUNTYPE_BASE_URL", "spaces or control characters"]),
    ("ftp://api.example.com", ["RUNTYPE_BASE_URL", "not an http(s) URL"]),
    ("http://api.example.com", ["RUNTYPE_BASE_URL", "plain http", "--allow-insecure-http"]),
])
def test_bad_base_url_from_the_environment_is_blamed_on_it(tmp_path, url, needles):
    r = run(["--db", str(tmp_path / "m.db"), "sync"],
            {"RUNTYPE_API_KEY": KEY, "RUNTYPE_BASE_URL": url})
    line = one_line(r, 2)
    assert "defaults" not in line
    for needle in needles:
        assert needle in line, line
    assert not (tmp_path / "m.db").exists()


def test_bad_base_url_in_a_config_file_names_the_file(tmp_path):
    cfg = tmp_path / "syncer.toml"
    cfg.write_text('[api]\nbase_url = "http://api.example.com"\n')
    r = run(["--db", str(tmp_path / "m.db"), "sync"], {"RUNTYPE_API_KEY": KEY}, cwd=tmp_path)
    line = one_line(r, 2)
    assert "syncer.toml" in line and "--allow-insecure-http" in line


@pytest.mark.parametrize("ending", ["\r", "\n", "\r\n", "  "])
def test_key_with_a_line_ending_is_stripped_with_one_warning(served, tmp_path, ending):
    """A CRLF env file read by the README's cron recipe leaves a `\\r` on the key."""
    upstream, server = served
    r = run(["--db", str(tmp_path / "m.db"), "sync"],
            {"RUNTYPE_API_KEY": KEY + ending, "RUNTYPE_BASE_URL": server.base_url})
    line = one_line(r, 0)
    assert "RUNTYPE_API_KEY" in line and "stripped" in line
    assert r.stdout.startswith("sync ok ")
    assert KEY not in r.stdout + r.stderr


def test_crlf_env_file_with_the_readme_cron_recipe_syncs(served, tmp_path):
    """`set -a; . /etc/syncer/env; set +a; syncer -q ...` with an env file saved with CRLF line
    ends: every value ends in \\r. The run works, quietly, into the database named."""
    upstream, server = served
    (tmp_path / "env").write_bytes(f"RUNTYPE_API_KEY={KEY}\r\nRUNTYPE_BASE_URL={server.base_url}"
                                   f"\r\nSYNCER_DB={tmp_path / 'm.db'}\r\n".encode())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTYPE_", "SYNCER_"))}
    r = subprocess.run(["sh", "-c", f'set -a; . ./env; set +a; exec "{sys.executable}" '
                        "-m syncer -q sync"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env", "m.db", "m.db.lock"]
    assert_exact(tmp_path / "m.db", upstream)


@pytest.mark.parametrize("key", ["rt_live_caf\u00e9_1234567", "rt_live_\u0007bell_123456",
                                 "rt_live_\u200bzero_width_12", "rt live with spaces 123"])
def test_key_that_cannot_be_a_header_is_refused_before_any_request(served, tmp_path, key):
    upstream, server = served
    server.reset_log()
    r = run(["--db", str(tmp_path / "m.db"), "sync"],
            {"RUNTYPE_API_KEY": key, "RUNTYPE_BASE_URL": server.base_url})
    line = one_line(r, 2)
    assert line == ("error: RUNTYPE_API_KEY contains characters that cannot be sent in an "
                    "HTTP header (only visible ASCII); check the key")
    assert server.count() == 0
    assert not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("key", ["", " ", "\r\n", "\t \t"])
def test_blank_key_is_no_key(tmp_path, key):
    r = run(["-v", "--db", str(tmp_path / "m.db"), "sync"],
            {"RUNTYPE_API_KEY": key, "RUNTYPE_BASE_URL": "http://127.0.0.1:9"})
    assert one_line(r, 2) == ("error: no API key: set RUNTYPE_API_KEY "
                              "(or [api].key in the config file)")


@pytest.mark.parametrize("secret", ["", " ", "\r\n", "a", "short"])
def test_scrubber_ignores_what_cannot_be_a_key(secret):
    import logging
    record = logging.LogRecord("syncer", logging.INFO, __file__, 1,
                               "a short message with spaces: %s", ("ok",), None)
    RedactSecret(secret).filter(record)
    assert record.getMessage() == "a short message with spaces: ok"


def test_scrubber_redacts_the_key_as_sent_even_if_given_with_a_line_ending():
    import logging
    record = logging.LogRecord("syncer", logging.INFO, __file__, 1, "echo %s!", (KEY,), None)
    RedactSecret(KEY + "\r\n").filter(record)
    assert record.getMessage() == "echo ***!"


def test_a_key_from_the_config_file_is_scrubbed_too(capsys):
    import logging

    from syncer.logs import redact, setup_logging
    root = logging.getLogger("syncer")
    handlers, level, propagate = root.handlers[:], root.level, root.propagate
    try:
        setup_logging(secret=None)
        redact("rt_live_from_the_file_123")
        logging.getLogger("syncer.api").warning("echo %s", "rt_live_from_the_file_123")
    finally:
        root.handlers[:], root.propagate = handlers, propagate
        root.setLevel(level)
    assert capsys.readouterr().err.endswith(" WARNING echo ***\n")


@pytest.mark.parametrize("args, needle", [
    (["daemon", "--interval", "99999999999999999d"], "--interval: "),
    (["daemon", "--interval", "inf"], "--interval: "),
    (["daemon", "--interval", "15"], "--interval: '15' has no unit; did you mean 15s or 15m?"),
    (["status", "--max-age", "3600"], "--max-age: '3600' has no unit"),
    (["conversations", "--since", "1700000000"], "'1700000000'"),
    (["search", "x", "--until", "99999999999999d"], "'99999999999999d'"),
])
def test_command_line_durations_need_a_unit_and_a_bound(tmp_path, args, needle):
    db = build_mirror(tmp_path / "m.db", seed=3, conversations=3)
    before = Path(db).read_bytes()
    r = run(["--db", db, *args], {"RUNTYPE_API_KEY": KEY, "RUNTYPE_BASE_URL": "http://127.0.0.1:9"})
    line = one_line(r, 2)
    assert needle in line, line
    assert Path(db).read_bytes() == before
