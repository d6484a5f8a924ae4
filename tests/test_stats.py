"""`syncer stats`: every figure recomputed in Python from the mirror's rows."""
import csv
import io
import json
import sqlite3
import statistics
from collections import Counter
from dataclasses import replace
from datetime import date, datetime, timedelta

import pytest
from click.testing import CliRunner
from support import build_mirror, read_store

from syncer.cli import main
from syncer.query import Filters, QueryError
from syncer import stats as stats_module
from syncer.stats import stats


def _takeovers(upstream):
    """Agent modes and takeovers on some conversations (updatedAt kept): taken over, before
    or after the first message, without a time, handed back to the agent, or never."""
    for k, cid in enumerate(upstream.conversation_ids()):
        first = min((m["createdAt"] for m in upstream.messages_of(cid)), default=None)
        at = first and (instant(first) + timedelta(seconds=k * 37 - 200)).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ")
        fields = {1: {"agentMode": "human", "takeoverAt": at, "takeoverActorId": f"u{k}"},
                  2: {"agentMode": "auto", "takeoverAt": at if k % 3 == 0 else None},
                  3: {"agentMode": "human"}}.get(k % 5)
        if fields:
            upstream.update_conversation(cid, updatedAt=upstream.get(cid)["updatedAt"], **fields)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return build_mirror(tmp_path_factory.mktemp("stats") / "mirror.db", seed=11,
                        conversations=80, delete=0, prepare=_takeovers)


def load(db):
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    convs = {r["id"]: dict(r) for r in conn.execute("SELECT * FROM conversations")}
    msgs = [dict(r) for r in conn.execute("SELECT * FROM messages")]
    conn.close()
    return convs, msgs


def counted(values, key):
    return [{key: v, "count": n} for v, n in sorted(Counter(values).items(),
                                                     key=lambda kv: (-kv[1], kv[0] or ""))]


def surface_named(convs, surface_id):
    """The name and type of a surface, as its latest conversation has them."""
    latest = max((c for c in convs.values() if c["surfaceId"] == surface_id
                  and not c["_purged_at"]), key=lambda c: c["updatedAt"])
    surface = json.loads(latest["surface"] or "{}")
    return {"name": surface.get("name"), "type": surface.get("type")}


def instant(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def week(text):
    day = date.fromisoformat(text[:10])
    return (day - timedelta(days=day.weekday())).isoformat()


def passes(c, f: Filters) -> bool:
    """Whether conversation row `c` passes the conversation filters of `f`, by the book."""
    surface = json.loads(c["surface"] or "{}")
    folded = [(v or "").casefold() for v in (c["participantName"], c["participantEmail"])]
    return (not c["_purged_at"] and (f.include_deleted or not c["_deleted_at"])
            and (not f.status or c["status"] in f.status)
            and (not f.surface or c["surfaceId"] in f.surface or surface.get("type") in f.surface)
            and (not f.participant or any(f.participant.casefold() in v for v in folded))
            and (not f.conversation or c["id"] == f.conversation)
            and (not f.agent_mode or c["agentMode"] == f.agent_mode))


def takeovers(cs, msgs):
    """Taken over: human mode or a takeover time; the time from the first message held to
    it, 0 when before it, those without either left out."""
    taken = [c for c in cs if c["agentMode"] == "human" or c["takeoverAt"]]
    first = {}
    for m in msgs:
        first[m["conversationId"]] = min(first.get(m["conversationId"], "~"), m["createdAt"])
    delays = sorted(max(0, round((instant(c["takeoverAt"]) - instant(first[c["id"]]))
                                 .total_seconds(), 3))
                    for c in taken if c["takeoverAt"] and c["id"] in first)
    return {"conversations": len(taken), "share": len(taken) / len(cs) if cs else None,
            "timeToTakeover": {"conversations": len(delays),
                               "medianSeconds": statistics.median(delays) if delays else None,
                               "p90Seconds": delays[-(-9 * len(delays) // 10) - 1]
                               if delays else None}}


def expected(db, since=None, until=None, per="week", filters=None):
    f = filters or Filters(since=since, until=until)
    since, until = f.since, f.until
    convs, msgs = load(db)
    live = {i: c for i, c in convs.items() if passes(c, f)}
    of_roles = [m for m in msgs if not f.role or m["role"] in f.role]
    with_role = {m["conversationId"] for m in of_roles}
    cs = [c for c in live.values() if (not since or c["updatedAt"] >= since)
          and (not until or c["updatedAt"] < until) and (not f.role or c["id"] in with_role)]
    ms = [m for m in of_roles if m["conversationId"] in live
          and (not since or m["createdAt"] >= since) and (not until or m["createdAt"] < until)]
    # a turn dated in the window counts, answered within it or later; with roles, the turns of
    # those roles' messages alone
    at = {m["id"]: m["createdAt"] for m in msgs}
    delays = [d for i, d in turns_of(m for m in of_roles if m["conversationId"] in live).items()
              if (not since or at[i] >= since) and (not until or at[i] < until)]
    people = Counter()
    threads = {}
    for m in ms:
        c = live[m["conversationId"]]
        who = (c["participantEmail"] or "").lower() or c["participantName"]
        if who:
            people[who] += 1
            threads.setdefault(who, set()).add(c["id"])
    bucket = {"day": lambda t: t[:10], "week": week, "month": lambda t: t[:7] + "-01"}[per]
    names = {}
    for c in (live[m["conversationId"]] for m in ms):
        who = (c["participantEmail"] or "").lower() or c["participantName"]
        names.setdefault(who, set()).add((c["participantName"], c["participantEmail"]))
    return {
        "since": since, "until": until,
        "conversations": {"total": len(cs), "byStatus": counted([c["status"] for c in cs],
                                                                 "status"),
                          "bySurface": [dict(s, **surface_named(convs, s["surfaceId"]))
                                        for s in counted([c["surfaceId"] for c in cs],
                                                         "surfaceId")]},
        "messages": {"total": len(ms), "first": min((m["createdAt"] for m in ms), default=None),
                     "last": max((m["createdAt"] for m in ms), default=None),
                     "byRole": counted([m["role"] for m in ms], "role"),
                     "byDirection": counted([m["direction"] for m in ms], "direction")},
        "volume": {"per": per, "buckets": [{"start": k, "messages": n} for k, n in sorted(
            Counter(bucket(m["createdAt"]) for m in ms).items())]},
        "firstResponse": {"turns": len(delays),
                          "medianSeconds": statistics.median(delays) if delays else None},
        "takeovers": takeovers(cs, msgs),
        "busiestParticipants": [
            {"participantName": max((n for n, _ in names[w] if n), default=None),
             "participantEmail": max((e for _, e in names[w] if e), default=None),
             "messages": n, "conversations": len(threads[w])}
            for w, n in sorted(people.items(), key=lambda kv: (-kv[1], kv[0]))[:10]],
    }


def test_stats_of_the_whole_mirror(db):
    with _open(db) as store:
        assert stats(store) == expected(db)


@pytest.mark.parametrize("since,until,per", [
    ("2024-01-01T00:00:00.000000Z", None, "week"),
    (None, "2023-10-01T00:00:00.000000Z", "day"),
    ("2024-04-01T00:00:00.000000Z", "2024-05-01T00:00:00.000000Z", "day"),
    (None, None, "month"),
    ("2024-02-03T12:00:00.000000Z", "2024-04-09T06:00:00.000000Z", "week"),   # not whole days
    ("2024-02-01T00:00:00.000000Z", "2024-03-01T00:00:00.000000Z", "month"),
])
def test_stats_in_a_window(db, since, until, per):
    with _open(db) as store:
        got = stats(store, Filters(since=since, until=until), per=per)
    assert got == expected(db, since, until, per)


WINDOWS = [
    (None, None),
    ("2024-01-01T00:00:00.000000Z", None),                                # whole days
    ("2024-02-03T12:00:00.000000Z", "2024-04-09T06:00:00.000000Z"),       # part-days at both ends
    (None, "2024-03-15T08:30:00.000000Z"),
    ("2024-04-02T10:00:00.000000Z", "2024-04-02T18:00:00.000000Z"),       # inside one day
    ("2024-04-05T00:00:00.000000Z", "2024-04-05T00:00:00.000000Z"),       # empty
]
SHAPES = [
    Filters(status=("open",)),
    Filters(status=("closed", "archived")),
    Filters(surface=("surface_002",)),
    Filters(surface=("email", "surface_001")),                            # a type and an id
    Filters(participant="jane"),
    Filters(participant="EXAMPLE.COM"),
    Filters(participant="zoë"),
    Filters(role=("user",)),                                              # recounted turns
    Filters(role=("assistant",)),
    Filters(role=("user", "assistant")),
    Filters(status=("open",), role=("assistant",), surface=("sms", "webchat")),
    Filters(include_deleted=True),
    Filters(include_deleted=True, status=("open",)),
    Filters(participant="no such person"),
    # most conversations kept: everything less those left out, the test negated
    Filters(participant="e", include_deleted=True),
    Filters(participant="example.com", status=("open", "closed", "archived")),
    Filters(status=("open", "closed", "archived"), role=("user",)),
    Filters(agent_mode="human"),
    Filters(agent_mode="auto", status=("open",)),
    Filters(agent_mode="human", participant="example.com", role=("user",)),
]


@pytest.mark.parametrize("scan_up_to", [0, 10**9], ids=["kept-counts", "short-window"])
@pytest.mark.parametrize("shape", SHAPES, ids=repr)
def test_every_filter_shape_equals_a_recount(db, monkeypatch, shape, scan_up_to):
    """Each filter, over whole and part-day windows, read over every conversation it keeps or
    over those the window touches (SCAN_UP_TO decides), gives the figures of a recount from the
    raw rows."""
    monkeypatch.setattr(stats_module, "SCAN_UP_TO", scan_up_to)
    with _open(db) as store:
        for since, until in WINDOWS:
            f = replace(shape, since=since, until=until)
            assert stats(store, f, per="day") == expected(db, per="day", filters=f), f


def test_one_conversation(db):
    convs, _ = load(db)
    cid = sorted(convs)[3]
    with _open(db) as store:
        f = Filters(conversation=cid)
        assert stats(store, f, per="month") == expected(db, per="month", filters=f)


def test_auto_period_and_bad_period(db):
    with _open(db) as store:
        assert stats(store, Filters(since="2024-04-01T00:00:00.000000Z", until=
                                    "2024-05-01T00:00:00.000000Z"))["volume"]["per"] == "day"
        assert stats(store)["volume"]["per"] == "week"
        with pytest.raises(QueryError):
            stats(store, per="year")


_open = read_store


def test_cli_json_and_chart(db):
    runner = CliRunner()
    result = runner.invoke(main, ["--db", db, "stats", "--since", "2024-01-01", "--until",
                                  "2024-05-01", "--per", "week", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == expected(db, "2024-01-01T00:00:00.000000Z",
                                                 "2024-05-02T00:00:00.000000Z", "week")
    chart = runner.invoke(main, ["--db", db, "stats", "--format", "table"]).output
    assert "conversations by status" in chart and "first response: median" in chart
    status_lines = chart.split("conversations by status\n")[1].split("\n\n")[0].splitlines()
    assert status_lines[0].rstrip().endswith("#" * 40)


def test_cli_csv_has_the_numbers_of_the_json(db):
    runner = CliRunner()
    args = ["--db", db, "stats", "--per", "month", "--since", "2024-01-01"]
    result = runner.invoke(main, args + ["--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    want = expected(db, "2024-01-01T00:00:00.000000Z", per="month")
    value = {(r["section"], r["key"]): r["value"] for r in rows}
    assert value[("conversations.total", "")] == str(want["conversations"]["total"])
    assert value[("firstResponse.medianSeconds", "")] == str(
        want["firstResponse"]["medianSeconds"])
    assert [(r["key"], int(r["value"])) for r in rows if r["section"] == "volume.month"] == [
        (b["start"], b["messages"]) for b in want["volume"]["buckets"]]
    assert {(r["key"], int(r["value"])) for r in rows if r["section"] == "messages.byRole"} == {
        (i["role"], i["count"]) for i in want["messages"]["byRole"]}
    assert len([r for r in rows if r["section"] == "busiestParticipants.messages"]) == len(
        want["busiestParticipants"])


def turns_of(msgs) -> dict[str, float]:
    """{user message id: seconds to its reply} for every answered user turn."""
    out, by_conv = {}, {}
    for m in sorted(msgs, key=lambda m: (m["createdAt"], m["id"])):
        by_conv.setdefault(m["conversationId"], []).append(m)
    for thread in by_conv.values():
        for i, m in enumerate(thread):
            if m["role"] != "user" or (i and thread[i - 1]["role"] == "user"):
                continue
            reply = next((r for r in thread[i + 1:] if r["role"] != "user"), None)
            if reply:
                out[m["id"]] = round((instant(reply["createdAt"]) - instant(m["createdAt"]))
                                     .total_seconds(), 3)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_turns_kept_at_write_time_equal_a_recount(seed):
    """Whatever order messages are written, changed, moved and deleted in, the turns and
    counts the triggers keep (migrations.V4, V7) are those of a recount over every message."""
    import random

    from syncer import migrations
    rng = random.Random(seed)
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrations.migrate(conn)
    held: dict[str, dict] = {}
    for step in range(300):
        action = rng.random()
        if action < 0.55 or not held:
            m = {"id": f"m{rng.randrange(60):02d}", "conversationId": rng.choice("ab"),
                 "createdAt": f"2024-05-01T00:{rng.randrange(20):02d}:00.000000Z",
                 "role": rng.choice(["user", "user", "assistant", None])}
            if m["id"] in held:
                continue
            conn.execute("INSERT INTO messages (id, conversationId, createdAt, role, _raw, "
                         "_synced_at) VALUES (:id, :conversationId, :createdAt, :role, '{}', "
                         "'x')", m)
            held[m["id"]] = m
        elif action < 0.8:
            m = held[rng.choice(sorted(held))]
            m.update(rng.choice([{"role": rng.choice(["user", "assistant"])},
                                 {"createdAt": f"2024-05-01T00:{rng.randrange(20):02d}:00."
                                               "000000Z"},
                                 {"conversationId": rng.choice("ab")}]))
            conn.execute("UPDATE messages SET conversationId = :conversationId, createdAt = "
                         ":createdAt, role = :role WHERE id = :id", m)
        else:
            gone = rng.sample(sorted(held), min(len(held), rng.randint(1, 3)))
            conn.execute(f"DELETE FROM messages WHERE id IN ({','.join('?' * len(gone))})",
                         gone)
            for i in gone:
                del held[i]
        assert dict(conn.execute("SELECT messageId, delay FROM _turns")) == turns_of(
            held.values()), step
        daily = Counter((m["createdAt"][:10], m["role"], None) for m in held.values())
        assert {(d, r, w): n for d, r, w, n in conn.execute(
            "SELECT day, role, direction, n FROM _daily") if n} == daily, step
        # per conversation too, and a count that falls to nothing leaves no row
        assert {(c, d, r, w): n for c, d, r, w, n in conn.execute(
            "SELECT conversationId, day, role, direction, n FROM _conv_days")} == Counter(
            (m["conversationId"], m["createdAt"][:10], m["role"], None)
            for m in held.values()), step


def test_counts_kept_at_write_time_equal_a_pass_over_the_messages(db):
    """The whole-mirror figures read from the counts the triggers keep equal those of a pass
    over every message (a --since that is not a whole day takes that path)."""
    with _open(db) as store:
        for include_deleted in (False, True):
            kept = stats(store, Filters(include_deleted=include_deleted))
            scanned = stats(store, Filters(include_deleted=include_deleted,
                                           since="2000-01-01T00:00:00.000001Z"))
            assert {**kept, "since": None} == {**scanned, "since": None}
    convs, msgs = load(db)
    assert kept["messages"]["total"] == len(msgs)      # the deleted conversation's too


@pytest.mark.parametrize("needle", ["ss", "STRASSE", "k", "é", "ǆ", "ΣΑΣ", "x"])
def test_the_participant_test_folds_as_python_does(needle):
    """stats folds printable ASCII in SQL and the rest in Python: the same as casefold."""
    from syncer.query import prepare
    from syncer.stats import _participant_sql
    values = ["Straße", "STRASSE", "\u212a elvin", "ÉCOLE", "ǅemal", "ΌΣΑΣ", "tab\there", None,
              "plain ascii", "Ada.Lovelace@Example.COM"]
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE conversations (participantName TEXT, participantEmail TEXT)")
    conn.executemany("INSERT INTO conversations VALUES (?, ?)", [(v, None) for v in values] +
                     [(None, v) for v in values])

    class Held:
        pass
    store = Held()
    store.conn = conn
    prepare(store)
    got = conn.execute(f"SELECT participantName, participantEmail FROM conversations c "
                       f"WHERE {_participant_sql()}", [needle.casefold()] * 4).fetchall()
    assert got == [(n, e) for n, e in conn.execute("SELECT * FROM conversations")
                   if any(v and needle.casefold() in v.casefold() for v in (n, e))]


def test_the_table_says_what_it_counts(db):
    """Labels name the unit and the clock; surfaces by name and type; a participant whose
    name another shares is told apart by email."""
    want = expected(db, per="month")
    out = CliRunner().invoke(main, ["--db", db, "stats", "--per", "month", "--format",
                                    "table"])
    assert out.exit_code == 0, out.output
    text = out.output
    turns = want["firstResponse"]["turns"]
    assert f"first response: median {round(want['firstResponse']['medianSeconds'])}s of " \
        f"{turns:,} replies" in text
    assert "messages per month (UTC)" in text
    months = text.split("messages per month (UTC)\n")[1].split("\n\n")[0].splitlines()
    assert [line.split()[0] for line in months] == [
        b["start"][:7] if b["start"] else "(no" for b in want["volume"]["buckets"]]
    assert f"{want['conversations']['total']:,} conversations updated (all time)" in text
    assert f"{want['messages']['total']:,} messages sent" in text
    for s in want["conversations"]["bySurface"]:
        assert f"{s['name']} ({s['type']}, {s['surfaceId']})" in text
    surfaces = text.split("conversations by surface\n")[1].split("\n\n")[0]
    assert "Support Email (email, surface_002)" in surfaces
    # non-Latin names get an email of their own (user<n>@): there, names are shared
    f = Filters(participant="user")
    text = CliRunner().invoke(main, ["--db", db, "stats", "--participant", "user",
                                     "--format", "table"]).output
    busiest = text.split("busiest participants (messages)\n")[1].splitlines()
    people = expected(db, filters=f)["busiestParticipants"]
    names = [p["participantName"] for p in people]
    assert len(busiest) == len(people)
    shared = 0
    for line, p in zip(busiest, people):
        if names.count(p["participantName"]) > 1:
            shared += 1
            assert f"<{p['participantEmail']}>" in line, line
        else:
            assert p["participantName"] in line and "<" not in line, line
    assert shared >= 2


def test_every_json_number_is_in_the_csv(db):
    """--format csv and --format json carry the same figures, through the real command."""
    runner = CliRunner()
    args = ["--db", db, "stats", "--status", "open", "--since", "2024-02-03T12:00",
            "--per", "week"]
    as_json = json.loads(runner.invoke(main, args + ["--format", "json"]).output)
    assert as_json == expected(db, per="week", filters=Filters(
        status=("open",), since="2024-02-03T12:00:00.000000Z"))
    rows = list(csv.DictReader(io.StringIO(runner.invoke(main, args + ["--format",
                                                                       "csv"]).output)))
    got = {(r["section"], r["key"]): r["value"] for r in rows}
    c, m = as_json["conversations"], as_json["messages"]
    want = {("conversations.total", ""): c["total"], ("messages.total", ""): m["total"],
            ("messages.first", ""): m["first"], ("messages.last", ""): m["last"],
            ("firstResponse.turns", ""): as_json["firstResponse"]["turns"],
            ("firstResponse.medianSeconds", ""): as_json["firstResponse"]["medianSeconds"],
            ("takeovers.conversations", ""): as_json["takeovers"]["conversations"],
            ("takeovers.share", ""): as_json["takeovers"]["share"],
            **{(f"takeovers.timeToTakeover.{k}", ""): v
               for k, v in as_json["takeovers"]["timeToTakeover"].items()},
            ("since", ""): as_json["since"], ("until", ""): ""}
    want.update({("conversations.byStatus", i["status"]): i["count"] for i in c["byStatus"]})
    want.update({("conversations.bySurface", i["surfaceId"]): i["count"]
                 for i in c["bySurface"]})
    want.update({("messages.byRole", i["role"]): i["count"] for i in m["byRole"]})
    want.update({("messages.byDirection", i["direction"] or ""): i["count"]
                 for i in m["byDirection"]})
    want.update({("volume.week", b["start"]): b["messages"]
                 for b in as_json["volume"]["buckets"]})
    for p in as_json["busiestParticipants"]:
        who = p["participantEmail"] or p["participantName"]
        want[("busiestParticipants.messages", who)] = p["messages"]
        want[("busiestParticipants.conversations", who)] = p["conversations"]
    assert got == {k: str(v) for k, v in want.items()}


def test_kept_stats_follow_syncs_deletions_and_purges(tmp_path):
    """Through the real writers: a first sync (new conversations), new and changed messages,
    a conversation deleted upstream, its purge, and a full sync that drops messages gone
    upstream: after each, the kept stats equal a recount."""
    from support import assert_stats_kept, settings_for

    from syncer.purge import purge_deleted
    from syncer.runner import run_sync
    from syncer.simulator import Behaviour, SimulatorServer, generate
    from syncer.store import Store
    upstream = generate(seed=3, conversations=30)
    ids = upstream.conversation_ids()
    db = tmp_path / "m.db"
    with SimulatorServer(upstream, Behaviour()) as server:
        settings = settings_for(server, db, max_delete="100%")
        assert run_sync(settings).outcome == "ok"
        assert_stats_kept(db)
        for k, cid in enumerate(ids[:8]):
            upstream.add_message(cid, f"more {k}", role="user" if k % 3 else "assistant")
        upstream.delete_conversation(ids[9])
        assert run_sync(settings, full=True).outcome == "ok"
        assert_stats_kept(db)
        store = Store.open(str(db))
        try:
            assert purge_deleted(store).conversations == 1
        finally:
            store.close()
        assert_stats_kept(db)
        assert run_sync(settings, full=True).outcome == "ok"
        assert_stats_kept(db)


def test_a_new_conversation_refused_part_way_leaves_the_stats_as_they_were(tmp_path):
    """The writer's fast path counts a new conversation's stats once, after its messages; a
    message id already held sends the conversation down the ordinary path (the savepoint rolls
    the first attempt back, deferral mark included), and the stats still equal a recount."""
    from support import assert_stats_kept

    from syncer.store import Fetched, Store
    from syncer.transform import conversation_row, list_signature, message_row
    upstream = __import__("syncer.simulator", fromlist=["generate"]).generate(
        seed=4, conversations=3)
    a, b = upstream.conversation_ids()[:2]
    store = Store.open(str(tmp_path / "m.db"))

    def fetched(cid, messages):
        row = conversation_row(upstream.get(cid))
        row["_list_sig"] = list_signature(row)
        return Fetched(row, [message_row(m) for m in messages], complete=True,
                       drop_others=False, new=True)
    try:
        store.save_conversation(fetched(a, upstream.messages_of(a)))
        stolen = dict(upstream.messages_of(a)[0], conversationId=b)   # an id already held
        assert store.save_conversation(fetched(b, [stolen, *upstream.messages_of(b)]))
    finally:
        store.close()
    assert_stats_kept(tmp_path / "m.db")


def test_participants_who_share_a_name_without_an_email_say_so(tmp_path):
    """Two people named alike, one without an email: the chart says "(no email)", never
    "<None>"."""
    def prepare(upstream):
        ids = [i for i in upstream.conversation_ids() if upstream.messages_of(i)]
        upstream.update_conversation(ids[0], participantName="Sam Lee", participantEmail=None)
        upstream.update_conversation(ids[1], participantName="Sam Lee",
                                     participantEmail="sam@example.com")
    db = build_mirror(tmp_path / "m.db", seed=12, conversations=6, prepare=prepare)
    text = CliRunner().invoke(main, ["--db", str(db), "stats", "--format", "table"]).output
    busiest = text.split("busiest participants (messages)\n")[1]
    assert "Sam Lee (no email)" in busiest and "Sam Lee <sam@example.com>" in busiest
    assert "None" not in busiest
