"""`syncer export TABLE --changes NAME`: the change feed, read by DuckDB as a warehouse would.

The feed property: a DuckDB table maintained only from the parts of a feed directory (upsert
by id, delete message tombstones) equals the mirror's table, whatever ran in between: syncs
with new, changed and deleted messages, conversations deleted upstream, purges, and exports
killed before they could record their position."""
import json
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from support import settings_for

from syncer.cli import main
from syncer.purge import purge_deleted
from syncer.runner import run_sync
from syncer.simulator import Behaviour, SimulatorServer, generate
from syncer.store import Store

TABLES = ("conversations", "messages")
TIMESTAMPS = {"createdAt", "updatedAt", "lastMessageAt", "takeoverAt", "_synced_at", "_deleted_at"}


def syncer(db, *args):
    result = CliRunner().invoke(main, ["--db", str(db), *args])
    return result.exit_code, result.stdout, result.stderr


def export_changes(db, table, feed, *extra, consumer="wh"):
    code, _, err = syncer(db, "export", table, "--changes", consumer, "--format", "parquet",
                          "-o", str(feed), *extra)
    assert code == 0, err
    return err


def mirror_rows(db, table) -> dict[str, dict]:
    """The mirror's table as the feed carries it: exported columns with `_seq`, timestamps as
    epoch microseconds (how DuckDB gives back Parquet's timestamp[us, UTC])."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = {}
    for r in conn.execute(f"SELECT * FROM {table}"):
        row = {k: r[k] for k in r.keys() if k not in ("_raw", "_list_sig")}
        rows[row["id"]] = {k: _micros(v) if k in TIMESTAMPS else v for k, v in row.items()}
    conn.close()
    return rows


def _micros(value):
    if value is None:
        return None
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


README = (Path(__file__).parent.parent / "README.md").read_text()
RECIPE = README.split("<!-- duckdb-recipe -->\n```sql\n", 1)[1].split("```", 1)[0]
ONCE, EACH = RECIPE.split("\n-- after each export")
EACH = EACH.split("\n", 1)[1]     # after the rest of the comment line
EXAMPLE_PART = "feed/messages/part-000000012345.parquet"


class Warehouse:
    """A DuckDB database kept current from feed directories only, by the README's recipe."""

    def __init__(self):
        self.db = duckdb.connect()
        self.loaded: dict[str, set[str]] = {t: set() for t in TABLES}

    def load(self, table: str, feed: Path) -> None:
        parts = sorted((p for p in feed.rglob("part-*.parquet")
                        if str(p) not in self.loaded[table]), key=lambda p: p.name)
        for part in parts:
            if table not in self.tables():
                self._run(ONCE.replace("'feed/messages/part-*.parquet'", self._file(part)),
                          table)
            self._run(EACH.replace(f"'{EXAMPLE_PART}'", self._file(part)), table)
            self.loaded[table].add(str(part))

    @staticmethod
    def _file(part: Path) -> str:
        # a part of a partitioned feed is read alone: its directory is not a column here
        return f"'{part}', hive_partitioning = false"

    def _run(self, sql: str, table: str) -> None:
        for statement in filter(None, (s.strip() for s in sql.split(";"))):
            statement = "\n".join(line for line in statement.splitlines()
                                  if not line.startswith("--"))
            if table == "conversations":
                if statement.startswith("DELETE"):
                    continue     # conversations deleted upstream stay, as in the mirror
                statement = statement.replace("messages", "conversations")
            self.db.execute(statement)

    def tables(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT table_name FROM information_schema.tables")
                .fetchall()}

    def rows(self, table: str) -> dict[str, dict]:
        return _duck_rows(self.db, f"SELECT * FROM {table}", table)


def _duck_rows(db, sql: str, table: str) -> dict[str, dict]:
    cur = db.execute(sql)
    names = [d[0] for d in cur.description]
    out = {}
    for values in cur.fetchall():
        row = {k: _micros_of(v) if k in TIMESTAMPS else v for k, v in zip(names, values)}
        if table == "messages":
            assert row.pop("_deleted_at") is None
        row.pop("createdAt_month", None)
        out[row["id"]] = row
    return out


def _micros_of(value):
    if value is None:
        return None
    return int(value.timestamp()) * 1_000_000 + value.microsecond


def kill_before_recording(db, table, feed, *extra) -> int:
    """An export in a real process, SIGKILLed in the worst place: its files are in place and
    its position is not yet recorded."""
    code = ("import os, signal, sys\n"
            "from syncer import feed\n"
            "feed._record = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
            "from syncer.cli import main\n"
            "main(sys.argv[1:], prog_name='syncer')\n")
    args = ["--db", str(db), "export", table, "--changes", "wh", "--format", "parquet",
            "-o", str(feed), *extra]
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          timeout=120).returncode


def kill_at_random(db, table, feed, rng, *extra) -> None:
    """A real `syncer export` process SIGKILLed at a random moment (or not, if it is quicker)."""
    proc = subprocess.Popen([sys.executable, "-m", "syncer", "--db", str(db), "export", table,
                             "--changes", "wh", "--format", "parquet", "-o", str(feed), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=rng.uniform(0.05, 1.0))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)


def change_upstream(upstream, rng) -> str:
    """One random change: new messages, an edited conversation, a message deleted or edited,
    or a conversation deleted. Returns what it did."""
    ids = upstream.conversation_ids()
    cid = rng.choice(ids)
    what = rng.choice(["add", "add", "edit", "delete message", "edit message",
                       "delete conversation"])
    if what == "add":
        for _ in range(rng.randint(1, 3)):
            upstream.add_message(cid, f"new message {rng.random()}",
                                 role=rng.choice(["user", "assistant"]))
    elif what == "edit":
        upstream.update_conversation(cid, subject=f"subject {rng.random()}",
                                     status=rng.choice(["active", "closed"]))
    elif what in ("delete message", "edit message") and upstream.messages_of(cid):
        message = rng.choice(upstream.messages_of(cid))
        if what == "delete message":
            upstream.delete_message(cid, message["id"])
        else:
            with upstream.lock:
                stored = next(m for m in upstream._messages[cid] if m["id"] == message["id"])
                stored["content"] = f"edited {rng.random()}"
                upstream._changed()
            upstream.update_conversation(cid)
    elif what == "delete conversation" and len(ids) > 5:
        upstream.delete_conversation(cid)
    return what


@pytest.mark.parametrize("seed", [1, 2])
def test_a_warehouse_kept_from_the_feed_equals_the_mirror(tmp_path, seed):
    """Two consumers of each table: `wh` after every sync (some of its exports killed), `late`
    now and then, so tombstones are kept for it while `wh` has them and dropped once both
    have (store.prune_tombstones, also at the end of every sync); `late` is reset half-way into
    a new directory, its receiver starting from empty."""
    rng = random.Random(seed)
    db = tmp_path / "mirror.db"
    feeds = {t: tmp_path / f"feed-{t}" for t in TABLES}
    late_feeds = {t: tmp_path / f"late-{t}" for t in TABLES}
    partition = {"conversations": (), "messages": ("--partition-by", "month")}
    warehouse, late = Warehouse(), Warehouse()
    upstream = generate(seed=seed, conversations=30)
    with SimulatorServer(upstream, Behaviour()) as server:
        settings = settings_for(server, db)
        run_sync(settings)
        for step in range(14):
            for _ in range(rng.randint(1, 4)):
                change_upstream(upstream, rng)
            run_sync(settings, full=rng.random() < 0.5)
            if rng.random() < 0.25:
                store = Store.open(str(db))
                try:
                    purge_deleted(store)
                finally:
                    store.close()
            for table in TABLES:
                kill = rng.random()
                if kill < 0.2:
                    assert kill_before_recording(db, table, feeds[table],
                                                 *partition[table]) == -signal.SIGKILL
                elif kill < 0.35:
                    kill_at_random(db, table, feeds[table], rng, *partition[table])
                else:
                    export_changes(db, table, feeds[table], *partition[table])
                warehouse.load(table, feeds[table])
                if step == 7:       # start over: a new directory, a receiver from empty
                    late_feeds[table] = tmp_path / f"late-{table}-reset"
                    late.loaded[table] = set()
                    late.db.execute(f"DROP TABLE IF EXISTS {table}")
                    export_changes(db, table, late_feeds[table], "--reset", consumer="late")
                elif rng.random() < 0.3:
                    export_changes(db, table, late_feeds[table], consumer="late")
                late.load(table, late_feeds[table])
        for table in TABLES:
            export_changes(db, table, feeds[table], *partition[table])
            warehouse.load(table, feeds[table])
            assert warehouse.rows(table) == mirror_rows(db, table)
            export_changes(db, table, late_feeds[table], consumer="late")
            late.load(table, late_feeds[table])
            assert late.rows(table) == mirror_rows(db, table)
    assert _consumers(db) == [("late", "conversations", 0), ("late", "messages", 0),
                              ("wh", "conversations", 0), ("wh", "messages", 0)]
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM _deleted_rows").fetchone()[0] == 0
    conn.close()


def test_tombstones_are_kept_until_every_consumer_has_them(synced, tmp_path):
    db, _ = synced
    export_changes(db, "messages", tmp_path / "a", consumer="a")
    export_changes(db, "messages", tmp_path / "b", consumer="b")
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM messages WHERE rowid IN (1, 2)")
    conn.commit()

    def tombstones():
        return conn.execute("SELECT count(*) FROM _deleted_rows").fetchone()[0]
    assert tombstones() == 2
    export_changes(db, "messages", tmp_path / "a", consumer="a")
    assert tombstones() == 2                 # b has not received them
    err = export_changes(db, "messages", tmp_path / "b", consumer="b")
    assert "(2 tombstones)" in err and tombstones() == 0
    conn.execute("DELETE FROM messages WHERE rowid = 3")
    conn.execute("DELETE FROM _consumers")   # no consumer: the next sync's end drops them
    conn.commit()
    assert tombstones() == 1
    store = Store.open(str(db))
    try:
        store.finish_run(store.start_run("incremental"), "ok")
    finally:
        store.close()
    assert tombstones() == 0
    conn.close()


def _consumers(db):
    code, out, err = syncer(db, "export", "--consumers", "--format", "jsonl")
    assert code == 0, err
    return [(r["name"], r["table"], r["lag"]) for r in map(json.loads, out.splitlines())]


@pytest.fixture
def synced(tmp_path):
    upstream = generate(seed=5, conversations=25)
    db = tmp_path / "mirror.db"
    with SimulatorServer(upstream, Behaviour()) as server:
        run_sync(settings_for(server, db))
    return db, upstream


def test_duckdb_reads_a_partitioned_feed_as_one_table(synced, tmp_path):
    db, _ = synced
    feed = tmp_path / "feed"
    export_changes(db, "messages", feed, "--partition-by", "month")
    months = sorted(p.name for p in feed.iterdir() if p.is_dir())
    assert len(months) > 1 and all(m.startswith("createdAt_month=20") for m in months)
    conn = duckdb.connect()
    view = _duck_rows(conn, f"SELECT * FROM read_parquet('{feed}/**/*.parquet', "
                      "hive_partitioning = true)", "messages")
    assert view == mirror_rows(db, "messages")
    month_of = dict(conn.execute(f"SELECT id, createdAt_month FROM read_parquet("
                                 f"'{feed}/**/*.parquet', hive_partitioning = true)").fetchall())
    created = {i: r["createdAt"] for i, r in mirror_rows(db, "messages").items()}
    assert {i: str(m) for i, m in month_of.items()} == {
        i: datetime.fromtimestamp(c / 1e6, timezone.utc).strftime("%Y-%m") for i, c in created.items()}


def test_the_latest_row_per_id_over_the_whole_directory_is_the_table(synced, tmp_path):
    """The README's one-query view: every part, the newest row of each id, no tombstones."""
    db, upstream = synced
    feed = tmp_path / "feed"
    export_changes(db, "messages", feed)
    cid = next(c for c in upstream.conversation_ids() if upstream.messages_of(c))
    gone = upstream.messages_of(cid)[0]["id"]
    upstream.delete_message(cid, gone)
    upstream.add_message(cid, "a late reply", role="assistant")
    with SimulatorServer(upstream, Behaviour()) as server:
        run_sync(settings_for(server, db), full=True, rebind=True)
    err = export_changes(db, "messages", feed)
    assert "(1 tombstones)" in err
    view = _duck_rows(duckdb.connect(), f"""
        SELECT * EXCLUDE (newest) FROM (
          SELECT *, row_number() OVER (PARTITION BY id ORDER BY _seq DESC) AS newest
          FROM read_parquet('{feed}/*.parquet'))
        WHERE newest = 1 AND _deleted_at IS NULL""", "messages")
    assert gone not in view and view == mirror_rows(db, "messages")


def test_one_row_per_id_in_its_latest_state(synced, tmp_path):
    db, _ = synced
    conn = sqlite3.connect(db)
    conn.execute("UPDATE messages SET content = 'first' WHERE rowid = 1")
    conn.execute("UPDATE messages SET content = 'second' WHERE rowid = 1")
    conn.commit()
    conn.close()
    feed = tmp_path / "feed"
    syncer(db, "export", "messages", "--changes", "wh", "--format", "jsonl", "-o", str(feed))
    rows = [json.loads(line) for p in sorted(feed.glob("part-*.jsonl"))
            for line in p.read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == len(mirror_rows(db, "messages"))
    assert "second" in {r["content"] for r in rows}
    assert [r["_seq"] for r in rows] == sorted(r["_seq"] for r in rows)
    assert isinstance(rows[0]["metadata"], dict)     # JSON fields as objects, as in export


def test_a_second_export_delivers_only_what_changed(synced, tmp_path):
    db, _ = synced
    feed = tmp_path / "feed"
    syncer(db, "export", "conversations", "--changes", "wh", "--format", "csv", "-o", str(feed))
    code, _, err = syncer(db, "export", "conversations", "--changes", "wh", "--format", "csv",
                          "-o", str(feed))
    assert code == 0 and "0 conversations changes" in err and "no file" in err
    conn = sqlite3.connect(db)
    conn.execute("UPDATE conversations SET subject = 'changed' WHERE rowid = 3")
    conn.commit()
    cid = conn.execute("SELECT id FROM conversations WHERE rowid = 3").fetchone()[0]
    conn.close()
    syncer(db, "export", "conversations", "--changes", "wh", "--format", "csv", "-o", str(feed))
    parts = sorted(feed.glob("part-*.csv"))
    assert len(parts) == 2
    lines = parts[1].read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith(f'"{cid}",') and "changed" in lines[1]
    assert "_seq" in lines[0].split(",") and "_raw" not in lines[0]


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode)
            for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("extra", [[], ["--partition-by", "month"]], ids=["flat", "monthly"])
def test_feed_directories_are_private_and_older_ones_are_tightened_on_write(
        synced, tmp_path, extra):
    """Directories 700 and files 600, like every file syncer writes, whatever the umask
    allows; the directories created above the feed too. A feed directory an older syncer made
    (755, its marker 644) is tightened by the next export that writes into it."""
    db, _ = synced
    old_umask = os.umask(0o022)
    try:
        feed = tmp_path / "made" / "feed"
        export_changes(db, "messages", feed, *extra)
        modes = _modes(tmp_path / "made")
        assert {k for k, m in modes.items() if Path(tmp_path, "made", k).is_dir()} >= \
            {".", "feed"}
        assert modes == {k: 0o700 if Path(tmp_path, "made", k).is_dir() else 0o600
                         for k in modes}, modes
        for name, mode in modes.items():
            path = Path(tmp_path, "made", name)
            path.chmod(0o755 if path.is_dir() else 0o644 if name == "feed/.syncer-feed" else mode)
        conn = sqlite3.connect(db)
        month = conn.execute("SELECT substr(createdAt, 1, 7) FROM messages WHERE rowid = 1"
                             ).fetchone()[0]
        conn.execute("UPDATE messages SET content = content || '!' WHERE rowid = 1")
        conn.commit()
        conn.close()
        export_changes(db, "messages", feed, *extra)
        modes = _modes(feed)
        written = [".", ".syncer-feed"] + ([f"createdAt_month={month}"] if extra else [])
        assert {k: modes[k] for k in written} == {
            k: 0o600 if k == ".syncer-feed" else 0o700 for k in written}
        assert all(m == 0o600 for k, m in modes.items() if k.endswith(".parquet"))
    finally:
        os.umask(old_umask)


def test_reset_starts_over_and_consumers_shows_the_lag(synced, tmp_path):
    db, _ = synced
    feed = tmp_path / "feed"
    export_changes(db, "messages", feed)
    held = len(mirror_rows(db, "messages"))
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM messages WHERE rowid IN (1, 2)")
    conn.commit()
    conn.close()
    assert _consumers(db) == [("wh", "messages", 2)]
    err = export_changes(db, "messages", feed, "--reset")
    assert f"{held} messages changes (2 tombstones) after position 0" in err
    assert _consumers(db) == [("wh", "messages", 0)]


def _position(db, table="messages"):
    conn = sqlite3.connect(db)
    row = conn.execute("SELECT position FROM _consumers WHERE name = 'wh' AND tbl = ?",
                       (table,)).fetchone()
    conn.close()
    return row and row[0]


def cli(db, *args):
    """The real command line: a `syncer` process."""
    done = subprocess.run([sys.executable, "-m", "syncer", "--db", str(db), *args],
                          capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def refused(db, args, message):
    """One line naming the problem, no traceback, exit 2."""
    code, out, err = cli(db, "export", *args)
    assert (code, out) == (2, "") and len(err.splitlines()) == 1 and message in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["bogus", "--changes", "wh"], "cannot export 'bogus'"),
    (["messages", "--changes", "w h!"], "bad consumer name"),
    (["messages", "--changes", "../wh"], "bad consumer name"),
    (["messages", "--changes", "wh", "--partition-by", "month", "--format", "csv"],
     "--partition-by needs --format parquet"),
    (["messages", "--changes", "wh", "--partition-by", "month", "--format", "jsonl"],
     "--partition-by needs --format parquet"),
    (["messages", "--changes", "wh", "--partition-by", "month"],
     "--partition-by needs --format parquet"),
    (["messages", "--changes", "wh", "--status", "open"], "whole tables"),
    (["messages", "--changes", "wh", "-o", "-"], "directory"),
])
def test_bad_input_is_one_line_and_moves_nothing(synced, tmp_path, args, message):
    db, _ = synced
    export_changes(db, "messages", tmp_path / "first")
    before = _position(db)
    if "-o" not in args:
        args = args + ["-o", str(tmp_path / "feed")]
    refused(db, args, message)
    assert _position(db) == before and not (tmp_path / "feed").exists()


def test_an_output_that_is_not_a_feed_directory_is_refused(synced, tmp_path):
    db, _ = synced
    (tmp_path / "file.parquet").write_bytes(b"keep me")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    other = tmp_path / "other-feed"
    export_changes(db, "conversations", other)
    for path, message in [(tmp_path / "file.parquet", "is not a feed directory"),
                          (tmp_path / "full", "is not a feed directory"),
                          (other, "feed directory of another export")]:
        refused(db, ["messages", "--changes", "wh", "--format", "parquet", "-o", str(path)],
                message)
    assert (tmp_path / "file.parquet").read_bytes() == b"keep me"
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["notes.txt"]
    assert _position(db) is None


def test_a_consumer_ahead_of_the_mirror_is_refused(synced, tmp_path):
    """A database restored from an older copy: the consumer's position is beyond its counter."""
    db, _ = synced
    export_changes(db, "messages", tmp_path / "feed")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE _consumers SET position = position + 1000")
    conn.commit()
    conn.close()
    before = _position(db)
    parts = sorted(p.name for p in (tmp_path / "feed").iterdir())
    refused(db, ["messages", "--changes", "wh", "--format", "parquet", "-o",
                 str(tmp_path / "feed")], "ahead of this mirror")
    assert _position(db) == before
    assert sorted(p.name for p in (tmp_path / "feed").iterdir()) == parts


def test_a_killed_export_delivers_again_and_leaves_no_stray_part(synced, tmp_path):
    db, _ = synced
    feed = tmp_path / "feed"
    assert kill_before_recording(db, "messages", feed) == -signal.SIGKILL
    # registered by its first export (its tombstones are kept from then on), nothing received
    assert _position(db) == 0 and len(list(feed.glob("part-*"))) == 1
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM messages WHERE rowid = 1")
    conn.commit()
    conn.close()
    export_changes(db, "messages", feed)
    parts = list(feed.glob("part-*"))
    assert len(parts) == 1 and not list(feed.glob(".*partial"))
    warehouse = Warehouse()
    warehouse.load("messages", feed)
    assert warehouse.rows("messages") == mirror_rows(db, "messages")


def test_every_write_stamps_a_growing_sequence(synced):
    db, upstream = synced
    conn = sqlite3.connect(db)
    top = conn.execute("SELECT value FROM _seq_counter").fetchone()[0]
    assert top == max(conn.execute(f"SELECT max(_seq) FROM {t}").fetchone()[0] for t in TABLES)
    seqs = [s for t in TABLES for (s,) in conn.execute(f"SELECT _seq FROM {t}")]
    assert len(seqs) == len(set(seqs)) and None not in seqs
    conn.execute("UPDATE conversations SET _messages_held = _messages_held WHERE rowid = 1")
    conn.execute("UPDATE messages SET role = role WHERE rowid = 1")
    conn.commit()
    assert [r[0] for r in conn.execute(
        "SELECT _seq FROM conversations WHERE rowid = 1 UNION ALL "
        "SELECT _seq FROM messages WHERE rowid = 1")] == [top + 1, top + 2]
    assert conn.execute("PRAGMA recursive_triggers").fetchone()[0] == 0
    conn.close()


def test_the_migration_stamps_an_older_mirror(tmp_path):
    """A mirror made before the feed (schema version 2) is backfilled: every row has a distinct
    `_seq`, the counter is at the top, and a first export delivers the whole table."""
    from syncer import migrations
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    for version, script in enumerate(migrations.MIGRATIONS[:2], start=1):
        conn.executescript(f"BEGIN; {script}; PRAGMA application_id = "
                           f"{migrations.APPLICATION_ID}; PRAGMA user_version = {version}; COMMIT;")
    conn.executemany("INSERT INTO conversations (id, _raw, _synced_at) VALUES (?, '{}', 'x')",
                     [("c1",), ("c2",)])
    conn.executemany("INSERT INTO messages (id, conversationId, createdAt, _raw, _synced_at) "
                     "VALUES (?, 'c1', '2024-05-01T00:00:00.000000Z', '{}', 'x')",
                     [("m1",), ("m2",), ("m3",)])
    migrations.migrate(conn)
    seqs = [s for t in TABLES for (s,) in conn.execute(f"SELECT _seq FROM {t} ORDER BY rowid")]
    assert seqs == [1, 2, 3, 4, 5]
    assert conn.execute("SELECT value FROM _seq_counter").fetchone()[0] == 5
    conn.close()
    feed = tmp_path / "feed"
    code, _, err = syncer(db, "export", "messages", "--changes", "wh", "--format", "jsonl",
                          "-o", str(feed))
    assert code == 0 and "3 messages changes (0 tombstones) after position 0" in err, err


@pytest.mark.parametrize("fmt, extra", [("csv", ()), ("jsonl", ()),
                                        ("parquet", ("--partition-by", "month"))])
def test_helper_processes_write_the_same_feed(synced, tmp_path, monkeypatch, fmt, extra):
    """Ranges of the change sequence shared with helper processes (forced by small ranges)
    give the same files as one process, tombstones included."""
    from syncer import export as exporting
    db, _ = synced
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM messages WHERE rowid IN (3, 30, 31)")
    conn.commit()
    conn.close()

    copy = tmp_path / "copy.db"     # the same mirror: the first export prunes its tombstones
    shutil.copyfile(db, copy)

    def files(consumer, workers):
        monkeypatch.setattr(exporting, "WORKERS", workers)
        feed = tmp_path / consumer
        code, _, err = syncer(db if consumer == "one" else copy, "export", "messages",
                              "--changes", "wh", "--format", fmt, "-o", str(feed), *extra)
        assert code == 0 and "(3 tombstones)" in err, err
        return {str(p.relative_to(feed)): (
            duckdb.sql(f"SELECT * FROM read_parquet('{p}')").fetchall() if fmt == "parquet"
            else p.read_bytes()) for p in feed.rglob("part-*")}

    alone = files("one", 0)
    monkeypatch.setattr(exporting, "RANGE", 5)
    monkeypatch.setattr(exporting, "PARALLEL_FROM", 2)
    assert files("two", 2) == alone and len(alone) >= (2 if extra else 1)


def test_the_readme_feed_commands_work_as_written_in_a_fresh_directory(synced, tmp_path,
                                                                      monkeypatch):
    """The three command lines of the README's feed section, run as shown (no `feed/` made
    beforehand), from a directory holding the mirror; then a file where a parent should be is
    refused with one line."""
    db, _ = synced
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(db, work / "syncer.db")
    monkeypatch.chdir(work)
    monkeypatch.delenv("SYNCER_DB", raising=False)
    section = README.split("### A change feed", 1)[1].split("The mirror keeps", 1)[0]
    lines = [line.split("#")[0].split()[1:] for line in section.splitlines()
             if line.startswith("    syncer ")]
    assert len(lines) == 3
    for args in lines:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, (args, result.stderr)
    assert list((work / "feed" / "messages").glob("part-*.parquet"))
    assert list((work / "feed" / "messages-2").glob("part-*.parquet"))
    (work / "blocked").write_text("a file")
    refused("syncer.db", ["messages", "--changes", "other", "--format", "parquet",
                          "-o", "blocked/feed"], "is a file, not a directory")
