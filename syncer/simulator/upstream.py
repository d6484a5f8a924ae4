"""The in-memory truth behind the fake Runtype API.

Records are held as full DETAIL conversations and per-conversation message lists in ascending
(createdAt, id) order. Internally timestamps are aware UTC datetimes; everything handed out by
`get`, `messages_of`, `snapshot` and the mutators carries them in the canonical text form
`YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, always a 6-digit fraction).

Besides creation and deletion, records change the ways the vendor's API documents: fields
updated, a human takeover and its end (`takeover`, `resume`), and messages changed after
creation (`update_message`: delivery status, attachments), which carry no updatedAt.
"""

from __future__ import annotations

import bisect
import copy
import random
import threading
from datetime import UTC, datetime, timedelta

from .behaviour import Behaviour

SURFACES = {
    "surface_001": {"id": "surface_001", "name": "Website Chat", "type": "webchat"},
    "surface_002": {"id": "surface_002", "name": "Support Email", "type": "email"},
    "surface_003": {"id": "surface_003", "name": "Mobile App", "type": "in_app"},
    "surface_004": {"id": "surface_004", "name": "WhatsApp Business", "type": "whatsapp"},
    "surface_005": {"id": "surface_005", "name": "SMS Line", "type": "sms"},
}

CONVERSATION_LIST_FIELDS = (
    "agentMode", "createdAt", "externalParticipantId", "externalThreadId", "id",
    "lastMessageAt", "messageCount", "participantEmail", "participantName", "status", "subject",
    "surfaceId", "takeoverActorId", "takeoverActorType", "takeoverAt", "takeoverReason",
    "timezone", "updatedAt",
)
# Who handles a conversation: "auto" (the agent) or "human" (taken over by an operator, whom
# the takeover fields name; they are all None in auto mode).
AGENT_MODES = ("auto", "human")
TAKEOVER_FIELDS = ("takeoverActorId", "takeoverActorType", "takeoverAt", "takeoverReason")
CONVERSATION_DETAIL_FIELDS = ("context", "participantMetadata", "surface")
MESSAGE_FIELDS = (
    "content", "conversationId", "createdAt", "direction", "externalMessageId",
    "flowStepResultId", "id", "metadata", "role",
)
CONVERSATION_TIMESTAMPS = ("createdAt", "updatedAt", "lastMessageAt", "takeoverAt")
MESSAGE_TIMESTAMPS = ("createdAt",)
CANONICAL_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def parse_ts(value: datetime | str | None) -> datetime | None:
    """Any ISO-8601 text or datetime → aware UTC datetime (naive means UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def canonical(dt: datetime | None) -> str | None:
    return None if dt is None else dt.strftime(CANONICAL_FORMAT)


def _canonical_record(record: dict, ts_fields: tuple) -> dict:
    out = {k: copy.deepcopy(v) if isinstance(v, (dict, list)) else v for k, v in record.items()}
    for name in ts_fields:
        if name in out:
            out[name] = canonical(out[name])
    return out


def _message_key(message: dict) -> tuple:
    return (message["createdAt"], message["id"])


def _auto_mode() -> dict:
    return {"agentMode": "auto", **dict.fromkeys(TAKEOVER_FIELDS)}


class Upstream:
    """Thread-safe store of conversations and messages; every method takes `self.lock`."""

    def __init__(self, seed: int = 0):
        self.lock = threading.RLock()
        self.clock_skew = timedelta(0)
        self.behaviour = Behaviour()
        self.subsecond = False  # stamps from now() are truncated to whole seconds unless True
        self.version = 0  # bumped on every change; app.py keys its sorted views on it
        self.view_cache: dict = {}
        self._conversations: dict[str, dict] = {}
        self._messages: dict[str, list[dict]] = {}
        self._ids = random.Random(f"new ids {seed}")   # not the generator's sequence

    # -- clock and ids -------------------------------------------------------------------------
    def now(self) -> datetime:
        with self.lock:
            return datetime.now(UTC) + self.clock_skew

    def _stamp(self) -> datetime:
        now = self.now()
        return now if self.subsecond else now.replace(microsecond=0)

    def _new_id(self, prefix: str, taken: dict | None = None) -> str:
        while True:
            new = f"{prefix}_{self._ids.getrandbits(80):020x}"
            if taken is None or new not in taken:
                return new

    def _changed(self) -> None:
        self.version += 1
        self.view_cache.clear()

    # -- bulk loading (generator) --------------------------------------------------------------
    def _load(self, conversation: dict, messages: list[dict]) -> None:
        """Insert an internal record as is: datetimes already parsed, messages already sorted."""
        self._conversations[conversation["id"]] = conversation
        self._messages[conversation["id"]] = messages

    # -- reads ---------------------------------------------------------------------------------
    def conversation_ids(self) -> list[str]:
        with self.lock:
            return list(self._conversations)

    def get(self, conversation_id: str) -> dict | None:
        with self.lock:
            record = self._conversations.get(conversation_id)
            return None if record is None else _canonical_record(record, CONVERSATION_TIMESTAMPS)

    def messages_of(self, conversation_id: str) -> list[dict]:
        with self.lock:
            return [_canonical_record(m, MESSAGE_TIMESTAMPS)
                    for m in self._messages.get(conversation_id, [])]

    def snapshot(self) -> tuple[list[dict], list[dict]]:
        """(conversations, messages) as deep copies with canonical timestamps.

        Conversations are full detail records (list fields with agentMode and the takeover
        fields, context, participantMetadata, surface and any extra fields) sorted by id;
        messages are every message of every conversation sorted by (conversationId,
        createdAt, id). Timestamps (CONVERSATION_TIMESTAMPS, MESSAGE_TIMESTAMPS) are
        `YYYY-MM-DDTHH:MM:SS.ffffffZ` strings (UTC, 6-digit fraction); lastMessageAt and
        takeoverAt may be None. Message metadata is kept as written (its externalTimestamp
        is the channel's text, not normalised).
        """
        with self.lock:
            conversations = [_canonical_record(self._conversations[cid], CONVERSATION_TIMESTAMPS)
                             for cid in sorted(self._conversations)]
            messages = [_canonical_record(m, MESSAGE_TIMESTAMPS)
                        for cid in sorted(self._messages) for m in self._messages[cid]]
            return conversations, messages

    # internal records for app.py; callers must hold the lock and must not mutate them
    def _records(self) -> list[dict]:
        return list(self._conversations.values())

    def _record(self, conversation_id: str) -> dict | None:
        return self._conversations.get(conversation_id)

    def _message_records(self, conversation_id: str) -> list[dict] | None:
        return self._messages.get(conversation_id)

    # -- writes --------------------------------------------------------------------------------
    def create_conversation(self, **fields) -> dict:
        with self.lock:
            now = self._stamp()
            cid = fields.pop("id", None) or self._new_id("conv", self._conversations)
            if cid in self._conversations:
                raise ValueError(f"conversation {cid} already exists")
            surface_id = fields.get("surfaceId") or "surface_001"
            record = {
                "createdAt": now, "externalParticipantId": None, "externalThreadId": None,
                "id": cid, "lastMessageAt": None, "messageCount": 0, "participantEmail": None,
                "participantName": None, "status": "open", "subject": None,
                "surfaceId": surface_id, "timezone": None, "updatedAt": now, **_auto_mode(),
                "context": {}, "participantMetadata": {},
                "surface": dict(SURFACES.get(surface_id, {"id": surface_id, "name": surface_id,
                                                          "type": "custom"})),
            }
            fields.pop("messageCount", None)
            record.update(copy.deepcopy(fields))
            for name in CONVERSATION_TIMESTAMPS:
                record[name] = parse_ts(record[name])
            self._conversations[cid] = record
            self._messages[cid] = []
            self._changed()
            return _canonical_record(record, CONVERSATION_TIMESTAMPS)

    def update_conversation(self, conversation_id: str, **fields) -> dict:
        """Set fields; updatedAt becomes now unless given. KeyError if absent.

        As upstream, closing or reopening a conversation (a change of status) ends a human
        takeover, unless the fields set the takeover themselves.
        """
        with self.lock:
            record = self._conversations[conversation_id]
            fields.pop("id", None)
            fields.pop("messageCount", None)
            fields.setdefault("updatedAt", self._stamp())
            if fields.get("status", record["status"]) != record["status"]:
                fields = {**_auto_mode(), **fields}
            if "surfaceId" in fields and "surface" not in fields:
                sid = fields["surfaceId"]
                fields["surface"] = dict(SURFACES.get(sid, {"id": sid, "name": sid,
                                                            "type": "custom"}))
            for name, value in copy.deepcopy(fields).items():
                record[name] = parse_ts(value) if name in CONVERSATION_TIMESTAMPS else value
            self._changed()
            return _canonical_record(record, CONVERSATION_TIMESTAMPS)

    def delete_conversation(self, conversation_id: str) -> None:
        """Remove a conversation and its messages. KeyError if absent."""
        with self.lock:
            del self._conversations[conversation_id]
            del self._messages[conversation_id]
            self._changed()

    def delete_message(self, conversation_id: str, message_id: str) -> None:
        """Remove one message (moderation, erasure); messageCount and lastMessageAt follow,
        updatedAt too when `self.behaviour.message_bumps_updated`. KeyError if absent."""
        with self.lock:
            conversation = self._conversations[conversation_id]
            messages = self._messages[conversation_id]
            index = next(i for i, m in enumerate(messages) if m["id"] == message_id)
            del messages[index]
            conversation["messageCount"] = len(messages)
            conversation["lastMessageAt"] = messages[-1]["createdAt"] if messages else None
            if self.behaviour.message_bumps_updated:
                conversation["updatedAt"] = self._stamp()
            self._changed()

    def add_message(self, conversation_id: str, content: str, role: str = "user",
                    **fields) -> dict:
        """Append a message (createdAt=now unless given); KeyError if the conversation is absent.

        lastMessageAt and messageCount always follow; updatedAt only when
        `self.behaviour.message_bumps_updated` is true.
        """
        with self.lock:
            conversation = self._conversations[conversation_id]
            messages = self._messages[conversation_id]
            now = self._stamp()
            message = {
                "content": content, "conversationId": conversation_id, "createdAt": now,
                "direction": None, "externalMessageId": None, "flowStepResultId": None,
                "id": fields.pop("id", None) or self._new_id("msg"), "metadata": {},
                "role": role,
            }
            message.update(copy.deepcopy(fields))
            message["createdAt"] = parse_ts(message["createdAt"])
            bisect.insort(messages, message, key=_message_key)
            conversation["messageCount"] = len(messages)
            conversation["lastMessageAt"] = messages[-1]["createdAt"]
            if self.behaviour.message_bumps_updated:
                conversation["updatedAt"] = now
            self._changed()
            return _canonical_record(message, MESSAGE_TIMESTAMPS)

    def takeover(self, conversation_id: str, actor_id: str, actor_type: str = "user",
                 reason: str | None = None) -> dict:
        """Hand the conversation to a human operator: agentMode "human", the takeover fields
        set (takeoverAt and updatedAt now). A takeover of a taken-over conversation replaces
        the actor (the API refuses it with 409; a test may want it). KeyError if absent."""
        with self.lock:
            record = self._conversations[conversation_id]
            now = self._stamp()
            record.update(agentMode="human", takeoverActorId=actor_id,
                          takeoverActorType=actor_type, takeoverAt=now, takeoverReason=reason,
                          updatedAt=now)
            self._changed()
            return _canonical_record(record, CONVERSATION_TIMESTAMPS)

    def resume(self, conversation_id: str) -> dict:
        """Hand the conversation back to the agent: agentMode "auto", the takeover fields
        None, updatedAt now. KeyError if absent."""
        with self.lock:
            record = self._conversations[conversation_id]
            record.update(_auto_mode(), updatedAt=self._stamp())
            self._changed()
            return _canonical_record(record, CONVERSATION_TIMESTAMPS)

    def update_message(self, conversation_id: str, message_id: str, *,
                       metadata: dict | None = None, content: str | None = None,
                       touch: bool = True) -> dict:
        """Change a message after its creation, as delivery does (deliveryStatus pending →
        delivered) or an edit: `metadata` is merged into the message's (a key given None is
        removed), `content` replaces the text; id and createdAt never change, and a message
        has no updatedAt to show it. With `touch` the conversation's updatedAt becomes now (a
        server where such a change shows in the conversation), without it nothing else
        changes. KeyError if the conversation or the message is absent."""
        with self.lock:
            conversation = self._conversations[conversation_id]
            message = next((m for m in self._messages[conversation_id]
                            if m["id"] == message_id), None)
            if message is None:
                raise KeyError(message_id)
            merged = {**(message["metadata"] or {}), **copy.deepcopy(metadata or {})}
            message["metadata"] = {k: v for k, v in merged.items() if v is not None}
            if content is not None:
                message["content"] = content
            if touch:
                conversation["updatedAt"] = self._stamp()
            self._changed()
            return _canonical_record(message, MESSAGE_TIMESTAMPS)
