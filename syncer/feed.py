"""The change feed: what changed in a table since a consumer's last export. No click.

Every write of a row of `conversations` or `messages` stamps it with the next value of one
counter (`_seq`, triggers in migrations.V3); a row deleted outright leaves a tombstone in
`_deleted_rows`. A consumer is a name and a table with a position: the counter value up to
which it has received every change. An export of a consumer writes, into its feed directory,
the rows whose `_seq` is above that position, one per id in its latest state, each with `_seq`
and `_deleted_at` (set on a tombstone: a conversation deleted upstream, or a message deleted
outright), and then moves the position to the counter value of the snapshot it read.

The position moves only after the files are complete and renamed into place, so a crash or a
SIGKILL delivers the same changes again (in a later part), never loses them: replaying every
part of a feed directory in `_seq` order, upserting by id and deleting tombstones, reproduces
the table. Parts left by an export that did not record its position are removed by the next
export of the same consumer, which delivers their changes again.

Layout of a feed directory: `.syncer-feed` (JSON: table, consumer, format, partitioning) and
`part-<position>.<ext>`, or with `partition_by="month"` (Parquet only) Hive-style
`createdAt_month=YYYY-MM/part-<position>.parquet` (`__HIVE_DEFAULT_PARTITION__` for no date).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from .export import (FORMATS, TABLES, ExportError, _arrow, check_format, columns,
                     parquet_schema)
from .store import Store, now_utc
from .transform import JSON_FIELDS

log = logging.getLogger(__name__)

MARKER = ".syncer-feed"
PARTITIONINGS = ("month",)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NO_MONTH = "__HIVE_DEFAULT_PARTITION__"   # Hive's name for a NULL partition value
EXTENSIONS = {"csv": "csv", "jsonl": "jsonl", "parquet": "parquet"}
_BATCH = 5_000
_ROW_GROUP = 100_000
_PART = re.compile(r"part-(\d+)\.[a-z]+")


class FeedError(ExportError):
    """Bad feed input or state: one line, exit 2, and no consumer's position moved."""


@dataclass
class Delivery:
    """What one export of a consumer did."""
    table: str
    consumer: str
    rows: int = 0
    tombstones: int = 0
    before: int = 0
    position: int = 0
    files: list[str] = field(default_factory=list)


def check_name(name: str) -> None:
    if not NAME.fullmatch(name or ""):
        raise FeedError(f"bad consumer name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
                        "starting with a letter or digit")


def check_request(table: str, consumer: str, fmt: str, partition_by: str | None) -> None:
    """Every check that needs neither the database nor the disk."""
    if table not in TABLES:
        raise FeedError(f"cannot export {table!r} (use {' or '.join(TABLES)})")
    check_name(consumer)
    if fmt not in FORMATS:
        raise FeedError(f"unknown export format {fmt!r} (use {', '.join(FORMATS)})")
    if partition_by is not None and partition_by not in PARTITIONINGS:
        raise FeedError(f"cannot partition by {partition_by!r} (use month)")
    if partition_by is not None and fmt != "parquet":
        raise FeedError("--partition-by needs --format parquet (CSV and JSON Lines feeds are "
                        "one file per export)")
    check_format(fmt)


def _head(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT value FROM _seq_counter WHERE id = 1").fetchone()[0]


def _position(conn: sqlite3.Connection, consumer: str, table: str) -> int:
    row = conn.execute("SELECT position FROM _consumers WHERE name = ? AND tbl = ?",
                       (consumer, table)).fetchone()
    return row[0] if row else 0


def _lag(conn: sqlite3.Connection, table: str, position: int) -> int:
    """Rows (tombstones included) a consumer at `position` has yet to receive."""
    return (conn.execute(f"SELECT count(*) FROM {table} WHERE _seq > ?", (position,))
            .fetchone()[0] + conn.execute(
                "SELECT count(*) FROM _deleted_rows WHERE tbl = ? AND _seq > ?",
                (table, position)).fetchone()[0])


def consumers(store: Store) -> list[dict]:
    """Every consumer: name, table, position, lag (rows to deliver), exports, updatedAt."""
    conn = store.conn
    head = _head(conn)
    return [{"name": name, "table": table, "position": position, "head": head,
             "lag": _lag(conn, table, position), "exports": exports, "updatedAt": updated}
            for name, table, position, exports, updated in conn.execute(
                "SELECT name, tbl, position, exports, updated_at FROM _consumers "
                "ORDER BY name, tbl")]


# -- the feed directory ------------------------------------------------------------------------
def _marker(table: str, consumer: str, fmt: str, partition_by: str | None) -> dict:
    return {"table": table, "consumer": consumer, "format": fmt, "partitionBy": partition_by}


def check_directory(path: str, want: dict) -> None:
    """The output must be a new or empty directory, or a feed directory of the same consumer,
    table, format and partitioning (anything else would mix feeds, or overwrite a file)."""
    if path == "-":
        raise FeedError("a change feed is written to a directory: pass -o DIR (a feed cannot "
                        "go to stdout, where its completeness cannot be known)")
    p = Path(path)
    if not p.exists():
        if not p.parent.is_dir():
            raise FeedError(f"cannot write the feed to {path}: its parent directory does not "
                            "exist")
        return
    if not p.is_dir():
        raise FeedError(f"{path} exists and is not a feed directory: pass -o a new directory "
                        "(or the one an earlier export of this consumer wrote)")
    marker = p / MARKER
    if not marker.exists():
        if any(not f.name.endswith(".partial") for f in p.iterdir()):  # a kill's leftovers
            raise FeedError(f"{path} is not empty and is not a feed directory: pass -o a new "
                            "directory (or the one an earlier export of this consumer wrote)")
        return
    try:
        have = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FeedError(f"cannot read {marker}: {e}") from None
    if have != want:
        diff = ", ".join(f"{k} {have.get(k)!r} (not {v!r})" for k, v in want.items()
                         if have.get(k) != v)
        raise FeedError(f"{path} is the feed directory of another export: {diff}; pass -o "
                        "another directory")


def _write_marker(root: Path, want: dict) -> None:
    """Whole or absent, like every file of the feed (a kill can come at any moment)."""
    marker = root / MARKER
    if marker.exists():
        return
    partial = root / f".{MARKER}.partial"
    partial.write_text(json.dumps(want) + "\n", encoding="utf-8")
    os.replace(partial, marker)


def _parts(root: Path) -> list[Path]:
    return [p for p in root.rglob("part-*") if _PART.fullmatch(p.name)]


def _remove_unrecorded(root: Path, position: int) -> None:
    """Parts above the recorded position were written by an export that ended before it could
    record it; this export delivers their changes again."""
    for part in _parts(root):
        if int(_PART.fullmatch(part.name).group(1)) > position:
            log.info("removing %s, an export that did not finish", part)
            part.unlink()
    for partial in root.rglob(".part-*.partial"):
        partial.unlink()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- the rows ----------------------------------------------------------------------------------
def feed_columns(store: Store, table: str) -> list[tuple[str, str]]:
    """The table's exported columns, then `_seq`, and `_deleted_at` where the table lacks it."""
    cols = columns(store, table) + [("_seq", "INTEGER")]
    if not any(name == "_deleted_at" for name, _ in cols):
        cols.append(("_deleted_at", "TEXT"))
    return cols


def _changes_sql(table: str, cols: list[tuple[str, str]], fmt: str) -> str:
    """Live rows and tombstones above a position (two `?`), in `_seq` order; ids are live or
    tombstoned, never both (migrations.V3), so each id appears once."""
    own = {name for name, _ in columns_of_tombstone()}

    def live(name: str) -> str:
        if name == "_deleted_at" and table == "messages":
            return "NULL"
        return f"json(t.{name})" if fmt == "jsonl" and name in JSON_FIELDS else f"t.{name}"

    def dead(name: str) -> str:
        if table == "conversations" and name == "conversationId":
            return "NULL"
        return f"d.{name}" if name in own else "NULL"

    if fmt == "jsonl":
        def pick(expr):
            return "json_object(" + ", ".join(f"'{n}', {expr(n)}" for n, _ in cols) + ")"
    else:
        def pick(expr):
            return ", ".join(f"{expr(n)} AS {n}" for n, _ in cols)
    # after the columns: the partition, whether a tombstone, the order
    return (f"SELECT {pick(live)}, substr(t.createdAt, 1, 7), 0, t._seq AS _order "
            f"FROM {table} t WHERE t._seq > ? UNION ALL "
            f"SELECT {pick(dead)}, substr(d.createdAt, 1, 7), 1, d._seq AS _order "
            f"FROM _deleted_rows d "
            f"WHERE d.tbl = '{table}' AND d._seq > ? ORDER BY _order")


def columns_of_tombstone() -> list[tuple[str, str]]:
    return [("id", "TEXT"), ("conversationId", "TEXT"), ("createdAt", "TEXT"),
            ("_seq", "INTEGER"), ("_deleted_at", "TEXT")]


class _Writer:
    """One output file of a part: written under a hidden name, renamed by `finish`."""

    def __init__(self, final: Path, fmt: str, cols: list[tuple[str, str]]):
        self.final, self.fmt, self.cols = final, fmt, cols
        final.parent.mkdir(parents=True, exist_ok=True)
        self.partial = final.with_name(f".{final.name}.partial")
        fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.out = os.fdopen(fd, "wb")
        self.pending: list[tuple] = []
        if fmt == "parquet":
            import pyarrow.parquet as pq
            self.schema = parquet_schema(cols)
            self.parquet = pq.ParquetWriter(self.out, self.schema, compression="zstd")
        elif fmt == "csv":
            self.text = io.TextIOWrapper(self.out, encoding="utf-8", newline="",
                                         write_through=True)
            self.csv = csv.writer(self.text)
            self.csv.writerow([name for name, _ in cols])

    def write(self, rows: list[tuple]) -> None:
        if self.fmt == "jsonl":
            self.out.write(("\n".join(r[0] for r in rows) + "\n").encode("utf-8"))
        elif self.fmt == "csv":
            self.csv.writerows(rows)
        else:
            self.pending += rows

    def flush_rows(self) -> None:
        if self.fmt == "parquet" and self.pending:
            import pyarrow as pa
            self.parquet.write_table(_arrow(pa, self.schema, self.pending))
            self.pending = []

    def close(self) -> None:
        self.flush_rows()
        if self.fmt == "parquet":
            self.parquet.close()
        elif self.fmt == "csv":
            self.text.flush()
            self.text.detach()
        self.out.flush()
        os.fsync(self.out.fileno())
        self.out.close()

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.out.close()
        self.partial.unlink(missing_ok=True)


def _write_part(conn, sql: str, position: int, root: Path, name: str, fmt: str,
                cols: list[tuple[str, str]], partition_by: str | None) -> tuple[int, int, list]:
    """Write the changes above `position` as part `name`; returns (rows, tombstones, the
    writers, closed but not yet renamed). Nothing is written when there is no change."""
    writers: dict[str, _Writer] = {}
    rows = tombstones = pending = 0
    try:
        cur = conn.execute(sql, (position, position))
        while batch := cur.fetchmany(_BATCH):
            groups: dict[str, list[tuple]] = {}
            for r in batch:
                key = (r[-3] or NO_MONTH) if partition_by else ""
                groups.setdefault(key, []).append(r[:-3])
            for key, group in groups.items():
                w = writers.get(key)
                if w is None:
                    where = root / f"createdAt_month={key}" if partition_by else root
                    w = writers[key] = _Writer(where / name, fmt, cols)
                w.write(group)
            rows += len(batch)
            tombstones += sum(r[-2] for r in batch)
            pending += len(batch)
            if pending >= _ROW_GROUP:      # bounds memory whatever the number of partitions
                for w in writers.values():
                    w.flush_rows()
                pending = 0
        for w in writers.values():
            w.close()
    except BaseException:
        for w in writers.values():
            w.discard()
        raise
    return rows, tombstones, list(writers.values())


def export_changes(store: Store, table: str, consumer: str, fmt: str, output: str, *,
                   reset: bool = False, partition_by: str | None = None) -> Delivery:
    """Write the changes of `table` above `consumer`'s position into the feed directory
    `output`, then move the position to the counter value of the snapshot read."""
    check_request(table, consumer, fmt, partition_by)
    want = _marker(table, consumer, fmt, partition_by)
    check_directory(output, want)
    conn = store.conn
    root = Path(output)
    conn.execute("BEGIN")          # one snapshot for the head, the position and the rows
    try:
        head = _head(conn)
        recorded = _position(conn, consumer, table)
        if recorded > head and not reset:
            raise FeedError(
                f"consumer {consumer!r} of {table} is at position {recorded}, ahead of "
                f"this mirror ({head}): the database was restored from an older copy; "
                f"start the consumer over with --reset (and its receiver from empty)")
        start = 0 if reset else recorded
        done = Delivery(table, consumer, before=start, position=head)
        cols = feed_columns(store, table)
        sql = _changes_sql(table, cols, fmt)
        if head > start:
            root.mkdir(exist_ok=True)
            _write_marker(root, want)
            _remove_unrecorded(root, recorded)
            name = f"part-{head:012d}.{EXTENSIONS[fmt]}"
            done.rows, done.tombstones, writers = _write_part(
                conn, sql, start, root, name, fmt, cols, partition_by)
            for w in writers:
                os.replace(w.partial, w.final)
                _fsync_dir(w.final.parent)
                done.files.append(str(w.final))
    finally:
        conn.execute("COMMIT")
    _record(store.path, consumer, table, recorded, head)
    return done


def _record(path: str, consumer: str, table: str, expected: int, position: int) -> None:
    """Move the position, only from where this export found it (two exports of one consumer
    at once: the later one fails and delivers again next time)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        have = _position(conn, consumer, table)
        if have != expected:
            conn.execute("ROLLBACK")
            raise FeedError(f"consumer {consumer!r} of {table} moved to {have} during this "
                            "export (another export of it ran at once); its files are kept, "
                            "run the export again")
        conn.execute(
            "INSERT INTO _consumers (name, tbl, position, exports, updated_at) "
            "VALUES (?, ?, ?, 1, ?) ON CONFLICT (name, tbl) DO UPDATE SET "
            "position = excluded.position, exports = exports + 1, "
            "updated_at = excluded.updated_at", (consumer, table, position, now_utc()))
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise Store.error_for(path, e) from None
    finally:
        conn.close()
