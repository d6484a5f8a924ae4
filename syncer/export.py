"""Streaming exports of the mirror's tables to CSV, JSON Lines or Parquet. No click.

Rows leave SQLite in batches and are written as they come, so memory stays flat whatever the
size. Columns are the table's own (see migrations.py) less `_raw` and `_list_sig`, in table
order; rows are in storage (rowid) order.

- CSV: a header line; NULL is an empty field; JSON fields as JSON text.
- JSONL: one object per line, built by SQLite's json_object(); JSON fields as nested objects.
- Parquet (needs the `parquet` extra, pyarrow): timestamps as timestamp[us, UTC], counts as
  int64, JSON fields as JSON text strings, everything else as strings.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from .errors import SyncerError
from .query import HIDDEN, Filters, _where, prepare
from .transform import JSON_FIELDS

if TYPE_CHECKING:
    from .store import Store

FORMATS = ("csv", "jsonl", "parquet")
TABLES = ("conversations", "messages")
TIMESTAMPS = frozenset({"createdAt", "updatedAt", "lastMessageAt", "_synced_at", "_deleted_at"})
_BATCH = 5_000
_ROW_GROUP = 100_000


class ExportError(SyncerError):
    exit_code = 2


@contextlib.contextmanager
def private_output(path: str) -> Iterator[BinaryIO]:
    """Stdout for "-"; otherwise a file readable by its owner only (exports hold personal
    data), written beside its final name and moved there only when complete, so a failed or
    interrupted export (a full disk, SIGTERM) leaves no partial file and never clobbers an
    earlier one. A failed write is an ExportError naming the file and the cause."""
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.flush()
        return
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(partial, target)
    except OSError as e:
        partial.unlink(missing_ok=True)
        kept = " (the earlier file is kept)" if target.exists() else ""
        raise ExportError(f"cannot write {path}: {e.strerror or e}; nothing was "
                          f"written{kept}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def columns(store: Store, table: str) -> list[tuple[str, str]]:
    """(name, declared type) of the exported columns of `table` (the change sequence `_seq`
    is the change feed's, see feed.py)."""
    return [(name, kind) for _, name, kind, *_ in store.conn.execute(
        f"PRAGMA table_info({table})") if name not in HIDDEN and name != "_seq"]


def _select(store: Store, table: str, filters: Filters, exprs: list[str]) -> tuple[str, list]:
    if table == "conversations":
        where, args = filters.conversation_time_sql()
        return (f"SELECT {', '.join(exprs)} FROM conversations c WHERE {_where(where)} "
                "ORDER BY c.rowid"), args
    where, args = filters.message_sql()
    return (f"SELECT {', '.join(exprs)} FROM messages m JOIN conversations c "
            f"ON c.id = m.conversationId WHERE {_where(where)} ORDER BY m.rowid"), args


def check_format(fmt: str) -> None:
    """Fail early (before any file is opened) on an unknown format or a missing extra."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (use {', '.join(FORMATS)})")
    if fmt == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ExportError("Parquet export needs pyarrow: "
                              "pip install 'runtype-syncer[parquet]'") from None


def export(store: Store, table: str, fmt: str, out: BinaryIO,
           filters: Filters = Filters()) -> int:
    """Write the rows of `table` passing `filters` to `out`; returns the number of rows."""
    if table not in TABLES:
        raise ExportError(f"cannot export {table!r} (use {' or '.join(TABLES)})")
    check_format(fmt)
    writer = {"csv": _csv, "jsonl": _jsonl, "parquet": _parquet}[fmt]
    prepare(store)
    return writer(store, table, columns(store, table), out, filters)


def _alias(table: str) -> str:
    return "c" if table == "conversations" else "m"


def _batches(store: Store, sql: str, args: list):
    cur = store.conn.execute(sql, args)
    while batch := cur.fetchmany(_BATCH):
        yield batch


def _csv(store, table, cols, out, filters) -> int:
    a = _alias(table)
    sql, args = _select(store, table, filters, [f"{a}.{name}" for name, _ in cols])
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    writer = csv.writer(text)
    writer.writerow([name for name, _ in cols])
    n = 0
    for batch in _batches(store, sql, args):
        writer.writerows(batch)
        n += len(batch)
    text.flush()
    text.detach()
    return n


def _jsonl(store, table, cols, out, filters) -> int:
    a = _alias(table)
    pairs = ", ".join(f"'{name}', " + (f"json({a}.{name})" if name in JSON_FIELDS
                                       else f"{a}.{name}") for name, _ in cols)
    sql, args = _select(store, table, filters, [f"json_object({pairs})"])
    n = 0
    for batch in _batches(store, sql, args):
        out.write(("\n".join(line for (line,) in batch) + "\n").encode("utf-8"))
        n += len(batch)
    out.flush()
    return n


def parquet_schema(cols: list[tuple[str, str]]):
    import pyarrow as pa
    return pa.schema([(name, pa.timestamp("us", tz="UTC") if name in TIMESTAMPS
                       else pa.int64() if kind == "INTEGER" else pa.string())
                      for name, kind in cols])


def _parquet(store, table, cols, out, filters) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    a = _alias(table)
    sql, args = _select(store, table, filters, [f"{a}.{name}" for name, _ in cols])
    schema = parquet_schema(cols)
    n = 0
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        pending: list[tuple] = []
        for batch in _batches(store, sql, args):
            pending += batch
            if len(pending) >= _ROW_GROUP:
                writer.write_table(_arrow(pa, schema, pending))
                n, pending = n + len(pending), []
        if pending or n == 0:
            writer.write_table(_arrow(pa, schema, pending))
            n += len(pending)
    return n


def _arrow(pa, schema, rows: list[tuple]):
    arrays = []
    for i, field in enumerate(schema):
        values = [row[i] for row in rows]
        if pa.types.is_timestamp(field.type):
            arrays.append(pa.array(values, pa.string()).cast(field.type))
        else:
            arrays.append(pa.array(values, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)
