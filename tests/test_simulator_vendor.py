"""The simulator's shapes from the vendor's SDK: agent mode and takeovers, messages whose delivery
status changes, the list's agentMode filter, and every RFC 3339 spelling of a timestamp."""
import hashlib
import json
import re
from datetime import datetime

import httpx
import pytest

from syncer.simulator import Behaviour, SimulatorServer, Upstream, generate
from syncer.simulator.behaviour import TIMESTAMP_STYLES
from syncer.simulator.timestamps import render_ts

KEY = "rt_test_simulator"
CONVERSATIONS = "/v1/messaging/conversations"
TAKEOVER = ("agentMode", "takeoverActorId", "takeoverActorType", "takeoverAt", "takeoverReason")
VENDOR_METADATA = ("deliveryStatus", "deliveryError", "externalTimestamp", "attachments")
CANONICAL = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


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
    """RFC 3339 text → aware datetime (lowercase t/z and long fractions allowed)."""
    return datetime.fromisoformat(text.upper().replace("Z", "+00:00"))


def every_conversation(client, **params):
    page = client.get(CONVERSATIONS, params={"status": "all", "limit": 100, **params})
    assert page.status_code == 200, page.text
    return page.json()["data"]


def human(upstream):
    return [c for c in upstream.snapshot()[0] if c["agentMode"] == "human"]


def test_generated_takeovers():
    conversations, messages = generate(seed=3, conversations=200).snapshot()
    taken = [c for c in conversations if c["agentMode"] == "human"]
    assert 0.08 < len(taken) / len(conversations) < 0.25
    assert {c["agentMode"] for c in conversations} == {"auto", "human"}
    first = {}
    for m in messages:
        first.setdefault(m["conversationId"], m["createdAt"])
    for c in conversations:
        if c["agentMode"] == "auto":
            assert [c[f] for f in TAKEOVER[1:]] == [None] * 4
            continue
        assert c["status"] == "open" and c["takeoverActorId"] and c["takeoverActorType"]
        assert first[c["id"]] < c["takeoverAt"] <= c["updatedAt"]
        assert CANONICAL.fullmatch(c["takeoverAt"])
    assert {c["takeoverReason"] is None for c in taken} == {True, False}


def test_generated_messages_carry_delivery_and_attachments():
    messages = generate(seed=3, conversations=200).snapshot()[1]
    statuses = {m["metadata"].get("deliveryStatus") for m in messages}
    assert statuses == {None, "pending", "sent", "delivered", "failed", "bounced"}
    for m in messages:
        meta = m["metadata"]
        assert {"platform", "priority"} <= set(meta)
        if "deliveryError" in meta:
            assert meta["deliveryStatus"] in ("failed", "bounced")
        if "deliveryStatus" in meta:
            assert m["role"] == "assistant" or m["direction"] == "outbound"
        for attachment in meta.get("attachments", []):
            assert set(attachment) == {"name", "size", "contentType", "url"}
            assert attachment["url"].startswith("https://files.example.com/")
    assert any("deliveryError" in m["metadata"] for m in messages)
    assert any("externalTimestamp" in m["metadata"] for m in messages)
    assert 0.02 < sum("attachments" in m["metadata"] for m in messages) / len(messages) < 0.12


def test_vendor_fields_leave_the_rest_of_a_seed_as_it_was():
    """The new fields come from their own generator: without them, a seed's data is exactly
    what the generator made before they existed (the digest was taken from that version)."""
    conversations, messages = generate(seed=5, conversations=120).snapshot()
    assert (conversations, messages) == generate(seed=5, conversations=120).snapshot()
    conversations = [{k: v for k, v in c.items() if k not in TAKEOVER} for c in conversations]
    for m in messages:
        m["metadata"] = {k: v for k, v in m["metadata"].items() if k not in VENDOR_METADATA}
    digest = hashlib.sha256(json.dumps([conversations, messages], sort_keys=True).encode())
    assert digest.hexdigest() == "b2191b116fa0719522f316f322280dc56c4f981adb456d9cadbf180c8c870c66"


def test_agent_mode_filter(upstream, client):
    taken = {c["id"] for c in human(upstream)}
    assert taken
    assert {c["id"] for c in every_conversation(client, agentMode="human")} == taken
    auto = every_conversation(client, agentMode="auto")
    assert len(auto) == 60 - len(taken) and not taken & {c["id"] for c in auto}
    assert len(every_conversation(client, agentMode="all")) == 60
    assert client.get(CONVERSATIONS, params={"agentMode": "robot"}).status_code == 400


def test_list_and_detail_carry_the_takeover(upstream, client):
    for item in every_conversation(client):
        assert set(TAKEOVER) <= set(item)
    cid = human(upstream)[0]["id"]
    detail = client.get(f"{CONVERSATIONS}/{cid}").json()
    assert detail["agentMode"] == "human" and instant(detail["takeoverAt"]) == instant(
        upstream.get(cid)["takeoverAt"])


def test_takeover_resume_and_send_endpoints(upstream, client):
    cid = next(c["id"] for c in upstream.snapshot()[0] if c["agentMode"] == "auto")
    before = upstream.get(cid)
    assert client.post(f"{CONVERSATIONS}/{cid}/resume").status_code == 409
    refused = client.post(f"{CONVERSATIONS}/{cid}/send",
                          json={"content": "hi", "requireHumanMode": True})
    assert refused.status_code == 409
    taken = client.post(f"{CONVERSATIONS}/{cid}/takeover", json={"reason": "angry customer"})
    assert taken.status_code == 200
    body = taken.json()
    assert set(body) == {"id", "updatedAt", *TAKEOVER}
    assert (body["agentMode"], body["takeoverReason"], body["takeoverActorType"]) == (
        "human", "angry customer", "user")
    assert KEY not in body["takeoverActorId"] and body["takeoverAt"] == body["updatedAt"]
    assert upstream.get(cid)["updatedAt"] > before["updatedAt"]
    again = client.post(f"{CONVERSATIONS}/{cid}/takeover", json={})
    assert again.status_code == 409 and again.json()["takeoverActorId"] == body["takeoverActorId"]
    sent = client.post(f"{CONVERSATIONS}/{cid}/send",
                       json={"content": "A human here 👋", "requireHumanMode": True})
    assert sent.status_code == 200
    message = sent.json()["message"]
    assert (message["role"], message["direction"], message["metadata"]) == (
        "assistant", "outbound", {"deliveryStatus": "pending"})
    assert sent.json()["deliveryResult"]["deliveryStatus"] == "pending"
    assert upstream.messages_of(cid)[-1]["id"] == message["id"]
    assert upstream.get(cid)["messageCount"] == before["messageCount"] + 1
    resumed = client.post(f"{CONVERSATIONS}/{cid}/resume").json()
    assert resumed["agentMode"] == "auto" and resumed["takeoverAt"] is None
    assert client.post(f"{CONVERSATIONS}/conv_missing/takeover").status_code == 404
    assert client.post(f"{CONVERSATIONS}/{cid}/send", json={"content": ""}).status_code == 400


def test_takeover_fields_are_not_writable_by_put(upstream, client):
    cid = upstream.conversation_ids()[0]
    before = upstream.get(cid)
    changed = client.put(f"{CONVERSATIONS}/{cid}", json={
        "subject": "renamed", "agentMode": "robot", "takeoverActorId": "x"}).json()
    assert changed["subject"] == "renamed"
    assert [changed[f] for f in TAKEOVER] == [
        before["agentMode"], *[changed[f] for f in TAKEOVER[1:]]]
    assert [upstream.get(cid)[f] for f in TAKEOVER[:2]] == [before[f] for f in TAKEOVER[:2]]


def test_upstream_takeover_resume_and_status_change():
    upstream = Upstream()
    cid = upstream.create_conversation(subject="x")["id"]
    assert [upstream.get(cid)[f] for f in TAKEOVER] == ["auto", None, None, None, None]
    taken = upstream.takeover(cid, "user_42", reason="VIP")
    assert (taken["agentMode"], taken["takeoverActorId"], taken["takeoverActorType"],
            taken["takeoverReason"]) == ("human", "user_42", "user", "VIP")
    assert CANONICAL.fullmatch(taken["takeoverAt"]) and taken["updatedAt"] == taken["takeoverAt"]
    assert upstream.snapshot()[0][0]["takeoverAt"] == taken["takeoverAt"]
    resumed = upstream.resume(cid)
    assert [resumed[f] for f in TAKEOVER] == ["auto", None, None, None, None]
    upstream.takeover(cid, "user_42", "api_key")
    upstream.update_conversation(cid, subject="same status")
    assert upstream.get(cid)["agentMode"] == "human"
    upstream.update_conversation(cid, status="closed")   # closing ends a takeover, as upstream
    assert upstream.get(cid)["agentMode"] == "auto" and upstream.get(cid)["takeoverAt"] is None
    with pytest.raises(KeyError):
        upstream.takeover("conv_missing", "user_1")


@pytest.mark.parametrize("touch", [True, False])
def test_update_message_changes_it_after_creation(touch):
    upstream = generate(seed=2, conversations=10)
    upstream.subsecond = True
    cid = next(c for c in upstream.conversation_ids() if upstream.messages_of(c))
    before, message = upstream.get(cid), upstream.messages_of(cid)[0]
    changed = upstream.update_message(cid, message["id"], touch=touch,
                                      metadata={"deliveryStatus": "delivered",
                                                "deliveryError": None, "priority": None})
    expected = {k: v for k, v in message["metadata"].items()
                if k not in ("deliveryError", "priority")}
    assert changed["metadata"] == {**expected, "deliveryStatus": "delivered"}
    assert (changed["id"], changed["createdAt"]) == (message["id"], message["createdAt"])
    assert upstream.messages_of(cid)[0] == changed
    after = upstream.get(cid)
    assert (after["updatedAt"] > before["updatedAt"]) == touch
    assert {k: v for k, v in after.items() if k != "updatedAt"} == {
        k: v for k, v in before.items() if k != "updatedAt"}
    edited = upstream.update_message(cid, message["id"], content="edited", touch=False)
    assert edited["content"] == "edited" and edited["metadata"] == changed["metadata"]
    with pytest.raises(KeyError):
        upstream.update_message(cid, "msg_missing", content="x")


def test_styles_listed_are_the_styles_rendered():
    from syncer.simulator import timestamps
    assert set(TIMESTAMP_STYLES) == set(timestamps.PLAIN_STYLES) | {"mixed", "rfc3339"}


STYLE_SHAPES = {
    "lower": re.compile(r"\d{4}-\d\d-\d\dt\d\d:\d\d:\d\d(\.\d*[1-9])?z"),
    "long_fraction": re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9,12}Z"),
    "numoffset": re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?"
                            r"(-00:00|[+-](?!00:00)\d\d:\d\d)"),
}


@pytest.mark.parametrize("style", TIMESTAMP_STYLES)
def test_every_style_is_the_upstreams_instant(upstream, server, client, style):
    """Each spelling, truncated to microseconds, is the instant the upstream holds, and a
    non-zero fraction is never dropped."""
    upstream.subsecond = True
    cid = upstream.create_conversation(subject="sub-second")["id"]
    upstream.takeover(cid, "user_1")
    server.behaviour.timestamp_style = style
    truth = {c["id"]: c for c in upstream.snapshot()[0]}
    spellings = set()
    for item in every_conversation(client):
        for name in ("createdAt", "updatedAt", "lastMessageAt", "takeoverAt"):
            expected, text = truth[item["id"]][name], item[name]
            assert (text is None) == (expected is None), name
            if text is None:
                continue
            assert instant(text) == instant(expected), (name, text, expected)
            if not expected.endswith(".000000Z"):
                assert re.search(r"\.\d*[1-9]", text), text
            if style in STYLE_SHAPES:
                assert STYLE_SHAPES[style].fullmatch(text), text
            spellings.add(text[-6:] if style == "numoffset" else re.sub(r"\d", "0", text))
    if style in ("rfc3339", "numoffset"):
        assert len(spellings) > 5   # offsets, or the shapes of every style


def test_numoffset_and_long_fraction_samples():
    at = "2024-11-21T21:09:02.123456Z"
    texts = {render_ts(at, "numoffset", str(i)) for i in range(40)}
    assert {t[-6:] for t in texts} >= {"+05:30", "-08:00", "+14:00", "-00:00"}
    assert "2024-11-22T11:09:02.123456+14:00" in texts
    for i in range(40):
        text = render_ts(at, "long_fraction", str(i))
        assert text.startswith("2024-11-21T21:09:02.123456") and 9 <= len(text) - 21 <= 12
    assert render_ts("2024-11-21T21:09:02.500000Z", "lower") == "2024-11-21t21:09:02.5z"


def test_simulate_command_offers_every_style_and_count_mode():
    from syncer.cli import main
    from syncer.simulator.behaviour import COUNT_MODES
    options = {p.name: p for p in main.commands["simulate"].params}
    assert tuple(options["timestamp_style"].type.choices) == TIMESTAMP_STYLES
    assert tuple(options["count_mode"].type.choices) == COUNT_MODES
    assert options["count_mode"].default == Behaviour().count_mode
