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

A consumer exists from its first export (registered at position 0 before any file is
written). A tombstone every consumer of its table has received is dropped
(store.prune_tombstones, when a position moves and at the end of every sync; all of a table's
when it has no consumer), so a consumer started over (`reset`) gets the whole table and only
the tombstones still kept: its receiver starts from empty.

Layout of a feed directory: `.syncer-feed` (JSON: table, consumer, format, partitioning) and
`part-<position>.<ext>`, or with `partition_by="month"` (Parquet only) Hive-style
`createdAt_month=YYYY-MM/part-<position>.parquet` (`__HIVE_DEFAULT_PARTITION__` for no date).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from .export import (FORMATS, ROW_GROUP, TABLES, ExportError, blocks, check_format, columns,
                     head, may_hold_nul, memory_pool, parquet_schema, parquet_writer,
                     ranges, select_sql)
from . import private
from .outputs import FEED_MARKER as MARKER
from .outputs import check_feed_directory
from .store import Store, now_utc, prune_tombstones

log = logging.getLogger(__name__)

PARTITIONINGS = ("month",)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NO_MONTH = "__HIVE_DEFAULT_PARTITION__"   # Hive's name for a NULL partition value
EXTENSIONS = {"csv": "csv", "jsonl": "jsonl", "parquet": "parquet"}
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


def _position(conn: sqlite3.Connection, consumer: str, table: str) -> int | None:
    row = conn.execute("SELECT position FROM _consumers WHERE name = ? AND tbl = ?",
                       (consumer, table)).fetchone()
    return row[0] if row else None


def _lag(conn: sqlite3.Connection, table: str, position: int) -> int:
    """Rows (tombstones included) a consumer at `position` has yet to receive."""
    return (conn.execute(f"SELECT count(*) FROM {table} WHERE _seq > ?", (position,))
            .fetchone()[0] + conn.execute(
                "SELECT count(*) FROM _deleted_rows WHERE tbl = ? AND _seq > ?",
                (table, position)).fetchone()[0])


def consumers(store: Store) -> list[dict]:
    """Every consumer: name, table, position, lag (rows to deliver), exports, updatedAt."""
    conn = store.conn
    top = head(conn)
    return [{"name": name, "table": table, "position": position, "head": top,
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
        above = next((a for a in p.absolute().parents if a.exists()), None)
        if above is not None and not above.is_dir():
            raise FeedError(f"cannot write the feed to {path}: {above} is a file, not a "
                            "directory")
        return                 # created with its missing parents, as `mkdir -p` would
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
        private.tighten(marker)     # an older syncer's was 644
        return
    partial = root / f".{MARKER}.partial"
    with private.create_file(partial) as out:
        out.write((json.dumps(want) + "\n").encode())
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


def _changes_sql(table: str, cols: list[tuple[str, str]], fmt: str,
                 partition_by: str | None, nul: bool) -> str:
    """The live rows and tombstones (a `line` each for text) of one `_seq` range (two pairs
    of `?`), in `_seq` order; ids are live or tombstoned, never both (migrations.V3), so each
    id appears once. Partitioned Parquet rows carry their month as `_month`."""
    own = {name for name, _ in columns_of_tombstone()}

    def live(name: str) -> str:
        return "NULL" if name == "_deleted_at" and table == "messages" else f"t.{name}"

    def dead(name: str) -> str:
        if table == "conversations" and name == "conversationId":
            return "NULL"
        return f"d.{name}" if name in own else "NULL"

    def month(alias: str) -> str:
        return f"substr({alias}.createdAt, 1, 7) AS _month" if partition_by else ""
    # a text row is one `line`: its order needs the sequence beside it (Parquet rows hold it)
    live_seq, dead_seq = ("", "") if fmt == "parquet" else (", t._seq AS _seq", ", d._seq")
    return (
        f"SELECT {select_sql(fmt, cols, live, month('t'), nul)}{live_seq} FROM {table} t "
        f"WHERE t._seq >= ? AND t._seq < ? UNION ALL "
        f"SELECT {select_sql(fmt, cols, dead, month('d'), nul)}{dead_seq} FROM _deleted_rows d "
        f"WHERE d.tbl = '{table}' AND d._seq >= ? AND d._seq < ? ORDER BY _seq")


def columns_of_tombstone() -> list[tuple[str, str]]:
    return [("id", "TEXT"), ("conversationId", "TEXT"), ("createdAt", "TEXT"),
            ("_seq", "INTEGER"), ("_deleted_at", "TEXT")]


class _File:
    """One output file of a part: written under a hidden name, renamed by the caller."""

    def __init__(self, final: Path):
        private.make_dirs(final.parent)
        self.final = final
        self.partial = final.with_name(f".{final.name}.partial")
        self.out = private.create_file(self.partial)

    def close(self) -> None:
        self.out.flush()
        os.fsync(self.out.fileno())
        self.out.close()

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.out.close()
        self.partial.unlink(missing_ok=True)


def _write_text(parts, root: Path, name: str, fmt: str, cols, files: list[_File]) -> int:
    rows = 0
    for n, text in parts:
        if not n:
            continue
        if not files:
            files.append(_File(root / name))
            if fmt == "csv":
                files[0].out.write((",".join(c for c, _ in cols) + "\r\n").encode())
        files[0].out.write(text)
        rows += n
    return rows


def _write_parquet(parts, root: Path, name: str, cols, partition_by: str | None,
                   files: list[_File]) -> int:
    """One Parquet file, or one per month. Rows are held until the months together hold
    ROW_GROUP of them; then the month holding most is written as a row group (so memory stays
    bounded whatever the number of months, and row groups stay as large as that allows)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    schema = parquet_schema(cols)
    writers: dict[str, pq.ParquetWriter] = {}
    pending: dict[str, list] = {}
    rows = 0

    def held(key: str) -> int:
        return sum(t.num_rows for t in pending[key])

    def flush(key: str) -> None:
        if key not in writers:
            where = root / f"createdAt_month={key}" if partition_by else root
            files.append(_File(where / name))
            writers[key] = parquet_writer(files[-1].out, schema)
        writers[key].write_table(pa.concat_tables(pending.pop(key), memory_pool=memory_pool()))

    try:
        for n, table in parts:
            if not n:
                continue
            if partition_by:
                months = table.column("_month")
                for key in pc.unique(months).to_pylist():
                    chosen = pc.is_null(months) if key is None else pc.equal(months, key)
                    pending.setdefault(key or NO_MONTH, []).append(
                        table.filter(chosen).select(schema.names))
            else:
                pending.setdefault("", []).append(table)
            rows += n
            while sum(map(held, pending)) >= ROW_GROUP:
                flush(max(pending, key=held))
        for key in list(pending):
            flush(key)
    finally:
        for writer in writers.values():
            writer.close()
    return rows


def export_changes(store: Store, table: str, consumer: str, fmt: str, output: str, *,
                   reset: bool = False, partition_by: str | None = None) -> Delivery:
    """Write the changes of `table` above `consumer`'s position into the feed directory
    `output`, then move the position to the counter value of the snapshot read."""
    check_request(table, consumer, fmt, partition_by)
    want = _marker(table, consumer, fmt, partition_by)
    check_feed_directory(output, store.path)
    check_directory(output, want)
    conn = store.conn
    root = Path(output)
    if _position(conn, consumer, table) is None:
        _register(store.path, consumer, table)
    conn.execute("BEGIN")          # one snapshot for the head, the position and the rows
    try:
        top = head(conn)
        recorded = _position(conn, consumer, table) or 0
        if recorded > top and not reset:
            raise FeedError(
                f"consumer {consumer!r} of {table} is at position {recorded}, ahead of "
                f"this mirror ({top}): the database was restored from an older copy; "
                f"start the consumer over with --reset (and its receiver from empty)")
        start = 0 if reset else recorded
        done = Delivery(table, consumer, before=start, position=top)
        cols = feed_columns(store, table)
        if top > start:
            private.make_dirs(root)       # 700, an older syncer's 755 tightened
            _write_marker(root, want)
            _remove_unrecorded(root, recorded)
            name = f"part-{top:012d}.{EXTENSIONS[fmt]}"
            arrow = (cols + [("_month", "TEXT")] * bool(partition_by)) if fmt == "parquet" \
                else None
            sql = _changes_sql(table, cols, fmt, partition_by, may_hold_nul(conn, table))
            parts = contextlib.closing(blocks(store, sql, fmt, [], ranges(start + 1, top),
                                              pairs=2, arrow=arrow))
            files: list[_File] = []
            try:
                with parts as changes:
                    done.rows = (_write_parquet(changes, root, name, cols, partition_by, files)
                                 if fmt == "parquet" else
                                 _write_text(changes, root, name, fmt, cols, files))
                for file in files:
                    file.close()
            except BaseException:
                for file in files:
                    file.discard()
                raise
            done.tombstones = conn.execute(
                "SELECT count(*) FROM _deleted_rows WHERE tbl = ? AND _seq > ?",
                (table, start)).fetchone()[0]
            for file in files:
                os.replace(file.partial, file.final)
                _fsync_dir(file.final.parent)
                done.files.append(str(file.final))
    finally:
        conn.execute("COMMIT")
    _record(store.path, consumer, table, recorded, top)
    return done


def _register(path: str, consumer: str, table: str) -> None:
    """A consumer exists from its first export, at position 0, before any file is written:
    from then on the tombstones it has not received are kept for it (store.prune_tombstones),
    even if that export is killed after a receiver loaded its files."""
    def register(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO _consumers (name, tbl, position, exports, updated_at) "
                     "VALUES (?, ?, 0, 0, ?) ON CONFLICT (name, tbl) DO NOTHING",
                     (consumer, table, now_utc()))
    _write(path, register)


def _record(path: str, consumer: str, table: str, expected: int, position: int) -> None:
    """Move the position, only from where this export found it (two exports of one consumer
    at once: the later one fails and delivers again next time), and drop the tombstones every
    consumer of the table has now received."""
    def record(conn: sqlite3.Connection) -> None:
        have = _position(conn, consumer, table)
        if have != expected:
            raise FeedError(f"consumer {consumer!r} of {table} moved to {have} during this "
                            "export (another export of it ran at once); its files are kept, "
                            "run the export again")
        conn.execute(
            "INSERT INTO _consumers (name, tbl, position, exports, updated_at) "
            "VALUES (?, ?, ?, 1, ?) ON CONFLICT (name, tbl) DO UPDATE SET "
            "position = excluded.position, exports = exports + 1, "
            "updated_at = excluded.updated_at", (consumer, table, position, now_utc()))
        dropped = prune_tombstones(conn)
        log.info("dropped %d tombstones every consumer has received", dropped)
    _write(path, record)


def _write(path: str, change) -> None:
    """`change(conn)` in one write transaction of its own; rolled back if it raises."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            change(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        raise Store.error_for(path, e) from None
    finally:
        conn.close()
