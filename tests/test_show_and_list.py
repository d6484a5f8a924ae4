"""`syncer show` and `syncer conversations`; read commands on missing or foreign databases."""
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from support import build_mirror, dict_rows

from syncer.cli import main
from syncer.query import SORTS, Filters, QueryError, conversations
from syncer.store import Store

READ_COMMANDS = [["search", "refund"], ["show", "conv_x"], ["conversations"], ["stats"],
                 ["export", "messages"]]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return build_mirror(tmp_path_factory.mktemp("show") / "mirror.db", seed=5,
                        conversations=80, delete=3)


rows = dict_rows


def public(row: dict) -> dict:
    out = {k: v for k, v in row.items() if k not in ("_raw", "_list_sig")}
    for name in ("context", "participantMetadata", "surface", "metadata"):
        if out.get(name) is not None:
            out[name] = json.loads(out[name])
    return out


def cli(db, *args):
    return CliRunner().invoke(main, ["--db", db, *args])


def test_show_json_is_the_conversation_with_its_messages(db):
    conv = rows(db, "SELECT * FROM conversations ORDER BY messageCount DESC LIMIT 1")[0]
    messages = rows(db, "SELECT * FROM messages WHERE conversationId = ? "
                        "ORDER BY createdAt, id", (conv["id"],))
    result = cli(db, "show", conv["id"], "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == dict(public(conv), messages=[public(m) for m in messages])


def test_show_table(db):
    conv = rows(db, "SELECT * FROM conversations WHERE _deleted_at IS NOT NULL")[0]
    messages = rows(db, "SELECT * FROM messages WHERE conversationId = ? ORDER BY createdAt, id",
                    (conv["id"],))
    text = cli(db, "show", conv["id"], "--format", "table").output
    assert text.splitlines()[0] == (conv["subject"] or "(no subject)")
    assert "DELETED upstream" in text and conv["status"] in text
    roles = [line.split("] ")[1] for line in text.splitlines() if line.startswith("[")]
    assert roles == [f"{m['role']}:" for m in messages]


def test_show_unknown_conversation(db):
    result = cli(db, "show", "conv_nope")
    assert (result.exit_code, result.output) == (1, "error: no conversation conv_nope in the "
                                                    "mirror\n")


def expected(db, keep=lambda c: True, include_deleted=False, sort="updated"):
    key = {"updated": "updatedAt", "created": "createdAt", "last-message": "lastMessageAt",
           "messages": "messageCount"}[sort]
    convs = [c for c in rows(db, "SELECT * FROM conversations")
             if (include_deleted or not c["_deleted_at"]) and keep(c)]
    convs.sort(key=lambda c: c["id"])
    convs.sort(key=lambda c: (c[key] is not None, c[key]), reverse=True)
    return [c["id"] for c in convs]


@pytest.mark.parametrize("sort", list(SORTS))
def test_list_sorts(db, sort):
    with _store(db) as store:
        got = [c["id"] for c in conversations(store, sort=sort, limit=None)]
    assert got == expected(db, sort=sort)


class _store:
    def __init__(self, db):
        self.store = Store.open_readonly(db)

    def __enter__(self):
        return self.store

    def __exit__(self, *exc):
        self.store.close()


FILTERS = {
    "status": (Filters(status=("archived",)), lambda c: c["status"] == "archived"),
    "surface": (Filters(surface=("sms",)), lambda c: c["surfaceId"] == "surface_005"),
    "since": (Filters(since="2024-05-01T00:00:00.000000Z"),
              lambda c: c["updatedAt"] >= "2024-05-01"),
    "until": (Filters(until="2024-01-01T00:00:00.000000Z"),
              lambda c: c["updatedAt"] < "2024-01-01"),
    "participant": (Filters(participant="ada"),
                    lambda c: "ada" in (c["participantName"] or "").lower()
                    or "ada" in (c["participantEmail"] or "").lower()),
    "role": (Filters(role=("assistant",)), "assistant"),
}


@pytest.mark.parametrize("name", FILTERS)
def test_list_filters(db, name):
    filters, keep = FILTERS[name]
    if isinstance(keep, str):
        having = {r["conversationId"] for r in rows(db, "SELECT conversationId FROM messages "
                                                        "WHERE role = ?", (keep,))}
        keep = lambda c: c["id"] in having  # noqa: E731
    with _store(db) as store:
        got = [c["id"] for c in conversations(store, filters, limit=None)]
    assert got == expected(db, keep) and got


def test_list_deleted_limit_offset_and_conversation(db):
    with _store(db) as store:
        everything = expected(db, include_deleted=True)
        assert [c["id"] for c in conversations(store, Filters(include_deleted=True),
                                                limit=None)] == everything
        assert len(everything) == len(expected(db)) + 1
        assert [c["id"] for c in conversations(store, limit=5, offset=10)] == \
            expected(db)[10:15]
        one = everything[7]
        assert [c["id"] for c in conversations(store, Filters(conversation=one,
                                                              include_deleted=True))] == [one]
        with pytest.raises(QueryError):
            conversations(store, sort="nope")


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "table"])
def test_list_formats(db, fmt):
    result = cli(db, "conversations", "--limit", "4", "--sort", "created", "--format", fmt)
    assert result.exit_code == 0, result.output
    ids = expected(db, sort="created")[:4]
    if fmt == "json":
        assert [c["id"] for c in json.loads(result.output)] == ids
    elif fmt == "jsonl":
        assert [json.loads(line)["id"] for line in result.output.splitlines()] == ids
    else:
        lines = result.output.splitlines()
        assert [line.split(",")[0].split()[0] for line in lines[1:]] == ids
        assert lines[0].split(",")[0].split()[0] == "id"


def digest(path):
    """The database file's bytes and any non-empty WAL (opening a WAL database read-only may
    leave an empty -wal and a -shm behind; neither holds data)."""
    files = [Path(path), Path(f"{path}-wal")]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files if p.exists() and p.stat().st_size}


@pytest.mark.parametrize("args", READ_COMMANDS)
def test_missing_database_is_exit_2_and_never_created(tmp_path, args):
    path = tmp_path / "none.db"
    result = cli(str(path), *args)
    assert result.exit_code == 2
    assert result.output.startswith("error: no database at") and not path.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", READ_COMMANDS)
def test_foreign_database_is_exit_2_and_untouched(tmp_path, args):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE messages (id TEXT)")
    conn.commit()
    conn.close()
    before = digest(path)
    result = cli(str(path), *args)
    assert (result.exit_code, result.output) == (2, f"error: {path} was not made by syncer\n")
    assert digest(path) == before


@pytest.mark.parametrize("args", READ_COMMANDS[:4] + [["export", "messages", "--format",
                                                       "jsonl"]])
def test_read_commands_leave_the_mirror_unchanged(db, args):
    cid = rows(db, "SELECT id FROM conversations LIMIT 1")[0]["id"]
    args = [cid if a == "conv_x" else a for a in args]
    before = digest(db)
    result = cli(db, *args)
    assert result.exit_code == 0, result.output
    assert digest(db) == before


@pytest.mark.parametrize("command", ["search", "show", "conversations", "stats", "export"])
def test_every_read_command_has_help(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert len(main.commands[command].help or "") > 30
    for param in main.commands[command].params:
        if isinstance(param, __import__("click").Option):
            assert param.help, (command, param.name)
