"""One writer: the flock beside the database, across real processes."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading

import pytest
from support import assert_exact, process_env, settings_for, wait_for

from syncer import lock
from syncer.errors import LockedError, StoreError
from syncer.runner import run_sync
from syncer.simulator import Behaviour, SimulatorServer, generate

LIST = "/v1/messaging/conversations"


class Gate:
    """A simulator hook that holds every list request once `armed`, until `open()`."""

    def __init__(self):
        self.armed = True
        self.reached = threading.Event()
        self._open = threading.Event()

    def __call__(self, method, path, query):
        if self.armed and path == LIST:
            self.reached.set()
            self._open.wait(60)

    def open(self):
        self.armed = False
        self._open.set()


@pytest.fixture
def world(tmp_path):
    upstream = generate(seed=3, conversations=60, messages_per_conversation=4)
    gate = Gate()
    gate.armed = False
    with SimulatorServer(upstream, Behaviour(message_paging="offset", on_request=gate)) as server:
        yield upstream, server, gate, tmp_path
        gate.open()


env_for = process_env


def spawn(tmp_path, server, *args):
    return subprocess.Popen([sys.executable, "-m", "syncer", "--db", str(tmp_path / "m.db"),
                             *args], cwd=tmp_path, env=env_for(server), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)



def runs(db):
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("SELECT outcome FROM _sync_runs ORDER BY id")]
    finally:
        conn.close()


def test_lock_names_its_holder_and_is_released(tmp_path):
    db = str(tmp_path / "m.db")
    held = lock.WriterLock(db, role="daemon")
    held.acquire()
    assert (tmp_path / "m.db.lock").stat().st_mode & 0o777 == 0o600
    info = json.loads((tmp_path / "m.db.lock").read_text())
    assert info["pid"] == os.getpid() and info["role"] == "daemon"
    assert lock.holder(db) == info
    with pytest.raises(LockedError) as e:
        lock.WriterLock(db).acquire()       # a second open file description: a second writer
    assert str(e.value) == (f"another syncer daemon (pid {os.getpid()}, since {info['since']}) "
                            f"is writing {db}")
    assert e.value.exit_code == 4
    held.release()
    assert lock.holder(db) is None
    assert (tmp_path / "m.db.lock").exists()   # kept: deleting a flock file races
    with lock.WriterLock(db):
        pass


def test_writing_is_reentrant_in_one_process(tmp_path):
    db = str(tmp_path / "m.db")
    with lock.writing(db, role="daemon"):
        with lock.writing(str(tmp_path / "." / "m.db")):   # another spelling, same lock
            assert lock.holder(db)["role"] == "daemon"
        assert lock.holder(db)["role"] == "daemon"
        with pytest.raises(LockedError):
            lock.WriterLock(db).acquire()
    assert lock.holder(db) is None


def test_lock_in_a_missing_directory_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        lock.WriterLock(str(tmp_path / "nope" / "m.db")).acquire()


def test_run_sync_refuses_to_write_while_another_writer_holds_the_lock(world):
    upstream, server, gate, tmp_path = world
    db = tmp_path / "m.db"
    with lock.WriterLock(str(db)):
        with pytest.raises(LockedError):
            run_sync(settings_for(server, db))
    assert not db.exists()                       # changed nothing, not even created the file
    assert server.count() == 0
    assert run_sync(settings_for(server, db)).outcome == "ok"
    assert_exact(db, upstream)


def test_two_concurrent_syncs_exactly_one_writes(world):
    upstream, server, gate, tmp_path = world
    gate.armed = True                            # the winner waits at its first list page
    procs = [spawn(tmp_path, server, "sync"), spawn(tmp_path, server, "sync")]
    wait_for(lambda: any(p.poll() is not None for p in procs), "one sync to give up")
    loser = next(p for p in procs if p.poll() is not None)
    winner = next(p for p in procs if p is not loser)
    out, err = loser.communicate()
    assert loser.returncode == 4
    assert err.startswith(f"error: another syncer (pid {winner.pid}, since ")
    assert err.endswith(f"is writing {tmp_path / 'm.db'}\n")
    assert out == ""
    gate.open()
    out, err = winner.communicate(timeout=60)
    assert winner.returncode == 0, err
    assert runs(tmp_path / "m.db") == ["ok"]     # one run recorded: the loser wrote nothing
    assert_exact(tmp_path / "m.db", upstream)


def test_lock_of_a_killed_sync_does_not_block_the_next(world):
    upstream, server, gate, tmp_path = world
    gate.armed = True
    killed = spawn(tmp_path, server, "sync")
    assert gate.reached.wait(30)                 # it holds the lock and waits on the API
    assert lock.holder(str(tmp_path / "m.db"))["pid"] == killed.pid
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=30)
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / "m.db.lock").read_text())["pid"] == killed.pid  # left behind
    assert lock.holder(str(tmp_path / "m.db")) is None                         # but stale
    gate.open()
    later = spawn(tmp_path, server, "sync")
    out, err = later.communicate(timeout=60)
    assert later.returncode == 0, err
    assert runs(tmp_path / "m.db") == ["killed", "ok"]   # the next run marks the dead one
    assert_exact(tmp_path / "m.db", upstream)


def test_status_reads_while_a_sync_writes(world):
    upstream, server, gate, tmp_path = world
    assert run_sync(settings_for(server, tmp_path / "m.db")).outcome == "ok"
    upstream.update_conversation(upstream.conversation_ids()[0], subject="changed")
    gate.armed = True
    writer = spawn(tmp_path, server, "sync")
    assert gate.reached.wait(30)
    reader = spawn(tmp_path, server, "status", "--format", "json")
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    status = json.loads(out)
    assert status["writer"]["pid"] == writer.pid and status["writer"]["role"] == "sync"
    assert status["conversations"]["live"] == 60
    assert [r["outcome"] for r in status["runs"]] == ["running", "ok"]
    gate.open()
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert_exact(tmp_path / "m.db", upstream)


def test_the_loser_names_a_holder_that_has_not_written_its_details_yet(tmp_path):
    """The window between a holder's flock and its details reaching the file: a process that
    finds the lock held in that window still names the holder (pid and start time)."""
    import fcntl
    db = str(tmp_path / "m.db")
    fd = os.open(lock.lock_path(db), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)     # held, details not written yet
    details = {"pid": os.getpid(), "role": "sync", "since": "2026-12-08T02:00:00Z"}
    late = threading.Timer(0.2, lambda: os.pwrite(fd, json.dumps(details).encode(), 0))
    late.start()
    try:
        with pytest.raises(LockedError) as caught:
            lock.WriterLock(db).acquire()
        assert str(caught.value) == (f"another syncer (pid {os.getpid()}, since "
                                     f"2026-12-08T02:00:00Z) is writing {db}")
    finally:
        late.join()
        os.close(fd)


def test_a_lock_file_rewritten_never_reads_empty(tmp_path):
    """A new holder replaces a killed holder's details in one write, never through an empty
    file: a reader polling meanwhile sees the old details or the new ones."""
    db = str(tmp_path / "m.db")
    lock.lock_path(db).write_text(json.dumps({"pid": 1, "role": "sync", "since": "x"}))
    seen, done = set(), threading.Event()

    def read():
        while not done.is_set():
            seen.add(lock.lock_path(db).read_text()[:1])
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(200):
            held = lock.WriterLock(db)
            held.acquire()
            held._fd, fd = None, held._fd
            os.close(fd)                  # dropped as a killed holder drops it: details stay
    finally:
        done.set()
        reader.join()
    assert seen == {"{"}
