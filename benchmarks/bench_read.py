"""Benchmark of the offline read commands on a large mirror (not a test: run it by hand).

    .venv/bin/python benchmarks/bench_read.py [--db /tmp/bench-read.db] [--messages 1000000]
        [--sections calls,commands,exports]

Builds (once; reused when the file exists) a mirror of at least --messages messages from the
simulator's generator, written through the store's own save path (`Store.save_conversation`,
the call a sync makes for every conversation) rather than over HTTP, which would only add
request time. Then reports p50/p95 latency of typical searches, of `show` on a 300-message
thread and of `stats` (calls); of the whole `syncer` command, start-up included, run as a
fresh process (commands); and export throughput with the exporter's peak memory (exports).
"""
from __future__ import annotations

import argparse
import bisect
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from syncer.simulator import generate
from syncer.store import Fetched, Store
from syncer.transform import conversation_row, list_signature, message_row

CHUNK = 10_000  # conversations generated at a time (keeps the generator's memory small)
RARE_WORD = "xylophone"
THREAD_ID = "conv_bench_thread_300"


def _save(store: Store, record: dict, messages: list[dict]) -> None:
    row = conversation_row(record)
    row["_list_sig"] = list_signature(row)
    store.save_conversation(Fetched(row, [message_row(m) for m in messages], complete=True,
                                    drop_others=False, new=True))


def build(path: str, messages: int, seed: int = 1, extras: bool = True) -> int:
    """Fill a new mirror with generated data until it holds at least `messages` messages.
    To grow an existing mirror, give a seed far from the one it was built with and no extras
    (the thread and the rare word are already there)."""
    store = Store.open(path)
    held, chunk = 0, 0
    started = time.perf_counter()
    try:
        while held < messages:
            upstream = generate(seed + chunk, CHUNK, big_conversations=2)
            if chunk == 0 and extras:
                _add_extras(upstream)
            for cid in upstream.conversation_ids():
                batch = upstream.messages_of(cid)
                _save(store, upstream.get(cid), batch)
                held += len(batch)
            chunk += 1
            print(f"  {held:,} messages after {time.perf_counter() - started:.0f}s",
                  file=sys.stderr)
        store.optimize_fts()      # as a sync that writes this much does at its end
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        store.close()
    return held


def _add_extras(upstream) -> None:
    """A 300-message thread for `show`, and a word found in only 20 messages."""
    start = datetime(2024, 3, 1, tzinfo=UTC)
    upstream.create_conversation(id=THREAD_ID, subject="Benchmark thread", createdAt=start,
                                 updatedAt=start, participantName="Bench Mark")
    for n in range(300):
        upstream.add_message(THREAD_ID, f"message {n} of the long thread about billing",
                             role="user" if n % 2 == 0 else "assistant",
                             createdAt=start + timedelta(minutes=n))
    for n, cid in enumerate(upstream.conversation_ids()[:20]):
        upstream.add_message(cid, f"the {RARE_WORD} order arrived broken",
                             createdAt=start + timedelta(hours=n))


def _timed(fn, runs: int, cpu: list | None = None) -> tuple[float, float]:
    """Wall p50 and p95 in ms; the CPU time's p50 and p95 (this process's, which on a loaded
    machine is the steadier figure) are appended to `cpu` when given."""
    fn()  # warm the page cache and the statement cache
    times, cpus = [], []
    for _ in range(runs):
        started, used = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - started) * 1000)
        cpus.append((time.process_time() - used) * 1000)
    if cpu is not None:
        cpu.extend(_percentiles(cpus))
    return _percentiles(times)


def _percentiles(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return statistics.median(times), times[min(len(times) - 1, round(0.95 * len(times)) - 1)]


def _child(argv: list[str]) -> tuple[float, str, os.struct_rusage]:
    """Run a fresh process, stdout discarded; returns (wall seconds, its stderr, its resource
    usage). A failure ends the benchmark with its message."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    message = proc.stderr.read()
    proc.stderr.close()
    if status:
        raise SystemExit(f"{' '.join(argv[:6])} ... failed: {message}")
    return seconds, message, usage


def _command(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system) milliseconds of one whole `syncer` process. On a loaded
    machine the CPU time is the steadier figure: wall time adds the time spent waiting for a
    core."""
    seconds, _, usage = _child(argv)
    return seconds * 1000, (usage.ru_utime + usage.ru_stime) * 1000


def measure_commands(path: str, runs: int) -> list[str]:
    """The real command line, as a user runs it: the console script next to this interpreter
    (its modules byte-compiled first, as an installed package's are), one warm-up run each."""
    import compileall
    import syncer
    compileall.compile_dir(Path(syncer.__file__).parent, quiet=1)
    script = Path(sys.executable).with_name("syncer")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "syncer"]
    cases = [
        ("`python -c pass` (interpreter alone, for scale)", [sys.executable, "-c", "pass"]),
        ("`syncer --help`", [*base, "--help"]),
        *[(f"`syncer search {' '.join(words)}`",
           [*base, "--db", path, "search", *words, "--format", "jsonl"])
          for words in ([RARE_WORD], ["refund"], ["refund", "billing"],
                        ["refund", "--role", "user", "--since", "30d"],
                        ["refund", "--conversation", THREAD_ID],
                        ["billing", "--conversation", THREAD_ID],
                        ["refund", "--participant", "grace"],
                        ["refund", "--participant", "grace", "--since", "2024-05-01"],
                        ["refund", "--role", "assistant"],
                        ["refund", "--surface", "email"],
                        ["refund", "--surface", "email", "--role", "user"],
                        ["refund", "--status", "archived", "--since", "2024-05-01"])],
        ("`syncer show` (300-message thread)", [*base, "--db", path, "show", THREAD_ID,
                                                 "--format", "json"]),
        ("`syncer conversations`", [*base, "--db", path, "conversations", "--format", "jsonl"]),
        ("`syncer status`", [*base, "--db", path, "status"]),
    ]
    lines = ["| command (fresh process) | p50 ms | p95 ms | CPU p50 ms | CPU p95 ms |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, argv in cases:
        _command(argv)
        walls, cpus = zip(*[_command(argv) for _ in range(runs)])
        (p50, p95), (c50, c95) = _percentiles(list(walls)), _percentiles(list(cpus))
        lines.append(f"| {name} | {p50:.0f} | {p95:.0f} | {c50:.0f} | {c95:.0f} |")
    return lines


def searches():
    """The query shapes of the read benchmark: (name, words, filters, scoring)."""
    from syncer.query import Filters, Scoring, parse_time
    month = parse_time("30d")
    return [
        (f"rare word `{RARE_WORD}`", RARE_WORD, Filters(), Scoring()),
        ("`refund`", "refund", Filters(), Scoring()),
        ("`the`", "the", Filters(), Scoring()),
        ("`you`", "you", Filters(), Scoring()),
        ("`refund billing`", "refund billing", Filters(), Scoring()),
        ("`refund --role user --since 30d` (no hits)", "refund",
         Filters(role=("user",), since=month), Scoring()),
        ("`refund --conversation <300-message thread>` (no hits)", "refund",
         Filters(conversation=THREAD_ID), Scoring()),
        ("`billing --conversation <300-message thread>` (300 hits)", "billing",
         Filters(conversation=THREAD_ID), Scoring()),
        ("`refund --status open --role user`", "refund",
         Filters(status=("open",), role=("user",)), Scoring()),
        ("`café --since 2024-05-01`", "café",
         Filters(since="2024-05-01T00:00:00.000000Z"), Scoring()),
        ("`refund --participant 'no such person'` (no hits)", "refund",
         Filters(participant="no such person"), Scoring()),
        ("`refund --participant grace`", "refund", Filters(participant="grace"), Scoring()),
        ("`refund --participant user8879@example.com`", "refund",
         Filters(participant="user8879@example.com"), Scoring()),
        ("`refund --participant 王芳` (two letters: a scan)", "refund",
         Filters(participant="王芳"), Scoring()),
        ("`refund --role assistant`", "refund", Filters(role=("assistant",)), Scoring()),
        ("`refund --role system` (no hits)", "refund", Filters(role=("system",)), Scoring()),
        ("`refund --surface email`", "refund", Filters(surface=("email",)), Scoring()),
        ("`refund --surface surface_002`", "refund", Filters(surface=("surface_002",)),
         Scoring()),
        ("`refund --surface fax` (no hits)", "refund", Filters(surface=("fax",)), Scoring()),
        ("`refund --status archived`", "refund", Filters(status=("archived",)), Scoring()),
        ("`refund --status spam` (no hits)", "refund", Filters(status=("spam",)), Scoring()),
        ("`refund --until 2023-07-01`", "refund",
         Filters(until="2023-07-01T00:00:00.000000Z"), Scoring()),
        ("`refund --since 2024-05-01 --until 2024-05-02`", "refund",
         Filters(since="2024-05-01T00:00:00.000000Z", until="2024-05-02T00:00:00.000000Z"),
         Scoring()),
        ("`refund --participant grace --since 2024-05-01`", "refund",
         Filters(participant="grace", since="2024-05-01T00:00:00.000000Z"), Scoring()),
        ("`refund --participant grace --role user`", "refund",
         Filters(participant="grace", role=("user",)), Scoring()),
        ("`refund --participant grace --surface sms`", "refund",
         Filters(participant="grace", surface=("sms",)), Scoring()),
        ("`refund --participant grace --status spam` (no hits)", "refund",
         Filters(participant="grace", status=("spam",)), Scoring()),
        ("`refund --surface email --role user`", "refund",
         Filters(surface=("email",), role=("user",)), Scoring()),
        ("`refund --surface email --status archived`", "refund",
         Filters(surface=("email",), status=("archived",)), Scoring()),
        ("`refund --surface email --since 2024-05-01`", "refund",
         Filters(surface=("email",), since="2024-05-01T00:00:00.000000Z"), Scoring()),
        ("`refund --status archived --since 2024-05-01`", "refund",
         Filters(status=("archived",), since="2024-05-01T00:00:00.000000Z"), Scoring()),
        ("`refund --status archived --role assistant`", "refund",
         Filters(status=("archived",), role=("assistant",)), Scoring()),
        ("`refund --role assistant --since 2024-05-01`", "refund",
         Filters(role=("assistant",), since="2024-05-01T00:00:00.000000Z"), Scoring()),
        ("`refund --role system --surface email` (no hits)", "refund",
         Filters(role=("system",), surface=("email",)), Scoring()),
        ("`billing --conversation <thread> --role user`", "billing",
         Filters(conversation=THREAD_ID, role=("user",)), Scoring()),
        ("`refund --conversation <thread> --since 2024-05-01` (no hits)", "refund",
         Filters(conversation=THREAD_ID, since="2024-05-01T00:00:00.000000Z"), Scoring()),
        ("`refund --exact` (every match scored)", "refund", Filters(), Scoring(exact=True)),
    ]


def measure(path: str, runs: int, only: str | None = None) -> list[str]:
    from syncer import query
    store = Store.open_readonly(path)
    lines = ["| operation | messages matching the words | p50 ms | p95 ms | CPU p50 ms | "
             "CPU p95 ms |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    cases = [(f"search {name}", words, lambda w=words, f=filters, s=scoring: query.search(
        store, w, f, scoring=s)) for name, words, filters, scoring in searches()
        if not only or only in name]
    cases.append(("show a 300-message thread", None, lambda: query.show(store, THREAD_ID)))
    for name, words, fn in cases:
        matches = words and store.conn.execute(
            "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ?",
            (query.fts_phrases(words),)).fetchone()[0]
        cpu: list = []
        p50, p95 = _timed(fn, runs, cpu)
        lines.append(f"| {name} | {f'{matches:,}' if words else ''} | {p50:.1f} | {p95:.1f} | "
                     f"{cpu[0]:.1f} | {cpu[1]:.1f} |")
    store.close()
    return lines


PART_DAY = "2024-02-03T12:00:00.000000Z"
MONTH = ("2024-04-01T00:00:00.000000Z", "2024-05-01T00:00:00.000000Z")
STATS_SHAPES = [   # (label, filters, window); every shape runs over the whole mirror and a month
    ("no filter", {}),
    ("--status open", {"status": ("open",)}),
    ("--status closed --status archived", {"status": ("closed", "archived")}),
    ("--surface surface_002", {"surface": ("surface_002",)}),
    ("--surface email (a type)", {"surface": ("email",)}),
    ("--participant jane", {"participant": "jane"}),
    ("--participant example.com (every email)", {"participant": "example.com"}),
    ("--role user (turns recounted)", {"role": ("user",)}),
    ("--role user --role assistant", {"role": ("user", "assistant")}),
    ("--status open --surface sms --role assistant",
     {"status": ("open",), "surface": ("sms",), "role": ("assistant",)}),
    ("--include-deleted", {"include_deleted": True}),
]


def _timed_with_cpu(fn, runs: int) -> tuple[float, float, float]:
    """(p50, p95) wall ms and p50 CPU ms: on a shared machine the CPU time is what the call
    itself costs (one thread, the file in the page cache), the wall time what it waited too."""
    cpu: list[float] = []
    return (*_timed(fn, runs, cpu), cpu[0])


def measure_stats(path: str, runs: int = 20) -> list[str]:
    from syncer import query
    from syncer.stats import stats
    store = Store.open_readonly(path)
    lines = [f"load average before: {os.getloadavg()[0]:.1f}",
             "| filters | whole mirror p50 / p95 / CPU p50 ms | a month p50 / p95 / CPU ms |",
             "| --- | ---: | ---: |"]
    windows = [(None, None), MONTH]
    for name, shape in STATS_SHAPES + [
            ("--since 2024-02-03T12:00 (part-day start)", {"since": PART_DAY}),
            ("--status open --since 2024-02-03T12:00", {"status": ("open",),
                                                        "since": PART_DAY})]:
        cells = []
        for since, until in windows[:1] if "since" in shape else windows:
            filters = query.Filters(**{"since": since, "until": until, **shape})
            cells.append(" / ".join(f"{t:.0f}" for t in _timed_with_cpu(
                lambda: stats(store, filters), runs)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cells = " / ".join(f"{t:.0f}" for t in _timed_with_cpu(lambda: stats(store, per="month"),
                                                          runs))
    lines += [f"| --per month | {cells} | |", f"load average after: {os.getloadavg()[0]:.1f}"]
    store.close()
    return lines


RELEVANCE_QUERIES = [
    "refund", "the", "order", "payment", "login", "browser", "tracking", "failed", "token",
    "ticket", "agent", "support", "calendar", "update", "thanks", "customer",
    "you", "can", "it", "in", "t",
    "you can", "it up", "refund you", "order can",
    "refund billing", "login failed", "password reset",
    RARE_WORD, "agent support ticket",
]


def measure_relevance(path: str, runs: int) -> list[str]:
    """The default policy's top 20 against exact bm25's, message hits only (`--in messages`):
    how many of the 20 are the same, and where the worst of them stands in the exact ranking
    (its position among all matches, ties counted as one place, in % of the matches)."""
    from syncer import query
    store = Store.open_readonly(path)
    conn = store.conn
    lines = ["| query | matches | same in top 20 | worst of top 20, exact position | "
             "in top 1 % | default p50 ms | exact p50 ms |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    exact_scoring = query.Scoring(exact=True)
    for words in RELEVANCE_QUERIES:
        phrases = query.fts_phrases(words)
        scores = sorted(r for (r,) in conn.execute(
            "SELECT bm25(messages_fts) FROM messages_fts WHERE messages_fts MATCH ?",
            (phrases,)))
        top = query.search(store, words, scope="messages")
        exact = query.search(store, words, scope="messages", scoring=exact_scoring)
        same = len({h["id"] for h in top} & {h["id"] for h in exact})
        worst = max(bisect.bisect_left(scores, h["rank"]) + 1 for h in top)
        share = 100 * worst / len(scores)
        fast, _ = _timed(lambda: query.search(store, words, scope="messages"), runs)
        slow, _ = _timed(lambda: query.search(store, words, scope="messages",
                                              scoring=exact_scoring), runs)
        verdict = ("exact order" if len(scores) <= query.EXACT_UP_TO
                   else "yes" if share <= 1 else "**no**")
        lines.append(f"| `{words}` | {len(scores):,} | {same} | {worst:,} ({share:.2f} %) | "
                     f"{verdict} | {fast:.1f} | {slow:.1f} |")
    store.close()
    return lines


def _run_child(argv: list[str]) -> tuple[float, str, int]:
    """Run a fresh process; returns (wall seconds, its stderr, its peak RSS in MiB). Earlier
    runs' output is on disk first: on ext4 (data=ordered) the change feed's fsync would
    otherwise write every other file's dirty pages too (about 1 GB after a round's DuckDB and
    export outputs), which is their cost, not the feed's."""
    os.sync()
    seconds, message, usage = _child(argv)
    return seconds, message, usage.ru_maxrss // 1024


def _syncer_export(path: str, table: str, fmt: str, feed: bool,
                   out: Path) -> tuple[float, int, int]:
    """`syncer export` in a fresh process: the whole table, or a change feed from position 0
    (every row; this records consumer `bench` in the mirror, so run it on a copy you may
    write); returns (seconds, rows, peak RSS in MiB)."""
    out.mkdir(exist_ok=True)
    extra = (["--changes", "bench", "--reset", "-o", str(out / "feed")] if feed
             else ["-o", str(out / f"out.{fmt}")])
    seconds, message, rss = _run_child([sys.executable, "-m", "syncer", "--db", path, "export",
                                        table, "--format", fmt, *extra])
    return seconds, int(message.split()[0]), rss


def duckdb_sqlite_extension() -> str | None:
    """The directory holding DuckDB's sqlite extension from the `duckdb-ext-sqlite` package
    (`pip install 'runtype-syncer[bench]'`), which DuckDB loads offline from there; None when
    duckdb or the package is absent."""
    import importlib.util
    try:
        if importlib.util.find_spec("duckdb") is None:
            return None
        spec = importlib.util.find_spec("duckdb_ext")
    except ImportError:
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        if list(Path(root, "extensions").rglob("sqlite_scanner.duckdb_extension")):
            return str(Path(root, "extensions"))
    return None


_DUCKDB_EXPORT = """
import sys, duckdb
db, extensions, query, out, options = sys.argv[1:]
con = duckdb.connect()
con.execute("SET autoinstall_known_extensions = false")
con.execute("SET extension_directory = ?", [extensions])
con.execute("LOAD sqlite")
con.execute(f"ATTACH '{db}' AS m (TYPE sqlite, READ_ONLY)")
print(con.execute(f"COPY ({query}) TO '{out}' ({options})").fetchone()[0], file=sys.stderr)
"""


def _duckdb_query(path: str, table: str, fmt: str) -> str:
    """What `syncer export` writes, as a DuckDB query of the SQLite file: the same columns, the
    same deleted filter, Parquet's types (timestamps UTC, counts int64), JSON nested in JSONL."""
    from syncer.export import JSON_FIELDS, TIMESTAMPS
    from syncer.export import columns as export_columns
    store = Store.open_readonly(path)
    try:
        cols = export_columns(store, table)
    finally:
        store.close()
    a = "c" if table == "conversations" else "t"

    def expr(name: str) -> str:
        if fmt == "parquet" and name in TIMESTAMPS:
            return f"CAST({a}.{name} AS TIMESTAMPTZ) AS {name}"
        if fmt == "jsonl" and name in JSON_FIELDS:
            return f"CAST({a}.{name} AS JSON) AS {name}"
        return f"{a}.{name}"
    select = ", ".join(expr(name) for name, _ in cols)
    live = "c._deleted_at IS NULL AND c._purged_at IS NULL"
    if table == "conversations":
        return f"SELECT {select} FROM m.conversations c WHERE {live}"
    return (f"SELECT {select} FROM m.messages t JOIN m.conversations c "
            f"ON c.id = t.conversationId WHERE {live}")


def _duckdb_export(path: str, table: str, fmt: str, out: Path,
                   extensions: str) -> tuple[float, int, int]:
    """DuckDB (a fresh process, its default threads) reading the SQLite file and writing the
    same format; returns (seconds, rows, peak RSS in MiB)."""
    options = {"csv": "FORMAT csv, HEADER", "jsonl": "FORMAT json",
               "parquet": "FORMAT parquet, COMPRESSION zstd"}[fmt]
    seconds, message, rss = _run_child([sys.executable, "-c", _DUCKDB_EXPORT, path, extensions,
                                        _duckdb_query(path, table, fmt),
                                        str(out / f"duck.{fmt}"), options])
    return seconds, int(message.split()[0]), rss


def measure_exports(path: str, runs: int) -> list[str]:
    """Every format of both tables, the whole table and the change feed from position 0, each
    in a fresh process, beside DuckDB writing the same format from the same file; `runs`
    rounds taken in turn (DuckDB, export, feed; each round starting with the next), so each
    side sees the same machine load; median seconds, highest peak RSS."""
    extensions = duckdb_sqlite_extension()
    load = os.getloadavg()[0]
    lines = ["| export | rows | syncer s | syncer rows/s | syncer peak RSS MiB | DuckDB s | "
             "DuckDB rows/s | DuckDB peak RSS MiB | syncer / DuckDB time |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for table in ("messages", "conversations"):
        for fmt in ("csv", "jsonl", "parquet"):
            took: dict[str, list] = {"duckdb": [], "export": [], "feed": []}
            kinds = list(took) if extensions else ["export", "feed"]
            for round_ in range(runs):
                # each round starts with the next side: a run right after another's large
                # output is slower here (page cache), whichever side it is
                turn = round_ % len(kinds)
                with tempfile.TemporaryDirectory() as tmp:
                    for kind in kinds[turn:] + kinds[:turn]:
                        took[kind].append(
                            _duckdb_export(path, table, fmt, Path(tmp), extensions)
                            if kind == "duckdb" else
                            _syncer_export(path, table, fmt, kind == "feed", Path(tmp) / kind))
            duck = took["duckdb"] and (statistics.median(t[0] for t in took["duckdb"]),
                                       took["duckdb"][0][1],
                                       max(t[2] for t in took["duckdb"]))
            for kind in ("export", "feed"):
                seconds = statistics.median(t[0] for t in took[kind])
                rows, rss = took[kind][0][1], max(t[2] for t in took[kind])
                label = f"{table} {fmt}" + (" --changes (from 0)" if kind == "feed" else "")
                if duck and kind == "export" and duck[1] != rows:
                    raise SystemExit(f"{label}: DuckDB wrote {duck[1]:,} rows, syncer {rows:,}")
                theirs = (f"{duck[0]:.2f} | {duck[1] / duck[0]:,.0f} | {duck[2]} | "
                          f"{seconds / duck[0]:.2f}" if duck else "- | - | - | -")
                lines.append(f"| {label} | {rows:,} | {seconds:.2f} | {rows / seconds:,.0f} | "
                             f"{rss} | {theirs} |")
    if not extensions:
        lines.append("\nDuckDB side skipped: `duckdb` 1.4 and `duckdb-ext-sqlite` are not "
                     "installed (pip install 'runtype-syncer[bench]').")
    lines.append(f"\n(load average: {load:.2f} before, {os.getloadavg()[0]:.2f} after; "
                 f"{runs} rounds, median seconds, highest peak RSS)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=str(Path(tempfile.gettempdir()) / "bench-read.db"))
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--grow-from", metavar="DB",
                        help="Build --db as a copy of this mirror plus --messages more.")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--only", help="Time only the search shapes whose name holds this.")
    parser.add_argument("--export-runs", type=int, default=3,
                        help="Rounds of the exports section (each: DuckDB, export, feed).")
    parser.add_argument("--sections", default="calls,stats,commands,relevance,exports",
                        help="Comma-separated: calls, stats, commands, relevance, exports.")
    args = parser.parse_args()
    if args.grow_from and not Path(args.db).exists():
        print(f"growing a copy of {args.grow_from} into {args.db} ...", file=sys.stderr)
        shutil.copyfile(args.grow_from, args.db)
        with sqlite3.connect(args.db) as conn:  # a seed of its own for each size grown from
            held = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        build(args.db, args.messages, seed=1_000_003 + held, extras=False)
    if not Path(args.db).exists():
        print(f"building {args.db} ...", file=sys.stderr)
        started = time.perf_counter()
        held = build(args.db, args.messages)
        print(f"built {held:,} messages in {time.perf_counter() - started:.0f}s",
              file=sys.stderr)
    sections = {"calls": lambda: measure(args.db, args.runs, args.only),
                "stats": lambda: measure_stats(args.db, min(args.runs, 20)),
                "relevance": lambda: measure_relevance(args.db, 5),
                "commands": lambda: measure_commands(args.db, args.runs),
                "exports": lambda: measure_exports(args.db, args.export_runs)}
    for name in args.sections.split(","):
        print("\n".join(sections[name]()) + "\n")
    print(f"\n(peak RSS of this process: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB)")


if __name__ == "__main__":
    main()
