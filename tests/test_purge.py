"""`syncer purge` as a user runs it: a real process on a real file synced from the simulator.
What is forgotten is gone from the bytes of the database and its WAL, what is kept is exact, a
later sync does not fetch it again, bad input changes nothing, and a purge killed at any moment
leaves a consistent database that a rerun finishes."""
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from support import (assert_exact, dict_rows, fts_ok, mirror, process_env,
                     settings_for, upstream_tables, wait_for)

from syncer import config, lock
from syncer.purge import purge_deleted, scrub, scrub_owed
from syncer.runner import run_sync
from syncer.simulator import Behaviour, SimulatorServer, generate
from syncer.store import Store

# distinctive text of the conversation to forget, each somewhere else in the database
SECRETS = {
    "message": "zebra-unicorn-4711 where is my refund",
    "token": "zqxvbnmpurgeword",                      # one FTS5 term of its own
    "old subject": "old-subject-lemur-1234",          # replaced upstream before the purge
    "subject": "quokka-narwhal-9034",
    "name": "Ottoline Purgeworthy",
    "email": "purge-me-8812@example.test",
    "context": "context-wombat-5521",
    "participant metadata": "meta-axolotl-3306",
    "external id": "ext-person-6610",
    "message metadata": "msgmeta-ibis-2207",
    "later message": "second-message-tapir-5150",
    "rejected message": "reject-content-marmot-7788",
}


# FTS5 stores a term after the prefix it shares with the term before it: look for the tails
FTS_TAILS = {"message term": "xvbnmpurgeword", "name term": "urgeworthy"}


def syncer(db, *args, env=None, timeout=120):
    env = env or {k: v for k, v in os.environ.items() if not k.startswith(("RUNTYPE_", "SYNC"))}
    return subprocess.run([sys.executable, "-m", "syncer", "--db", str(db), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


def file_bytes(db) -> bytes:
    return b"".join(Path(f"{db}{s}").read_bytes() for s in ("", "-wal")
                    if Path(f"{db}{s}").exists())


def traces(db) -> list[str]:
    data = file_bytes(db)
    return [what for what, text in {**SECRETS, **FTS_TAILS}.items() if text.encode() in data]


def fts_terms(db, fts: str) -> set[str]:
    conn = sqlite3.connect(db)
    conn.execute(f"CREATE VIRTUAL TABLE temp.v USING fts5vocab(main, {fts}, 'row')")
    terms = {t for (t,) in conn.execute("SELECT term FROM temp.v")}
    conn.close()
    return terms


def consistent(db) -> None:
    """SQLite's and FTS5's integrity checks pass, and each conversation is either forgotten
    whole or held whole."""
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    assert fts_ok(db)
    for row in dict_rows(db, "SELECT c.*, (SELECT count(*) FROM messages m "
                             "WHERE m.conversationId = c.id) AS held FROM conversations c"):
        if row["_purged_at"] is None:
            assert row["held"] == row["_messages_held"] and row["_raw"] != "", row["id"]
        else:
            assert (row["held"], row["subject"], row["participantEmail"], row["context"]) == \
                (0, None, None, None), row["id"]


def add_victim(upstream) -> str:
    """A conversation holding every secret, in every place the mirror keeps text."""
    victim = upstream.create_conversation(
        subject=SECRETS["old subject"], participantName=SECRETS["name"],
        participantEmail=SECRETS["email"], externalParticipantId=SECRETS["external id"],
        context={"note": SECRETS["context"], "padding": "x" * 6000},
        participantMetadata={"tier": SECRETS["participant metadata"]})["id"]
    upstream.add_message(victim, f"{SECRETS['message']} {SECRETS['token']}",
                         metadata={"x": SECRETS["message metadata"]})
    upstream.add_message(victim, SECRETS["rejected message"], role=123)   # quarantined
    return victim


def _open_without_secure_delete(real_open):
    def open_(cls, path):
        store = real_open(cls, path)
        store.conn.execute("PRAGMA secure_delete = 0")
        return store
    return classmethod(open_)


@pytest.fixture
def tombstoned(tmp_path, monkeypatch):
    """A mirror in which the victim was synced, changed, synced again and then tombstoned by a
    full sync after its deletion upstream. The syncs run as with a SQLite whose secure_delete is
    off by default (most builds; Debian's is on), so copies of replaced and moved data stay in
    free pages and free space: what the purge must also wipe."""
    upstream = generate(seed=61, conversations=40, big_conversations=0)
    victim = add_victim(upstream)
    ids = upstream.conversation_ids()
    db = tmp_path / "m.db"
    with SimulatorServer(upstream, Behaviour()) as server, monkeypatch.context() as patch:
        patch.setattr(Store, "open", _open_without_secure_delete(Store.open.__func__))
        settings = settings_for(server, db)
        run_sync(settings)
        for i in range(3):
            upstream.add_message(ids[i], f"another message {i}")
            run_sync(settings)
        upstream.update_conversation(victim, subject=SECRETS["subject"],
                                     context={"v": 2, "long": "y" * 6000})
        upstream.add_message(victim, SECRETS["later message"])
        summary = run_sync(settings)    # the victim's message with a bad role is quarantined
        assert summary.outcome == "partial" and "1 record was rejected" in summary.error
        upstream.delete_conversation(victim)
        assert run_sync(settings, full=True).counts["conversations_deleted"] == 1
        patch.undo()
        yield upstream, server, db, victim


def test_purge_deleted_leaves_no_trace_in_the_file_or_its_wal(tombstoned):
    upstream, server, db, victim = tombstoned
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    conn.close()
    # the check sees them (earlier versions only while their free pages were not reused)
    assert set(traces(db)) >= (set(SECRETS) | set(FTS_TAILS)) - {"old subject", "context"}
    assert SECRETS["token"] in fts_terms(db, "messages_fts")

    r = syncer(db, "purge", "--deleted")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == \
        "forgot 1 conversations (1 deleted upstream, 0 inactive) and 2 messages"

    assert traces(db) == []
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    assert SECRETS["token"] not in fts_terms(db, "messages_fts")
    assert "purgeworthy" not in fts_terms(db, "conversations_fts")
    row, = dict_rows(db, "SELECT * FROM conversations WHERE id = ?", (victim,))
    kept = {k: v for k, v in row.items() if v is not None}
    assert sorted(kept) == ["_deleted_at", "_messages_complete", "_messages_held",
                            "_messages_missing", "_purged_at", "_raw", "_seq", "_synced_at",
                            "createdAt", "id", "lastMessageAt", "status", "updatedAt"]
    assert set(json.loads(row["_raw"])) == {"id", "createdAt", "updatedAt", "lastMessageAt",
                                            "status"}
    assert dict_rows(db, "SELECT count(*) AS n FROM messages WHERE conversationId = ?",
                     (victim,)) == [{"n": 0}]
    assert dict_rows(db, "SELECT count(*) AS n FROM _rejects") == [{"n": 0}]
    assert dict_rows(db, "SELECT outcome, criteria, conversations, messages, "
                         "scrubbed_at IS NOT NULL AS scrubbed FROM _purges") == [
        {"outcome": "ok", "criteria": "--deleted", "conversations": 1, "messages": 2,
         "scrubbed": 1}]
    # everything else is exactly upstream, and the mirror stays usable
    assert_exact(db, upstream)
    consistent(db)

    # a later full sync does not fetch it again, and a second purge has nothing to do
    server.reset_log()
    r = syncer(db, "sync", "--full", env=process_env(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert server.count(f"/v1/messaging/conversations/{victim}") == 0
    r = syncer(db, "purge", "--deleted")
    assert r.stdout.startswith("forgot 0 conversations"), r.stdout
    assert traces(db) == []


def test_dry_run_says_what_would_go_and_changes_nothing(tombstoned):
    upstream, server, db, victim = tombstoned
    before = {p.name: p.read_bytes() for p in db.parent.iterdir()}
    r = syncer(db, "purge", "--deleted", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"would forget 1 conversations (1 deleted upstream, 0 inactive) and 2 messages: "
        f"{victim}", "dry run: nothing changed"]
    assert {p.name: p.read_bytes() for p in db.parent.iterdir()} == before


def test_a_reader_holding_the_wal_makes_it_exit_1_and_a_rerun_finishes(tombstoned):
    upstream, server, db, victim = tombstoned
    reader = sqlite3.connect(db)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM messages").fetchone()[0] > 0   # a snapshot
    r = syncer(db, "purge", "--deleted")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.startswith("forgot 1 conversations")
    assert r.stderr.splitlines() == [
        "error: another process kept the write-ahead log from being emptied; purged text may "
        "remain in it: run `syncer purge` again"]
    reader.close()
    r = syncer(db, "purge", "--deleted")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("forgot 0 conversations")
    assert traces(db) == []
    assert dict_rows(db, "SELECT conversations, scrubbed_at IS NOT NULL AS scrubbed "
                         "FROM _purges ORDER BY id") == [{"conversations": 1, "scrubbed": 1},
                                                         {"conversations": 0, "scrubbed": 1}]
    consistent(db)


def test_older_than_keeps_recent_tombstones(tombstoned):
    upstream, server, db, victim = tombstoned
    r = syncer(db, "purge", "--deleted", "--older-than", "1h")
    assert r.stdout.startswith("forgot 0 conversations"), r.stdout + r.stderr
    assert "subject" in traces(db)         # still held
    conn = sqlite3.connect(db)
    conn.execute("UPDATE conversations SET _deleted_at = '2020-01-01T00:00:00.000000Z' "
                 "WHERE id = ?", (victim,))
    conn.commit()
    conn.close()
    r = syncer(db, "purge", "--deleted", "--older-than", "1h")
    assert r.stdout.startswith("forgot 1 conversations"), r.stdout + r.stderr
    assert traces(db) == []


def test_retain_forgets_the_inactive_and_a_sync_leaves_them_alone(tmp_path):
    """The generated conversations are all from 2024; five are touched now. --retain 30d
    forgets the others: they stay forgotten through syncs, are no gaps or differences, and one
    that changes upstream comes back whole."""
    upstream = generate(seed=62, conversations=40, big_conversations=2)
    ids = upstream.conversation_ids()
    for cid in ids[:5]:
        upstream.update_conversation(cid, subject=f"still active {cid}")
    db = tmp_path / "m.db"
    with SimulatorServer(upstream, Behaviour(message_paging="none")) as server:
        env = process_env(server)
        syncer(db, "sync", env=env)
        status = json.loads(syncer(db, "status", "--format", "json").stdout)
        assert status["gaps"]["conversations"] == 2

        r = syncer(db, "purge", "--retain", "30d")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("forgot 35 conversations (0 deleted upstream, 35 inactive)")
        held = {r["conversationId"] for r in dict_rows(db, "SELECT conversationId FROM messages")}
        assert held == set(ids[:5]) - {c for c in ids[:5] if not upstream.messages_of(c)}
        signatures = dict_rows(db, "SELECT count(*) AS n FROM conversations "
                                   "WHERE _purged_at IS NOT NULL AND _list_sig IS NOT NULL")
        assert signatures == [{"n": 35}]

        # purged conversations are neither gaps nor differences, nor listed
        status = json.loads(syncer(db, "status", "--format", "json").stdout)
        assert status["gaps"]["conversations"] == 0
        r = syncer(db, "verify", "--format", "json", env=env)
        assert r.returncode == 0, r.stdout
        assert json.loads(r.stdout)["differences"] == 0
        listed = json.loads(syncer(db, "conversations", "--format", "json").stdout)
        assert sorted(c["id"] for c in listed) == sorted(ids[:5])
        assert_held_exact(db, upstream, ids[:5])

        # syncs do not fetch them again
        server.reset_log()
        assert syncer(db, "sync", "--full", env=env).returncode == 0
        assert syncer(db, "sync", env=env).returncode == 0
        fetched = {p.split("/")[4] for m, p, q, s in server.requests if p.count("/") >= 4}
        assert fetched == set()

        # one changes upstream: it alone is fetched, whole, and is an ordinary conversation
        upstream.add_message(ids[10], "back from the dead: refund please")
        server.reset_log()
        assert syncer(db, "sync", env=env).returncode == 0
        fetched = {p.split("/")[4] for m, p, q, s in server.requests if p.count("/") >= 4}
        assert fetched == {ids[10]}
        row, = dict_rows(db, "SELECT _purged_at, subject, _messages_held FROM conversations "
                             "WHERE id = ?", (ids[10],))
        assert row == {"_purged_at": None, "subject": upstream.get(ids[10])["subject"],
                       "_messages_held": len(upstream.messages_of(ids[10]))}
        hits = json.loads(syncer(db, "search", "back from the dead", "--format", "json").stdout)
        assert [h["conversationId"] for h in hits] == [ids[10]]
        consistent(db)


def test_purge_deleted_inside_the_tombstoning_transaction(tombstoned):
    """How the engine calls it for [store].on_delete = "purge": inside the transaction that
    tombstones, then scrub() once the run's writing is over."""
    upstream, server, db, victim = tombstoned
    other = upstream.conversation_ids()[3]
    with lock.writing(str(db)):
        store = Store.open(str(db))
        try:
            with store.transaction():
                store.conn.execute("UPDATE conversations SET _deleted_at = '2026-01-01T00:00:"
                                   "00.000000Z' WHERE id = ?", (other,))
                result = purge_deleted(store, ids=[other], in_transaction=True)
            assert (result.conversations, result.deleted) == (1, 1)
            assert scrub_owed(store)
            assert scrub(store) and not scrub_owed(store)
            # the older tombstone was not among the ids: kept until asked
            assert store.conn.execute("SELECT _purged_at IS NULL FROM conversations "
                                      "WHERE id = ?", (victim,)).fetchone() == (1,)
            assert purge_deleted(store, ids=[]).conversations == 0     # nothing, not recorded
            assert purge_deleted(store).conversations == 1
        finally:
            store.close()
    assert traces(db) == []
    consistent(db)
    rows = dict_rows(db, "SELECT criteria, conversations FROM _purges ORDER BY id")
    assert rows == [{"criteria": "on delete", "conversations": 1},
                    {"criteria": "deleted", "conversations": 1}]


def test_on_delete_purge_forgets_what_a_sync_tombstones(tmp_path):
    """[store].on_delete = "purge": the run that tombstones a conversation also forgets it,
    and its text is gone from the bytes when the sync exits."""
    upstream = generate(seed=62, conversations=40, big_conversations=0)
    victim = add_victim(upstream)
    cfg = tmp_path / "syncer.toml"
    cfg.write_text('[store]\non_delete = "purge"\n')
    db = tmp_path / "m.db"
    with SimulatorServer(upstream, Behaviour()) as server:
        run = ["--config", str(cfg), "sync"]
        # exit 1: the victim's message with a bad role is quarantined, the rest mirrored
        assert syncer(db, *run, env=process_env(server)).returncode == 1
        assert "message" in traces(db)
        upstream.delete_conversation(victim)
        r = syncer(db, *run, "--full", env=process_env(server))
        assert r.returncode == 0, r.stderr
        assert traces(db) == []
        consistent(db)
        assert dict_rows(db, "SELECT _deleted_at IS NOT NULL AS gone, _purged_at IS NOT NULL "
                             "AS forgotten FROM conversations WHERE id = ?", (victim,)) == \
            [{"gone": 1, "forgotten": 1}]
        server.reset_log()
        assert syncer(db, *run, env=process_env(server)).returncode == 0
        assert dict_rows(db, "SELECT count(*) AS n FROM _purges") == [{"n": 1}]
        assert_exact(db, upstream)


def test_on_delete_setting(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[store]\non_delete = "purge"\n')
    assert config.load(str(cfg), env={}).on_delete == "purge"
    assert config.load(None, env={}).on_delete == "keep"


def _bad_inputs(tmp_path, db):
    text = tmp_path / "notes.db"
    text.write_text("not a database\n")
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE mine (x)")
    conn.commit()
    conn.close()
    cfg = tmp_path / "c.toml"
    cfg.write_text('[store]\non_delete = "sometimes"\n')
    return {
        "no criteria": ([db, "purge"], "--deleted, --retain"),
        "bad duration": ([db, "purge", "--retain", "soon"], "--retain: not a duration"),
        "bad older-than": ([db, "purge", "--deleted", "--older-than", "3 fortnights"],
                           "--older-than: not a duration"),
        "older-than alone": ([db, "purge", "--older-than", "30d"], "add --deleted"),
        "zero retain": ([db, "purge", "--retain", "0s"], "longer than 0"),
        "bad on_delete": ([db, "--config", cfg, "purge", "--deleted"], "[store].on_delete"),
        "text file": ([text, "purge", "--deleted"], "not a SQLite database"),
        "foreign sqlite": ([foreign, "purge", "--deleted"], "not made by syncer"),
        "no database": ([tmp_path / "absent.db", "purge", "--deleted"], "no database at"),
    }


@pytest.mark.parametrize("case", ["no criteria", "bad duration", "bad older-than",
                                  "older-than alone", "zero retain", "bad on_delete",
                                  "text file", "foreign sqlite", "no database"])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(tombstoned, case):
    upstream, server, db, victim = tombstoned
    args, needle = _bad_inputs(db.parent, db)[case]
    before = {p.name: p.read_bytes() for p in db.parent.iterdir()}
    r = syncer(*args)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    after = {p.name: p.read_bytes() for p in db.parent.iterdir()}
    assert after == before


def test_purge_killed_at_any_moment_is_consistent_and_a_rerun_finishes(tmp_path):
    """SIGKILL a real purge at random moments after it started writing, twice in a row (the
    second kill hits the rerun of the first); after each kill the database passes SQLite's and
    FTS5's integrity checks, and every conversation is forgotten whole or held whole. A rerun
    then forgets everything it should, nothing else, and leaves no trace in the file."""
    upstream = generate(seed=63, conversations=900, messages_per_conversation=6,
                        big_conversations=0)
    ids = upstream.conversation_ids()
    victim = add_victim(upstream)
    active = ids[:40]
    for cid in active:
        upstream.update_conversation(cid, subject=f"active {cid}")
    db = tmp_path / "m.db"
    with SimulatorServer(upstream, Behaviour()) as server:
        env = process_env(server)
        syncer(db, "sync", env=env)
        for cid in [victim, *ids[100:160]]:         # under 10% of the mirror
            upstream.delete_conversation(cid)
        r = syncer(db, "sync", "--full", env=env)
        assert "61 deleted" in r.stdout, r.stdout + r.stderr
    pristine = tmp_path / "pristine.db"
    shutil.copy(db, pristine)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTYPE_", "SYNC"))}
    command = [sys.executable, "-m", "syncer", "--db", str(db), "purge", "--deleted",
               "--retain", "30d"]
    rng = random.Random(63)
    for attempt in range(3):
        for suffix in ("-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        shutil.copy(pristine, db)
        for kill in range(2):
            started = _purges(db)
            p = subprocess.Popen(command, env=base, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            wait_for(lambda: p.poll() is not None or _purges(db) > started,
                     "the purge to start")
            _wait_or_exit(p, rng.uniform(0, 0.5))
            p.kill()
            p.wait()
            consistent(db)
        r = syncer(db, "purge", "--deleted", "--retain", "30d")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[-1].startswith("the database and its WAL are scrubbed")
        consistent(db)
        purged = {r["id"] for r in dict_rows(db, "SELECT id FROM conversations "
                                                 "WHERE _purged_at IS NOT NULL")}
        assert purged == (set(ids) - set(active)) | {victim}
        assert_held_exact(db, upstream, active)
        assert traces(db) == []
        outcomes = [r["outcome"] for r in dict_rows(db, "SELECT outcome FROM _purges")]
        assert outcomes[-1] == "ok" and "running" not in outcomes


def _purges(db) -> int:
    try:
        conn = sqlite3.connect(f"{Path(db).resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT count(*) FROM _purges").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError:          # not migrated yet, or busy
        return 0


def _wait_or_exit(p, seconds: float) -> None:
    try:
        p.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pass


def assert_held_exact(db, upstream, keep) -> None:
    """The conversations in `keep`, and only they, are held whole: rows and messages equal
    upstream's records."""
    got_c, got_m = mirror(db)
    held = {r["id"] for r in dict_rows(db, "SELECT id FROM conversations "
                                           "WHERE _purged_at IS NULL AND _deleted_at IS NULL")}
    assert held == set(keep)
    want_c, want_m = upstream_tables(upstream)
    assert {cid: got_c[cid] for cid in held} == {cid: want_c[cid] for cid in keep}
    assert got_m == {mid: m for mid, m in want_m.items() if m["conversationId"] in held}
