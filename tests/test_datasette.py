"""The mirror as it is works in Datasette: tables, full-text search in the UI and JSON API."""
import asyncio
import hashlib
import sqlite3
from pathlib import Path

import pytest
from datasette.app import Datasette

from syncer.config import Settings
from syncer.query import Filters, search
from syncer.runner import run_sync
from syncer.simulator import Behaviour, SimulatorServer, generate
from syncer.store import Store

# No metadata: the FTS tables are declared `content="messages"`, the form Datasette (and
# sqlite-utils) detect on their own.


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("datasette") / "mirror.db")
    upstream = generate(seed=17, conversations=60)
    with SimulatorServer(upstream, Behaviour()) as server:
        run_sync(Settings(base_url=server.base_url, api_key="rt_test_simulator", db_path=path,
                          concurrency=4))
    return path


def get_all(db, *paths):
    async def run():
        ds = Datasette([db])
        await ds.invoke_startup()
        return [await ds.client.get(p) for p in paths]
    return asyncio.run(run())


def ids_in(db, table, where="1"):
    conn = sqlite3.connect(db)
    out = {r[0] for r in conn.execute(f"SELECT id FROM {table} WHERE {where}")}
    conn.close()
    return out


def test_tables_browse_and_search_through_the_json_api(db):
    store = Store.open_readonly(db)
    ours = {h["id"] for h in search(store, "refund", Filters(include_deleted=True),
                                    limit=10_000, scope="messages")}
    subjects = {h["id"] for h in search(store, "refund", limit=10_000, scope="conversations")}
    store.close()
    tables, hits, conversations, page = get_all(
        db, "/mirror.json",
        "/mirror/messages.json?_search=refund&_shape=array&_size=max&_col=id",
        "/mirror/conversations.json?_search=refund&_shape=array&_size=max&_col=id",
        "/mirror/messages?_search=café")
    assert tables.status_code == 200
    names = {t["name"] for t in tables.json()["tables"]}
    assert {"conversations", "messages", "messages_fts", "conversations_fts"} <= names
    assert hits.status_code == 200, hits.text
    assert {r["id"] for r in hits.json()} == ours and ours
    assert {r["id"] for r in conversations.json()} == subjects and subjects
    assert page.status_code == 200
    assert 'name="_search"' in page.text and "café" in page.text


def test_datasette_leaves_the_file_unchanged(db):
    before = hashlib.sha256(Path(db).read_bytes()).hexdigest()
    (response,) = get_all(db, "/mirror/messages.json?_search=thanks")
    assert response.status_code == 200
    assert hashlib.sha256(Path(db).read_bytes()).hexdigest() == before


def test_fts_works_in_plain_sqlite(db):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    got = {r[0] for r in conn.execute(
        "SELECT m.id FROM messages_fts JOIN messages m ON m.rowid = messages_fts.rowid "
        "WHERE messages_fts MATCH 'refund'")}
    conn.close()
    assert got == ids_in(db, "messages", "id IN (SELECT id FROM messages WHERE "
                                         "' ' || lower(content) || ' ' LIKE '%refund%')")
