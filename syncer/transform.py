"""Pure functions: an API record -> the row the store keeps. No I/O.

Timestamps become one fixed-width UTC form, `YYYY-MM-DDTHH:MM:SS.ffffffZ`, so that string order
is time order; the string as received stays in `_raw`. Objects become JSON text. Unknown fields
are kept in `_raw`.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

# the fields of a list record signed before schema 9, and the vendor's newer agent fields
SIGNED_BEFORE_V9 = (
    "id", "createdAt", "updatedAt", "lastMessageAt", "status", "subject", "participantName",
    "participantEmail", "externalParticipantId", "externalThreadId", "surfaceId", "timezone",
    "messageCount",
)
AGENT_FIELDS = ("agentMode", "takeoverActorId", "takeoverActorType", "takeoverAt",
                "takeoverReason")
CONVERSATION_FIELDS = SIGNED_BEFORE_V9 + AGENT_FIELDS
DETAIL_FIELDS = ("context", "participantMetadata", "surface")
MESSAGE_FIELDS = (
    "id", "conversationId", "createdAt", "role", "direction", "content", "externalMessageId",
    "flowStepResultId", "metadata",
)
TIMESTAMP_FIELDS = frozenset({"createdAt", "updatedAt", "lastMessageAt", "takeoverAt"})
JSON_FIELDS = frozenset({"context", "participantMetadata", "surface", "metadata"})
MAX_INTEGER = 2 ** 63 - 1     # SQLite's largest INTEGER


class BadRecord(ValueError):
    """A record that passed the schema but cannot be stored as it is (e.g. a bad timestamp)."""


def parse_instant(value: str) -> datetime:
    """An ISO 8601 string -> an aware UTC datetime. Naive strings are taken as UTC."""
    try:
        dt = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise BadRecord(f"unparsable timestamp {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    try:
        return dt.astimezone(timezone.utc)
    except OverflowError:
        raise BadRecord(f"timestamp out of range {value!r}") from None


def format_instant(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def normalize_timestamp(value: str | None) -> str | None:
    if value is None:
        return None
    return format_instant(parse_instant(value))


def _dumps(value: object) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    except RecursionError:
        raise BadRecord("record is nested too deeply to store") from None


def _valid_text(value: object) -> object:
    """Lone surrogates (legal in JSON escapes, not in UTF-8) become U+FFFD, recursively."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_valid_text(k): _valid_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_valid_text(v) for v in value]
    return value


def _storable(record: dict) -> tuple[dict, str]:
    """The record and its JSON text, both encodable as UTF-8."""
    raw = _dumps(record)
    if not raw.isascii():
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            record = _valid_text(record)  # type: ignore[assignment]
            raw = _dumps(record)
    return record, raw


def _row(record: dict, fields: tuple[str, ...]) -> dict:
    record, raw = _storable(record)
    row: dict = {}
    for name in fields:
        value = record.get(name)
        if value is not None:
            if name in TIMESTAMP_FIELDS:
                value = normalize_timestamp(value)
            elif name in JSON_FIELDS:
                value = _dumps(value)
        row[name] = value
    row["_raw"] = raw
    return row


def conversation_row(record: dict) -> dict:
    """A list or detail record -> a `conversations` row (without bookkeeping columns)."""
    fields = CONVERSATION_FIELDS + tuple(f for f in DETAIL_FIELDS if f in record)
    row = _row(record, fields)
    count = int(row["messageCount"])
    if not 0 <= count <= MAX_INTEGER:
        raise BadRecord(f"messageCount {count} is outside what SQLite can store")
    row["messageCount"] = count
    return row


def checked_conversation_row(record: object, check) -> tuple[dict | None, str | None]:
    """Validate with `check` (a validate.checker) and transform: (row, None) or (None, reason)."""
    reason = check(record)
    if reason is None:
        try:
            return conversation_row(record), None  # type: ignore[arg-type]
        except BadRecord as e:
            reason = str(e)
    return None, reason


def message_row(record: dict) -> dict:
    return _row(record, MESSAGE_FIELDS)


PARTIAL_SIGNATURE = "~"    # ends a signature that covers SIGNED_BEFORE_V9 only (watermark.py)


def list_signature(row: dict) -> str:
    """What the list endpoint shows of a conversation; a change means the conversation is dirty.

    16 hex digits over SIGNED_BEFORE_V9, then, only when the record has an agent field, 16 over
    AGENT_FIELDS: a mirror signed before schema 9 keeps valid signatures for every record
    without them, and migrations.V9 re-signs those whose `_raw` has them."""
    import hashlib    # here: only sync signs rows, and OpenSSL is slow to load for a reader

    def digest(names: tuple[str, ...]) -> str:
        return hashlib.sha1(_dumps([row.get(n) for n in names]).encode()).hexdigest()[:16]
    agent = any(row.get(name) is not None for name in AGENT_FIELDS)
    return digest(SIGNED_BEFORE_V9) + (digest(AGENT_FIELDS) if agent else "")
