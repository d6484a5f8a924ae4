"""What keeping stats at write time costs a first sync, and whether a per-conversation
recompute in the save path would cost less than the row triggers (not a test: run by hand).

    .venv/bin/python benchmarks/bench_stats_write.py [--conversations 3000] [--rounds 3]

Saves the same generated conversations through `Store.save_conversations` (the writer's call,
64 conversations a transaction) into fresh mirrors, three ways: with the stats triggers
(migrations V4/V7) firing for every message ("triggers"), with the store's own path, which
skips them for a conversation new to the mirror and counts its stats once ("deferred"),
and without them (a floor: stats not kept at all). Reports the
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

from syncer import migrations
from syncer.simulator import generate
from syncer.store import Fetched, Store
from syncer.transform import conversation_row, list_signature, message_row

STATS_TRIGGERS = ("messages_counts_insert", "messages_counts_delete", "messages_counts_update",
                  "messages_turns_insert", "messages_turns_delete", "messages_turns_update")

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
    recount, migrations.CONVERSATION_STATS = migrations.CONVERSATION_STATS, []
    try:
        if way == "triggers":    # every message through the insert triggers
            store.conn.execute("CREATE TEMP TRIGGER undefer AFTER INSERT ON _stats_deferred "
                               "BEGIN DELETE FROM _stats_deferred; END")
        elif way == "none":
            for name in STATS_TRIGGERS:
                store.conn.execute(f"DROP TRIGGER {name}")
        else:
            migrations.CONVERSATION_STATS = recount
        written, cpu = _written(), time.process_time()
        for start in range(0, len(items), 64):
            store.save_conversations(items[start:start + 64])
    finally:
        migrations.CONVERSATION_STATS = recount
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
            for way in ("triggers", "deferred", "none"):
                results.setdefault(way, []).append(run(items, way, Path(tmp) / f"{way}{r}.db"))
        same = kept(Path(tmp) / "triggers0.db") == kept(Path(tmp) / "deferred0.db")
    for way, runs in results.items():
        print(f"{way:10s} cpu s: {' / '.join(f'{c:.2f}' for c, _ in runs)} "
              f"(median {statistics.median(c for c, _ in runs):.2f}); MB written: "
              f"{' / '.join(f'{w / 1e6:.0f}' for _, w in runs)}")
    print(f"the store's deferred path keeps the same stats as the triggers: "
          f"{same}; "
          f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
