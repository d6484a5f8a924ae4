"""Against the fuller contract of the vendor's SDK (runtype-sdk 5.5.0): messages that change
after they are created, records the mirror must not reject, lists that give no totalCount
unless asked, an early stop only on evidence, pages too large for one answer, gap labels.
Each test compares the mirror with the simulator's data after every run that exits 0."""
import sqlite3
import subprocess
import sys

import pytest

from support import assert_exact, assert_exact_except_gaps, process_env, settings_for

from syncer.runner import run_sync
from syncer.simulator import Behaviour, SimulatorServer, generate

LIST = "/v1/messaging/conversations"


def sync(server, db, **overrides):
    return run_sync(settings_for(server, db, **overrides))


def _edit_message(upstream, cid, index, **metadata):
    """A message's metadata changes upstream (delivery status moves on); the conversation's
    updatedAt moves with it."""
    with upstream.lock:
        message = upstream._message_records(cid)[index]
        message["metadata"] = {**(message["metadata"] or {}), **metadata}
    upstream.update_conversation(cid)


def test_a_message_edited_in_a_big_conversation_is_rewritten(tmp_path):
    upstream = generate(seed=11, conversations=10, big_conversations=1)
    big = max(upstream.snapshot()[0], key=lambda c: c["messageCount"])["id"]
    with SimulatorServer(upstream, Behaviour(message_paging="offset")) as server:
        db = tmp_path / "m.db"
        assert sync(server, db).exit_code == 0
        _edit_message(upstream, big, -1, deliveryStatus="failed", deliveryError="no such user")
        _edit_message(upstream, big, -50, deliveryStatus="delivered")
        upstream.add_message(big, "and a new one")
        server.reset_log()
        summary = sync(server, db)
        assert summary.exit_code == 0
        assert summary.counts["messages_written"] == 3
        assert server.count(f"{LIST}/") == 2            # the detail and the newest page only
        assert_exact(db, upstream)
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT json_extract(metadata, '$.deliveryStatus') FROM messages "
                            "WHERE json_extract(metadata, '$.deliveryError') = 'no such user'"
                            ).fetchall() == [("failed",)]


def test_a_message_edited_in_a_conversation_with_a_gap_is_rewritten(tmp_path):
    upstream = generate(seed=11, conversations=10, big_conversations=1)
    big = max(upstream.snapshot()[0], key=lambda c: c["messageCount"])["id"]
    with SimulatorServer(upstream, Behaviour(message_paging="none")) as server:
        db = tmp_path / "m.db"
        assert sync(server, db).exit_code == 0
        _edit_message(upstream, big, -3, deliveryStatus="bounced")
        summary = sync(server, db)
        assert summary.exit_code == 0
        assert summary.counts["messages_written"] == 1
        assert_exact_except_gaps(db, upstream)


def _health(db):
    from syncer import status
    return status.check(status.gather(str(db)), max_age=3600)


def test_a_run_that_rejects_records_exits_1_and_status_is_unhealthy(tmp_path):
    upstream = generate(seed=4, conversations=30)
    ids = upstream.conversation_ids()
    with upstream.lock:
        upstream._record(ids[0])["messageCount"] = -1
        upstream._record(ids[1])["status"] = 7
    with SimulatorServer(upstream, Behaviour(message_paging="offset")) as server:
        db = tmp_path / "m.db"
        for _ in range(2):                      # and on every rerun while they stay bad
            summary = sync(server, db)
            assert summary.exit_code == 1 and summary.outcome == "partial"
            assert "2 records were rejected" in summary.error
            assert "messageCount: must be >= 0" in summary.error
            healthy, line = _health(db)
            assert not healthy and "2 conversations are rejected" in line
        # fixed upstream: mirrored, exit 0, healthy again
        with upstream.lock:
            upstream._record(ids[0])["messageCount"] = len(upstream.messages_of(ids[0]))
        upstream.update_conversation(ids[0])
        upstream.update_conversation(ids[1], status="open")
        summary = sync(server, db)
        assert summary.exit_code == 0, summary.error
        assert_exact(db, upstream)
        assert _health(db)[0]
        # one rejected again, then deleted upstream: a whole walk no longer lists it
        with upstream.lock:
            upstream._record(ids[2])["subject"] = ["not", "text"]
        upstream.update_conversation(ids[2])
        assert sync(server, db).exit_code == 1
        assert not _health(db)[0]
        upstream.delete_conversation(ids[2])
        summary = run_sync(settings_for(server, db), full=True)
        assert summary.exit_code == 0, summary.error
        assert _health(db)[0]


def test_a_message_count_beyond_sqlite_costs_nothing_but_its_column(tmp_path):
    upstream = generate(seed=5, conversations=40)
    ids = upstream.conversation_ids()[:3]
    with upstream.lock:
        for cid in ids:
            upstream._record(cid)["messageCount"] = 2 ** 64 + 5
    with SimulatorServer(upstream, Behaviour()) as server:
        db = tmp_path / "m.db"
        first = sync(server, db)
        assert first.exit_code == 0, first.error
        assert first.counts["anomalies"] == 3
        again = sync(server, db)                     # stored as listed: nothing to fetch
        assert again.exit_code == 0 and again.counts["conversations_changed"] == 0
        conn = sqlite3.connect(db)
        rows = conn.execute("SELECT id, messageCount, json_extract(_raw, '$.messageCount'), "
                            "_messages_held FROM conversations WHERE id IN (?, ?, ?)",
                            ids).fetchall()
        assert len(rows) == 3 and all(r[1] is None for r in rows)
        assert {r[0]: r[3] for r in rows} == {cid: len(upstream.messages_of(cid)) for cid in ids}
        assert conn.execute("SELECT count(*) FROM conversations").fetchone() == (40,)
        assert conn.execute("SELECT count(*) FROM _rejects").fetchone() == (0,)
        raw = dict(conn.execute("SELECT id, _raw FROM conversations"))
        assert all(f'"messageCount":{2 ** 64 + 5}' in raw[cid] for cid in ids)


def consistent_world(seed: int, bumps: bool):
    """120 conversations whose every lastMessageAt is at or before its updatedAt, behind a
    server where a new message does (`bumps`) or does not bump updatedAt."""
    upstream = generate(seed=seed, conversations=120, big_conversations=0,
                        message_bumps_updated=True)
    upstream.behaviour = Behaviour(message_bumps_updated=bumps)
    return upstream, SimulatorServer(upstream, upstream.behaviour)


def test_the_early_stop_needs_evidence_not_an_absence(tmp_path):
    """Data where no record contradicts "a new message bumps updatedAt" (every lastMessageAt is
    at or before its updatedAt), served by a server where it does not: a walk must not stop at
    the watermark on that belief, or a message on an old conversation is never fetched."""
    upstream, simulator = consistent_world(21, bumps=False)
    with simulator as server:
        db = tmp_path / "m.db"
        assert sync(server, db, page_size=20).exit_code == 0
        for _ in range(3):
            oldest = min(upstream.snapshot()[0], key=lambda c: c["updatedAt"])["id"]
            upstream.add_message(oldest, "a late reply on an old thread")
            summary = sync(server, db, page_size=20)
            assert summary.exit_code == 0, summary.error
            assert not summary.early_stop
            assert_exact(db, upstream)


def test_the_early_stop_follows_evidence(tmp_path):
    upstream, simulator = consistent_world(22, bumps=True)
    with simulator as server:
        db = tmp_path / "m.db"
        assert sync(server, db, page_size=20).exit_code == 0
        first = sync(server, db, page_size=20)        # nothing seen yet: a whole walk
        assert first.exit_code == 0 and not first.early_stop
        upstream.add_message(upstream.conversation_ids()[0], "evidence")
        assert sync(server, db, page_size=20).exit_code == 0   # seen to gain a message
        upstream.add_message(upstream.conversation_ids()[5], "one more")
        server.reset_log()
        summary = sync(server, db, page_size=20)
        assert summary.exit_code == 0 and summary.early_stop
        assert server.count(LIST) < 6
        assert_exact(db, upstream)


def test_a_gap_is_labelled_by_what_was_seen():
    from syncer.cli_sync import gap_lines
    lines = gap_lines([("a", 120, 100), ("b", 3, 5), ("c", None, 100)])
    assert len(lines) == 3
    assert "a 100/120" in lines[0] and "serves fewer messages" in lines[0]
    assert "b 5/3" in lines[1] and "holds more messages" in lines[1]
    assert "fewer" not in lines[1]
    assert "c 100/?" in lines[2] and "could not be stored" in lines[2]


@pytest.mark.parametrize("style", ["lower", "long_fraction", "numoffset", "rfc3339"])
def test_every_rfc3339_spelling_mirrors_exactly(tmp_path, style):
    upstream = generate(seed=7, conversations=60)
    upstream.subsecond = True
    with SimulatorServer(upstream, Behaviour(timestamp_style=style,
                                             message_paging="offset")) as server:
        upstream.add_message(upstream.conversation_ids()[0], "sub-second stamp")
        db = tmp_path / "m.db"
        summary = sync(server, db)
        assert summary.exit_code == 0, summary.error
        assert summary.counts["rejects"] == 0
        assert_exact(db, upstream)
        # _raw keeps what the server sent, spelled as it was (assert_exact read it back)
        conn = sqlite3.connect(db)
        spelled = conn.execute("SELECT json_extract(_raw, '$.createdAt'), createdAt "
                               "FROM conversations").fetchall()
        assert sum(raw != column for raw, column in spelled) > len(spelled) // 2


def test_a_server_that_never_counts_is_walked_soundly(tmp_path):
    """The real list gives totalCount only on request; a server that ignores the request
    gives none. The walk asks, and without a count it checks the list did not shift by
    walking again, and shows no false total."""
    upstream = generate(seed=8, conversations=150, big_conversations=0)
    behaviour = Behaviour(count_mode="never")
    asked = []
    deleted = []

    def during_walk(method, path, query):
        if path == LIST:
            asked.append(query.get("includeCount"))
            if len(asked) == 3 and not deleted:       # the list shrinks under the walk
                for cid in upstream.conversation_ids()[:2]:
                    upstream.delete_conversation(cid)
                    deleted.append(cid)
    behaviour.on_request = during_walk
    with SimulatorServer(upstream, behaviour) as server:
        db = tmp_path / "m.db"
        seen = []
        summary = run_sync(settings_for(server, db, page_size=20, max_delete="100%"),
                           progress=seen.append)
        assert summary.exit_code == 0, summary.error
        assert set(asked) == {"true"}
        assert_exact(db, upstream)
        assert all(info.get("total") is None for info in seen if "walk" in info)
        assert summary.counts["pages"] >= 2 * 7     # walked again to prove no shift


MB = 1024 * 1024


def _with_big_messages(upstream, cid, sizes):
    """Messages of these sizes (bytes of content) added to `cid`, newest last."""
    for n, size in enumerate(sizes):
        upstream.add_message(cid, f"{n} " + "x" * size)


@pytest.mark.parametrize("paging", ["offset", "none"])
def test_a_messages_page_too_large_is_asked_again_smaller(tmp_path, paging):
    """Three 400 KB messages make the newest page 1.2 MB, over a 1 MB limit: it is asked
    again with a smaller limit until it fits, and the conversation is mirrored whole. A
    conversation of 150 messages with big ones among them too (with offset paging)."""
    upstream = generate(seed=8, conversations=6)
    small, long = upstream.conversation_ids()[:2]
    _with_big_messages(upstream, small, [400_000] * 3)
    _with_big_messages(upstream, long, [300_000, 10, 10, 300_000, 300_000, 300_000] + [10] * 60)
    with SimulatorServer(upstream, Behaviour(message_paging=paging)) as server:
        db = tmp_path / "m.db"
        for _ in range(2):
            summary = sync(server, db, max_response_bytes=MB)
            assert summary.exit_code == 0, summary.error
            if paging == "offset":
                assert_exact(db, upstream)
            else:
                gaps = assert_exact_except_gaps(db, upstream)
                assert small not in gaps
            _with_big_messages(upstream, small, [400_000])


def test_a_single_message_over_the_limit_is_a_reported_gap(tmp_path):
    """A message that alone is over the limit cannot be read: the rest of its conversation
    is mirrored, the one message is a gap the summary names, and the run exits 0."""
    upstream = generate(seed=8, conversations=4)
    cid = upstream.conversation_ids()[0]
    _with_big_messages(upstream, cid, [10, 2 * MB, 10])
    too_big = upstream._message_records(cid)[-2]["id"]
    with SimulatorServer(upstream, Behaviour(message_paging="offset")) as server:
        db = tmp_path / "m.db"
        summary = sync(server, db, max_response_bytes=MB)
        assert summary.exit_code == 0, summary.error
        assert summary.counts["messages_oversized"] == 1
        gaps = assert_exact_except_gaps(db, upstream)
        count = upstream._record(cid)["messageCount"]
        assert gaps == {cid: (count - 1, count)}
        held = {r[0] for r in sqlite3.connect(db).execute(
            "SELECT id FROM messages WHERE conversationId = ?", (cid,))}
        assert too_big not in held and len(held) == count - 1
        config = tmp_path / "syncer.toml"
        config.write_text("[api]\nmax_response_mb = 1\n")
        run = subprocess.run([sys.executable, "-m", "syncer", "--config", str(config), "--db",
                              str(tmp_path / "cli.db"), "sync"], env=process_env(server),
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert ("1 message is over [api].max_response_mb (1 MB) on its own and could not be "
                "read") in run.stdout
