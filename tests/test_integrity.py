"""A damaged file is seen: `status` and `status --check` probe the file (every page while it
is small, a sample of pages when it is large) and call damage unhealthy with exit 1;
`verify --integrity` checks every page, with a progress line."""
import os
import pty
import random
import sqlite3
import subprocess
import sys

import pytest
from support import KEY, build_mirror, read_terminal

from syncer import integrity


def syncer(db, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTYPE_", "SYNCER_"))}
    env["RUNTYPE_API_KEY"] = KEY
    return subprocess.run([sys.executable, "-m", "syncer", "--db", str(db), *args],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    db = tmp_path_factory.mktemp("integrity") / "m.db"
    build_mirror(db, seed=5, conversations=300)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return db


def damaged_copy(clean, tmp_path, blocks=20, seed=1, block=4096):
    """A copy of the mirror with `blocks` blocks of random bytes written at random places
    (past the first page), as a failing disk or a stray `dd` leaves it."""
    db = tmp_path / "m.db"
    data = bytearray(clean.read_bytes())
    rng = random.Random(seed)
    for _ in range(blocks):
        at = rng.randrange(4096, len(data) - block)
        data[at:at + block] = rng.randbytes(block)
    db.write_bytes(bytes(data))
    os.chmod(db, 0o600)
    return db


def test_a_clean_mirror_is_healthy(clean):
    assert syncer(clean, "status", "--check", "--max-age", "1d").returncode == 0
    result = syncer(clean, "verify", "--integrity")
    assert result.returncode == 0, result.stderr
    assert "every page" in result.stdout


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_status_sees_twenty_overwritten_blocks(clean, tmp_path, seed):
    db = damaged_copy(clean, tmp_path, seed=seed)
    for args in (("status", "--check", "--max-age", "1d"), ("status",)):
        result = syncer(db, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "damaged" in result.stdout + result.stderr
        assert "restore it from a backup" in result.stdout + result.stderr
        assert "Traceback" not in result.stderr
    result = syncer(db, "verify", "--integrity")
    assert result.returncode == 1 and "damaged" in result.stdout + result.stderr


def test_the_sampled_probe_of_a_large_file_sees_damaged_pages(clean, tmp_path):
    """Over the size checked whole, pages are sampled and each checked for the shape SQLite
    gives its pages; the probe says what it covered."""
    conn = sqlite3.connect(clean)
    fine = integrity.probe(conn, str(clean), whole_below=0, budget=10.0)
    assert fine.ok and "sampled" in fine.covered, fine
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    assert fine.covered.startswith(f"{pages - free:,} of {pages:,} pages")   # all but free
    for seed in range(5):
        db = damaged_copy(clean, tmp_path, blocks=20, seed=seed)
        found = integrity.probe(conn, str(db), whole_below=0, budget=10.0)
        assert not found.ok and found.problem.startswith("page "), (seed, found)


def test_verify_integrity_draws_a_progress_line_on_a_terminal(clean):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTYPE_", "SYNCER_"))}
    master, slave = pty.openpty()
    with subprocess.Popen([sys.executable, "-m", "syncer", "--db", str(clean), "verify",
                           "--integrity"], stdout=subprocess.PIPE, stderr=slave,
                          env=env) as proc:
        os.close(slave)
        drawn = read_terminal(master).decode()
        out = proc.stdout.read().decode()
        assert proc.wait(timeout=60) == 0
    assert "checking " in drawn and "% (messages)" in drawn and "100 % (the free list)" in drawn
    assert drawn.endswith("\r\x1b[K")                    # wiped once done
    assert out.startswith(f"{clean}: no damage found in every page")
