"""The vendor's own SDK (runtype-sdk 5.5.0) as an outside client of the simulator.

Its generated client parses every answer with its pydantic models and raises `ParsingError`
when one does not fit, so driving each endpoint through it, in every timestamp style, checks
the simulator's shapes against the vendor's API definition rather than against our reading.
"""
import typing
from datetime import datetime

import pytest
from runtype import RuntypeClient
from runtype._generated.errors import ConflictError, NotFoundError
from runtype._generated.messaging_conversations import types as sdk
from runtype._generated.messaging_conversations.types import (
    post_v1messaging_conversations_id_messages_request_metadata_delivery_status as delivery,
)

from syncer.simulator import Behaviour, SimulatorServer, generate
from syncer.simulator.behaviour import TIMESTAMP_STYLES

KEY = "rt_test_simulator"
CONVERSATIONS = 45
DELIVERY_STATUSES = set(typing.get_args(typing.get_args(
    delivery.PostV1MessagingConversationsIdMessagesRequestMetadataDeliveryStatus)[0]))
TIMESTAMPS = ("created_at", "updated_at", "last_message_at", "takeover_at")
# The SDK retries a 409 (with the X-RateLimit-Reset delay): a conflict is asked once here
ONCE = {"max_retries": 0}
WIRE_NAMES = {"created_at": "createdAt", "updated_at": "updatedAt",
              "last_message_at": "lastMessageAt", "takeover_at": "takeoverAt"}


@pytest.fixture(params=TIMESTAMP_STYLES)
def world(request):
    """(the SDK's messaging client, the upstream) over a loopback simulator in one style, its
    data with a few sub-second stamps (a takeover, a message) beside the generated ones."""
    upstream = generate(seed=4, conversations=CONVERSATIONS)
    upstream.subsecond = True
    taken = upstream.conversation_ids()[0]
    upstream.add_message(taken, "sub-second")
    upstream.resume(taken)
    upstream.takeover(taken, "user_ops_1", reason="sub-second takeover")
    with SimulatorServer(upstream, Behaviour(timestamp_style=request.param)) as server:
        with RuntypeClient(api_key=KEY, base_url=server.base_url, timeout=10) as client:
            yield client.api.messaging_conversations, upstream


def instant(text):
    """RFC 3339 → aware datetime: lowercase t/z, long fractions (truncated) and offsets."""
    return datetime.fromisoformat(text.upper().replace("Z", "+00:00"))


def assert_same_instants(model, truth):
    """Each timestamp the SDK parsed is the instant the upstream holds."""
    for name in TIMESTAMPS:
        if not hasattr(model, name):
            continue
        text, expected = getattr(model, name), truth[WIRE_NAMES[name]]
        assert (text is None) == (expected is None), name
        if text is not None:
            assert instant(text) == instant(expected), (name, text, expected)


def walk(conversations, **params):
    """Every page of the list through its cursors, as the SDK's parsed pages."""
    pages, cursor = [], None
    while True:
        page = conversations.list_conversations(limit="7", status="all", cursor=cursor, **params)
        assert isinstance(page, sdk.GetV1MessagingConversationsResponse)
        pages.append(page)
        cursor = page.pagination.next_cursor
        if cursor is None:
            assert page.pagination.has_more is False
            return pages


def test_list_through_the_sdk(world):
    conversations, upstream = world
    truth = {c["id"]: c for c in upstream.snapshot()[0]}
    plain = walk(conversations)
    assert all(p.pagination.total_count is None and p.pagination.total_pages is None
               for p in plain)
    items = [item for page in plain for item in page.data]
    assert sorted(item.id for item in items) == sorted(truth)
    for item in items:
        assert item.agent_mode in ("auto", "human")
        assert_same_instants(item, truth[item.id])
        assert (item.takeover_actor_id is None) == (item.agent_mode == "auto")
    counted = walk(conversations, include_count="true")
    assert {(p.pagination.total_count, p.pagination.total_pages) for p in counted} == {
        (CONVERSATIONS, -(-CONVERSATIONS // 7))}
    human = {cid for cid, c in truth.items() if c["agentMode"] == "human"}
    assert len(human) >= 3
    by_mode = {mode: {i.id for p in walk(conversations, agent_mode=mode) for i in p.data}
               for mode in ("human", "auto", "all")}
    assert by_mode == {"human": human, "auto": set(truth) - human, "all": set(truth)}
    surface = conversations.list_conversations(surface_id="surface_002", status="all",
                                               limit="100")
    assert {i.surface_id for i in surface.data} == {"surface_002"}
    found = conversations.list_conversations(search="Ada Lovelace", status="open")
    assert all(i.participant_name == "Ada Lovelace" and i.status == "open" for i in found.data)


def test_details_and_messages_through_the_sdk(world):
    conversations, upstream = world
    snapshot, messages = upstream.snapshot()
    truth = {m["id"]: m for m in messages}
    seen_status, attachments = set(), 0
    for conversation in snapshot:
        detail = conversations.get_conversation(conversation["id"])
        assert isinstance(detail, sdk.GetV1MessagingConversationsIdResponse)
        assert (detail.agent_mode, detail.takeover_actor_id, detail.takeover_reason) == (
            conversation["agentMode"], conversation["takeoverActorId"],
            conversation["takeoverReason"])
        assert detail.surface.id == conversation["surfaceId"]
        assert_same_instants(detail, conversation)
        asc = conversations.list_messages(conversation["id"], order="asc")
        desc = conversations.list_messages(conversation["id"], order="desc", limit="100")
        assert asc.total_count == desc.total_count == conversation["messageCount"]
        ids = [m["id"] for m in upstream.messages_of(conversation["id"])]
        assert ([m.id for m in asc.data], [m.id for m in desc.data]) == (
            ids[:100], ids[::-1][:100])
        for message in asc.data:
            assert_same_instants(message, truth[message.id])
            meta = sdk.PostV1MessagingConversationsIdMessagesRequestMetadata.model_validate(
                message.metadata)
            if meta.delivery_status is not None:
                assert meta.delivery_status in DELIVERY_STATUSES
                seen_status.add(meta.delivery_status)
            for attachment in meta.attachments or ():
                assert attachment.name and attachment.size > 0 and attachment.url
                assert "/" in attachment.content_type
                attachments += 1
    assert seen_status == DELIVERY_STATUSES      # the data exercises every delivery status
    assert attachments > 0
    with pytest.raises(NotFoundError):
        conversations.get_conversation("conv_missing")


def test_writes_through_the_sdk(world):
    conversations, upstream = world
    created = conversations.create_conversation(
        surface_id="surface_003", subject="Through the SDK", participant_name="Zoë Brontë",
        context=sdk.PostV1MessagingConversationsRequestContext(session_id="sess_1"))
    assert isinstance(created, sdk.PostV1MessagingConversationsResponse)
    assert (created.agent_mode, created.surface.type, created.message_count) == (
        "auto", "in_app", 0)
    cid = created.id
    metadata = sdk.PostV1MessagingConversationsIdMessagesRequestMetadata.model_validate({
        "deliveryStatus": "sent", "externalTimestamp": "2024-11-21t21:09:02.5z",
        "attachments": [{"name": "a.pdf", "size": 10, "contentType": "application/pdf",
                         "url": "https://files.example.com/a.pdf"}]})
    message = conversations.create_message(cid, content="Hello 👋", role="assistant",
                                           direction="outbound", metadata=metadata)
    assert isinstance(message, sdk.PostV1MessagingConversationsIdMessagesResponse)
    assert message.metadata["deliveryStatus"] == "sent"
    assert message.metadata["attachments"][0]["contentType"] == "application/pdf"
    upstream.update_message(cid, message.id, metadata={"deliveryStatus": "delivered"})
    listed = conversations.list_messages(cid).data
    assert [(m.id, m.metadata["deliveryStatus"]) for m in listed] == [(message.id, "delivered")]
    assert instant(listed[0].created_at) == instant(message.created_at)

    updated = conversations.update_conversation(cid, status="closed", subject="Renamed")
    assert isinstance(updated, sdk.PutV1MessagingConversationsIdResponse)
    assert (updated.status, updated.subject, updated.message_count) == ("closed", "Renamed", 1)
    assert_same_instants(updated, upstream.get(cid))

    taken = conversations.take_over_conversation(cid, reason="Needs a human")
    assert isinstance(taken, sdk.PostV1MessagingConversationsIdTakeoverResponse)
    assert (taken.agent_mode, taken.takeover_reason, taken.takeover_actor_type) == (
        "human", "Needs a human", "user")
    assert taken.takeover_actor_id and instant(taken.takeover_at) == instant(taken.updated_at)
    assert_same_instants(taken, upstream.get(cid))
    with pytest.raises(ConflictError):
        conversations.take_over_conversation(cid, request_options=ONCE)

    sent = conversations.send_human_authored_message(
        cid, content="A person now", require_human_mode=True,
        metadata=sdk.PostV1MessagingConversationsIdSendRequestMetadata(headers={"X-Op": "1"}))
    assert isinstance(sent, sdk.PostV1MessagingConversationsIdSendResponse)
    assert sent.delivery_result.delivery_status in DELIVERY_STATUSES
    assert (sent.message.role, sent.message.metadata["deliveryStatus"]) == ("assistant",
                                                                              "pending")
    assert sent.message.metadata["headers"] == {"X-Op": "1"}

    resumed = conversations.resume_agent_handling(cid)
    assert isinstance(resumed, sdk.PostV1MessagingConversationsIdResumeResponse)
    assert (resumed.agent_mode, resumed.takeover_at, resumed.takeover_actor_id) == (
        "auto", None, None)
    with pytest.raises(ConflictError):
        conversations.resume_agent_handling(cid, request_options=ONCE)
    with pytest.raises(ConflictError):
        conversations.send_human_authored_message(cid, content="x", require_human_mode=True,
                                                  request_options=ONCE)

    deleted = conversations.delete_conversation(cid)
    assert isinstance(deleted, sdk.DeleteV1MessagingConversationsIdResponse)
    assert deleted.success is True
    with pytest.raises(NotFoundError):
        conversations.get_conversation(cid)
