"""Datasette with syncer's metadata (`syncer serve`): the canned search ranks like
`syncer search --exact`, its filters keep what ours keep, the tables offer facets on status,
surface and role, and the thread view lists a conversation as `syncer show` does."""
import asyncio
import json

import pytest
from click.testing import CliRunner
from datasette.app import Datasette
from support import build_mirror, dict_rows

from syncer import serve
from syncer.cli import main
from syncer.query import Filters, Scoring, search, show
from syncer.store import Store


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return build_mirror(tmp_path_factory.mktemp("serve") / "mirror.db", seed=23,
                        conversations=80, delete=3)


def get_all(db, *paths):
    async def run():
        ds = Datasette([db], metadata=serve.metadata("mirror"))
        await ds.invoke_startup()
        return [await ds.client.get(p) for p in paths]
    return asyncio.run(run())


def ours(db, words, filters=Filters()):
    store = Store.open_readonly(db)
    try:
        return [h["id"] for h in search(store, words, filters, limit=200, scope="messages",
                                        scoring=Scoring(exact=True))]
    finally:
        store.close()


@pytest.mark.parametrize("words", ["refund", "thanks order", "don't"])
def test_canned_search_is_ranked_like_syncer_search(db, words):
    (response,) = get_all(db, f"/mirror/search.json?q={words}&status=&surface=&role="
                              "&_shape=array")
    assert response.status_code == 200, response.text
    got = [r["id"] for r in response.json()]
    assert got == ours(db, words) and len(got) > 1


@pytest.mark.parametrize("param, filters", [
    ("status=open", Filters(status=("open",))),
    ("surface=email", Filters(surface=("email",))),
    ("surface=surface_001", Filters(surface=("surface_001",))),
    ("role=user", Filters(role=("user",))),
])
def test_canned_search_filters_keep_what_ours_keep(db, param, filters):
    blank = {"status": "", "surface": "", "role": ""}
    key, value = param.split("=")
    query = "&".join(f"{k}={value if k == key else v}" for k, v in blank.items())
    (response,) = get_all(db, f"/mirror/search.json?q=refund&{query}&_shape=array")
    assert response.status_code == 200, response.text
    got = [r["id"] for r in response.json()]
    assert got == ours(db, "refund", filters) and got


def test_tables_offer_facets_on_status_surface_and_role(db):
    messages, conversations = get_all(db, "/mirror/messages.json?_search=refund",
                                      "/mirror/conversations.json")
    assert {"role", "direction"} <= set(messages.json()["facet_results"])
    assert {"status", "surfaceId"} <= set(conversations.json()["facet_results"])


def test_thread_view_lists_a_conversation_in_order(db):
    cid = dict_rows(db, "SELECT conversationId FROM messages GROUP BY 1 "
                        "ORDER BY count(*) DESC LIMIT 1")[0]["conversationId"]
    (response,) = get_all(db, f"/mirror/thread.json?conversation={cid}&_shape=array")
    store = Store.open_readonly(db)
    try:
        want = [m["id"] for m in show(store, cid)["messages"]]
    finally:
        store.close()
    assert [r["id"] for r in response.json()] == want and len(want) > 1


def test_serve_prints_the_metadata_for_the_file(db):
    result = CliRunner().invoke(main, ["--db", db, "serve", "--metadata"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == serve.metadata("mirror")


def test_serve_refuses_a_missing_mirror(tmp_path):
    result = CliRunner().invoke(main, ["--db", str(tmp_path / "none.db"), "serve"])
    assert result.exit_code == 2 and "no database" in result.output
    assert not (tmp_path / "none.db").exists()
