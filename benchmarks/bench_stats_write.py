"""What keeping stats at write time costs a first sync, and whether a per-conversation
recompute in the save path would cost less than the row triggers (not a test: run by hand).

    .venv/bin/python benchmarks/bench_stats_write.py [--conversations 3000] [--rounds 3]

Saves the same generated conversations through `Store.save_conversations` (the writer's call,
64 conversations a transaction) into fresh mirrors, three ways: with the stats triggers
(migrations V4/V7), without them (a floor: stats not kept at all), and without them but with
one recompute per saved conversation in the same transaction (the alternative). Reports the
CPU time of the saves, the bytes written to the database and its WAL (by /proc/self/io), and
checks that the recompute leaves the same _turns, _daily and _conv_days as the triggers."""
from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from syncer.simulator import generate
from syncer.store import Fetched, Store
from syncer.transform import conversation_row, list_signature, message_row

STATS_TRIGGERS = ("messages_counts_insert", "messages_counts_delete", "messages_counts_update",
                  "messages_turns_insert", "messages_turns_delete", "messages_turns_update")

# One conversation's stats from its messages (the alternative to the triggers).
RECOMPUTE = [
    """UPDATE _daily SET n = _daily.n - k.n FROM (SELECT key, n FROM _conv_days
       WHERE conversationId = :cid) AS k WHERE _daily.key = k.key""",
    "DELETE FROM _conv_days WHERE conversationId = :cid",
    "DELETE FROM _turns WHERE conversationId = :cid",
    """INSERT INTO _conv_days (conversationId, key, day, role, direction, n)
       SELECT conversationId, json_array(substr(createdAt, 1, 10), role, direction),
              substr(createdAt, 1, 10), role, direction, count(*) FROM messages
       WHERE conversationId = :cid GROUP BY 3, 4, 5""",
    """INSERT INTO _daily (key, day, role, direction, n)
       SELECT key, day, role, direction, n FROM _conv_days WHERE conversationId = :cid
       ON CONFLICT (key) DO UPDATE SET n = _daily.n + excluded.n""",
    """INSERT INTO _turns (messageId, conversationId, at, delay)
       SELECT id, conversationId, at, round((julianday(reply) - julianday(at)) * 86400, 3)
       FROM (SELECT id, conversationId, createdAt AS at, role, lag(role) OVER win AS prev,
                    min(CASE WHEN role IS NOT 'user' THEN createdAt END) OVER (
                        win ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING) AS reply
             FROM messages WHERE conversationId = :cid
             WINDOW win AS (PARTITION BY conversationId ORDER BY createdAt, id))
       WHERE role = 'user' AND prev IS NOT 'user' AND reply IS NOT NULL""",
]


def _items(conversations: int, seed: int) -> list[Fetched]:
    upstream = generate(seed, conversations, big_conversations=2)
    out = []
    for cid in upstream.conversation_ids():
        row = conversation_row(upstream.get(cid))
        row["_list_sig"] = list_signature(row)
        out.append(Fetched(row, [message_row(m) for m in upstream.messages_of(cid)],
                           complete=True, drop_others=False, new=True))
    return out


def _written() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("write_bytes"))


def run(items: list[Fetched], way: str, path: Path) -> tuple[float, int]:
    store = Store.open(str(path))
    if way != "triggers":
        for name in STATS_TRIGGERS:
            store.conn.execute(f"DROP TRIGGER {name}")
    written, cpu = _written(), time.process_time()
    for start in range(0, len(items), 64):
        batch = items[start:start + 64]
        with store.transaction():
            for item in batch:
                store._save_isolated(item, "2024-01-01T00:00:00.000000Z", None)
                if way == "recompute":
                    for sql in RECOMPUTE:
                        store.conn.execute(sql, {"cid": item.row["id"]})
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    cpu = time.process_time() - cpu
    written = _written() - written
    store.close()
    return cpu, written


def kept(path: Path) -> tuple:
    conn = sqlite3.connect(path)
    out = tuple(sorted(conn.execute(sql)) for sql in (
        "SELECT messageId, delay FROM _turns", "SELECT key, n FROM _daily WHERE n != 0",
        "SELECT conversationId, key, n FROM _conv_days WHERE n != 0"))
    conn.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    items = _items(args.conversations, seed=5)
    print(f"{len(items)} conversations, {sum(len(i.messages) for i in items)} messages; "
          f"load {os.getloadavg()[0]:.1f}")
    results: dict[str, list[tuple[float, int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for way in ("triggers", "none", "recompute"):
                results.setdefault(way, []).append(run(items, way, Path(tmp) / f"{way}{r}.db"))
        same = kept(Path(tmp) / "triggers0.db") == kept(Path(tmp) / "recompute0.db")
    for way, runs in results.items():
        print(f"{way:10s} cpu s: {' / '.join(f'{c:.2f}' for c, _ in runs)} "
              f"(median {statistics.median(c for c, _ in runs):.2f}); MB written: "
              f"{' / '.join(f'{w / 1e6:.0f}' for _, w in runs)}")
    print(f"recompute keeps the same stats as the triggers: {same}; "
          f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
