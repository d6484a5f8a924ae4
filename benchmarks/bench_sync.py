"""Benchmark of `syncer sync` against the simulator (not a test: run it by hand).

    .venv/bin/python benchmarks/bench_sync.py            # full run, ~20-25 minutes
    .venv/bin/python benchmarks/bench_sync.py --quick    # small sizes, a smoke check (<1 min)

Every simulator runs in its own process (`bench_sync.py serve ...`), so the sync under test
does not share a GIL with the server; upstream changes for the incremental cases are made
over HTTP (POST .../messages, PUT .../{id}) like any other client of the API would. Every sync,
and each floor, runs in a child process of its own (`bench_sync.py child ...`), so the peak
RSS reported (VmHWM of that process) belongs to that one case. Wall times are measured inside
the child around the work itself (interpreter start-up and imports are not counted).

Floors, measured in the same run on the same machine:
  (a) http   a minimal httpx client with the same concurrency (ThreadPoolExecutor) GETting
             the same URLs the sync GETs: the list pages in order, then for each conversation
             its detail and (if it has messages) its newest-100 messages, bodies discarded;
  (b) sqlite bulk-insert of the same rows (built from the same generator output, rendered as
             the server renders them, through the syncer's own transform) into a fresh file
             migrated by `syncer.migrations.migrate`, one transaction, then the two FTS5
             indexes built in one go ('rebuild').

Results go into the `## Sync` section of BENCHMARKS.md (other sections are kept as they are);
`--quick` writes to /tmp/bench-sync-quick.md unless --out is given. Raw figures are saved as
JSON next to the scratch databases (default /tmp/bench-sync/).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KEY = "rt_test_simulator"
LIST = "/v1/messaging/conversations"
SEED = 20240601
PAGE = 100
SECTION = "## Sync"


# =============================================================================================
# The simulator, in a process of its own
# =============================================================================================
def serve(spec: dict) -> None:
    """Child entry point: generate the data, serve it, print the URL, run until stdin closes."""
    from syncer.simulator import Behaviour, SimulatorServer, generate
    bumps = spec.get("bumps", True)
    upstream = generate(spec.get("seed", SEED), spec["conversations"],
                        messages_per_conversation=spec["mpc"], big_conversations=0,
                        message_bumps_updated=bumps)
    messages = sum(len(v) for v in upstream._messages.values())
    behaviour = Behaviour(latency_ms=spec.get("latency_ms", 0), rate_limit=spec.get("rate_limit"),
                          rate_window=spec.get("rate_window", 10.0),
                          list_order=spec.get("order", "updated_desc"),
                          message_bumps_updated=bumps, message_paging="offset")
    server = SimulatorServer(upstream, behaviour)
    url = server.start()
    print(json.dumps({"url": url, "messages": messages,
                      "conversations": spec["conversations"]}), flush=True)
    try:
        sys.stdin.read()          # the parent closes our stdin to stop us
    finally:
        server.stop()


class Simulator:
    """A simulator process: `with Simulator(...) as sim: sim.url`."""

    def __init__(self, conversations: int, mpc: int, *, latency_ms: float = 0,
                 order: str = "updated_desc", bumps: bool = True, rate_limit: int | None = None,
                 rate_window: float = 10.0):
        self.spec = {"conversations": conversations, "mpc": mpc, "latency_ms": latency_ms,
                     "order": order, "bumps": bumps, "rate_limit": rate_limit,
                     "rate_window": rate_window}
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.messages = 0

    def __enter__(self) -> "Simulator":
        self.proc = subprocess.Popen([sys.executable, __file__, "serve", json.dumps(self.spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=ROOT)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"simulator failed to start: {self.spec}")
        info = json.loads(line)
        self.url, self.messages = info["url"], info["messages"]
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# =============================================================================================
# Children: one case each, result as one JSON line on stdout
# =============================================================================================
def _cpu_seconds() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_sync(spec: dict) -> dict:
    """Run `run_sync` once. With spec['trace']: rows changed on the sync's connection
    (`total_changes`) outside the run record, and write transactions. (No SQLite callbacks:
    a Python trace callback on a connection shared by threads deadlocks on the GIL.)"""
    from syncer import runner
    from syncer.config import Settings
    from syncer.store import Store
    writes: dict[str, int] = {}
    if spec.get("trace"):
        tally = {"run_rows": 0, "transactions": 0, "total_changes": 0}

        def around(name: str):
            original = getattr(Store, name)

            def wrapper(self, *a, **kw):
                if tally.get("depth"):        # finish_run calls add_to_run: count once
                    return original(self, *a, **kw)
                tally["depth"] = 1
                before = self.conn.total_changes
                try:
                    return original(self, *a, **kw)
                finally:
                    tally["run_rows"] += self.conn.total_changes - before
                    tally["depth"] = 0
            setattr(Store, name, wrapper)
        for name in ("start_run", "add_to_run", "finish_run"):
            around(name)
        original_tx, original_close = Store.transaction, Store.close

        def transaction(self):
            tally["transactions"] += 1
            return original_tx(self)

        def close(self):
            tally["total_changes"] = self.conn.total_changes
            original_close(self)
        Store.transaction, Store.close = transaction, close
    settings = Settings(base_url=spec["url"], api_key=KEY, db_path=spec["db"],
                        concurrency=spec["concurrency"], max_retries=10, timeout=60.0)
    started, cpu = time.perf_counter(), _cpu_seconds()
    summary = runner.run_sync(settings, full=spec.get("full", False))
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    if spec.get("trace"):
        writes = {"rows_outside_run_record": tally["total_changes"] - tally["run_rows"],
                  "transactions": tally["transactions"]}
    return {"seconds": seconds, "cpu_s": cpu, "outcome": summary.outcome, "counts": summary.counts,
            "early_stop": summary.early_stop, "rss_mb": _peak_rss_mb(), "writes": writes,
            "error": summary.error}


def child_floor_http(spec: dict) -> dict:
    """Floor (a): the same GETs with the same concurrency, bodies discarded."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    c = spec["concurrency"]
    client = httpx.Client(base_url=spec["url"], headers={"Authorization": f"Bearer {KEY}"},
                          limits=httpx.Limits(max_connections=c + 2,
                                              max_keepalive_connections=c + 2),
                          timeout=60.0)
    requests = 0

    def get(path: str, params: dict | None = None) -> None:
        r = client.get(path, params=params)
        r.read()
        if r.status_code != 200:
            raise RuntimeError(f"GET {path}: {r.status_code}")

    started = time.perf_counter()
    with ThreadPoolExecutor(c) as pool:
        futures = []
        cursor = None
        while True:
            params = {"limit": PAGE, "status": "all"}
            if cursor:
                params["cursor"] = cursor
            body = client.get(LIST, params=params).json()
            requests += 1
            for record in body["data"]:
                path = f"{LIST}/{record['id']}"
                futures.append(pool.submit(get, path))
                if record["messageCount"]:
                    futures.append(pool.submit(get, path + "/messages",
                                               {"limit": PAGE, "order": "desc"}))
            page = body["pagination"]
            if not (page["hasMore"] and page["nextCursor"]):
                break
            cursor = page["nextCursor"]
        for f in futures:
            f.result()
        requests += len(futures)
    seconds = time.perf_counter() - started
    client.close()
    return {"seconds": seconds, "requests": requests, "rss_mb": _peak_rss_mb()}


def child_floor_sqlite(spec: dict) -> dict:
    """Floor (b): bulk-insert the same rows into a fresh file, FTS built in one go."""
    from syncer import migrations
    from syncer.simulator import Behaviour, generate
    from syncer.simulator.app import render_detail, render_message
    from syncer.store import CONVERSATION_COLUMNS, MESSAGE_COLUMNS
    from syncer.transform import conversation_row, list_signature, message_row
    upstream = generate(SEED, spec["conversations"], messages_per_conversation=spec["mpc"],
                        big_conversations=0, message_bumps_updated=True)
    behaviour = Behaviour(message_bumps_updated=True)
    at = "2024-06-01T00:00:00.000000Z"
    conv_cols = list(CONVERSATION_COLUMNS) + ["_list_sig", "_synced_at", "_messages_held",
                                              "_messages_complete"]
    conv_rows, msg_rows = [], []
    for cid in upstream.conversation_ids():
        row = conversation_row(render_detail(upstream._record(cid), behaviour))
        msgs = [message_row(render_message(m, behaviour)) for m in upstream._message_records(cid)]
        conv_rows.append([row.get(c) for c in CONVERSATION_COLUMNS]
                         + [list_signature(row), at, len(msgs), 1])
        msg_rows.extend([m[c] for c in MESSAGE_COLUMNS] + [at] for m in msgs)
    del upstream
    db = spec["db"]
    for suffix in ("", "-wal", "-shm"):
        Path(db + suffix).unlink(missing_ok=True)
    started = time.perf_counter()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    migrations.migrate(conn)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(f"INSERT INTO conversations ({', '.join(conv_cols)}) "
                     f"VALUES ({','.join('?' * len(conv_cols))})", conv_rows)
    mcols = list(MESSAGE_COLUMNS) + ["_synced_at"]
    conn.executemany(f"INSERT INTO messages ({', '.join(mcols)}) "
                     f"VALUES ({','.join('?' * len(mcols))})", msg_rows)
    conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')")
    conn.execute("INSERT INTO conversations_fts (conversations_fts) VALUES ('rebuild')")
    conn.execute("COMMIT")
    conn.close()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "messages": len(msg_rows), "conversations": len(conv_rows),
            "rss_mb": _peak_rss_mb()}


CHILDREN = {"sync": child_sync, "floor_http": child_floor_http,
            "floor_sqlite": child_floor_sqlite}


def run_child(kind: str, spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "child", kind, json.dumps(spec)],
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"child {kind} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# =============================================================================================
# Helpers in the parent: upstream changes over HTTP, mirror checks
# =============================================================================================
def list_ids(url: str) -> list[str]:
    import httpx
    ids, cursor = [], None
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}) as client:
        while True:
            params = {"limit": PAGE, "status": "all", **({"cursor": cursor} if cursor else {})}
            body = client.get(LIST, params=params).json()
            ids += [r["id"] for r in body["data"]]
            if not body["pagination"]["hasMore"]:
                return ids
            cursor = body["pagination"]["nextCursor"]


def change_upstream(url: str, share: float = 0.01) -> tuple[int, int]:
    """Change `share` of the conversations (every 1/share-th by id) over HTTP: even ones get a
    new message, odd ones a new subject. Returns (changed, of which with messages to read)."""
    import httpx
    ids = sorted(list_ids(url))
    step = max(1, round(1 / share))
    chosen = ids[::step]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}) as client:
        for n, cid in enumerate(chosen):
            if n % 2 == 0:
                r = client.post(f"{LIST}/{cid}/messages",
                                json={"content": f"benchmark reply {n} about the invoice",
                                      "role": "user"})
            else:
                r = client.put(f"{LIST}/{cid}", json={"subject": f"Benchmark subject {n}"})
            r.raise_for_status()
    return len(chosen), len(chosen)


def data_fingerprint(db: str) -> tuple:
    """Everything but the run record: data tables by count and newest _synced_at (every write
    sets it), the small bookkeeping tables whole."""
    conn = sqlite3.connect(db)
    try:
        fp = [conn.execute(f"SELECT count(*), max(_synced_at) FROM {t}").fetchone()
              for t in ("conversations", "messages")]
        for t in ("_sync_state", "_sync_queue", "_walk_seen", "_rejects"):
            fp.append(tuple(conn.execute(f"SELECT * FROM {t} ORDER BY 1")))
        return tuple(fp)
    finally:
        conn.close()


def fresh(path: Path) -> str:
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return str(path)


def copy_db(src: str, dst: Path) -> str:
    fresh(dst)
    conn = sqlite3.connect(src)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    shutil.copyfile(src, dst)
    return str(dst)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# =============================================================================================
# The benchmark
# =============================================================================================
ORDERS = ("updated_desc", "created_desc", "last_message_desc", "id_asc", "shuffled")

FULL = {
    "fast": {"conversations": 20_000, "mpc": 21, "latency_ms": 0},     # ~390k messages
    "slow": {"conversations": 2_000, "mpc": 21, "latency_ms": 50},     # ~39k messages
    "concurrency": [1, 4, 8, 16],
    "incremental_concurrency": 8,
    "rate": {"conversations": 1_000, "mpc": 21, "limits": [(100, 1.0), (1000, 10.0)],
             "concurrency": 8},
    "memory": [{"conversations": 22_000, "mpc": 50}],                  # ~1.03M messages
}
QUICK = {
    "fast": {"conversations": 600, "mpc": 10, "latency_ms": 0},
    "slow": {"conversations": 60, "mpc": 10, "latency_ms": 50},
    "concurrency": [1, 8],
    "incremental_concurrency": 8,
    "rate": {"conversations": 150, "mpc": 10, "limits": [(100, 1.0)], "concurrency": 8},
    "memory": [],
}


def bench_initial(cfg: dict, work: Path, results: dict) -> None:
    c_list = cfg["concurrency"]
    for name in ("fast", "slow"):
        ds = cfg[name]
        rows = results.setdefault("initial", {}).setdefault(name, {"dataset": ds, "runs": {}})
        with Simulator(ds["conversations"], ds["mpc"], latency_ms=ds["latency_ms"]) as sim:
            rows["messages"] = sim.messages
            log(f"{name}: simulator up with {ds['conversations']} conversations, "
                f"{sim.messages} messages, {ds['latency_ms']} ms")
            for c in c_list:
                floor = run_child("floor_http", {"url": sim.url, "concurrency": c})
                log(f"  floor (a) c={c}: {floor['seconds']:.1f}s, {floor['requests']} requests")
                db = fresh(work / f"initial-{name}-c{c}.db")
                res = run_child("sync", {"url": sim.url, "db": db, "concurrency": c})
                log(f"  sync c={c}: {res['seconds']:.1f}s {res['outcome']} "
                    f"{res['counts']['requests']} requests, rss {res['rss_mb']:.0f} MB")
                rows["runs"][c] = {"floor_http": floor, "sync": res}
                if not (name == "fast" and c == cfg["incremental_concurrency"]):
                    fresh(Path(db))
        floor_b = run_child("floor_sqlite", {"db": fresh(work / f"floor-{name}.db"),
                                             "conversations": ds["conversations"],
                                             "mpc": ds["mpc"]})
        fresh(work / f"floor-{name}.db")
        rows["floor_sqlite"] = floor_b
        log(f"  floor (b): {floor_b['seconds']:.1f}s for {floor_b['messages']} messages")


def bench_incremental(cfg: dict, work: Path, results: dict) -> None:
    ds = cfg["fast"]
    c = cfg["incremental_concurrency"]
    baseline = str(work / f"initial-fast-c{c}.db")
    initial_seconds = results["initial"]["fast"]["runs"][c]["sync"]["seconds"]
    out = results.setdefault("incremental", {"concurrency": c, "orders": {},
                                             "initial_seconds": initial_seconds,
                                             "conversations": ds["conversations"]})
    for order in ORDERS:
        with Simulator(ds["conversations"], ds["mpc"], order=order) as sim:
            db = copy_db(baseline, work / f"incr-{order}.db")
            before = data_fingerprint(db)
            nochange = run_child("sync", {"url": sim.url, "db": db, "concurrency": c,
                                          "trace": True})
            nochange["data_unchanged"] = data_fingerprint(db) == before
            changed, _ = change_upstream(sim.url)
            one = run_child("sync", {"url": sim.url, "db": db, "concurrency": c, "trace": True})
            one["changed"] = changed
            out["orders"][order] = {"nochange": nochange, "changed": one}
            log(f"  {order}: no change {nochange['counts']['requests']} req "
                f"{nochange['seconds']:.2f}s; 1% ({changed}) {one['counts']['requests']} req "
                f"{one['seconds']:.2f}s")
            fresh(Path(db))


def bench_rate(cfg: dict, work: Path, results: dict) -> None:
    ds = cfg["rate"]
    for limit, window in ds["limits"]:
        with Simulator(ds["conversations"], ds["mpc"], rate_limit=limit,
                       rate_window=window) as sim:
            db = fresh(work / "rate.db")
            res = run_child("sync", {"url": sim.url, "db": db, "concurrency": ds["concurrency"]})
            res["limit"], res["window"] = limit, window
            results.setdefault("rate", []).append(res)
            n = res["counts"]
            log(f"  rate {limit}/{window:g}s: {n['requests']} req ({n['throttled']} 429) in "
                f"{res['seconds']:.1f}s")
            fresh(Path(db))


def bench_memory(cfg: dict, work: Path, results: dict) -> None:
    for ds in cfg["memory"]:
        with Simulator(ds["conversations"], ds["mpc"]) as sim:
            log(f"memory: {sim.messages} messages")
            db = fresh(work / "memory.db")
            res = run_child("sync", {"url": sim.url, "db": db, "concurrency": 8})
            res["messages"] = sim.messages
            res["db_mb"] = Path(db).stat().st_size / 2**20
            results.setdefault("memory", []).append(res)
            log(f"  {res['seconds']:.1f}s, rss {res['rss_mb']:.0f} MB")
            fresh(Path(db))


# =============================================================================================
# The report
# =============================================================================================
def _ok(flag: bool) -> str:
    return "**met**" if flag else "**missed**"


def render(results: dict, quick: bool) -> str:
    L: list[str] = []
    machine = results["machine"]
    L += [SECTION, "",
          f"Generated by `benchmarks/bench_sync.py{' --quick' if quick else ''}` on "
          f"{machine['date']}: {machine['nproc']} cores ({machine['cpu']}), "
          f"Python {machine['python']}, SQLite {machine['sqlite']}, {machine['mem_gb']:.0f} GB RAM.",
          "The simulator runs in its own process (loopback, TCP_NODELAY, keep-alive); each sync "
          "and each floor runs in a child process of its own; wall time is measured inside that "
          "process around the work (interpreter start-up excluded); peak RSS is that process's "
          "VmHWM. Simulated data: no conversation over 100 messages (one message request per "
          "conversation with messages), `message_bumps_updated` on.", ""]
    if quick:
        L += ["> **Quick run (smoke sizes): figures are not representative.**", ""]
    targets: list[tuple[str, bool | None, str]] = []

    # -- initial ---------------------------------------------------------------------------
    init = results.get("initial", {})
    L += ["### Initial sync", "",
          "Floor (a): a minimal httpx client GETting the same URLs with the same concurrency, "
          "bodies discarded. Floor (b): bulk insert of the same rows into a fresh, migrated "
          "file in one transaction, FTS5 built with 'rebuild'. Ratios are the sync's wall time "
          "over the floor.", ""]
    for name, label in (("fast", "0 ms"), ("slow", "50 ms")):
        if name not in init:
            continue
        block = init[name]
        ds = block["dataset"]
        fb = block["floor_sqlite"]
        L += [f"**{ds['conversations']:,} conversations, {block['messages']:,} messages, "
              f"latency {label}** (floor (b): {fb['seconds']:.1f} s, "
              f"{fb['messages'] / fb['seconds']:,.0f} messages/s)", "",
              "| concurrency | wall s | messages/s | requests | 429s | peak RSS MB "
              "| floor (a) s | x floor (a) | x (a)+(b) | outcome |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for c, run in sorted(block["runs"].items(), key=lambda kv: int(kv[0])):
            s, fa = run["sync"], run["floor_http"]
            msgs = s["counts"].get("messages_written", 0)
            ra = s["seconds"] / fa["seconds"]
            rab = s["seconds"] / (fa["seconds"] + fb["seconds"])
            L.append(f"| {c} | {s['seconds']:.1f} | {msgs / s['seconds']:,.0f} | "
                     f"{s['counts']['requests']:,} | {s['counts']['throttled']} | "
                     f"{s['rss_mb']:.0f} | {fa['seconds']:.1f} | {ra:.2f} | {rab:.2f} | "
                     f"{s['outcome']} |")
            if name == "slow":
                targets.append((f"50 ms, concurrency {c}: within 1.25x of floor (a)",
                                ra <= 1.25, f"{ra:.2f}x ({s['seconds']:.1f} s vs "
                                            f"{fa['seconds']:.1f} s)"))
            else:
                targets.append((f"0 ms, concurrency {c}: within 1.5x of floor (a) + floor (b)",
                                rab <= 1.5, f"{rab:.2f}x ({s['seconds']:.1f} s vs "
                                            f"{fa['seconds']:.1f} + {fb['seconds']:.1f} s)"))
        L.append("")

    # -- incremental -----------------------------------------------------------------------
    inc = results.get("incremental")
    if inc:
        n = inc["conversations"]
        pages_all = math.ceil(n / PAGE)
        L += ["### Incremental sync", "",
              f"From the mirror of the 0 ms initial sync ({n:,} conversations) at concurrency "
              f"{inc['concurrency']}, against a simulator serving the same data in each list "
              "order. \"1 % changed\": every 100th conversation by id changed over HTTP, half "
              "with a new message (which bumps updatedAt), half with a new subject. Budget = "
              "list pages walked + 2 per changed conversation (detail + messages). Writes = "
              "rows changed on the sync's connection (`total_changes`) less those of the run "
              "record, and `Store.transaction()` calls (the run record takes 2: start and "
              "finish); data unchanged = row counts, newest `_synced_at` and the "
              "bookkeeping tables identical before and after.", "",
              "| list order | case | requests | list pages | budget | wall s "
              "| % of initial | early stop | rows written outside run record / write transactions "
              "| data unchanged |",
              "|---|---|---:|---:|---:|---:|---:|---|---|---|"]
        for order, both in inc["orders"].items():
            for case, res in (("no change", both["nochange"]), ("1 % changed", both["changed"])):
                cnt = res["counts"]
                pages = cnt.get("pages", 0)
                changed = res.get("changed", 0)
                budget = pages + 2 * changed
                share = res["seconds"] / inc["initial_seconds"] * 100
                rows_out = res["writes"].get("rows_outside_run_record", 0)
                wtext = f"{rows_out} / {res['writes'].get('transactions', 0)}"
                writes = rows_out
                unchanged = res.get("data_unchanged")
                L.append(f"| {order} | {case} | {cnt['requests']} | {pages} | {budget} | "
                         f"{res['seconds']:.2f} | {share:.1f} | {res['early_stop']} | {wtext} | "
                         f"{'' if unchanged is None else unchanged} |")
                if case == "no change":
                    want = 1 if order == "updated_desc" else pages_all
                    targets.append((f"no change, {order}: {want} list request(s), no requests "
                                    "besides", cnt["requests"] == want,
                                    f"{cnt['requests']} requests"))
                    targets.append((f"no change, {order}: zero database writes besides the run "
                                    "record", not writes and bool(unchanged),
                                    f"rows outside run record / transactions: {wtext}; data unchanged: {unchanged}"))
                else:
                    targets.append((f"1 % changed, {order}: requests <= pages walked + changed "
                                    "conversations' detail and message requests",
                                    cnt["requests"] <= budget,
                                    f"{cnt['requests']} vs budget {budget}"))
                    targets.append((f"1 % changed, {order}: wall time under 5 % of the initial "
                                    "sync", share < 5, f"{share:.1f} % ({res['seconds']:.2f} s "
                                                       f"vs {inc['initial_seconds']:.1f} s)"))
        L.append("")

    # -- rate limit ------------------------------------------------------------------------
    if results.get("rate"):
        L += ["### Rate-limited sync", "",
              "Initial sync against a simulator enforcing a sliding-window limit; the allowance "
              "is limit / window. Achieved rate counts every request the client sent "
              "(429s included); useful rate counts only the answered ones.", "",
              "| limit | conversations | requests | 429s | wall s | achieved req/s "
              "| useful share of allowance | 429 share | outcome |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for res in results["rate"]:
            cnt = res["counts"]
            allowance = res["limit"] / res["window"]
            rate = cnt["requests"] / res["seconds"]
            useful = (cnt["requests"] - cnt["throttled"]) / res["seconds"] / allowance
            t429 = cnt["throttled"] / max(1, cnt["requests"])
            L.append(f"| {res['limit']} per {res['window']:g} s | "
                     f"{cnt.get('conversations_changed', 0):,} | {cnt['requests']:,} | "
                     f"{cnt['throttled']} | {res['seconds']:.1f} | {rate:.1f} | "
                     f"{useful * 100:.1f} % | {t429 * 100:.2f} % | {res['outcome']} |")
            targets.append((f"rate limit {res['limit']}/{res['window']:g}s: >= 90 % of the "
                            "allowance used", useful >= 0.9, f"{useful * 100:.1f} %"))
            targets.append((f"rate limit {res['limit']}/{res['window']:g}s: < 2 % of responses "
                            "429", t429 < 0.02, f"{t429 * 100:.2f} %"))
        L.append("")

    # -- memory ----------------------------------------------------------------------------
    points = []
    for name in ("slow", "fast"):
        if name in init:
            c = max(init[name]["runs"], key=lambda k: int(k))
            s = init[name]["runs"][c]["sync"]
            points.append((init[name]["messages"], s["rss_mb"], s["seconds"], int(c)))
    for res in results.get("memory", []):
        points.append((res["messages"], res["rss_mb"], res["seconds"], 8))
    if points:
        points.sort()
        L += ["### Memory", "",
              "Peak RSS of the sync process over initial syncs of growing accounts "
              "(0 ms latency unless the smallest, which is the 50 ms set).", "",
              "| messages | concurrency | peak RSS MB | wall s | messages/s |",
              "|---:|---:|---:|---:|---:|"]
        for msgs, rss, secs, c in points:
            L.append(f"| {msgs:,} | {c} | {rss:.0f} | {secs:.1f} | {msgs / secs:,.0f} |")
        L.append("")
        big = [p for p in points if p[0] >= 1_000_000]
        if big:
            targets.append(("peak RSS under 200 MB for 1,000,000 messages", big[-1][1] < 200,
                            f"{big[-1][1]:.0f} MB at {big[-1][0]:,} messages"))
        if len(points) >= 2:
            lo, hi = points[0], points[-1]
            growth = hi[1] / lo[1]
            targets.append(("peak RSS flat as the account grows (< 1.5x from smallest to "
                            "largest)", growth < 1.5,
                            f"{lo[1]:.0f} MB at {lo[0]:,} → {hi[1]:.0f} MB at {hi[0]:,} "
                            f"messages ({growth:.2f}x)"))

    # -- targets ---------------------------------------------------------------------------
    L += ["### Targets", "", "| target | status | figure |", "|---|---|---|"]
    for what, flag, figure in targets:
        L.append(f"| {what} | {_ok(flag)} | {figure} |")
    L.append("")
    notes = results.get("notes")
    if notes:
        L += ["### What limits it", "", notes.strip(), ""]
    return "\n".join(L) + "\n"


def replace_section(text: str, section: str, heading: str = SECTION) -> str:
    """`text` with its `heading` section (up to the next `## ` heading) replaced by `section`,
    or with `section` appended when there is none. Other sections are left byte for byte."""
    if not text.strip():
        return "# Benchmarks\n\n" + section
    lines = text.splitlines(keepends=True)
    start = next((i for i, l in enumerate(lines) if l.rstrip() == heading), None)
    if start is None:
        return text.rstrip("\n") + "\n\n" + section
    end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")),
               len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + tail if tail else "")


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "mem_gb": mem,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve(json.loads(argv[1]))
        return 0
    if argv[:1] == ["child"]:
        print(json.dumps(CHILDREN[argv[1]](json.loads(argv[2]))), flush=True)
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke check")
    p.add_argument("--out", help="markdown file to update (default: BENCHMARKS.md, or "
                                 "/tmp/bench-sync-quick.md with --quick)")
    p.add_argument("--work", default="/tmp/bench-sync", help="scratch directory")
    p.add_argument("--only", default="initial,incremental,rate,memory",
                   help="comma-separated parts to run (incremental needs initial)")
    p.add_argument("--notes", default=str(Path(__file__).with_name("bench_sync_notes.md")),
                   help="markdown whose text goes under 'What limits it' (default: "
                        "benchmarks/bench_sync_notes.md; keep it in step with the figures)")
    p.add_argument("--from-json", help="re-render from a saved results JSON, run nothing")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else (
        Path("/tmp/bench-sync-quick.md") if args.quick else ROOT / "BENCHMARKS.md")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
    else:
        cfg = QUICK if args.quick else FULL
        parts = set(args.only.split(","))
        results = {"machine": machine_info(), "quick": args.quick}
        started = time.perf_counter()
        if "initial" in parts or "incremental" in parts:
            bench_initial(cfg, work, results)
        if "incremental" in parts:
            bench_incremental(cfg, work, results)
        if "rate" in parts:
            bench_rate(cfg, work, results)
        if "memory" in parts:
            bench_memory(cfg, work, results)
        for c in cfg["concurrency"]:
            fresh(work / f"initial-fast-c{c}.db")
        results["total_seconds"] = time.perf_counter() - started
        (work / ("results-quick.json" if args.quick else "results.json")).write_text(
            json.dumps(results, indent=1))
        log(f"done in {results['total_seconds']:.0f}s")
    if args.notes and Path(args.notes).exists() and not results.get("quick"):
        results["notes"] = Path(args.notes).read_text()
    section = render(results, results.get("quick", False))
    old = out.read_text() if out.exists() else ""
    out.write_text(replace_section(old, section))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
