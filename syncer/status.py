"""What `syncer status` reports: recent runs, how current the mirror is, what is pending.

Reads a read-only connection (works while a sync writes, thanks to WAL) and never takes the
writer lock. It also probes the file's integrity within a bound (integrity.probe: every page of
a small file, a timed sample of a large one): damage is a DamagedError, which `status` reports
as unhealthy (exit 1). who is writing comes from the lock file's contents (`lock.holder`). A run recorded
as running while no writer is alive was killed: it is shown as "killed", as the next run
records it.
"""
from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timezone

from . import integrity, lock
from .errors import DamagedError
from .store import Store
from .transform import parse_instant
from .zones import DEFAULT, Zone

RUN_FIELDS = ("id", "started_at", "finished_at", "outcome", "mode", "conversations_seen",
              "conversations_changed", "conversations_deleted", "conversations_failed",
              "messages_written", "rejects", "gaps", "requests", "retries", "throttled",
              "early_stop", "error")


def _age(now: datetime, instant: str | None) -> float | None:
    if not instant:
        return None
    return round((now - parse_instant(instant)).total_seconds(), 3)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _messages(conn) -> int:
    """How many messages the mirror holds: the sum of the daily counts the write triggers keep
    (migrations.V4; a thousand rows, not a million), or a count when they are not kept."""
    try:
        return conn.execute("SELECT coalesce(sum(n), 0) FROM _daily").fetchone()[0]
    except sqlite3.OperationalError:
        return conn.execute("SELECT count(*) FROM messages").fetchone()[0]


def gather(db_path: str, *, runs: int = 5, now: datetime | None = None,
           probe: bool = True) -> dict:
    """Everything status shows, as plain JSON-ready values. StoreError if there is no mirror,
    DamagedError if SQLite or the integrity probe (`probe`) finds it damaged."""
    now = now or datetime.now(timezone.utc)
    store = Store.open_readonly(db_path)
    try:
        conn = store.conn
        try:
            found = _read(conn, runs)
        except sqlite3.DatabaseError as e:
            raise Store.error_for(db_path, e) from None
        checked = integrity.probe(conn, db_path) if probe else None
        if checked is not None and not checked.ok:
            raise DamagedError(Store.damaged(db_path, checked.problem or "integrity probe"))
    finally:
        store.close()
    return _report(db_path, now, found, checked)


def _read(conn: sqlite3.Connection, runs: int) -> dict:
    """What status reads of the database, as named query results."""
    q = lambda sql, *args: conn.execute(sql, args).fetchone()  # noqa: E731
    cur = conn.execute(f"SELECT {', '.join(RUN_FIELDS)} FROM _sync_runs "
                       "ORDER BY id DESC LIMIT ?", (runs,))
    recent = []
    for row in cur:
        run = dict(zip(RUN_FIELDS, row))
        run["early_stop"] = bool(run["early_stop"])
        end = run["finished_at"]
        run["seconds"] = (round((parse_instant(end) - parse_instant(run["started_at"]))
                                .total_seconds(), 3) if end else None)
        recent.append(run)
    ok = q("SELECT started_at, finished_at FROM _sync_runs WHERE outcome = 'ok' "
           "ORDER BY id DESC LIMIT 1")
    mark = q("SELECT watermark, walk_started_at FROM _sync_runs "
             "WHERE watermark IS NOT NULL ORDER BY watermark DESC, id DESC LIMIT 1")
    # each count read off an index (migrations V3), not a scan of the rows
    deleted = q("SELECT count(*) FROM conversations WHERE _deleted_at IS NOT NULL")[0]
    live = q("SELECT count(*) FROM conversations")[0] - deleted
    queue = q("SELECT count(*), sum(attempts > 0), min(queued_at) FROM _sync_queue")
    last_error = q("SELECT id, last_error FROM _sync_queue WHERE last_error IS NOT NULL "
                   "ORDER BY attempts DESC, queued_at LIMIT 1")
    gaps = q("SELECT count(*), coalesce(sum(_messages_missing), 0) FROM conversations "
             "WHERE _messages_complete = 0 AND _deleted_at IS NULL")
    rejects = dict(conn.execute("SELECT endpoint, count(*) FROM _rejects GROUP BY endpoint"))
    # conversations quarantined and not mirrored since: the mirror lacks them
    rejected = q("SELECT count(DISTINCT r.record_id) FROM _rejects r "
                 "WHERE r.endpoint IN ('list', 'detail', 'store') AND NOT EXISTS ("
                 "SELECT 1 FROM conversations c WHERE c.id = r.record_id "
                 "AND c._deleted_at IS NULL AND c._synced_at >= r.last_seen_at)")[0]
    messages = _messages(conn)
    upstream = q("SELECT value FROM _sync_state WHERE key = 'upstream_url'")
    return dict(recent=recent, ok=ok, mark=mark, deleted=deleted, live=live, queue=queue,
                last_error=last_error, gaps=gaps, rejects=rejects, rejected=rejected,
                messages=messages, upstream=upstream)


def _report(db_path: str, now: datetime, found: dict,
            probe: integrity.Probe | None) -> dict:
    recent, ok, mark, queue = found["recent"], found["ok"], found["mark"], found["queue"]
    last_error, gaps, rejects = found["last_error"], found["gaps"], found["rejects"]
    upstream = found["upstream"]
    writer = lock.holder(db_path)
    for i, run in enumerate(recent):
        # only the newest run can be in progress, and only while a writer holds the lock
        if run["outcome"] == "running" and not (i == 0 and writer):
            run["outcome"] = "killed"
    last_ok_at = ok[1] if ok else None
    return {
        "database": db_path,
        "size_bytes": _size(db_path) + _size(db_path + "-wal"),
        "generated_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "writer": writer,
        "upstream": upstream[0] if upstream else None,
        "conversations": {"live": found["live"], "deleted": found["deleted"]},
        "messages": found["messages"],
        "integrity": {"ok": probe.ok, "covered": probe.covered} if probe else None,
        "last_success": {"started_at": ok[0], "finished_at": ok[1],
                         "age_seconds": _age(now, last_ok_at)} if ok else None,
        "watermark": {"value": mark[0], "complete_through": mark[1],
                      "behind_seconds": _age(now, mark[1] or mark[0])} if mark else None,
        "queue": {"size": queue[0], "failing": queue[1] or 0, "oldest_queued_at": queue[2],
                  "last_error": ({"id": last_error[0], "error": last_error[1]}
                                 if last_error else None)},
        "gaps": {"conversations": gaps[0], "messages_missing": gaps[1]},
        "rejects": {"records": sum(rejects.values()), "by_endpoint": rejects,
                    "conversations_missing": found["rejected"]},
        "runs": recent,
    }


def check(status: dict, max_age: float) -> tuple[bool, str]:
    """Healthy when the last successful run finished less than `max_age` seconds ago and no
    conversation is missing from the mirror for being rejected."""
    last = status["last_success"]
    missing = status["rejects"]["conversations_missing"]
    if missing:
        return False, (f"unhealthy: {missing:,} conversation{' is' if missing == 1 else 's are'}"
                       " rejected and not in the mirror (see _rejects)")
    if last is None:
        return False, "unhealthy: no successful sync yet"
    age = last["age_seconds"]
    if age > max_age:
        return False, (f"unhealthy: last successful sync {ago(age)} "
                       f"(more than {duration(max_age)})")
    return True, f"healthy: last successful sync {ago(age)}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(seconds, 0)
    if seconds < 60:
        text = f"{seconds:.1f}" if seconds < 10 else f"{seconds:.0f}"
        return text.removesuffix(".0") + "s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            whole, rest = divmod(int(seconds), size)
            small = {"d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}[unit]
            part = rest // small[1]
            return f"{whole}{unit}{part}{small[0]}" if part else f"{whole}{unit}"
    return f"{seconds:.0f}s"


def ago(seconds: float | None) -> str:
    return "never" if seconds is None else f"{duration(seconds)} ago"


def _megabytes(n: int) -> str:
    return f"{n / 1_048_576:.1f} MB" if n >= 1_048_576 else f"{n / 1024:.0f} kB"


def render(status: dict, zone: Zone = DEFAULT) -> str:
    """The human-readable status, one fact per line, then the recent runs as a table; every
    time in `zone`, labelled."""
    s, when = status, zone.show
    c = s["conversations"]
    lines = [f"database    {s['database']} ({_megabytes(s['size_bytes'])})",
             f"mirror      {c['live']} conversations ({c['deleted']} deleted upstream), "
             f"{s['messages']} messages",
             f"upstream    {s['upstream'] or 'not recorded yet (the next sync records it)'}"]
    w = s["writer"]
    lines.append("writer      " + (f"{'daemon' if w.get('role') == 'daemon' else 'sync'} "
                                   f"pid {w.get('pid')} since {when(w.get('since'))}" if w else "none"))
    last = s["last_success"]
    lines.append("last ok     " + (f"{when(last['finished_at'])} ({ago(last['age_seconds'])})"
                                   if last else "never"))
    m = s["watermark"]
    lines.append("watermark   " + (f"{when(m['value'])} (complete through {when(m['complete_through'])}, "
                                   f"{duration(m['behind_seconds'])} behind)" if m else
                                   "none yet (the next run walks the whole list)"))
    queue = s["queue"]
    text = f"{queue['size']} conversations waiting"
    if queue["failing"]:
        text += f", {queue['failing']} failing"
    if queue["last_error"]:
        text += f" (e.g. {queue['last_error']['id']}: {queue['last_error']['error']})"
    lines.append(f"queue       {text}")
    gaps = s["gaps"]
    lines.append(f"gaps        {gaps['conversations']} conversations missing "
                 f"{gaps['messages_missing']} messages the server does not serve")
    rejects = s["rejects"]
    detail = ", ".join(f"{n} {e}" for e, n in sorted(rejects["by_endpoint"].items()))
    missing = rejects["conversations_missing"]
    lines.append(f"rejects     {rejects['records']} records in _rejects"
                 + (f" ({detail})" if detail else "")
                 + (f"; {missing:,} conversation{'' if missing == 1 else 's'} not mirrored"
                    if missing else ""))
    if s.get("integrity"):
        lines.append(f"integrity   no damage found in {s['integrity']['covered']}")
    if not s["runs"]:
        lines.append("runs        none yet")
        return "\n".join(lines)
    lines.append("")
    header = ("started", "took", "outcome", "mode", "changed", "deleted", "messages",
              "requests", "retries", "429s")
    rows = [header]
    for r in s["runs"]:
        rows.append((when(r["started_at"]), duration(r["seconds"]),
                     r["outcome"], r["mode"], str(r["conversations_changed"]),
                     str(r["conversations_deleted"]), str(r["messages_written"]),
                     str(r["requests"]), str(r["retries"]), str(r["throttled"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  ".join(v.ljust(widths[i]) if i < 4 else v.rjust(widths[i])
                               for i, v in enumerate(row)).rstrip())
    errors = [r for r in s["runs"] if r["error"]]
    if errors:
        lines.append(f"last error  {when(errors[0]['started_at'])}: {errors[0]['error']}")
    return "\n".join(lines)
