"""A mirror belongs to one upstream, and no run tombstones the mirror wholesale: another base
URL is refused before anything is written, --rebind moves a mirror, a mass deletion (or a
server that suddenly lists nothing) tombstones nothing without --max-delete, and a run whose
walk saw the whole list concludes deletions at once."""
import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from support import KEY, assert_exact, settings_for, show_bumps

from syncer.runner import run_sync
from syncer.simulator import Behaviour, SimulatorServer, generate
from syncer.simulator.app import HTTPError

LIST = "/v1/messaging/conversations"


def run(args, server, key=KEY, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTYPE_", "SYNCER_"))}
    env.update(RUNTYPE_BASE_URL=server.base_url, RUNTYPE_API_KEY=key)
    return subprocess.run([sys.executable, "-m", "syncer", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def live(db) -> set[str]:
    conn = sqlite3.connect(db)
    out = {r[0] for r in conn.execute("SELECT id FROM conversations WHERE _deleted_at IS NULL")}
    conn.close()
    return out


@pytest.fixture
def two_accounts(tmp_path):
    first = generate(seed=51, conversations=60, messages_per_conversation=2,
                        big_conversations=0)
    second = generate(seed=52, conversations=25, messages_per_conversation=2,
                        big_conversations=0)
    with SimulatorServer(first, Behaviour()) as a, SimulatorServer(second, Behaviour()) as b:
        db = tmp_path / "m.db"
        r = run(["--db", str(db), "sync"], a)
        assert r.returncode == 0, r.stderr
        yield first, second, a, b, db


def test_another_base_url_is_refused_before_anything_is_written(two_accounts):
    first, second, a, b, db = two_accounts
    before = digest(db)
    for command in (["sync"], ["sync", "--full"], ["verify"], ["daemon", "--interval", "1h"]):
        r = run(["--db", str(db), *command], b, timeout=30)
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert a.base_url in lines[0] and b.base_url in lines[0] and "--rebind" in lines[0]
        assert digest(db) == before
    assert b.count() == 0                       # not one request to the other API
    status = run(["--db", str(db), "status", "--format", "json"], a)
    assert f'"upstream": "{a.base_url}"' in status.stdout


def test_rebind_moves_the_mirror_within_the_deletion_guard(two_accounts):
    first, second, a, b, db = two_accounts
    r = run(["--db", str(db), "sync", "--rebind"], b)
    assert "rebinding this mirror from" in r.stderr and b.base_url in r.stderr
    assert r.returncode == 1                    # 60 of 85 would go: over the 10% guard
    assert "--max-delete 100%" in r.stderr
    assert live(db) == set(first.conversation_ids()) | set(second.conversation_ids())
    r = run(["--db", str(db), "sync", "--full", "--max-delete", "100%"], b)
    assert r.returncode == 0, r.stderr
    assert_exact(db, second)
    assert run(["--db", str(db), "sync"], a).returncode == 2    # now bound to the second


def test_a_rotated_key_is_accepted_with_one_warning(tmp_path):
    upstream = generate(seed=53, conversations=20, big_conversations=0)
    with SimulatorServer(upstream, Behaviour()) as server:
        db = tmp_path / "m.db"
        assert run(["--db", str(db), "sync"], server).returncode == 0
        server.behaviour.api_key = "rt_test_rotated_key_0001"
        r = run(["--db", str(db), "sync"], server, key="rt_test_rotated_key_0001")
        assert r.returncode == 0 and "API key differs" in r.stderr
        r = run(["--db", str(db), "sync"], server, key="rt_test_rotated_key_0001")
        assert r.returncode == 0 and "API key differs" not in r.stderr
        raw = Path(db).read_bytes()
        assert b"rt_test_rotated_key_0001" not in raw and KEY.encode() not in raw
        assert hashlib.sha256(b"rt_test_rotated_key_0001").hexdigest().encode() not in raw


@pytest.fixture
def synced(tmp_path):
    upstream = generate(seed=54, conversations=100, messages_per_conversation=2,
                        big_conversations=0)
    behaviour = Behaviour()
    with SimulatorServer(upstream, behaviour) as server:
        db = tmp_path / "m.db"
        assert run_sync(settings_for(server, db)).exit_code == 0
        yield upstream, server, db


def test_a_mass_deletion_tombstones_nothing_until_allowed(synced):
    upstream, server, db = synced
    gone = upstream.conversation_ids()[:20]
    for cid in gone:
        upstream.delete_conversation(cid)
    r = run(["--db", str(db), "sync", "--full"], server)
    assert r.returncode == 1
    assert "20 of the mirror's 100 live conversations" in r.stderr
    assert "syncer sync --full --max-delete 100%" in r.stderr
    assert live(db) >= set(gone)
    r = run(["--db", str(db), "sync", "--full", "--max-delete", "20"], server)
    assert r.returncode == 0, r.stderr
    assert_exact(db, upstream)


def test_a_server_that_suddenly_lists_nothing_tombstones_nothing(synced):
    upstream, server, db = synced
    server.upstream = generate(seed=55, conversations=0)     # empty lists, 404 for everything
    summary = run_sync(settings_for(server, db), full=True)
    assert summary.exit_code == 1 and "over the max_delete limit" in summary.error
    assert live(db) == set(upstream.conversation_ids())


def test_404s_on_direct_fetches_count_toward_the_guard(synced):
    upstream, server, db = synced
    for cid in upstream.conversation_ids()[:30]:
        upstream.update_conversation(cid, subject="changed")

    def everything_404(method, path, query):
        if path.startswith(LIST + "/"):
            raise HTTPError(404, "not_found", "no such conversation")
    server.behaviour.on_request = everything_404
    summary = run_sync(settings_for(server, db))
    assert summary.exit_code == 1 and "30 of the mirror's 100" in summary.error
    assert live(db) == set(upstream.conversation_ids())
    server.behaviour.on_request = None
    assert run_sync(settings_for(server, db)).exit_code == 0
    assert_exact(db, upstream)


@pytest.mark.parametrize("order", ["created_desc", "last_message_desc", "id_asc", "shuffled"])
def test_a_whole_list_walk_concludes_deletions_at_once(tmp_path, order):
    upstream = generate(seed=56, conversations=150, messages_per_conversation=2,
                        big_conversations=0)
    with SimulatorServer(upstream, Behaviour(list_order=order)) as server:
        db = tmp_path / "m.db"
        assert run_sync(settings_for(server, db)).exit_code == 0
        upstream.delete_conversation(upstream.conversation_ids()[7])
        server.reset_log()
        summary = run_sync(settings_for(server, db))
        assert summary.mode == "incremental" and summary.exit_code == 0
        assert summary.counts["conversations_deleted"] == 1
        assert server.count(LIST + "/") == 1            # one GET confirmed it
        assert_exact(db, upstream)


def test_an_early_stopped_walk_leaves_deletions_to_the_reconcile(tmp_path):
    upstream = generate(seed=57, conversations=150, messages_per_conversation=2,
                        big_conversations=0,
                        message_bumps_updated=True)
    behaviour = Behaviour(message_bumps_updated=True)
    with SimulatorServer(upstream, behaviour) as server:
        db = tmp_path / "m.db"
        assert run_sync(settings_for(server, db, page_size=20)).exit_code == 0
        show_bumps(upstream, settings_for(server, db, page_size=20))
        upstream.delete_conversation(upstream.conversation_ids()[7])
        summary = run_sync(settings_for(server, db, page_size=20))
        assert summary.early_stop and summary.exit_code == 0
        assert summary.counts["conversations_deleted"] == 0
        summary = run_sync(settings_for(server, db, page_size=20, reconcile_every=0.0))
        assert summary.counts["conversations_deleted"] == 1
        assert_exact(db, upstream)


def test_reconcile_checks_only_the_scope_one_request_each(tmp_path):
    upstream = generate(seed=58, conversations=120, messages_per_conversation=2,
                        big_conversations=0)
    with SimulatorServer(upstream, Behaviour()) as server:
        db = tmp_path / "m.db"
        assert run_sync(settings_for(server, db)).exit_code == 0
        open_ids = [c["id"] for c in upstream.snapshot()[0] if c["status"] == "open"]
        upstream.update_conversation(open_ids[0], status="closed")   # leaves the scope
        server.reset_log()
        summary = run_sync(settings_for(server, db, status="open"), full=True)
        assert summary.exit_code == 0
        details = [p for m, p, q, s in server.requests
                   if p.startswith(LIST + "/") and not p.endswith("/messages")]
        assert details == [f"{LIST}/{open_ids[0]}"]      # out of scope: not fetched at all
        assert_exact(db, upstream)


def test_a_file_syncer_did_not_make_is_refused_byte_for_byte(tmp_path):
    foreign = tmp_path / "other.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE notes (x)")
    conn.execute("INSERT INTO notes VALUES ('keep me')")
    conn.commit()
    conn.close()
    before = digest(foreign)
    upstream = generate(seed=59, conversations=5, big_conversations=0)
    with SimulatorServer(upstream, Behaviour()) as server:
        for command in (["sync"], ["verify"], ["verify", "--fix"]):
            r = run(["--db", str(foreign), *command], server)
            assert r.returncode == 2 and "not made by syncer" in r.stderr, r.stderr
            assert len(r.stderr.strip().splitlines()) == 1
            assert digest(foreign) == before
        assert server.count() == 0


@pytest.mark.parametrize("args, needle", [
    (["sync", "--max-delete", "ten"], "--max-delete: 'ten'"),
    (["sync", "--max-delete", "150%"], "--max-delete: '150%'"),
])
def test_a_bad_max_delete_is_one_line_and_changes_nothing(synced, args, needle):
    upstream, server, db = synced
    before = digest(db)
    r = run(["--db", str(db), *args], server)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {needle} is not a count or a percentage up to 100% (e.g. 50 or 10%)"]
    assert digest(db) == before


def test_a_bad_max_delete_in_the_config_file_is_one_line(tmp_path):
    cfg = tmp_path / "syncer.toml"
    cfg.write_text('[sync]\nmax_delete = "lots"\n')
    upstream = generate(seed=60, conversations=5, big_conversations=0)
    with SimulatorServer(upstream, Behaviour()) as server:
        r = run(["--config", str(cfg), "--db", str(tmp_path / "m.db"), "sync"], server)
    assert r.returncode == 2 and "[sync].max_delete" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "m.db").exists()
