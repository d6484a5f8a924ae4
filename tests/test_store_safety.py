"""The store's own safety: a failed COMMIT leaves no transaction open, a database that cannot be
opened leaves no connection behind, and reads from other threads never see a transaction half
done."""
import os
import sqlite3
import threading

import pytest

from syncer import migrations
from syncer.errors import StoreError
from syncer.store import Store


def test_a_failed_commit_is_rolled_back_and_the_store_goes_on(tmp_path):
    store = Store.open(str(tmp_path / "m.db"))
    try:
        store.conn.execute("PRAGMA foreign_keys = ON")
        store.conn.execute("CREATE TEMP TABLE parent (id INTEGER PRIMARY KEY)")
        store.conn.execute("CREATE TEMP TABLE child (parent INTEGER REFERENCES parent(id) "
                           "DEFERRABLE INITIALLY DEFERRED)")
        with pytest.raises(sqlite3.IntegrityError):
            with store.transaction():           # the constraint is checked at COMMIT
                store.conn.execute("INSERT INTO child VALUES (42)")
                store.set_state("written", "in the failed transaction")
        assert not store.conn.in_transaction
        assert store.get_state("written") is None
        with store.transaction():
            store.set_state("written", "after")
        assert store.get_state("written") == "after"
    finally:
        store.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_a_database_that_cannot_be_opened_leaves_no_connection_behind(tmp_path):
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA application_id = {migrations.APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {migrations.LATEST + 1}")
    conn.close()
    before = open_fds()
    for _ in range(20):                     # a failing daemon tick, again and again
        with pytest.raises(StoreError):
            Store.open(str(newer))
    assert open_fds() == before


def test_reads_from_other_threads_never_see_a_transaction_half_done(tmp_path):
    store = Store.open(str(tmp_path / "m.db"))
    seen = []
    inside = threading.Event()
    try:
        def read():
            inside.wait(10)
            seen.append(store.get_state("half"))
        reader = threading.Thread(target=read)
        reader.start()
        with store.transaction():
            store.set_state("half", "uncommitted")
            inside.set()
            reader.join(0.3)                # the reader waits for the transaction to end
            store.set_state("half", None)
        reader.join(10)
        assert seen == [None]
    finally:
        store.close()
