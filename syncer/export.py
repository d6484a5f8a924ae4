"""Streaming exports of the mirror's tables to CSV, JSON Lines or Parquet. No click.

Columns are the table's own (see migrations.py) less `_raw` and `_list_sig`, in table order;
rows are in storage (rowid) order.

- CSV: a header line; every text field quoted (an empty text is "", NULL an empty field);
  counts and timestamps unquoted; JSON fields as JSON text; lines ended by CRLF.
- JSONL: one object per line, built by SQLite's json_object(); JSON fields as nested objects.
- Parquet (needs the `parquet` extra, pyarrow): timestamps as timestamp[us, UTC], counts as
  int64, JSON fields as JSON text strings, everything else as strings.

Where the time goes, and why it is done this way: making a Python object of every value and
formatting it in Python costs several times SQLite's own reading. So for CSV and JSON Lines,
SQLite builds the text: each range of rows (by rowid, or by change sequence for the feed, see
feed.py) is one query that returns the lines of the range as one value, and Python only moves
those blocks. For Parquet, each range's rows become an Arrow table with one pyarrow call per
column (cheaper than having SQLite write JSON for pyarrow to parse), written in row groups of
ROW_GROUP rows. Memory stays flat whatever the size. A large export's ranges are read by
WORKERS helper processes (`python -c`, each with its own read-only connection), one per core,
while the exporter only writes (moving the blocks costs it a core's fifth for text; for
Parquet the writer is a third of the work). The helpers read the same snapshot as the
exporter (they check the change counter, which every write of either table moves; a helper
that finds another snapshot is not used, and the exporter reads its ranges itself) and hand
their ranges back in order over a pipe (Parquet ranges as Arrow IPC).
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import queue
import sqlite3
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from . import private
from .errors import SyncerError
from .migrations import holds_nul
from .outputs import check_file, check_terminal
from .query import HIDDEN, Filters, _where, prepare
from .transform import JSON_FIELDS

if TYPE_CHECKING:
    from .store import Store

FORMATS = ("csv", "jsonl", "parquet")
BINARY = frozenset({"parquet"})     # never written to a terminal
TABLES = ("conversations", "messages")
TIMESTAMPS = frozenset({"createdAt", "updatedAt", "lastMessageAt", "takeoverAt", "_synced_at",
                        "_deleted_at"})
REPEATED = frozenset({"conversationId", "role", "direction", "metadata", "status", "surfaceId",
                      "timezone", "surface", "participantMetadata", "agentMode",
                      "takeoverActorId", "takeoverActorType"})   # few distinct values
RANGE = 5_000        # rowids (or change sequence numbers) per query
ROW_GROUP = 25_000    # Parquet rows per row group: the writer holds one (peak RSS, BENCHMARKS.md)
CORES = os.cpu_count() or 1
WORKERS = min(4, CORES) if CORES > 1 else 0   # helper processes (one core: the exporter alone)
PARALLEL_FROM = 20    # ranges: below this, starting helpers costs more than they save
_FRAME = struct.Struct("<qq")    # rows and bytes of a range (first: 0 and the change counter)


class ExportError(SyncerError):
    exit_code = 2


@contextlib.contextmanager
def private_output(path: str, mirror: str, fmt: str = "csv") -> Iterator[BinaryIO]:
    """Stdout for "-"; otherwise a file readable by its owner only (exports hold personal
    data), written beside its final name and moved there only when complete, so a failed or
    interrupted export (a full disk, SIGTERM) leaves no partial file and never clobbers an
    earlier one. A failed write is an ExportError naming the file and the cause. A path that
    is `mirror`, its companions or another syncer database is refused first, and so is a
    binary `fmt` to stdout on a terminal (outputs.py)."""
    check_file(path, mirror)
    if fmt in BINARY:
        check_terminal(path, fmt)
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.flush()
        return
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    try:
        file = private.create_file(partial)
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror}") from None
    try:
        with file as out:
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


# -- one row as text, built by SQLite ----------------------------------------------------------
def csv_line(cols: list[tuple[str, str]], expr, nul: bool = True) -> str:
    """SQL for one CSV line: counts and timestamps (normalised by transform.py) as they are,
    as they never need quotes; every text field in double quotes, its own doubled, so that an
    empty text ("") and NULL (an empty field) stay apart for readers that tell them apart
    (Postgres' COPY, DuckDB with allow_quoted_nulls = false). The line is one printf() call,
    text quoted by its %w: each `||` join would allocate, and testing whether a field needs
    quotes cost more than quoting it (BENCHMARKS.md). printf ends a value at a NUL, so where
    the table may hold one (`nul`, see `may_hold_nul`) a row with a NUL in a text field is
    built with `||` and replace() instead."""
    pieces, values, exact, tested = [], [], [], []
    for name, kind in cols:
        x = expr(name)
        if kind == "INTEGER" or name in TIMESTAMPS:
            pieces.append("%s")
            values.append(x)
            exact.append(f"coalesce({x}, '')")
            continue
        quote = f"iif({x} IS NULL, '', '\"')"
        pieces.append("%s%w%s")
        values += [quote, f"coalesce({x}, '')", quote]
        exact.append(f"iif({x} IS NULL, '', '\"' || replace({x}, '\"', '\"\"') || '\"')")
        if name not in JSON_FIELDS:    # JSON text (transform.py) escapes every control character
            tested.append(name)
    line = "printf('" + ",".join(pieces) + "', " + ", ".join(values) + ")"
    if not (nul and tested):
        return line
    joined = " || ',' || ".join(exact)
    return f"iif({holds_nul(map(expr, tested))}, {joined}, {line})"


def may_hold_nul(conn, table: str) -> bool:
    """Whether a text field of `table` may hold a NUL, in the caller's snapshot: the triggers
    of migrations.V8 name such a table in _text_nul. Testing every row costs about a quarter
    of a CSV export, for a character real text hardly ever holds."""
    return conn.execute("SELECT 1 FROM _text_nul WHERE tbl = ?", (table,)).fetchone() is not None


def select_sql(fmt: str, cols: list[tuple[str, str]], expr, extra: str = "",
               nul: bool = True) -> str:
    """The select list of one row of `cols`, `expr(name)` being each column's value: the CSV
    (`nul`: see csv_line) or JSON text of the row as `line`, or for Parquet the values
    themselves (`extra`, a value after them for the writer's own use)."""
    if fmt == "parquet":
        return ", ".join([f"{expr(name)} AS {name}" for name, _ in cols] + [extra] * bool(extra))
    if fmt == "csv":
        return csv_line(cols, expr, nul) + " AS line"
    pairs = ", ".join(f"'{name}', " + (f"json({expr(name)})" if name in JSON_FIELDS
                                       else expr(name)) for name, _ in cols)
    return f"json_object({pairs}) AS line"


LINE_ENDS = {"csv": "\r\n", "jsonl": "\n"}


def _joined_sql(rows_sql: str, fmt: str) -> str:
    """(rows, text): the `line`s of `rows_sql` (in its order) as one value."""
    end = " || ".join(f"char({ord(c)})" for c in LINE_ENDS[fmt])
    return (f"SELECT count(*), CAST(group_concat(line, {end}) || {end} AS BLOB) "
            f"FROM ({rows_sql})")


def _rows_sql(table: str, fmt: str, cols, filters: Filters,
              nul: bool) -> tuple[str, list, bool]:
    """Query of the lines of one rowid range (the last two `?`) of a whole-table export, and
    whether to split the table into ranges: a whole table is read in rowid order, range by
    range; a filtered export is one range, for SQLite to use its indexes."""
    alias = "c" if table == "conversations" else "m"
    line = select_sql(fmt, cols, lambda name: f"{alias}.{name}", nul=nul)
    bounds = f"{alias}.rowid >= ? AND {alias}.rowid < ? ORDER BY {alias}.rowid"
    whole = filters == Filters()
    if table == "conversations":
        # walked by rowid: kept off idx_conversations_kept, which would read every
        # conversation (and sort them) for each range
        where, args = filters.conversation_time_sql(walk_sorted=whole)
        return (f"SELECT {line} FROM conversations c WHERE {_where(where)} "
                f"AND {bounds}"), args, whole
    if whole:
        # the few conversations deleted or purged rather than a join: one probe of a small
        # list per message instead of two B-tree lookups (a message's conversation is always
        # in the mirror: conversations are never deleted). The list is read for every range,
        # so from the partial index that holds just them (left alone, SQLite scans a covering
        # index of every conversation instead).
        return (f"SELECT {line} FROM messages m WHERE +m.conversationId NOT IN "
                "(SELECT id FROM conversations INDEXED BY idx_conversations_gone "
                f"WHERE _purged_at IS NOT NULL OR _deleted_at IS NOT NULL) AND {bounds}"), \
            [], True
    where, args = filters.message_sql()
    return (f"SELECT {line} FROM messages m JOIN conversations c "
            f"ON c.id = m.conversationId WHERE {_where(where)} AND {bounds}"), args, False


def ranges(low: int, high: int) -> list[tuple[int, int]]:
    """[low, high] in RANGE-wide half-open ranges."""
    return [(lo, min(lo + RANGE, high + 1)) for lo in range(low, high + 1, RANGE)]


def head(conn) -> int:
    """The change counter: every write of a conversation or message moves it (migrations.V3),
    so two snapshots with the same value hold the same rows of both tables."""
    return conn.execute("SELECT value FROM _seq_counter WHERE id = 1").fetchone()[0]


# -- ranges computed here and by helper processes ----------------------------------------------
def blocks(store: Store, sql: str, fmt: str, args: list, spans: list[tuple[int, int]],
           pairs: int = 1, arrow: list | None = None) -> Iterator[tuple[int, object]]:
    """(rows, text) blocks of `sql` (rows of `fmt`: a `line` each for text) span by span, in
    order; `sql` takes `args` then each span's bounds `pairs` times. With `arrow` (the
    columns, see `arrow_table`), each block is an Arrow table built where it was read. The
    store's connection must be in a read transaction (the snapshot the helpers must match)."""
    conn = store.conn
    count = min(WORKERS, len(spans)) if len(spans) >= PARALLEL_FROM else 0
    helpers: list[subprocess.Popen | None] = []
    try:
        job = {"path": store.path, "sql": sql, "fmt": fmt, "args": args, "pairs": pairs,
               "arrow": arrow}
        helpers = [_start_helper(job, spans[k::count]) for k in range(count)]
        expected = head(conn) if helpers else None
        for k, helper in enumerate(helpers):
            if helper and _read_head(helper) != expected:    # another snapshot: not used
                helpers[k] = _stop(helper)
        for i, (lo, hi) in enumerate(spans):
            k = i % count if count else None
            block = None
            if k is not None and helpers[k]:
                block = _read_block(helpers[k], arrow)
                if block is None:         # it stopped: the rest of its spans are done here
                    helpers[k] = _stop(helpers[k])
            if block is not None:
                yield block
            else:
                yield from _read(conn, sql, fmt, [*args, *(lo, hi) * pairs], arrow,
                                 wide=hi - lo > RANGE)
    finally:
        for helper in helpers:
            if helper:
                _stop(helper)


def _range(conn, sql: str, fmt: str, params: list, arrow: list | None) -> tuple[int, object]:
    """One range's block: its text as one SQLite value, or its rows as one Arrow table."""
    if arrow is None:
        n, text = conn.execute(_joined_sql(sql, fmt), params).fetchone()
        return n, text or b""
    with _no_collection(), _text_as_bytes(conn):
        rows = conn.execute(sql, params).fetchall()
        n, table = len(rows), arrow_table(rows, arrow) if rows else None
        del rows    # gone before collection resumes, so it never scans them
    return n, table


def _read(conn, sql: str, fmt: str, params: list, arrow: list | None, *,
          wide: bool) -> Iterator[tuple[int, object]]:
    """The blocks of one span read here: one for a range of RANGE or fewer, RANGE rows at a
    time for a `wide` span (a filtered export, one query for SQLite to use its indexes, which
    may match the whole table) and for a range whose text is over SQLite's largest value
    (1 GB by default), so that memory stays flat whatever matches."""
    if not wide:
        try:
            yield _range(conn, sql, fmt, params, arrow)
            return
        except sqlite3.DataError:    # "string or blob too big": line by line below
            if arrow is not None:
                raise
    end = LINE_ENDS.get(fmt, "").encode()
    cursor = conn.execute(sql if arrow else f"SELECT CAST(line AS BLOB) FROM ({sql})", params)
    read = 0
    while True:
        with _no_collection(), _text_as_bytes(conn):
            rows = cursor.fetchmany(RANGE)
            block = (len(rows), arrow_table(rows, arrow) if arrow else
                     end.join(line for line, in rows) + end) if rows else None
            del rows
        if block is None:
            break
        read += block[0]
        yield block
    if not read:
        yield 0, None if arrow else b""


@contextlib.contextmanager
def _text_as_bytes(conn) -> Iterator[None]:
    """Text values as the UTF-8 bytes SQLite holds, which pyarrow takes as they are: no str
    is decoded for each value (about 10% of reading a range for Parquet)."""
    factory = conn.text_factory
    conn.text_factory = bytes
    try:
        yield
    finally:
        conn.text_factory = factory


@contextlib.contextmanager
def _no_collection() -> Iterator[None]:
    """The range's row tuples (thousands, none in a cycle) would set off several collections
    each, some of them full; freed before this ends, they never count (about 9% of a Parquet
    export's CPU)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _start_helper(job: dict, spans: list[tuple[int, int]]) -> subprocess.Popen | None:
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from syncer.export import _help; _help()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError:
        return None
    try:
        with proc.stdin:
            proc.stdin.write(json.dumps({**job, "spans": spans}).encode())
    except OSError:
        return _stop(proc)
    return proc


def _read_exactly(proc: subprocess.Popen, size: int) -> bytes | None:
    data = proc.stdout.read(size)
    return data if len(data) == size else None


def _read_head(proc: subprocess.Popen) -> int | None:
    frame = _read_exactly(proc, _FRAME.size)
    return _FRAME.unpack(frame)[1] if frame else None


def _read_block(proc: subprocess.Popen, arrow: list | None) -> tuple[int, object] | None:
    frame = _read_exactly(proc, _FRAME.size)
    if frame is None:
        return None
    rows, size = _FRAME.unpack(frame)
    data = _read_exactly(proc, size)
    if data is None or not (arrow and rows):
        return None if data is None else (rows, data)
    import pyarrow as pa
    return rows, pa.ipc.open_stream(data).read_all()


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        proc.kill()
    proc.wait()
    proc.stdout.close()


def _help() -> None:
    """A helper process: the job on stdin; on stdout its snapshot's change counter, then each
    span's (rows, text) in order. Ends at the first problem (the exporter does the rest)."""
    from .store import Store
    job = json.loads(sys.stdin.buffer.read())
    store = Store.open_readonly(job["path"])
    conn = prepare(store)
    conn.execute("BEGIN")
    sender = _Sender() if job["arrow"] else None
    send = sender.put if sender else _send
    try:
        send((0, head(conn), b""))
        for lo, hi in job["spans"]:
            n, data = _range(conn, job["sql"], job["fmt"],
                             [*job["args"], *(lo, hi) * job["pairs"]], job["arrow"])
            text = _ipc(data) if job["arrow"] and n else data or b""
            send((n, len(text), text))
    finally:     # what was read is sent; then the helper ends, even after an error
        if sender:
            sender.close()


def _send(frame: tuple[int, int, object]) -> None:
    out = sys.stdout.buffer
    out.write(_FRAME.pack(*frame[:2]))
    out.write(frame[2])
    out.flush()


class _Sender:
    """A Parquet helper's writes, from a thread of their own: while the exporter writes a row
    group, the helper goes on reading its next range instead of waiting on a full pipe (about
    6% of the export; for text, whose exporter only copies, the thread costs more than it
    saves)."""

    def __init__(self) -> None:
        self.outbox: queue.Queue = queue.Queue(maxsize=2)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def put(self, frame: tuple[int, int, object]) -> None:
        self.outbox.put(frame)

    def close(self) -> None:
        self.outbox.put(None)
        self.thread.join()

    def _run(self) -> None:
        try:
            while (frame := self.outbox.get()) is not None:
                _send(frame)
        except OSError:     # the exporter stopped reading: nothing is left to do
            os._exit(0)


def _ipc(table) -> memoryview:
    import pyarrow as pa
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return memoryview(sink.getvalue())    # written as it is: no copy into bytes


# -- whole tables ------------------------------------------------------------------------------
def export(store: Store, table: str, fmt: str, out: BinaryIO,
           filters: Filters = Filters()) -> int:
    """Write the rows of `table` passing `filters` to `out`; returns the number of rows."""
    if table not in TABLES:
        raise ExportError(f"cannot export {table!r} (use {' or '.join(TABLES)})")
    check_format(fmt)
    conn = prepare(store)
    cols = columns(store, table)
    opened = not conn.in_transaction
    if opened:
        conn.execute("BEGIN")    # one snapshot for every range
    try:
        sql, args, split = _rows_sql(table, fmt, cols, filters, may_hold_nul(conn, table))
        low, high = conn.execute(f"SELECT min(rowid), max(rowid) FROM {table}").fetchone()
        spans = [] if low is None else ranges(low, high) if split else [(low, high + 1)]
        with contextlib.closing(blocks(store, sql, fmt, args, spans,
                                       arrow=cols if fmt == "parquet" else None)) as parts:
            if fmt == "parquet":
                return write_parquet(out, parquet_schema(cols), parts)
            if fmt == "csv":
                out.write((",".join(name for name, _ in cols) + "\r\n").encode())
            return write_text(out, parts)
    finally:
        if opened:
            conn.execute("COMMIT")


def write_text(out: BinaryIO, parts) -> int:
    n = 0
    for rows, text in parts:
        if rows:
            out.write(text)
            n += rows
    out.flush()
    return n


def parquet_schema(cols: list[tuple[str, str]]):
    import pyarrow as pa
    return pa.schema([(name, pa.timestamp("us", tz="UTC") if name in TIMESTAMPS
                       else pa.int64() if kind == "INTEGER" else pa.string())
                      for name, kind in cols])


def memory_pool():
    """The C library's allocator: mimalloc, pyarrow's default, keeps what a row group freed
    and peaks about 20-40 MiB higher over a large export (BENCHMARKS.md)."""
    import pyarrow as pa
    return pa.system_memory_pool()


def arrow_table(rows: list[tuple], cols: list):
    """An Arrow table of rows whose first values are `cols` (as `columns` gives them, plus
    `_month` where partitioned, feed.py): one pyarrow call per column, nothing per value in
    Python; timestamps parsed by Arrow. Text comes as UTF-8 bytes (see `_text_as_bytes`),
    taken as binary and checked as UTF-8 in one pass per column: building strings checks
    each value on its own, several times slower."""
    import pyarrow as pa
    schema = parquet_schema(cols)
    pool = memory_pool()
    arrays = []
    for field, values in zip(schema, zip(*rows)):   # the columns, transposed in C
        if pa.types.is_integer(field.type):
            arrays.append(pa.array(values, field.type, memory_pool=pool))
            continue
        text = pa.array(values, pa.binary(), memory_pool=pool).view(pa.string())
        text.validate(full=True)
        arrays.append(text.cast(field.type, memory_pool=pool)
                      if pa.types.is_timestamp(field.type) else text)
    return pa.Table.from_arrays(arrays, schema=schema)


def parquet_writer(out: BinaryIO, schema):
    """zstd; dictionary encoding only for the columns whose values repeat (REPEATED): for
    ids, text and timestamps a dictionary is built in vain, about a third of the writer's
    time (BENCHMARKS.md)."""
    import pyarrow.parquet as pq
    return pq.ParquetWriter(out, schema, compression="zstd", memory_pool=memory_pool(),
                            use_dictionary=[name for name in schema.names if name in REPEATED])


def write_parquet(out: BinaryIO, schema, parts) -> int:
    """Row groups of about ROW_GROUP rows; at most that many held at once."""
    import pyarrow as pa
    n = 0
    with parquet_writer(out, schema) as writer:
        pending, held = [], 0
        for rows, table in parts:
            if rows:
                pending.append(table)
                held += rows
            if held >= ROW_GROUP:
                writer.write_table(pa.concat_tables(pending, memory_pool=memory_pool()))
                n, pending, held = n + held, [], 0
        if pending or n == 0:
            writer.write_table(pa.concat_tables(pending, memory_pool=memory_pool())
                               if pending else schema.empty_table())
            n += held
    return n
