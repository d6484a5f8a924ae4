"""Where an export may write: never onto the mirror, its companions (`-wal`, `-shm`,
`-journal`, `.lock`) or another syncer database, however the path is spelt (`./`, `..`,
symlinks, hard links), and a feed directory never inside another feed directory or around
the mirror. Each refusal is one line, exit 2, before a byte is written. Through the real
command line, on copies of a real mirror."""
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from support import build_mirror


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return Path(build_mirror(tmp_path_factory.mktemp("paths") / "m.db", seed=21,
                             conversations=20))


@pytest.fixture
def mirror(built, tmp_path):
    """A fresh copy of the mirror, m.db in its own directory (a refusal that fails would
    destroy it)."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(built, home / "m.db")
    return home / "m.db"


def syncer(cwd, *args):
    done = subprocess.run([sys.executable, "-m", "syncer", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith(("RUNTYPE_", "SYNCER_"))})
    return done.returncode, done.stdout, done.stderr


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refused(cwd, args, message):
    """One line naming the problem, no traceback, exit 2."""
    code, out, err = syncer(cwd, *args)
    assert (code, out) == (2, ""), (code, out, err)
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err


def companion_digests(db: Path, empty_if_new=None) -> dict:
    """The digest of each companion of `db` that exists. With `empty_if_new` (an earlier
    result), a companion that appeared since must be empty (SQLite leaves an empty -wal and
    -shm beside a WAL database it reads) and is left out."""
    found = {s: digest(Path(f"{db}{s}")) for s in ("-wal", "-shm", "-journal", ".lock")
             if Path(f"{db}{s}").exists()}
    if empty_if_new is not None:
        for s in set(found) - set(empty_if_new):
            assert s in ("-wal", "-shm") and Path(f"{db}{s}").stat().st_size in (0, 32768), s
            del found[s]
    return found


def still_a_mirror(db: Path, before: str) -> None:
    assert digest(db) == before
    code, _, err = syncer(db.parent, "--db", str(db), "stats", "--format", "json")
    assert code == 0, err


@pytest.fixture(params=[False, True], ids=["closed", "open"])
def live(request, mirror):
    """The mirror closed (no -wal, -shm beside it) or held open by a reader (both exist)."""
    if not request.param:
        yield mirror
        return
    conn = sqlite3.connect(mirror)
    conn.execute("SELECT count(*) FROM messages").fetchone()
    assert Path(f"{mirror}-wal").exists() and Path(f"{mirror}-shm").exists()
    yield mirror
    conn.close()


@pytest.mark.parametrize("spelling, what", [
    ("m.db", "the mirror"),
    ("./m.db", "the mirror"),
    ("sub/../m.db", "the mirror"),
    ("link.db", "the mirror"),          # a symlink to the mirror
    ("hard.db", "the mirror"),          # a hard link: the same inode
    ("linkdir/m.db", "the mirror"),     # through a symlinked directory
    ("m.db-wal", "write-ahead log"),
    ("./m.db-shm", "shared-memory"),
    ("m.db-journal", "journal"),
    ("m.db.lock", "lock file"),
    ("linkdir/m.db-wal", "write-ahead log"),
])
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_an_export_onto_the_mirror_or_its_companions_is_refused(live, spelling, what, fmt):
    db = live
    home = db.parent
    (home / "sub").mkdir()
    (home / "link.db").symlink_to("m.db")
    os.link(db, home / "hard.db")
    (home / "linkdir").symlink_to(home)
    companions = companion_digests(db)
    before = digest(db)
    refused(home, ["--db", "m.db", "export", "messages", "--format", fmt, "-o", spelling],
            what)
    assert companion_digests(db, empty_if_new=companions) == companions
    assert not list(home.glob(".*.partial"))
    still_a_mirror(db, before)


@pytest.mark.parametrize("spelling, what", [
    ("m.db", "the mirror"), ("m.db-wal", "write-ahead log"), ("link.db", "the mirror")])
def test_the_mirror_named_through_a_symlink_is_protected_too(mirror, spelling, what):
    home = mirror.parent
    (home / "other").mkdir()
    (home / "other" / "alias.db").symlink_to(mirror)
    (home / "link.db").symlink_to("m.db")
    before = digest(mirror)
    refused(home, ["--db", "other/alias.db", "export", "messages", "-o", spelling], what)
    still_a_mirror(mirror, before)


@pytest.mark.parametrize("spelling", ["other.db", "./other.db", "stripped.db", "other.db-wal",
                                      "other.db.lock"])
def test_an_export_onto_another_syncer_database_is_refused(mirror, spelling):
    """Another mirror, even one whose application id was lost (a copy through `.dump`): a
    SQLite file holding syncer's tables; and that database's companions."""
    home = mirror.parent
    shutil.copy(mirror, home / "other.db")
    shutil.copy(mirror, home / "stripped.db")
    conn = sqlite3.connect(home / "stripped.db")
    conn.execute("PRAGMA application_id = 0")
    conn.close()
    before = {p.name: digest(p) for p in home.iterdir()}
    refused(home, ["--db", "m.db", "export", "conversations", "-o", spelling],
            "syncer database")
    assert {p.name: digest(p) for p in home.iterdir() if p.name in before} == before
    assert not list(home.glob(".*.partial"))


def test_other_files_are_still_written_and_replaced(mirror):
    home = mirror.parent
    (home / "old.csv").write_text("old")
    other = sqlite3.connect(home / "notes.db")      # a SQLite file that is not syncer's
    other.execute("CREATE TABLE notes (x)")
    other.close()
    for name in ("old.csv", "new.csv", "notes.db", "m.db.csv", "m.db-wal.csv"):
        code, _, err = syncer(home, "--db", "m.db", "export", "conversations", "-o", name)
        assert code == 0, err
        assert (home / name).read_text().startswith('"id"') or \
            (home / name).read_text().startswith("id"), name


# -- feed directories --------------------------------------------------------------------------
def feed(home, db, out, consumer="wh", table="messages"):
    return ["--db", str(db), "export", table, "--changes", consumer, "--format", "parquet",
            "-o", str(out)]


def export_ok(home, args):
    code, _, err = syncer(home, *args)
    assert code == 0, err


@pytest.mark.parametrize("inner", ["feed/wh", "feed/a/b", "./feed/../feed/wh", "linkfeed/wh",
                                   "feed/createdAt_month=2024-05"])
@pytest.mark.parametrize("outer_consumer, outer_table", [("other", "messages"),
                                                         ("wh", "conversations"),
                                                         ("wh", "messages")])
def test_a_feed_directory_inside_another_feed_directory_is_refused(
        mirror, inner, outer_consumer, outer_table):
    home = mirror.parent
    export_ok(home, feed(home, "m.db", "feed", outer_consumer, outer_table))
    (home / "linkfeed").symlink_to("feed")
    listing = sorted(str(p.relative_to(home)) for p in (home / "feed").rglob("*"))
    refused(home, feed(home, "m.db", inner), "inside the feed directory")
    assert sorted(str(p.relative_to(home)) for p in (home / "feed").rglob("*")) == listing
    conn = sqlite3.connect(mirror)
    assert conn.execute("SELECT name, tbl FROM _consumers").fetchall() == \
        [(outer_consumer, outer_table)]
    conn.close()


@pytest.mark.parametrize("where", ["feed/m.db", "feed/deeper/m.db"])
def test_a_feed_directory_holding_the_mirror_is_refused(mirror, where):
    """A feed directory of the same consumer that the mirror was moved into: the export would
    write its parts beside the mirror and its companions."""
    home = mirror.parent
    export_ok(home, feed(home, "m.db", "feed"))
    conn = sqlite3.connect(mirror)
    conn.execute("UPDATE messages SET content = content || '!' WHERE rowid = 1")
    conn.commit()
    conn.close()
    db = home / where
    db.parent.mkdir(exist_ok=True)
    mirror.rename(db)
    parts = sorted((home / "feed").glob("*part*"))
    assert parts
    before = digest(db)
    for out in ("feed", "./feed", str(home / "feed")):
        refused(home, feed(home, where, out), "holds the mirror")
    assert sorted((home / "feed").glob("*part*")) == parts
    still_a_mirror(db, before)


def test_a_feed_directory_that_is_the_mirror_or_its_companion_is_refused(mirror):
    home = mirror.parent
    before = digest(mirror)
    for out in ("m.db-wal", "m.db-journal", "m.db.lock"):
        refused(home, feed(home, "m.db", out), "the mirror")
        assert not (home / out).is_dir()
    still_a_mirror(mirror, before)
