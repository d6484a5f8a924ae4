"""Against the fuller contract of the vendor's SDK (runtype-sdk 5.5.0): messages that change
after they are created, records the mirror must not reject, lists that give no totalCount
unless asked, an early stop only on evidence, pages too large for one answer, gap labels.
Each test compares the mirror with the simulator's data after every run that exits 0."""
import sqlite3

from support import assert_exact, assert_exact_except_gaps, settings_for

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
        _edit_message(upstream, big, -1, deliveryStatus="failed", deliveryError="bounced")
        _edit_message(upstream, big, -50, deliveryStatus="delivered")
        upstream.add_message(big, "and a new one")
        server.reset_log()
        summary = sync(server, db)
        assert summary.exit_code == 0
        assert summary.counts["messages_written"] == 3
        assert server.count(f"{LIST}/") == 2            # the detail and the newest page only
        assert_exact(db, upstream)
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT count(*) FROM messages WHERE conversationId = ? AND "
                            "json_extract(metadata, '$.deliveryStatus') = 'failed'",
                            (big,)).fetchone() == (1,)


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
