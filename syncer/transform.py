"""Pure functions: an API record -> the row the store keeps. No I/O.

Timestamps become one fixed-width UTC form, `YYYY-MM-DDTHH:MM:SS.ffffffZ`, so that string order
is time order; the string as received stays in `_raw`. Objects become JSON text. Unknown fields
are kept in `_raw`.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

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
ANOMALY = "_anomaly"          # a row key (never a column): what of the record is not in its columns


class BadRecord(ValueError):
    """A record that passed the schema but cannot be stored as it is (e.g. a bad timestamp)."""


# RFC 3339, section 5.6: full-date "T" full-time, where "T" and "Z" may be lower case (its
# note; a space for "T" too), the fraction has any number of digits and the offset is "Z" or
# +hh:mm / -hh:mm. Digits are ASCII only.
_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?"
                      r"(?:[Zz]|([+-])(\d\d):(\d\d))", re.ASCII)


def parse_instant(value: str) -> datetime:
    """An RFC 3339 timestamp, in any spelling its grammar allows, -> an aware UTC datetime.

    The instant is kept to the microsecond: further fraction digits are cut (the instant is
    truncated, never rounded into the next second). A leap second (`:60`) is the last
    microsecond of its minute, so order is kept. Instants outside years 1-9999 in UTC cannot be
    stored and are refused. Other ISO 8601 forms Python reads are accepted too, a string
    without an offset being taken as UTC."""
    if not isinstance(value, str):
        raise BadRecord(f"timestamp is not a string: {value!r}")
    match = _RFC3339.fullmatch(value)
    if match is None:
        return _parse_iso(value)
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    micro = int(fraction[:6].ljust(6, "0")) if fraction else 0
    second_n = int(second)
    if second_n == 60:
        second_n, micro = 59, 999_999
    try:
        offset = timezone.utc
        if sign is not None:
            if int(off_h) > 23 or int(off_m) > 59:
                raise ValueError("offset out of range")
            delta = timedelta(hours=int(off_h), minutes=int(off_m))
            offset = timezone(-delta if sign == "-" else delta)
        dt = datetime(int(year), int(month), int(day), int(hour), int(minute), second_n,
                      micro, tzinfo=offset)
    except ValueError:
        raise BadRecord(f"unparsable timestamp {value!r}") from None
    try:
        return dt.astimezone(timezone.utc)
    except OverflowError:
        raise BadRecord(f"timestamp out of range {value!r}") from None


def _parse_iso(value: str) -> datetime:
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
    """The store's form: `YYYY-MM-DDTHH:MM:SS.ffffffZ` in UTC, four-digit year always."""
    dt = dt.astimezone(timezone.utc)
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:"
            f"{dt.second:02d}.{dt.microsecond:06d}Z")


def normalize_timestamp(value: str | None) -> str | None:
    """A timestamp as received -> the store's form (None stays None); BadRecord if it is not
    one. A UTC spelling is rewritten from its own digits once its fields are checked: the hot
    path of a sync, several times faster than formatting a datetime."""
    if value is None:
        return None
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None or match.group(8) is not None or match.group(6) == "60":
        return format_instant(parse_instant(value))
    year, month, day, hour, minute, second, fraction = match.groups()[:7]
    try:
        datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError:
        raise BadRecord(f"unparsable timestamp {value!r}") from None
    micro = fraction[:6].ljust(6, "0") if fraction else "000000"
    return f"{year}-{month}-{day}T{hour}:{minute}:{second}.{micro}Z"


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
    if count < 0:
        raise BadRecord(f"messageCount {count} is negative")
    if count > MAX_INTEGER:
        # the conversation is still mirrored: the column stays empty, _raw keeps the value
        row["messageCount"] = None
        row[ANOMALY] = (f"messageCount {count} is over SQLite's largest integer: the column "
                        "is left empty and the value kept in _raw")
    else:
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
