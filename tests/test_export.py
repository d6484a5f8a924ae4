"""`syncer export`: CSV, JSONL and Parquet read back with real readers equal the database."""
import csv
import io
import json
import shutil
import sqlite3
import sys
import threading
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from support import build_mirror, read_store

from syncer import migrations
from syncer.cli import main
from syncer.export import ExportError, export
from syncer.query import Filters

JSON_FIELDS = {"context", "participantMetadata", "surface", "metadata"}
TIMESTAMPS = {"createdAt", "updatedAt", "lastMessageAt", "takeoverAt", "_synced_at", "_deleted_at"}


def _tricky_text(upstream):
    upstream.add_message(upstream.conversation_ids()[1], 'comma, "quote"\nnew line; tab\t🙂 é')
    upstream.add_message(upstream.conversation_ids()[1], '')    # empty, not NULL
    # a NUL ends a value for SQLite's printf, which the CSV export uses
    upstream.add_message(upstream.conversation_ids()[2], 'nul\x00, then a comma')
    upstream.add_message(upstream.conversation_ids()[2], 'nul\x00 alone é')


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return build_mirror(tmp_path_factory.mktemp("export") / "mirror.db", seed=13,
                        conversations=80, prepare=_tricky_text, delete=0)


def table(db, name, where="1", args=()):
    """The rows an export should hold, in storage order, without _raw/_list_sig."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    sql = (f"SELECT * FROM {name} c WHERE {where} ORDER BY rowid" if name == "conversations"
           else "SELECT m.* FROM messages m JOIN conversations c ON c.id = m.conversationId "
                f"WHERE {where} ORDER BY m.rowid")
    out = [{k: r[k] for k in r.keys() if k not in ("_raw", "_list_sig", "_seq")}
           for r in conn.execute(sql, args)]
    conn.close()
    return out


def run(db, table_name, fmt, filters=Filters()):
    buffer = io.BytesIO()
    with _open(db) as store:
        n = export(store, table_name, fmt, buffer, filters)
    return n, buffer.getvalue()


_open = read_store


@pytest.mark.parametrize("name", ["conversations", "messages"])
def test_csv_round_trip(db, name):
    n, data = run(db, name, "csv")
    back = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    want = [{k: "" if v is None else str(v) for k, v in r.items()}
            for r in table(db, name, "c._deleted_at IS NULL")]
    assert back == want and n == len(want)


def csv_field(name, value):
    """The CSV export's form of a value: text quoted (quotes doubled), NULL an empty field."""
    if value is None:
        return ""
    if isinstance(value, int) or name in TIMESTAMPS:
        return str(value)
    return '"' + value.replace('"', '""') + '"'


def csv_text(rows):
    """The CSV export of `rows` (dicts in column order): a header, then CRLF-ended lines."""
    return ",".join(rows[0]) + "\r\n" + "".join(
        ",".join(csv_field(k, v) for k, v in r.items()) + "\r\n" for r in rows)


@pytest.mark.parametrize("name", ["conversations", "messages"])
def test_csv_bytes_quote_every_text_and_leave_null_empty(db, name):
    """Byte for byte: every text field quoted, counts and timestamps not, NULL empty, lines
    ended by CRLF, NULs included (a NUL ends a value for printf, which builds the lines)."""
    _, data = run(db, name, "csv")
    want = csv_text(table(db, name, "c._deleted_at IS NULL"))
    assert data.decode("utf-8") == want
    if name == "messages":
        assert '"nul\x00, then a comma"' in want and '"nul\x00 alone é"' in want
        assert ',"",' in want and ',,' in want


@pytest.mark.parametrize("name", ["conversations", "messages"])
def test_duckdb_reads_the_csv_back_with_null_and_empty_text_apart(db, name):
    """A real reader that tells a quoted empty field from an empty one (as Postgres' COPY
    does) reads the export back as the table: NULL stays NULL and '' stays ''."""
    _, data = run(db, name, "csv")
    path = Path(db).with_name(f"{name}.csv")
    path.write_bytes(data)
    rows = table(db, name, "c._deleted_at IS NULL")
    types = {k: "BIGINT" if any(isinstance(r[k], int) for r in rows) else "VARCHAR"
             for k in rows[0]}
    read = duckdb.sql(f"SELECT * FROM read_csv('{path}', header = true, "
                      f"allow_quoted_nulls = false, columns = {types!r})")
    got = [dict(zip(read.columns, row)) for row in read.fetchall()]
    assert got == rows
    if name == "messages":
        assert any(r["content"] == "" for r in got) and any(r["direction"] is None for r in got)


def test_without_a_nul_the_lines_are_built_without_testing_for_one(db, tmp_path):
    """A mirror whose tables hold no NUL (none named in _text_nul) is exported with the
    plain printf line, and the bytes are the same: quotes, line breaks, empty text, emoji."""
    plain = tmp_path / "plain.db"
    shutil.copyfile(db, plain)
    conn = sqlite3.connect(plain)
    assert {t for (t,) in conn.execute("SELECT tbl FROM _text_nul")} == {"messages"}
    conn.execute("DELETE FROM messages WHERE instr(content, char(0))")
    conn.execute("DELETE FROM _text_nul")
    conn.commit()
    conn.close()
    for name in ("conversations", "messages"):
        want = csv_text(table(str(plain), name, "c._deleted_at IS NULL"))
        assert run(str(plain), name, "csv")[1].decode() == want
        assert '"comma, ""quote""\nnew line; tab\t🙂 é"' in want or name == "conversations"


def test_nul_text_names_every_text_column_the_csv_line_prints():
    """migrations.NUL_TEXT, whose triggers mark a table, must cover every column csv_line
    builds with printf (text that is not JSON): else a NUL there would end its value."""
    conn = sqlite3.connect(":memory:")
    migrations.migrate(conn)
    for name, listed in migrations.NUL_TEXT.items():
        printed = [c for _, c, kind, *_ in conn.execute(f"PRAGMA table_info({name})")
                   if kind == "TEXT" and c not in TIMESTAMPS | JSON_FIELDS
                   and c not in ("_raw", "_list_sig")]
        assert list(listed) == printed


@pytest.mark.parametrize("name", sorted(migrations.NUL_TEXT))
def test_a_nul_written_in_any_text_column_marks_its_table(name):
    """Every insert or update that puts a NUL in one of the table's printed text columns names
    the table in _text_nul, in the same transaction; writes without one do not."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrations.migrate(conn)
    required = ("id", "_raw", "_synced_at") + (("conversationId",) if name == "messages" else ())

    def marked():
        return conn.execute("SELECT count(*) FROM _text_nul WHERE tbl = ?", (name,)).fetchone()[0]

    for n, column in enumerate(migrations.NUL_TEXT[name]):
        conn.execute("DELETE FROM _text_nul")
        cols = dict.fromkeys(required, f"r{n}") | {column: "plain é"}
        conn.execute(f"INSERT INTO {name} ({', '.join(cols)}) VALUES "
                     f"({', '.join('?' * len(cols))})", list(cols.values()))
        assert not marked(), column
        conn.execute(f"UPDATE {name} SET {column} = ? WHERE {column} = 'plain é'", ("a\x00é",))
        assert marked(), column
        conn.execute("DELETE FROM _text_nul")
        cols = dict.fromkeys(required, f"s{n}") | {column: "b\x00"}
        conn.execute(f"INSERT INTO {name} ({', '.join(cols)}) VALUES "
                     f"({', '.join('?' * len(cols))})", list(cols.values()))
        assert marked(), column


def test_the_migration_marks_a_mirror_that_already_holds_a_nul(tmp_path):
    """Upgrading a version-7 mirror looks for NULs already held, in rows and tombstones."""
    for where in ("messages", "tombstone", "none"):
        conn = sqlite3.connect(tmp_path / f"{where}.db", isolation_level=None)
        for version, script in enumerate(migrations.MIGRATIONS[:7], start=1):
            conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {version}; COMMIT;")
        conn.execute("PRAGMA application_id = %d" % migrations.APPLICATION_ID)
        conn.execute("INSERT INTO conversations (id, _raw, _synced_at) VALUES ('c', '{}', 'x')")
        content = "a\x00b" if where == "messages" else "ab"
        conn.execute("INSERT INTO messages (id, conversationId, content, _raw, _synced_at) "
                     "VALUES (?, 'c', ?, '{}', 'x')", ("m\x00" if where == "tombstone" else "m",
                                                       content))
        if where == "tombstone":
            conn.execute("DELETE FROM messages")
        migrations.migrate(conn)
        got = [t for (t,) in conn.execute("SELECT tbl FROM _text_nul")]
        assert got == ([] if where == "none" else ["messages"]), where
        conn.close()


@pytest.mark.parametrize("name", ["conversations", "messages"])
def test_jsonl_round_trip(db, name):
    n, data = run(db, name, "jsonl")
    back = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    want = [{k: json.loads(v) if k in JSON_FIELDS and v is not None else v
             for k, v in r.items()} for r in table(db, name, "c._deleted_at IS NULL")]
    assert back == want and n == len(want)
    assert any(isinstance(r.get("metadata", r.get("surface")), dict) for r in back)


def as_datetime(value):
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.mark.parametrize("name", ["conversations", "messages"])
def test_parquet_round_trip_with_types(db, name):
    n, data = run(db, name, "parquet", Filters(include_deleted=True))
    read = pq.read_table(pa.BufferReader(data))
    for field in read.schema:
        if field.name in TIMESTAMPS:
            assert field.type == pa.timestamp("us", tz="UTC"), field
        elif field.name in ("messageCount", "_messages_held", "_messages_missing",
                            "_messages_complete"):
            assert field.type == pa.int64()
        else:
            assert field.type == pa.string()
    want = [{k: as_datetime(v) if k in TIMESTAMPS else v for k, v in r.items()}
            for r in table(db, name)]
    assert read.to_pylist() == want and n == len(want)


def test_filters_apply_to_exports(db):
    since = "2024-01-01T00:00:00.000000Z"
    _, data = run(db, "messages", "jsonl", Filters(since=since, role=("user",),
                                                   status=("open",)))
    got = [json.loads(line)["id"] for line in data.decode().splitlines()]
    want = [r["id"] for r in table(db, "messages", "c._deleted_at IS NULL AND m.createdAt >= ? "
                                   "AND m.role = 'user' AND c.status = 'open'", (since,))]
    assert got == want and got
    _, data = run(db, "conversations", "csv", Filters(surface=("email",), until=since))
    got = [r["id"] for r in csv.DictReader(io.StringIO(data.decode()))]
    assert got == [r["id"] for r in table(db, "conversations", "c._deleted_at IS NULL AND "
                                          "c.surfaceId = 'surface_002' AND c.updatedAt < ?",
                                          (since,))]


def test_empty_parquet_export_keeps_the_schema(db):
    n, data = run(db, "messages", "parquet", Filters(conversation="conv_none"))
    read = pq.read_table(pa.BufferReader(data))
    assert (n, read.num_rows, read.schema.field("createdAt").type) == \
        (0, 0, pa.timestamp("us", tz="UTC"))


def test_cli_to_file_and_stdout(db, tmp_path):
    runner = CliRunner()
    out = tmp_path / "m.parquet"
    result = runner.invoke(main, ["--db", db, "export", "messages", "--format", "parquet",
                                  "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).num_rows == len(table(db, "messages", "c._deleted_at IS NULL"))
    result = runner.invoke(main, ["--db", db, "export", "conversations", "--format", "jsonl",
                                  "--status", "closed"])
    assert {json.loads(line)["status"] for line in result.output.splitlines()} == {"closed"}


def test_parquet_without_pyarrow_is_a_clear_error(db, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with _open(db) as store, pytest.raises(ExportError, match=r"syncer\[parquet\]"):
        export(store, "messages", "parquet", io.BytesIO())
    out = tmp_path / "m.parquet"
    result = CliRunner().invoke(main, ["--db", db, "export", "messages", "--format", "parquet",
                                       "-o", str(out)])
    assert result.exit_code == 2 and "pip install 'runtype-syncer[parquet]'" in result.output
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_helper_that_fails_leaves_its_ranges_to_the_exporter(db, monkeypatch, fmt):
    """A helper whose query fails (after it has sent its snapshot's counter) ends; the
    exporter reads that helper's ranges itself, and the output is the same. It never waits
    on a helper that is gone."""
    from syncer import export as exporting
    for name, value in {"WORKERS": 0, "RANGE": 7, "PARALLEL_FROM": 2, "ROW_GROUP": 20}.items():
        monkeypatch.setattr(exporting, name, value)
    alone = run(db, "messages", fmt)
    monkeypatch.setattr(exporting, "WORKERS", 2)
    start, started = exporting._start_helper, []

    def failing(job, spans):
        started.append(spans)
        return start({**job, "sql": "SELECT no_such_function()"}, spans)

    monkeypatch.setattr(exporting, "_start_helper", failing)
    result = []
    worker = threading.Thread(target=lambda: result.append(run(db, "messages", fmt)))
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the export waited on a helper that had failed"
    assert len(started) == 2 and result == [alone]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("filters", [Filters(), Filters(since="2024-01-01T00:00:00.000000Z")])
def test_text_over_sqlites_largest_value_is_exported_line_by_line(db, fmt, filters):
    """A range's text is built as one SQLite value, which SQLite caps (1 GB by default; a
    filtered export is one range, however large). Text over the cap comes line by line
    instead: the same bytes, not an error. The cap is lowered here to 20,000 bytes."""
    want = run(db, "messages", fmt, filters)
    assert len(want[1]) > 100_000
    buffer = io.BytesIO()
    with _open(db) as store:
        store.conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 20_000)
        n = export(store, "messages", fmt, buffer, filters)
    assert (n, buffer.getvalue()) == want


def test_a_filtered_parquet_export_is_read_in_bounded_batches(db, monkeypatch):
    """A filtered export is one query (for SQLite to use its indexes), read RANGE rows at a
    time: memory stays flat however many rows match."""
    from syncer import export as exporting
    sizes = []
    table_of = exporting.arrow_table
    monkeypatch.setattr(exporting, "arrow_table",
                        lambda rows, cols: sizes.append(len(rows)) or table_of(rows, cols))
    want = run(db, "messages", "parquet", Filters(since="2024-01-01T00:00:00.000000Z"))
    monkeypatch.setattr(exporting, "RANGE", 7)
    sizes.clear()
    got = run(db, "messages", "parquet", Filters(since="2024-01-01T00:00:00.000000Z"))
    assert pq.read_table(pa.BufferReader(got[1])).equals(pq.read_table(pa.BufferReader(want[1])))
    assert got[0] == want[0] > 50 and max(sizes) == 7 and sum(sizes) == got[0]


def test_export_file_is_private_and_appears_only_when_complete(tmp_path):
    import os
    import subprocess
    import sys
    from syncer.export import private_output
    target = tmp_path / "out.csv"
    with private_output(str(target), str(tmp_path / "m.db")) as out:
        out.write(b"a,b\n")
        assert not target.exists()
    assert target.read_bytes() == b"a,b\n"
    assert oct(os.stat(target).st_mode & 0o777) == "0o600"
    try:
        with private_output(str(target), str(tmp_path / "m.db")) as out:
            out.write(b"half")
            raise RuntimeError("disk full")
    except RuntimeError:
        pass
    assert target.read_bytes() == b"a,b\n" and sorted(os.listdir(tmp_path)) == ["out.csv"]
    r = subprocess.run([sys.executable, "-m", "syncer", "--db", str(tmp_path / "none.db"),
                        "export", "messages", "-o", str(tmp_path / "no" / "dir.csv")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def _outputs(db, monkeypatch, workers, **settings):
    from syncer import export as exporting
    monkeypatch.setattr(exporting, "WORKERS", workers)
    for name, value in settings.items():
        monkeypatch.setattr(exporting, name, value)
    out = {}
    for name in ("conversations", "messages"):
        for fmt in ("csv", "jsonl", "parquet"):
            n, data = run(db, name, fmt)     # whole tables: read range by range
            out[name, fmt] = (n, pq.read_table(pa.BufferReader(data)).to_pylist()
                              if fmt == "parquet" else data)
    return out


@pytest.mark.parametrize("other_snapshot", [False, True])
def test_helper_processes_write_the_same_export(db, monkeypatch, other_snapshot):
    """A large export is shared with helper processes, range by range; small ranges force that
    here. The bytes are the same as one process's. A helper that reads another snapshot than
    the exporter's (a sync committed in between) is not used: the exporter does its ranges."""
    from syncer import export as exporting
    alone = _outputs(db, monkeypatch, 0)
    if other_snapshot:
        real = exporting.head
        monkeypatch.setattr(exporting, "head", lambda conn: real(conn) + 1)
    received = []
    read_block = exporting._read_block
    monkeypatch.setattr(exporting, "_read_block",
                        lambda *a: received.append(read_block(*a)) or received[-1])
    shared = _outputs(db, monkeypatch, 2, RANGE=7, PARALLEL_FROM=2, ROW_GROUP=20)
    assert shared == alone
    assert (received == []) if other_snapshot else (len(received) > 20 and all(received))
