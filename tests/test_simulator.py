import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
import pytest

from syncer.simulator import Behaviour, SimulatorServer, Upstream, generate

KEY = "rt_test_simulator"
CONVERSATIONS = "/v1/messaging/conversations"
NULLABLE = ("externalParticipantId", "externalThreadId", "lastMessageAt", "participantEmail",
            "participantName", "subject", "timezone")


@pytest.fixture
def upstream():
    return generate(seed=1, conversations=60)


@pytest.fixture
def server(upstream):
    with SimulatorServer(upstream, Behaviour()) as server:
        yield server


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=5) as client:
        yield client


def instant(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def walk(client, **params):
    items, cursor, pages = [], None, 0
    while True:
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        response = client.get(CONVERSATIONS, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        items.extend(body["data"])
        pages += 1
        cursor = body["pagination"]["nextCursor"]
        if cursor is None:
            assert body["pagination"]["hasMore"] is False
            return items, pages


def test_auth(server, client):
    with httpx.Client(base_url=server.base_url) as anonymous:
        assert anonymous.get(CONVERSATIONS).status_code == 401
        for header in ("Token " + KEY, "Bearer", "Bearer rt_test_wrong", KEY):
            response = anonymous.get(CONVERSATIONS, headers={"Authorization": header})
            assert response.status_code == 401
            assert response.json()["error"] == "unauthorized"
    server.behaviour.forbidden = True
    response = client.get(CONVERSATIONS)
    assert (response.status_code, response.json()["error"]) == (403, "forbidden")


def test_walk_visits_every_conversation_once(upstream, client):
    items, pages = walk(client, status="all", limit=7)
    ids = [item["id"] for item in items]
    assert len(ids) == len(set(ids)) == 60
    assert set(ids) == set(upstream.conversation_ids())
    assert pages == 9
    first = client.get(CONVERSATIONS, params={"status": "all", "limit": 7,
                                              "includeCount": "true"}).json()["pagination"]
    assert first == {"currentOffset": 0, "hasMore": True, "hasPrev": False, "limit": 7,
                     "nextCursor": first["nextCursor"], "prevCursor": None, "currentPage": 1,
                     "totalCount": 60, "totalPages": 9}


@pytest.mark.parametrize("mode, include, counted", [
    ("on_request", None, False), ("on_request", "true", True), ("on_request", "false", False),
    ("always", None, True), ("never", "true", False)])
def test_count_mode(server, client, mode, include, counted):
    """The vendor's list counts only when asked (includeCount=true); older servers always
    counted, and a server may ignore the parameter."""
    server.behaviour.count_mode = mode
    params = {"status": "all", "limit": 7, **({"includeCount": include} if include else {})}
    pagination = client.get(CONVERSATIONS, params=params).json()["pagination"]
    assert ({"totalCount", "totalPages"} <= set(pagination)) == counted
    assert not ({"totalCount", "totalPages"} & set(pagination)) or counted
    if counted:
        assert (pagination["totalCount"], pagination["totalPages"]) == (60, 9)


def test_default_status_is_narrower(upstream, client, server):
    everything, _ = walk(client, status="all", limit=100)
    default, _ = walk(client, limit=100)
    assert {i["status"] for i in default} == {"open"}
    assert 0 < len(default) < len(everything)
    assert {i["status"] for i in everything} == {"open", "closed", "archived"}
    server.behaviour.default_status = "all"
    assert len(walk(client, limit=100)[0]) == 60


@pytest.mark.parametrize("order", ["updated_desc", "created_desc", "last_message_desc",
                                   "id_asc", "shuffled"])
def test_list_orders(server, client, order):
    server.behaviour.list_order = order
    items, _ = walk(client, status="all", limit=9)
    assert len({i["id"] for i in items}) == 60
    keys = {
        "updated_desc": lambda i: (instant(i["updatedAt"]), i["id"]),
        "created_desc": lambda i: (instant(i["createdAt"]), i["id"]),
        "last_message_desc": lambda i: (i["lastMessageAt"] is not None,
                                        instant(i["lastMessageAt"] or i["createdAt"]), i["id"]),
    }
    if order in keys:
        assert items == sorted(items, key=keys[order], reverse=True)
    elif order == "id_asc":
        assert [i["id"] for i in items] == sorted(i["id"] for i in items)
    else:
        assert items == walk(client, status="all", limit=13)[0]
        assert [i["id"] for i in items] != sorted(i["id"] for i in items)


def test_list_parameters(client):
    bad = client.get(CONVERSATIONS, params={"cursor": "not-a-cursor!"})
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_cursor")
    assert client.get(CONVERSATIONS, params={"limit": "ten"}).status_code == 400
    assert client.get(CONVERSATIONS, params={"status": "pending"}).status_code == 400
    page = client.get(CONVERSATIONS, params={"limit": 500, "status": "all"}).json()
    assert page["pagination"]["limit"] == 100 and len(page["data"]) == 60
    found = client.get(CONVERSATIONS, params={"search": "ADA LOVELACE", "status": "all"}).json()
    assert found["data"] and all(i["participantName"] == "Ada Lovelace" for i in found["data"])
    surface = client.get(CONVERSATIONS, params={"surfaceId": "surface_002", "status": "all"})
    assert {i["surfaceId"] for i in surface.json()["data"]} == {"surface_002"}


def test_detail_list_shapes_and_404(upstream, server, client):
    items, _ = walk(client, status="all", limit=100)
    assert not any("context" in i or "surface" in i for i in items)
    assert any("priorityScore" in i and "tags" in i for i in items)
    detail = client.get(f"{CONVERSATIONS}/{items[0]['id']}").json()
    assert {"context", "participantMetadata", "surface"} <= set(detail)
    assert set(detail["surface"]) == {"id", "name", "type"}
    missing = client.get(f"{CONVERSATIONS}/conv_missing")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    assert client.get(f"{CONVERSATIONS}/conv_missing/messages").status_code == 404
    server.behaviour.extra_fields = False
    stripped, _ = walk(client, status="all", limit=100)
    assert not any("priorityScore" in i for i in stripped)


def test_messages_cap_and_offset_paging(upstream, server, client):
    big = next(c for c in upstream.snapshot()[0] if c["messageCount"] > 100)
    path = f"{CONVERSATIONS}/{big['id']}/messages"
    truth = [m["id"] for m in upstream.messages_of(big["id"])]
    first = client.get(path).json()
    assert len(first["data"]) == 100 and first["totalCount"] == len(truth)
    assert [m["id"] for m in first["data"]] == truth[:100]
    assert client.get(path, params={"offset": 100}).json() == first  # paging "none"
    desc = client.get(path, params={"order": "desc", "limit": 500}).json()["data"]
    assert [m["id"] for m in desc] == truth[::-1][:100]
    assert client.get(path, params={"order": "sideways"}).status_code == 400
    server.behaviour.message_paging = "offset"
    seen, offset = [], 0
    while offset < len(truth):
        seen += [m["id"] for m in client.get(path, params={"offset": offset}).json()["data"]]
        offset += 100
    assert seen == truth


@pytest.mark.parametrize("style", ["z", "fraction", "offset", "mixed"])
def test_timestamp_styles_are_the_same_instant(upstream, server, client, style):
    upstream.subsecond = True
    upstream.create_conversation(subject="sub-second")
    server.behaviour.timestamp_style = style
    truth = {c["id"]: c for c in upstream.snapshot()[0]}
    items, _ = walk(client, status="all", limit=100)
    for item in items:
        for name in ("createdAt", "updatedAt", "lastMessageAt"):
            expected = truth[item["id"]][name]
            assert (item[name] is None) == (expected is None)
            if expected is not None:
                assert instant(item[name]) == instant(expected)
    if style == "mixed":
        assert {"Z" in i["updatedAt"] for i in items} == {True, False}


def test_rate_limit(server, client):
    server.behaviour.rate_limit = 3
    statuses = [client.get(CONVERSATIONS) for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert statuses[0].headers["X-RateLimit-Limit"] == "3"
    assert statuses[2].headers["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(statuses[3].headers["Retry-After"]) <= 10
    server.behaviour.retry_after_header = False
    assert "Retry-After" not in client.get(CONVERSATIONS).headers
    server.behaviour.rate_window = 0.2
    time.sleep(0.25)
    assert client.get(CONVERSATIONS).status_code == 200


def test_date_header_uses_server_clock(upstream, client):
    upstream.clock_skew = timedelta(days=-1)
    response = client.get(CONVERSATIONS)
    assert response.headers["Content-Type"] == "application/json"
    served = parsedate_to_datetime(response.headers["Date"])
    assert abs(served - (datetime.now(UTC) - timedelta(days=1))) < timedelta(seconds=5)


def test_request_log(server, client):
    items, pages = walk(client, status="all", limit=25)
    client.get(f"{CONVERSATIONS}/{items[0]['id']}/messages")
    assert server.count(CONVERSATIONS) == pages + 1
    assert server.count(f"{CONVERSATIONS}/", method="GET") == 1
    assert server.requests[0][:2] == ("GET", CONVERSATIONS)
    assert server.requests[0][3] == 200
    server.reset_log()
    assert server.count() == 0


def test_mutations(upstream, server, client):
    cid = upstream.conversation_ids()[5]
    before = upstream.get(cid)
    assert client.post(f"{CONVERSATIONS}/{cid}/messages", json={"content": "", "role": "user"}
                       ).status_code == 400
    created = client.post(f"{CONVERSATIONS}/{cid}/messages",
                          json={"content": "hello 👋", "role": "user"})
    assert created.status_code == 201 and created.json()["content"] == "hello 👋"
    after = upstream.get(cid)
    assert after["messageCount"] == before["messageCount"] + 1 == len(upstream.messages_of(cid))
    assert after["updatedAt"] == before["updatedAt"]  # message_bumps_updated is False
    server.behaviour.message_bumps_updated = True
    upstream.add_message(cid, "again")
    assert upstream.get(cid)["updatedAt"] == upstream.get(cid)["lastMessageAt"]
    assert client.put(f"{CONVERSATIONS}/{cid}", json={"status": "closed"}).json()["status"] == \
        "closed"
    new = client.post(CONVERSATIONS, json={"subject": "new one", "surfaceId": "surface_003"})
    assert new.status_code == 201 and new.json()["surface"]["type"] == "in_app"
    assert client.delete(f"{CONVERSATIONS}/{cid}").json() == {"success": True}
    assert upstream.get(cid) is None and len(upstream.conversation_ids()) == 60


def test_hook_shifts_offset_pages(upstream, server, client):
    before = [i["id"] for i in walk(client, status="all", limit=100)[0]]
    first = client.get(CONVERSATIONS, params={"status": "all", "limit": 10}).json()

    def delete_first(method, path, query):
        if "cursor" in query and server.behaviour.on_request is not None:
            server.behaviour.on_request = None
            upstream.delete_conversation(before[0])

    server.behaviour.on_request = delete_first
    second = client.get(CONVERSATIONS, params={"status": "all", "limit": 10,
                                               "cursor": first["pagination"]["nextCursor"]})
    walked = [i["id"] for i in first["data"] + second.json()["data"]]
    assert walked == before[:10] + before[11:21]  # the old 11th item was skipped


@pytest.mark.parametrize("kind", ["500", "503", "429", "429_no_retry_after", "invalid_json",
                                  "html_200", "drop", "timeout"])
def test_faults(server, client, kind):
    server.behaviour.fault_rate = 1.0
    server.behaviour.fault_kinds = (kind,)
    server.behaviour.fault_timeout_s = 0.5
    if kind == "drop":
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(CONVERSATIONS)
        return
    if kind == "timeout":
        with pytest.raises(httpx.ReadTimeout):
            client.get(CONVERSATIONS, timeout=0.2)
        return
    response = client.get(CONVERSATIONS)
    expected = {"500": 500, "503": 503, "429": 429, "429_no_retry_after": 429}
    assert response.status_code == expected.get(kind, 200)
    assert ("Retry-After" in response.headers) == (kind == "429")
    if kind in ("invalid_json", "html_200"):
        with pytest.raises(ValueError):
            response.json()


def test_generate_is_deterministic_and_varied():
    assert generate(seed=7).snapshot() == generate(seed=7).snapshot()
    assert generate(seed=7).snapshot() != generate(seed=8).snapshot()
    conversations, messages = generate(seed=3, conversations=80, big_conversations=3).snapshot()
    for name in NULLABLE:
        assert any(c[name] is None for c in conversations), name
    for name in ("direction", "externalMessageId", "flowStepResultId"):
        assert any(m[name] is None for m in messages), name
    counts = sorted(c["messageCount"] for c in conversations)
    assert counts[0] == 0 and sum(130 <= n <= 350 for n in counts) == 3
    assert sum(counts) == len(messages)
    assert all(c["createdAt"] < "2024-06-01" and c["updatedAt"] < "2024-06-01"
               for c in conversations)
    updated = [c["updatedAt"] for c in conversations]
    assert len(set(updated)) < len(updated) - 2
    assert all(c["updatedAt"].endswith(".000000Z") for c in conversations)
    text = " ".join(m["content"] for m in messages)
    for needle in ("don't", "C++", '"', "-", "é", "東京", "مرحبا", "🚀"):
        assert needle in text, needle
    assert any(len(m["content"]) > 3000 for m in messages)
    assert any("tags" in c for c in conversations) and any("reactions" in m for m in messages)
    assert {c["surfaceId"] for c in conversations} == {f"surface_00{i}" for i in range(1, 6)}


def test_requests_are_served_concurrently(server, client):
    """Eight requests that each wait, inside the server, for all eight to arrive: a server
    that served them one at a time would break the barrier (no timing involved)."""
    barrier = threading.Barrier(8, timeout=30)
    met = []

    def wait_for_the_others(method, path, query):
        met.append(barrier.wait() >= 0)
    server.behaviour.on_request = wait_for_the_others
    statuses = []

    def one():
        with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as own:
            statuses.append(own.get(server.base_url + CONVERSATIONS).status_code)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    server.behaviour.on_request = None
    assert met == [True] * 8
    assert statuses == [200] * 8


def test_keep_alive_is_fast(client):
    began = time.monotonic()
    for _ in range(100):
        assert client.get(CONVERSATIONS, params={"limit": 1}).status_code == 200
    assert time.monotonic() - began < 2.0


def test_upstream_snapshot_is_a_copy():
    upstream = Upstream()
    created = upstream.create_conversation(subject="x", context={"a": 1})
    assert created["createdAt"].endswith("Z") and len(created["createdAt"]) == 27
    conversations, _ = upstream.snapshot()
    conversations[0]["context"]["a"] = 2
    assert upstream.get(created["id"])["context"] == {"a": 1}
    with pytest.raises(KeyError):
        upstream.delete_conversation("conv_missing")
