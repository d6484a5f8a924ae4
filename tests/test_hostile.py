"""Malformed and hostile answers: each ends with a clear message, a bounded number of
requests, and no corruption of the mirror."""
import json
import sqlite3

import pytest
from hostile import HostileServer, conversation, message, page
from support import fts_ok

from syncer.config import Settings
from syncer.runner import run_sync

LIST = "/v1/messaging/conversations"
KEY = "rt_test_hostile_key"


def settings(server, db, **kw):
    values = dict(base_url=server.base_url, api_key=KEY, db_path=str(db), concurrency=2,
                  max_retries=2, timeout=2.0)
    values.update(kw)
    return Settings(**values)


def serve(records, messages=None, list_page=None, detail=None):
    """A server over `records` (one list page unless list_page says otherwise)."""
    by_id = {r["id"]: r for r in records}
    messages = messages or {}

    def respond(path, query):
        if path == LIST:
            return list_page(query) if list_page else (200, {}, page(records))
        cid = path[len(LIST) + 1:].split("/")[0]
        from urllib.parse import unquote
        cid = unquote(cid)
        if path.endswith("/messages"):
            return 200, {}, {"data": messages.get(cid, []), "totalCount": len(messages.get(cid, []))}
        if detail:
            return detail(cid)
        return (200, {}, by_id[cid]) if cid in by_id else (404, {}, {"error": "not_found"})
    return HostileServer(respond)


def rows(db, sql):
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_repeating_cursor_stops_with_a_clear_error(tmp_path):
    recs = [conversation("c1", 0)]
    with serve(recs, list_page=lambda q: (200, {}, page(recs, next_cursor="same"))) as s:
        summary = run_sync(settings(s, tmp_path / "m.db"))
    assert summary.outcome == "failed" and summary.exit_code == 1
    assert "repeated a cursor" in summary.error
    assert s.count(LIST) <= 3 + 2   # two list pages, plus the fetch of c1


def test_cycling_cursor_stops(tmp_path):
    recs = [conversation("c1", 0)]
    cycle = {None: "A", "A": "B", "B": "A"}
    with serve(recs, list_page=lambda q: (200, {}, page(recs, cycle[q.get("cursor")]))) as s:
        summary = run_sync(settings(s, tmp_path / "m.db"))
    assert summary.outcome == "failed" and "repeated a cursor" in summary.error
    assert sum(1 for p, _, _ in s.requests if p == LIST) == 3


def test_has_more_with_empty_pages_forever_is_bounded_and_not_complete(tmp_path):
    recs = [conversation("c1", 0)]

    def forever(q):
        n = int(q.get("cursor", "0"))
        return 200, {}, page(recs if n == 0 else [], next_cursor=str(n + 1), has_more=True)
    with serve(recs, list_page=forever) as s:
        summary = run_sync(settings(s, tmp_path / "m.db"), full=True)
        assert sum(1 for p, _, _ in s.requests if p == LIST) == 2
        assert summary.outcome == "partial" and summary.watermark is None
        assert rows(tmp_path / "m.db", "SELECT id FROM conversations") == [("c1",)]
        # the next run does not trust that walk: it walks again from the start
        again = run_sync(settings(s, tmp_path / "m.db"))
        assert again.outcome == "partial" and again.counts["pages"] == 2
        assert sum(1 for p, _, _ in s.requests if p == LIST) == 4


def test_endless_distinct_cursors_are_bounded_by_the_announced_total(tmp_path):
    def endless(q):
        n = int(q.get("cursor", "0"))
        return 200, {}, page([conversation(f"c{n}", 0)], next_cursor=str(n + 1), total=3)
    with serve([], list_page=endless, detail=lambda cid: (200, {}, conversation(cid, 0))) as s:
        summary = run_sync(settings(s, tmp_path / "m.db", page_size=1))
    assert summary.outcome == "failed" and "far past" in summary.error
    assert sum(1 for p, _, _ in s.requests if p == LIST) <= 20


def test_same_id_twice_in_a_page_is_stored_once(tmp_path):
    recs = [conversation("c1", 1), conversation("c1", 1), conversation("c2", 0)]
    with serve(recs[1:], messages={"c1": [message("c1", 1)]},
               list_page=lambda q: (200, {}, page(recs))) as s:
        summary = run_sync(settings(s, tmp_path / "m.db"))
    assert summary.outcome == "ok"
    assert rows(tmp_path / "m.db", "SELECT id FROM conversations ORDER BY id") == [("c1",), ("c2",)]
    assert rows(tmp_path / "m.db", "SELECT count(*) FROM messages") == [(1,)]


def test_message_list_ignoring_limit_with_10000_items(tmp_path):
    msgs = [message("big", n) for n in range(10_000)]
    with serve([conversation("big", 10_000)], messages={"big": msgs}) as s:
        summary = run_sync(settings(s, tmp_path / "m.db"))
    assert summary.outcome == "ok"
    assert rows(tmp_path / "m.db", "SELECT count(*), count(DISTINCT id) FROM messages") == \
        [(10_000, 10_000)]
    assert s.count(LIST + "/big/messages") == 1
    assert fts_ok(tmp_path / "m.db")


def test_a_message_over_the_size_limit_alone_is_a_gap_not_a_failure(tmp_path):
    """Asked again with limit=1, the answer is still over the limit: that one message cannot
    be read. The conversation is mirrored with it as a gap, and the run goes on."""
    huge = "x" * (2 * 1024 * 1024)
    with serve([conversation("c1", 1)], messages={"c1": [message("c1", 1, content=huge)]}) as s:
        summary = run_sync(settings(s, tmp_path / "m.db", max_response_bytes=1024 * 1024))
    assert summary.outcome == "ok" and summary.counts["messages_oversized"] == 1
    assert s.count(LIST + "/c1/messages") == 2          # limit=100, then limit=1
    assert rows(tmp_path / "m.db", "SELECT id FROM _sync_queue") == []
    assert rows(tmp_path / "m.db", "SELECT id, _messages_held, _messages_missing "
                                   "FROM conversations") == [("c1", 0, 1)]


def test_an_answer_cut_off_at_the_limit_is_asked_again_smaller(tmp_path):
    """Without a Content-Length the answer is read until the limit: then halved."""
    big = "y" * (300 * 1024)
    msgs = [message("c1", n, content=big) for n in range(6)]
    records = [conversation("c1", 6)]

    def respond(path, query):
        if path == LIST:
            return 200, {}, page(records)
        if path.endswith("/messages"):
            served = msgs[::-1] if query.get("order") == "desc" else msgs
            start = int(query.get("offset", 0))
            return 200, {"Content-Length": ""}, {
                "data": served[start:start + int(query["limit"])]}
        return 200, {}, records[0]
    with HostileServer(respond) as s:
        summary = run_sync(settings(s, tmp_path / "m.db", max_response_bytes=1024 * 1024))
    assert summary.outcome == "ok" and summary.gaps == []
    assert rows(tmp_path / "m.db", "SELECT count(*) FROM messages") == [(6,)]
    limits = [int(q["limit"]) for path, q, _ in s.requests if path.endswith("/messages")]
    assert limits[:3] == [100, 3, 3]    # 6 served of 6 asked: half; then twice that, cut


def test_five_megabyte_message_is_stored_whole(tmp_path):
    text = "word " * (1024 * 1024)
    with serve([conversation("c1", 1)], messages={"c1": [message("c1", 1, content=text)]}) as s:
        assert run_sync(settings(s, tmp_path / "m.db")).outcome == "ok"
    assert rows(tmp_path / "m.db", "SELECT length(content) FROM messages") == [(len(text),)]


def test_deeply_nested_json_fails_that_conversation_only(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    body = '{"data": [{"id": "m1", "conversationId": "c1", "role": "user", "content": "x", ' \
           '"createdAt": "2024-06-10T09:00:00Z", "metadata": {"k": ' + deep + '}}], "totalCount": 1}'

    def respond_messages(cid):
        return 200, {}, conversation(cid, 1)
    recs = [conversation("c1", 1), conversation("c2", 0)]
    server = serve(recs, detail=respond_messages)
    original = server.respond
    server.respond = lambda path, q: (200, {}, body) if path.endswith("c1/messages") \
        else original(path, q)
    with server as s:
        summary = run_sync(settings(s, tmp_path / "m.db"))
    assert summary.outcome == "partial" and summary.counts["conversations_failed"] == 1
    assert "nested too deeply" in rows(tmp_path / "m.db", "SELECT last_error FROM _sync_queue")[0][0]
    assert rows(tmp_path / "m.db", "SELECT id FROM conversations") == [("c2",)]


def test_nul_and_lone_surrogates_in_text(tmp_path):
    body = ('{"data": [{"id": "m1", "conversationId": "c1", "role": "user", '
            '"content": "nul\\u0000here and \\ud800 lone", "createdAt": "2024-06-10T09:00:00Z"}],'
            ' "totalCount": 1}')
    server = serve([conversation("c1", 1)])
    original = server.respond
    server.respond = lambda path, q: (200, {}, body) if path.endswith("/messages") \
        else original(path, q)
    with server as s:
        assert run_sync(settings(s, tmp_path / "m.db")).outcome == "ok"
    assert rows(tmp_path / "m.db", "SELECT content FROM messages") == \
        [("nul\x00here and \ufffd lone",)]
    assert fts_ok(tmp_path / "m.db")


@pytest.mark.parametrize("cid", ["conv_\"quoted\"", "a/b/c", "..", ".", "x'; DROP TABLE messages;--",
                                 "conv?x=1&y=2#frag", "ünï cödé 💬"])
def test_hostile_ids_are_fetched_by_their_own_path_and_stored_verbatim(tmp_path, cid):
    with serve([conversation(cid, 1)], messages={cid: [message(cid, 1)]}) as s:
        summary = run_sync(settings(s, tmp_path / "m.db"))
    assert summary.outcome == "ok", summary.error
    assert rows(tmp_path / "m.db", "SELECT id FROM conversations") == [(cid,)]
    assert rows(tmp_path / "m.db", "SELECT conversationId FROM messages") == [(cid,)]
    assert all(p.startswith(LIST) for p, _, _ in s.requests)
    assert rows(tmp_path / "m.db", "SELECT count(*) FROM sqlite_master WHERE name='messages'") == [(1,)]


def test_far_future_1970_and_unparsable_timestamps(tmp_path):
    recs = [conversation("future", 0, updated="9999-12-31T23:59:59Z"),
            conversation("epoch", 0, updated="1970-01-01T00:00:00+00:00"),
            conversation("junk", 0, updated="yesterday at noon"),
            conversation("y10k", 0, updated="10000-01-01T00:00:00Z")]
    with serve(recs) as s:
        summary = run_sync(settings(s, tmp_path / "m.db"))
    assert rows(tmp_path / "m.db", "SELECT id, updatedAt FROM conversations ORDER BY updatedAt") \
        == [("epoch", "1970-01-01T00:00:00.000000Z"), ("future", "9999-12-31T23:59:59.000000Z")]
    assert {r[0] for r in rows(tmp_path / "m.db", "SELECT record_id FROM _rejects")} == \
        {"junk", "y10k"}
    assert summary.counts["rejects"] == 2
    assert summary.exit_code == 1 and summary.watermark is None   # the mirror lacks two
    # the watermark never passes the server's clock, whatever the records claim
    with serve(recs[:2]) as s:
        summary = run_sync(settings(s, tmp_path / "other.db"))
    assert summary.exit_code == 0 and summary.watermark < "2100"


@pytest.mark.parametrize("count", [-1, 2.5, "3", None, True])
def test_bad_message_counts_are_rejected(tmp_path, count):
    recs = [conversation("bad", 0, messageCount=count), conversation("good", 0)]
    with serve(recs) as s:
        summary = run_sync(settings(s, tmp_path / "m.db"))
    assert rows(tmp_path / "m.db", "SELECT id FROM conversations") == [("good",)]
    assert rows(tmp_path / "m.db", "SELECT record_id FROM _rejects") == [("bad",)]
    assert summary.counts["rejects"] == 1


def test_redirect_to_another_host_is_not_followed_and_the_key_stays(tmp_path):
    with HostileServer(lambda p, q: (200, {}, page([]))) as elsewhere:
        target = elsewhere.base_url.replace("127.0.0.1", "localhost") + LIST
        with HostileServer(lambda p, q: (302, {"Location": target}, "")) as s:
            summary = run_sync(settings(s, tmp_path / "m.db"))
        assert elsewhere.requests == []
    assert summary.outcome == "failed" and "redirected (302) to localhost" in summary.error
    assert "not followed" in summary.error and KEY not in summary.error


def test_html_page_with_status_200_is_retried_then_reported(tmp_path):
    html = "<html><body><h1>Service temporarily unavailable</h1></body></html>"
    with HostileServer(lambda p, q: (200, {"Content-Type": "text/html"}, html)) as s:
        summary = run_sync(settings(s, tmp_path / "m.db", max_retries=2))
    assert summary.outcome == "failed"
    assert "not valid JSON (text/html)" in summary.error and "gave up after 3" in summary.error
    assert len(s.requests) == 3


def test_key_is_sent_only_as_bearer_header(tmp_path):
    with serve([conversation("c1", 0)]) as s:
        run_sync(settings(s, tmp_path / "m.db"))
    for path, query, headers in s.requests:
        assert headers["Authorization"] == f"Bearer {KEY}"
        assert KEY not in path and KEY not in json.dumps(query)
        assert headers["User-Agent"].startswith("syncer/")


def _paged_messages(cid, total, mode):
    """A server with `total` messages in conversation `cid` whose message list pages by
    `mode`: 'cursor' (pagination.nextCursor), 'reject' (400 on any offset), 'none'."""
    msgs = [message(cid, n) for n in range(total)]

    def respond(path, query):
        if path == LIST:
            return 200, {}, page([conversation(cid, total)])
        if not path.endswith("/messages"):
            return 200, {}, conversation(cid, total)
        ordered = msgs[::-1] if query.get("order") == "desc" else msgs
        if mode == "reject" and "offset" in query:
            return 400, {}, {"error": "unknown parameter offset"}
        start = int(query.get("cursor", "0")) if mode == "cursor" else 0
        chunk = ordered[start:start + 100]
        more = mode == "cursor" and start + 100 < total
        return 200, {}, {"data": chunk, "totalCount": total,
                         "pagination": {"hasMore": more,
                                        "nextCursor": str(start + 100) if more else None}}
    return HostileServer(respond)


def test_messages_paged_by_cursor_are_read_whole(tmp_path):
    with _paged_messages("c1", 345, "cursor") as s:
        summary = run_sync(settings(s, tmp_path / "m.db"))
    assert summary.outcome == "ok" and summary.gaps == []
    assert rows(tmp_path / "m.db", "SELECT count(DISTINCT id), count(*) FROM messages") == \
        [(345, 345)]
    assert s.count(LIST + "/c1/messages") == 4


def test_offset_refused_with_400_leaves_a_recorded_gap_not_a_failure(tmp_path):
    with _paged_messages("c1", 345, "reject") as s:
        summary = run_sync(settings(s, tmp_path / "m.db"))
    assert summary.outcome == "ok"
    assert [(cid, count, held) for cid, count, held in summary.gaps] == [("c1", 345, 200)]
    assert rows(tmp_path / "m.db", "SELECT _messages_missing FROM conversations") == [(145,)]


def test_detail_wrapped_in_data_and_has_more_absent(tmp_path):
    recs = [conversation("c1", 0), conversation("c2", 0)]

    def list_page(q):
        first = q.get("cursor") is None
        body = page([recs[0]] if first else [recs[1]], next_cursor="p2" if first else None)
        del body["pagination"]["hasMore"]
        return 200, {}, body
    by_id = {r["id"]: r for r in recs}
    with serve(recs, list_page=list_page,
               detail=lambda cid: (200, {}, {"data": by_id[cid]})) as s:
        summary = run_sync(settings(s, tmp_path / "m.db"))
    assert summary.outcome == "ok"
    assert rows(tmp_path / "m.db", "SELECT id FROM conversations ORDER BY id") == [("c1",), ("c2",)]


def test_message_id_reused_across_conversations_takes_the_careful_path(tmp_path):
    """Message ids are the primary key. A server that reuses one in another conversation
    cannot be mirrored as two rows; the new conversation's fast insert falls back to the
    upsert, which keeps the full-text index in step."""
    shared = message("a", 1)
    msgs = {"a": [shared], "b": [dict(shared, conversationId="b"), message("b", 2)]}
    with serve([conversation("a", 1), conversation("b", 2)], messages=msgs) as s:
        summary = run_sync(settings(s, tmp_path / "m.db", concurrency=1))
    assert summary.outcome == "ok"
    assert rows(tmp_path / "m.db", "SELECT count(*) FROM messages") == [(2,)]
    assert fts_ok(tmp_path / "m.db")
    conn = sqlite3.connect(tmp_path / "m.db")
    fts_rows = conn.execute("SELECT count(*) FROM messages_fts WHERE messages_fts MATCH "
                            "'message'").fetchone()[0]
    assert fts_rows == 2


def test_new_message_in_the_same_second_as_the_newest_held_is_not_missed(tmp_path):
    """A conversation whose gap is recorded reads only new messages; a new one stamped in the
    same second as the newest held, but listed after it, is still found."""
    m1 = message("c1", 1, createdAt="2024-06-10T09:00:00Z")
    m2 = message("c1", 2, createdAt="2024-06-10T09:00:05Z")
    m0 = dict(message("c1", 0, createdAt="2024-06-10T09:00:05Z"), content="same second")
    served = {"c1": [m2, m1]}                   # desc; the server claims 5 but serves 2
    state = {"count": 5}

    def respond(path, query):
        if path == LIST:
            return 200, {}, page([conversation("c1", state["count"])])
        if path.endswith("/messages"):
            data = served["c1"] if query.get("order") == "desc" else served["c1"][::-1]
            return 200, {}, {"data": data, "totalCount": len(data)}
        return 200, {}, conversation("c1", state["count"])
    with HostileServer(respond) as s:
        db = tmp_path / "m.db"
        first = run_sync(settings(s, db))
        assert [(cid, count, held) for cid, count, held in first.gaps] == [("c1", 5, 2)]
        served["c1"] = [m2, m0, m1]             # the tie listed after the newest held
        state["count"] = 6
        second = run_sync(settings(s, db))
    assert second.counts["messages_written"] == 1
    assert rows(db, "SELECT content FROM messages ORDER BY createdAt, id") == [
        ("message 1",), ("same second",), ("message 2",)]


def test_a_conversation_missed_by_the_walk_is_tombstoned_only_on_a_404(tmp_path):
    listed = {"ids": ["c1", "c2"]}
    failing = {"detail": False}

    def respond(path, query):
        if path == LIST:
            return 200, {}, page([conversation(cid, 0) for cid in listed["ids"]])
        if failing["detail"]:
            return 503, {}, {"error": "unavailable"}
        return 200, {}, conversation(path.rsplit("/", 1)[1], 0)
    with HostileServer(respond) as s:
        db = tmp_path / "m.db"
        assert run_sync(settings(s, db)).outcome == "ok"
        listed["ids"] = ["c2"]                  # c1 missing from the walk ...
        failing["detail"] = True                # ... and its existence cannot be checked
        summary = run_sync(settings(s, db, max_retries=1), full=True)
    assert summary.outcome == "partial" and summary.counts["conversations_deleted"] == 0
    assert rows(db, "SELECT id, _deleted_at FROM conversations ORDER BY id") == [
        ("c1", None), ("c2", None)]
    assert rows(db, "SELECT conversations_failed FROM _sync_runs ORDER BY id DESC LIMIT 1") == \
        [(1,)]
