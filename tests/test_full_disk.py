"""A disk that fills during a sync: what was fetched before it filled is committed and stays,
the run says how much space it needs, and after space is freed the next run resumes from
there. On a real small filesystem (a tmpfs mounted for the test; skipped where this process
may not mount one)."""
import contextlib
import os
import sqlite3
import subprocess

import pytest
from support import assert_exact, settings_for

from syncer.runner import run_sync
from syncer.simulator import Behaviour, SimulatorServer, generate


@contextlib.contextmanager
def small_disk(path, megabytes):
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs",
                           str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a small filesystem here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def grow(path, megabytes):
    subprocess.run(["mount", "-o", f"remount,size={megabytes}m", str(path)], check=True)


def test_a_first_sync_that_fills_the_disk_keeps_what_fit_and_resumes(tmp_path):
    upstream = generate(seed=3, conversations=600, messages_per_conversation=8)
    with small_disk(tmp_path / "disk", 3) as disk, \
            SimulatorServer(upstream, Behaviour(message_paging="offset")) as server:
        db = disk / "m.db"
        summary = run_sync(settings_for(server, db))
        assert summary.exit_code == 1
        assert "disk" in summary.error and "full" in summary.error
        assert "free some space" in summary.error and "resumes" in summary.error
        assert " MB more" in summary.error             # how much it needs, roughly
        conn = sqlite3.connect(db)
        kept = conn.execute("SELECT count(*) FROM conversations").fetchone()[0]
        queued = conn.execute("SELECT count(*) FROM _sync_queue").fetchone()[0]
        conn.close()
        assert kept >= 50                              # what fit before the disk filled
        assert kept + queued == 600
        assert f"{kept} conversations" in summary.error
        grow(disk, 64)
        server.reset_log()
        summary = run_sync(settings_for(server, db))
        assert summary.exit_code == 0, summary.error
        assert_exact(db, upstream)
        fetched = server.count("/v1/messaging/conversations/")
        assert fetched <= 2 * queued                   # the kept ones are not fetched again
