"""Property: whatever happens upstream between and during syncs, whatever the scope, and
however often a sync is killed part-way (a real SIGKILL), every run that exits 0 leaves the
mirror equal to upstream as of that run's start, within its scope (what changed while it ran
may be pending; deletions are concluded by runs that walked the whole list), and one clean
full sync afterwards leaves it equal to upstream, or reporting exactly the message gaps the
server cannot close. Upstream changes include messages edited after creation (delivery status),
timestamps in every RFC 3339 spelling the simulator knows, and servers that give totalCount on
request or never.

Fast profile (CI): a handful of examples. Soak profile: SYNCER_SOAK=1 runs many more
(SYNCER_SOAK_EXAMPLES, default 100), with 20 % injected faults on every request (5xx, 429 with
and without Retry-After, timeouts, dropped connections, invalid JSON, HTML pages).
"""
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support import (KEY, assert_as_of, assert_exact_except_gaps, assert_stats_kept,
                     settings_for)

from syncer.runner import run_sync
from syncer.simulator import Behaviour, SimulatorServer, generate

SOAK = os.environ.get("SYNCER_SOAK") == "1"
SOAK_EXAMPLES = int(os.environ.get("SYNCER_SOAK_EXAMPLES", "100"))
LIST = "/v1/messaging/conversations"
# (status, surfaces) a run may be limited to
SCOPES = (("all", ()), ("open", ()), ("all", ("surface_001",)),
          ("all", ("surface_001", "surface_002")), ("open", ("surface_003",)))
FAULTS = ("500", "503", "429", "429_no_retry_after", "timeout", "drop", "invalid_json",
          "html_200")

step = st.one_of(
    st.tuples(st.just("create"), st.integers(0, 9)),
    st.tuples(st.just("update"), st.integers(0, 10_000)),
    st.tuples(st.just("archive"), st.integers(0, 10_000)),
    st.tuples(st.just("delete"), st.integers(0, 10_000)),
    st.tuples(st.just("message"), st.integers(0, 10_000)),
    st.tuples(st.just("edit"), st.integers(0, 10_000)),
    st.tuples(st.just("sync"), st.booleans()),
    st.tuples(st.just("killed"), st.floats(0.0, 1.2)),
    st.tuples(st.just("churn"), st.integers(1, 3)),
    st.tuples(st.just("scope"), st.integers(0, len(SCOPES) - 1)),
)
world = st.fixed_dictionaries({
    "order": st.sampled_from(["updated_desc", "created_desc", "last_message_desc", "id_asc",
                              "shuffled"]),
    "bumps": st.booleans(),
    "paging": st.sampled_from(["none", "offset"]),
    "style": st.sampled_from(["z", "fraction", "offset", "mixed", "lower", "long_fraction",
                              "numoffset", "rfc3339"]),
    "counts": st.sampled_from(["on_request", "never"]),
    "seed": st.integers(0, 1000),
})


def _pick(upstream, n):
    ids = upstream.conversation_ids()
    return ids[n % len(ids)] if ids else None


def _apply(upstream, op, arg):
    cid = _pick(upstream, arg)
    if op == "create":
        new = upstream.create_conversation(subject=f"created {arg}", participantName="Ana Ñ")
        for k in range(arg % 4):
            upstream.add_message(new["id"], f"hello {k} 👋")
    elif cid is None:
        return
    elif op == "update":
        upstream.update_conversation(cid, subject=f"subject {arg}")
    elif op == "archive":
        upstream.update_conversation(cid, status="archived")
    elif op == "delete":
        upstream.delete_conversation(cid)
    elif op == "edit":                  # a delivery status moves on, the newest message first
        messages = upstream.messages_of(cid)
        if messages:
            target = messages[-1 - arg % min(len(messages), 3)]
            upstream.update_message(cid, target["id"], metadata={
                "deliveryStatus": ("sent", "delivered", "failed", "bounced")[arg % 4],
                "deliveryError": "mailbox full" if arg % 4 == 3 else None})
    elif op == "message":
        upstream.add_message(cid, f"reply {arg}: don't panic, C++ \"quoted\"",
                             role="user" if arg % 2 else "assistant")


def _in_scope(scope):
    status, surfaces = scope
    return lambda c: ((status == "all" or c["status"] == status)
                      and (not surfaces or c["surfaceId"] in surfaces))


def _config(tmp, scope) -> Path:
    status, surfaces = scope
    path = Path(tmp) / "syncer.toml"
    path.write_text(f'[sync]\nstatus = "{status}"\nsurface_ids = {list(surfaces)!r}\n'
                    'max_delete = "100%"\n'.replace("'", '"'))
    return path


def _killed_sync(server, db, delay, config) -> int | None:
    """A `syncer sync` process SIGKILLed after `delay` seconds; its exit code if it ended
    before that."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTYPE_", "SYNCER_"))}
    env.update(RUNTYPE_BASE_URL=server.base_url, RUNTYPE_API_KEY=KEY)
    p = subprocess.Popen([sys.executable, "-m", "syncer", "--config", str(config), "--db",
                          str(db), "sync"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return p.wait(delay)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return None


@settings(max_examples=SOAK_EXAMPLES if SOAK else 5, deadline=None, derandomize=not SOAK,
          suppress_health_check=list(HealthCheck), database=None)
@given(world=world, steps=st.lists(step, min_size=2, max_size=10))
@example(world={"order": "updated_desc", "bumps": True, "paging": "none", "style": "rfc3339",
                "counts": "never", "seed": 3},
         steps=[("sync", False), ("edit", 3), ("message", 4), ("sync", False), ("churn", 2),
                ("edit", 7), ("sync", False), ("delete", 2), ("sync", True)])
@example(world={"order": "updated_desc", "bumps": True, "paging": "none", "style": "mixed",
                "seed": 1},
         steps=[("sync", False), ("message", 3), ("killed", 0.6), ("churn", 2),
                ("sync", False), ("delete", 5), ("killed", 1.0), ("create", 3),
                ("update", 8), ("sync", False)])
@example(world={"order": "updated_desc", "bumps": False, "paging": "none", "style": "z",
                "seed": 0},
         steps=[("killed", 1.0), ("create", 0)])   # found by the soak: see test_sync
@example(world={"order": "shuffled", "bumps": False, "paging": "offset", "style": "offset",
                "seed": 2},
         steps=[("killed", 0.8), ("message", 1), ("archive", 2), ("killed", 0.4),
                ("churn", 3), ("sync", True), ("message", 9)])
def test_any_interleaving_converges(world, steps):
    upstream = generate(seed=world["seed"], conversations=40, messages_per_conversation=4,
                        big_conversations=1, message_bumps_updated=world["bumps"])
    behaviour = Behaviour(list_order=world["order"], message_bumps_updated=world["bumps"],
                          message_paging=world["paging"], timestamp_style=world["style"],
                          count_mode=world.get("counts", "on_request"),
                          latency_ms=10, fault_kinds=FAULTS, fault_timeout_s=0.5,
                          fault_rate=0.2 if SOAK else 0.0, fault_seed=world["seed"])
    with tempfile.TemporaryDirectory() as tmp, SimulatorServer(upstream, behaviour) as server:
        db = Path(tmp) / "m.db"
        churn = {"pages": 0, "n": 0}
        touched: set[str] = set()       # changed while a run ran: may be pending after it
        scope = SCOPES[0]

        def during_walk(method, path, query):
            if path == LIST and churn["n"]:
                churn["pages"] += 1
                if churn["pages"] == 1:
                    for k in range(churn["n"]):
                        touched.add(_pick(upstream, k * 7))
                        _apply(upstream, "delete", k * 7)
                        _apply(upstream, "create", k)
                    touched.update(set(upstream.conversation_ids()) - set(at_start_ids))
        behaviour.on_request = during_walk
        for op, arg in steps:
            if op in ("sync", "killed"):
                touched.clear()
                churn["pages"] = 0
                at_start = upstream.snapshot()
                at_start_ids = [c["id"] for c in at_start[0]]
            if op == "sync":
                summary = run_sync(settings_for(server, db, timeout=0.3, max_retries=3,
                                                status=scope[0], surface_ids=scope[1],
                                                max_delete="100%"), full=arg)
                assert summary.outcome in ("ok", "partial", "failed"), summary
                assert summary.exit_code in (0, 1)
                code = summary.exit_code
                whole = not summary.early_stop
            elif op == "killed":
                code = _killed_sync(server, db, arg, _config(tmp, scope))
                whole = False          # not known from outside: judge only what it fetched
            elif op == "churn":
                churn.update(pages=0, n=arg)
            elif op == "scope":
                scope = SCOPES[arg]
            else:
                _apply(upstream, op, arg)
            if op in ("sync", "killed") and code == 0:
                pending = touched - {None}
                assert_as_of(db, at_start, pending=pending, in_scope=_in_scope(scope),
                             whole_walk=whole)
            if op in ("sync", "killed") and db.exists():
                assert_stats_kept(db)      # whatever was committed, and however it ended
        behaviour.fault_rate = 0
        behaviour.latency_ms = 0
        churn["n"] = 0
        final = run_sync(settings_for(server, db, max_delete="100%"), full=True)
        assert final.outcome == "ok", final.error
        gaps = assert_exact_except_gaps(db, upstream)
        assert {cid: (held, count) for cid, count, held in final.gaps} == gaps
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.close()
