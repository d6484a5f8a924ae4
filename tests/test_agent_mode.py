"""The vendor's agent-mode and human-takeover fields as columns: written by every sync, filled
by the version-9 migration from what an older mirror holds in `_raw`, shown, filtered on,
counted by stats and exported.

The simulator serves these fields as extra fields (Behaviour(extra_fields=True)) until it
knows them; each test puts them on its data itself, so the tests hold either way. Takeover
times given for whole-record comparisons are in the canonical form, which the simulator
renders unchanged whether or not it treats the field as a timestamp."""
import hashlib
import json
import sqlite3

import pytest
from click.testing import CliRunner
from support import KEY, assert_exact, dict_rows, mirror, settings_for, upstream_tables

from syncer import migrations, purge, validate
from syncer.cli import main
from syncer.runner import run_sync, run_verify
from syncer.simulator import Behaviour, SimulatorServer, generate
from syncer.store import Store
from syncer.transform import _dumps, conversation_row, list_signature

LIST = "/v1/messaging/conversations"
AGENT = ("agentMode", "takeoverActorId", "takeoverActorType", "takeoverAt", "takeoverReason")
HUMAN = dict(agentMode="human", takeoverActorId="user_42", takeoverActorType="user",
             takeoverAt="2024-05-02T10:00:00.000000Z", takeoverReason="asked for a person")


def server_record(server, cid) -> dict:
    """The conversation's details as the server sends them."""
    import httpx
    return httpx.get(f"{server.base_url}/v1/messaging/conversations/{cid}",
                     headers={"Authorization": f"Bearer {KEY}"}).json()


def without_agent_fields(upstream) -> None:
    """The simulator's generated takeovers removed: only those a test gives are there."""
    with upstream.lock:
        for record in upstream._records():
            for name in AGENT:
                record.pop(name, None)
        upstream._changed()


def prepare(upstream) -> dict[str, dict]:
    """Agent fields on a few conversations: taken over (one with a time before its first
    message, one in human mode without a time), handed back, a future mode, and none."""
    without_agent_fields(upstream)
    ids = upstream.conversation_ids()
    firsts = {cid: min((m["createdAt"] for m in upstream.messages_of(cid)), default=None)
              for cid in ids}
    with_messages = [cid for cid in ids if firsts[cid]]
    given = {
        with_messages[0]: dict(HUMAN, takeoverAt=_after(firsts[with_messages[0]], 60)),
        with_messages[1]: dict(HUMAN, takeoverAt=_after(firsts[with_messages[1]], 600),
                               takeoverActorId="user_7", takeoverReason=None),
        with_messages[2]: dict(HUMAN, takeoverAt=_after(firsts[with_messages[2]], -30)),
        with_messages[3]: dict(HUMAN, takeoverAt=None),
        with_messages[4]: dict(HUMAN, agentMode="auto",
                               takeoverAt=_after(firsts[with_messages[4]], 3600)),
        with_messages[5]: {"agentMode": "auto"},
        with_messages[6]: {"agentMode": "paused"},        # a value the vendor may add
    }
    for cid, fields in given.items():
        upstream.update_conversation(cid, **fields)
    return given


def _after(stamp: str, seconds: float) -> str:
    from datetime import datetime, timedelta
    dt = datetime.fromisoformat(stamp.replace("Z", "+00:00")) + timedelta(seconds=seconds)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    upstream = generate(seed=19, conversations=40, messages_per_conversation=4,
                        big_conversations=0)
    given = prepare(upstream)
    db = tmp_path_factory.mktemp("agent") / "mirror.db"
    with SimulatorServer(upstream, Behaviour(extra_fields=True)) as server:
        summary = run_sync(settings_for(server, db))
        assert summary.outcome == "ok"
        yield upstream, server, str(db), given


def cli(db, *args):
    return CliRunner().invoke(main, ["--db", db, *args])


# -- the columns -------------------------------------------------------------------------------
def test_a_sync_writes_the_agent_fields_as_columns(world):
    upstream, _, db, given = world
    assert_exact(db, upstream)          # every API column equals its record, takeoverAt too
    got = {r["id"]: r for r in dict_rows(db, f"SELECT id, {', '.join(AGENT)} FROM conversations")}
    for cid, fields in given.items():
        assert {k: got[cid][k] for k in fields} == fields, cid
    served = {c["id"]: c.get("agentMode") for c in upstream.snapshot()[0]}
    assert {cid: got[cid]["agentMode"] for cid in got} == served


def test_the_takeover_time_is_normalised_and_the_raw_record_kept(tmp_path):
    upstream = generate(seed=3, conversations=5, messages_per_conversation=2)
    cid = upstream.conversation_ids()[0]
    upstream.update_conversation(cid, agentMode="human", takeoverAt="2024-05-02T12:00:00+02:00")
    with SimulatorServer(upstream, Behaviour(extra_fields=True,
                                             timestamp_style="numoffset")) as server:
        sent = server_record(server, cid)
        run_sync(settings_for(server, tmp_path / "m.db"))
    row = dict_rows(tmp_path / "m.db", "SELECT takeoverAt, _raw FROM conversations "
                                       "WHERE id = ?", (cid,))[0]
    assert row["takeoverAt"] == "2024-05-02T10:00:00.000000Z"
    assert json.loads(row["_raw"])["takeoverAt"] == sent["takeoverAt"]
    assert not sent["takeoverAt"].endswith(("Z", "z"))      # as the server spelled it


def test_a_takeover_alone_makes_a_conversation_dirty(tmp_path):
    """A change of the agent fields only (updatedAt kept) is seen by the next whole walk."""
    upstream = generate(seed=4, conversations=12, messages_per_conversation=2,
                        big_conversations=0)
    cid = upstream.conversation_ids()[3]
    db = tmp_path / "m.db"
    with SimulatorServer(upstream, Behaviour(extra_fields=True)) as server:
        settings = settings_for(server, db)
        run_sync(settings)
        upstream.update_conversation(cid, updatedAt=upstream.get(cid)["updatedAt"], **HUMAN)
        server.reset_log()
        summary = run_sync(settings, full=True)
    assert summary.counts["conversations_changed"] == 1
    assert dict_rows(db, "SELECT agentMode FROM conversations WHERE id = ?",
                     (cid,)) == [{"agentMode": "human"}]
    assert_exact(db, upstream)


@pytest.mark.parametrize("fields,ok", [
    ({}, True), ({"agentMode": "auto"}, True), ({"agentMode": "supervised"}, True),
    ({"agentMode": None, "takeoverAt": None}, True), (HUMAN, True),
    ({"agentMode": 1}, False), ({"takeoverAt": 1700000000}, False),
    ({"takeoverActorId": {"id": "u"}}, False), ({"takeoverReason": ["x"]}, False)])
def test_the_schemas_type_the_agent_fields(fields, ok):
    record = {"id": "conv_1", "createdAt": "2024-05-01T00:00:00Z",
              "updatedAt": "2024-05-01T00:00:00Z", "status": "open", "messageCount": 0} | fields
    for kind in ("conversation", "conversation_detail"):
        assert (validate.checker(kind)(record) is None) == ok, kind


# -- the migration -----------------------------------------------------------------------------
OLD_FIELDS = ("id", "createdAt", "updatedAt", "lastMessageAt", "status", "subject",
              "participantName", "participantEmail", "externalParticipantId", "externalThreadId",
              "surfaceId", "timezone", "messageCount")


def v8_signature(row: dict) -> str:
    """list_signature as syncer made it up to schema 8."""
    return hashlib.sha1(_dumps([row.get(n) for n in OLD_FIELDS]).encode()).hexdigest()[:16]


def downgrade_to_v8(db, signatures: dict[str, str]) -> None:
    """What a version-8 syncer would have made of the same data: no agent columns (nor
    anything naming them), its NUL triggers and marks, and its list signatures."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    for kind, name in conn.execute("SELECT type, name FROM sqlite_master WHERE tbl_name = "
                                   "'conversations' AND type != 'table' "
                                   "AND sql LIKE '%takeover%'").fetchall():
        conn.execute(f"DROP {kind} {name}")
    for column in AGENT:
        conn.execute(f"ALTER TABLE conversations DROP COLUMN {column}")
    conn.execute("DELETE FROM _text_nul")
    for cid, sig in signatures.items():
        conn.execute("UPDATE conversations SET _list_sig = ? WHERE id = ? "
                     "AND _list_sig IS NOT NULL", (sig, cid))
    conn.execute("PRAGMA user_version = 8")
    conn.execute("COMMIT")
    conn.executescript(migrations._nul_triggers("conversations", OLD_NUL))
    conn.close()


OLD_NUL = ("id", "status", "subject", "participantName", "participantEmail",
           "externalParticipantId", "externalThreadId", "surfaceId", "timezone", "_purged_at")


def test_the_signature_of_a_record_without_agent_fields_is_what_it_was():
    """Plain values: a record without agent fields signs as before schema 9; with one, the
    older part leads and the agent part follows; a partial signature (a forgotten
    conversation's, marked by the upgrade) holds while the older fields are unchanged."""
    from syncer.watermark import is_dirty, signature_holds
    row = conversation_row({"id": "c", "createdAt": "2024-05-01T00:00:00Z",
                            "updatedAt": "2024-05-01T00:00:00Z", "status": "open",
                            "messageCount": 3})
    assert list_signature(row) == v8_signature(row)
    taken = conversation_row(json.loads(row["_raw"]) | HUMAN)
    sig = list_signature(taken)
    assert len(sig) == 32 and sig[:16] == v8_signature(row)
    assert list_signature(dict(taken, takeoverReason="other")) != sig
    assert signature_holds(sig, sig) and not signature_holds(v8_signature(row), sig)
    assert signature_holds(v8_signature(row) + "~", sig)
    assert signature_holds(v8_signature(row) + "~", list_signature(row))
    assert not signature_holds(v8_signature(row) + "~", list_signature(dict(row, status="x")))
    assert not signature_holds(None, sig)
    assert is_dirty(v8_signature(row), False, sig, True)
    assert not is_dirty(v8_signature(row) + "~", False, sig, True)


def test_upgrading_a_version_8_mirror_fetches_nothing(tmp_path):
    """A mirror made by syncer at schema 8 from a server that sends the agent fields (they sit
    in _raw only) is upgraded by the next sync: the columns are filled from _raw, the list
    signatures stay valid (re-signed where the record carries agent fields, a forgotten
    conversation's kept as covering what it covered), so the sync fetches nothing."""
    upstream = generate(seed=23, conversations=60, messages_per_conversation=3,
                        big_conversations=1)
    given = prepare(upstream)
    ids = upstream.conversation_ids()
    nul = ids[-1]
    upstream.update_conversation(nul, agentMode="human", takeoverReason="a\x00b")
    db = str(tmp_path / "m.db")
    with SimulatorServer(upstream, Behaviour(extra_fields=True)) as server:
        settings = settings_for(server, db)
        run_sync(settings)
        conn = sqlite3.connect(db)
        legacy = {cid: v8_signature(conversation_row(json.loads(raw)))
                  for cid, raw in conn.execute("SELECT id, _raw FROM conversations")}
        conn.close()
        forgotten = [next(iter(given)), [c for c in ids if c not in given and c != nul][0]]
        store = Store.open(db)
        purge.purge(store, purge.Criteria(retain=0, ids=tuple(forgotten)), scrub_after=False)
        store.close()
        downgrade_to_v8(db, legacy)
        before = {r["id"]: r for r in dict_rows(db, "SELECT id, _seq FROM conversations")}
        server.reset_log()
        summary = run_sync(settings)
        assert summary.outcome == "ok"
        assert server.count(LIST + "/") == 0          # no detail, no messages
        assert summary.counts["conversations_changed"] == 0
        report = run_verify(settings)       # nor does verify find anything stale
        assert (report.stale, report.missing) == ([], [])
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == migrations.LATEST
    rows = {r["id"]: r for r in dict_rows(db, "SELECT * FROM conversations")}
    for cid, row in rows.items():
        if cid in forgotten:
            assert row["_list_sig"] == legacy[cid] + "~"
            assert row["agentMode"] is None and row["_seq"] == before[cid]["_seq"]
            continue
        record = json.loads(row["_raw"])
        assert row["_list_sig"] == list_signature(conversation_row(record)), cid
        assert {k: row[k] for k in AGENT} == {k: conversation_row(record).get(k) for k in AGENT}
        # the change feed carries again the rows whose columns the migration filled, only
        moved = row["_seq"] != before[cid]["_seq"]
        assert moved == any(record.get(k) is not None for k in AGENT), cid
    assert [t for (t,) in conn.execute("SELECT tbl FROM _text_nul")] == ["conversations"]
    conn.close()
    got, want = mirror(db)[0], upstream_tables(upstream)[0]
    assert got == {cid: c for cid, c in want.items() if cid not in forgotten} | {
        cid: got[cid] for cid in forgotten}


def test_the_migration_fills_the_columns_as_a_sync_would(tmp_path):
    """From _raw: strings kept, takeoverAt normalised, a value of another type or a takeover
    time that does not parse left NULL (and kept in _raw); signatures re-signed only where
    they were valid."""
    conn = sqlite3.connect(tmp_path / "v8.db", isolation_level=None)
    for version, script in enumerate(migrations.MIGRATIONS[:8], start=1):
        conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {version}; COMMIT;")
    conn.execute("PRAGMA application_id = %d" % migrations.APPLICATION_ID)
    base = {"createdAt": "2024-05-01T00:00:00Z", "updatedAt": "2024-05-01T00:00:00Z",
            "status": "open", "messageCount": 0}
    records = {
        "plain": {},
        "human": dict(HUMAN, takeoverAt="2024-05-02t12:00:00.5+02:00"),
        "bad_time": {"agentMode": "human", "takeoverAt": "yesterday"},
        "bad_type": {"agentMode": 7, "takeoverActorId": {"x": 1}},
        "stale": {"agentMode": "auto"},          # its signature was already not valid
        "unsigned": {"agentMode": "auto"},       # no signature: queued for a fetch
    }
    for cid, extra in records.items():
        record = dict(base, id=cid, **extra)
        try:
            sig = v8_signature(conversation_row(record))
        except Exception:
            sig = v8_signature(dict(record, takeoverAt=None))
        sig = {"stale": "0" * 16, "unsigned": None}.get(cid, sig)
        conn.execute("INSERT INTO conversations (id, createdAt, updatedAt, status, messageCount, "
                     "_raw, _list_sig, _synced_at) VALUES (?, ?, ?, 'open', 0, ?, ?, 'x')",
                     (cid, "2024-05-01T00:00:00.000000Z", "2024-05-01T00:00:00.000000Z",
                      json.dumps(record), sig))
    migrations.migrate(conn)
    got = {r["id"]: r for r in dict_rows(tmp_path / "v8.db", "SELECT * FROM conversations")}
    assert {k: got["human"][k] for k in AGENT} == dict(HUMAN, takeoverAt=(
        "2024-05-02T10:00:00.500000Z"))
    assert got["human"]["_list_sig"] == list_signature(
        conversation_row(json.loads(got["human"]["_raw"])))
    assert json.loads(got["human"]["_raw"])["takeoverAt"] == "2024-05-02t12:00:00.5+02:00"
    assert (got["bad_time"]["agentMode"], got["bad_time"]["takeoverAt"]) == ("human", None)
    assert json.loads(got["bad_time"]["_raw"])["takeoverAt"] == "yesterday"
    assert (got["bad_type"]["agentMode"], got["bad_type"]["takeoverActorId"]) == (None, None)
    assert got["plain"]["_list_sig"] == list_signature(conversation_row(
        json.loads(got["plain"]["_raw"])))        # unchanged: no agent field
    assert (got["stale"]["_list_sig"], got["unsigned"]["_list_sig"]) == ("0" * 16, None)
    conn.close()


# -- show ----------------------------------------------------------------------------------------
def test_show_tells_the_agent_mode_and_the_takeover(world):
    _, _, db, given = world
    cid, fields = next(iter(given.items()))
    text = cli(db, "--tz", "Europe/Paris", "show", cid, "--format", "table").output
    assert "agent: human" in text
    line = next(line for line in text.splitlines() if "taken over" in line)
    assert "user user_42" in line and "asked for a person" in line and "CEST" in line
    auto = next(c for c, f in given.items() if f == {"agentMode": "auto"})
    text = cli(db, "show", auto, "--format", "table").output
    assert "agent: auto" in text and "taken over" not in text
    shown = json.loads(cli(db, "show", cid, "--format", "json").output)
    assert {k: shown[k] for k in AGENT} == fields


# -- filters -------------------------------------------------------------------------------------
def modes(db) -> dict[str, str | None]:
    return {r["id"]: r["agentMode"] for r in dict_rows(
        db, "SELECT id, agentMode FROM conversations WHERE _deleted_at IS NULL")}


@pytest.mark.parametrize("mode", ["human", "auto"])
def test_conversations_and_export_filter_by_agent_mode(world, mode):
    _, _, db, _ = world
    want = {cid for cid, m in modes(db).items() if m == mode}
    assert want
    listed = cli(db, "conversations", "--agent-mode", mode, "--limit", "0", "--format", "jsonl")
    assert {json.loads(line)["id"] for line in listed.output.splitlines()} == want
    exported = cli(db, "export", "conversations", "--format", "jsonl", "--agent-mode", mode)
    rows = [json.loads(line) for line in exported.output.splitlines()]
    assert {r["id"] for r in rows} == want and all(r["agentMode"] == mode for r in rows)
    messages = cli(db, "export", "messages", "--format", "jsonl", "--agent-mode", mode)
    assert {json.loads(line)["conversationId"] for line in messages.output.splitlines()} <= want


def test_search_filters_by_agent_mode(world):
    _, _, db, _ = world
    every = cli(db, "search", "the", "--limit", "1000", "--format", "jsonl").output
    hits = [json.loads(line) for line in every.splitlines()]
    mode = modes(db)
    for wanted in ("human", "auto"):
        got = cli(db, "search", "the", "--agent-mode", wanted, "--limit", "1000",
                  "--format", "jsonl").output
        assert [json.loads(line) for line in got.splitlines()] == [
            h for h in hits if mode[h["conversationId"]] == wanted]


def test_the_agent_mode_option_says_what_it_leaves_out():
    for command in ("search", "conversations", "stats", "export"):
        text = CliRunner().invoke(main, [command, "--help"]).output
        assert "--agent-mode [auto|human]" in text and "neither" in text, command
    bad = CliRunner().invoke(main, ["conversations", "--agent-mode", "robot"])
    assert bad.exit_code == 2


# -- stats -------------------------------------------------------------------------------------
def test_stats_count_the_takeovers_and_the_time_to_them(world):
    """Taken over: agentMode human or a takeover time. Time to takeover: from the first
    message held to takeoverAt, 0 for a takeover before it; those without a time left out."""
    _, _, db, given = world
    result = json.loads(cli(db, "stats", "--format", "json").output)
    total = result["conversations"]["total"]
    taken = result["takeovers"]
    assert taken["conversations"] == 5
    assert taken["share"] == pytest.approx(5 / total)
    # delays 60, 600, 0 (before the first message), 3600; the human one without a time: none
    assert taken["timeToTakeover"] == {"conversations": 4, "medianSeconds": 330.0,
                                       "p90Seconds": 3600.0}
    human = json.loads(cli(db, "stats", "--agent-mode", "human", "--format", "json").output)
    assert human["conversations"]["total"] == 4 == human["takeovers"]["conversations"]
    assert human["takeovers"]["timeToTakeover"]["conversations"] == 3
    assert sum(human["conversations"]["byStatus"][i]["count"]
               for i in range(len(human["conversations"]["byStatus"]))) == 4
    rows = cli(db, "stats", "--format", "csv").output.splitlines()
    assert "takeovers.conversations,,5" in rows
    assert "takeovers.timeToTakeover.medianSeconds,,330.0" in rows
    text = cli(db, "stats", "--format", "table").output
    assert "taken over by a person: 5 conversations" in text


def test_the_takeover_figures_read_a_small_index(world):
    """Without a filter, the takeover figures read the partial index of taken-over
    conversations, never the whole table."""
    from syncer.takeovers import takeover_sql
    _, _, db, _ = world
    from syncer.query import Filters
    conn = sqlite3.connect(db)
    sql, args = takeover_sql(Filters())
    plan = " ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))
    assert "idx_conversations_takeover" in plan and "SCAN c\b" not in plan + "\b"
    conn.close()


# -- exports -----------------------------------------------------------------------------------
def test_csv_and_parquet_exports_carry_the_agent_columns(world, tmp_path):
    _, _, db, given = world
    text = cli(db, "export", "conversations", "--format", "csv").output
    header = text.splitlines()[0].split(",")
    assert [c for c in header if c in AGENT] == list(AGENT)
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "c.parquet"
    assert cli(db, "export", "conversations", "--format", "parquet", "-o", str(out)).exit_code == 0
    table = pq.read_table(out)
    assert str(table.schema.field("takeoverAt").type) == "timestamp[us, tz=UTC]"
    got = {r["id"]: r["agentMode"] for r in table.select(["id", "agentMode"]).to_pylist()}
    assert all(got[cid] == fields.get("agentMode") for cid, fields in given.items())


def test_the_change_feed_carries_the_agent_columns(world, tmp_path):
    _, _, db, given = world
    out = tmp_path / "feed"
    result = cli(db, "export", "conversations", "--changes", "wh", "--format", "jsonl",
                 "-o", str(out))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for f in sorted(out.rglob("*.jsonl"))
            for line in f.read_text().splitlines()]
    by_id = {r["id"]: r for r in rows}
    for cid, fields in given.items():
        assert {k: by_id[cid][k] for k in fields} == fields
