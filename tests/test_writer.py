"""The batch writer: many conversations a transaction, nothing lost when it fails."""
import sqlite3

from support import assert_exact, settings_for

from syncer import writer
from syncer.runner import run_sync
from syncer.simulator import Behaviour, SimulatorServer, generate
from syncer.store import Store


def test_conversations_are_committed_in_batches(tmp_path, monkeypatch):
    sizes = []
    original = Store.save_conversations

    def spy(self, batch, run_id=None):
        sizes.append(len(batch))
        return original(self, batch, run_id)
    monkeypatch.setattr(Store, "save_conversations", spy)
    upstream = generate(seed=43, conversations=200)
    with SimulatorServer(upstream, Behaviour(message_paging="offset")) as server:
        db = tmp_path / "m.db"
        summary = run_sync(settings_for(server, db, concurrency=4))
    assert summary.outcome == "ok"
    assert sum(sizes) == 200 and max(sizes) > 1 and max(sizes) <= writer.BATCH
    assert_exact(db, upstream)


def test_a_failing_write_stops_the_run_and_loses_nothing(tmp_path, monkeypatch):
    upstream = generate(seed=47, conversations=150)
    calls = {"n": 0}
    original = Store.save_conversations

    def flaky(self, batch, run_id=None):
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return original(self, batch, run_id)
    with SimulatorServer(upstream, Behaviour(message_paging="offset")) as server:
        db = tmp_path / "m.db"
        monkeypatch.setattr(Store, "save_conversations", flaky)
        summary = run_sync(settings_for(server, db, concurrency=4))
        assert summary.outcome == "failed" and summary.exit_code == 1
        assert summary.error == "writing the mirror failed: disk I/O error"
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT outcome, error FROM _sync_runs").fetchall() == [
            ("failed", "writing the mirror failed: disk I/O error")]
        conn.close()
        monkeypatch.setattr(Store, "save_conversations", original)
        assert run_sync(settings_for(server, db)).outcome == "ok"
        assert_exact(db, upstream)
