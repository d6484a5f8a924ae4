"""The endpoints of the fake Runtype API over the Upstream: parameters, filters, order,
paging and the wire shapes of the vendor's SDK (runtype-sdk 5.5.0), independent of sockets,
auth, rate limits and faults (app.py)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re

from .behaviour import Behaviour
from .timestamps import render_ts
from .upstream import (
    AGENT_MODES, CONVERSATION_DETAIL_FIELDS, CONVERSATION_LIST_FIELDS, CONVERSATION_TIMESTAMPS,
    MESSAGE_FIELDS, MESSAGE_TIMESTAMPS, TAKEOVER_FIELDS, Upstream,
)

PREFIX = "/v1/messaging/conversations"
STATUSES = ("open", "closed", "archived")
BEARER = re.compile(r"Bearer (\S+)")
_LIST_KNOWN = set(CONVERSATION_LIST_FIELDS)
_DETAIL_ONLY = set(CONVERSATION_DETAIL_FIELDS)
_DETAIL_KNOWN = _LIST_KNOWN | _DETAIL_ONLY
_MESSAGE_KNOWN = set(MESSAGE_FIELDS)
_MESSAGE_OPTIONAL = ("direction", "externalMessageId", "flowStepResultId", "metadata")
_READ_ONLY = ("id", "messageCount", "createdAt", "updatedAt", "lastMessageAt",
              "agentMode") + TAKEOVER_FIELDS   # the takeover changes only by its endpoints
_MODE_FIELDS = ("id", "agentMode") + TAKEOVER_FIELDS + ("updatedAt",)


class HTTPError(Exception):
    def __init__(self, status: int, error: str, message: str, **extra):
        super().__init__(message)
        self.status, self.error, self.message = status, error, message
        self.extra = extra  # further fields of the error body (a 409's takeoverActorId)


# -- rendering ------------------------------------------------------------------------------------
def _render(record: dict, keep, ts_fields: tuple, behaviour: Behaviour) -> dict:
    """Copy `record` keeping keys for which keep(key) is true, timestamps in the wire style
    (salted by record and field, so the fields of one record may be spelt differently)."""
    out = {k: v for k, v in record.items() if keep(k)}
    for name in ts_fields:
        if name in out:
            out[name] = render_ts(out[name], behaviour.timestamp_style, f"{record['id']}:{name}")
    return out


def render_list_record(record: dict, behaviour: Behaviour) -> dict:
    if behaviour.extra_fields:
        keep = lambda k: k not in _DETAIL_ONLY  # noqa: E731
    else:
        keep = _LIST_KNOWN.__contains__
    return _render(record, keep, CONVERSATION_TIMESTAMPS, behaviour)


def render_detail(record: dict, behaviour: Behaviour) -> dict:
    keep = (lambda k: True) if behaviour.extra_fields else _DETAIL_KNOWN.__contains__
    return _render(record, keep, CONVERSATION_TIMESTAMPS, behaviour)


def render_message(record: dict, behaviour: Behaviour) -> dict:
    keep = (lambda k: True) if behaviour.extra_fields else _MESSAGE_KNOWN.__contains__
    return _render(record, keep, MESSAGE_TIMESTAMPS, behaviour)


def render_mode(record: dict, behaviour: Behaviour) -> dict:
    """The answer of takeover and resume: who handles the conversation, since when."""
    return _render(record, _MODE_FIELDS.__contains__, CONVERSATION_TIMESTAMPS, behaviour)


# -- cursors and parameters -----------------------------------------------------------------------
def encode_cursor(offset: int) -> str:
    raw = json.dumps({"o": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        offset = json.loads(raw)["o"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise HTTPError(400, "invalid_cursor", "The cursor could not be decoded") from None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise HTTPError(400, "invalid_cursor", "The cursor could not be decoded")
    return offset


def _int_param(query: dict, name: str, default: int, minimum: int) -> int:
    if name not in query:
        return default
    try:
        value = int(query[name])
    except ValueError:
        raise HTTPError(400, "invalid_parameter", f"{name} must be an integer") from None
    if value < minimum:
        raise HTTPError(400, "invalid_parameter", f"{name} must be at least {minimum}")
    return value


def _json_body(body: bytes) -> dict:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise HTTPError(400, "invalid_json", "The request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "invalid_body", "The request body must be a JSON object")
    return data


# -- ordering -------------------------------------------------------------------------------------
def _sort(records: list[dict], order: str) -> list[dict]:
    if order == "updated_desc":
        return sorted(records, key=lambda r: (r["updatedAt"], r["id"]), reverse=True)
    if order == "created_desc":
        return sorted(records, key=lambda r: (r["createdAt"], r["id"]), reverse=True)
    if order == "last_message_desc":
        return sorted(records, reverse=True, key=lambda r: (
            r["lastMessageAt"] is not None, r["lastMessageAt"] or r["createdAt"], r["id"]))
    if order == "id_asc":
        return sorted(records, key=lambda r: r["id"])
    if order == "shuffled":
        return sorted(records, key=lambda r: hashlib.blake2b(r["id"].encode(),
                                                             digest_size=8).digest())
    raise ValueError(f"unknown list_order {order!r}")


def _view(upstream: Upstream, order: str, status: str, surface_id, search,
          agent_mode: str = "all") -> list[dict]:
    key = (order, status, surface_id, search, agent_mode)
    view = upstream.view_cache.get(key)
    if view is None:
        if len(upstream.view_cache) > 64:
            upstream.view_cache.clear()
        records = upstream._records()
        if status != "all":
            records = [r for r in records if r["status"] == status]
        if agent_mode != "all":
            records = [r for r in records if r["agentMode"] == agent_mode]
        if surface_id is not None:
            records = [r for r in records if r["surfaceId"] == surface_id]
        if search:
            needle = search.casefold()
            records = [r for r in records if any(
                needle in (r.get(f) or "").casefold()
                for f in ("subject", "participantName", "participantEmail"))]
        view = upstream.view_cache[key] = _sort(records, order)
    return view


# -- endpoints ------------------------------------------------------------------------------------
def _counted(behaviour: Behaviour, query: dict) -> bool:
    """Whether this page carries totalCount/totalPages (`Behaviour.count_mode`)."""
    if behaviour.count_mode == "on_request":
        return str(query.get("includeCount", "")).lower() == "true"
    return behaviour.count_mode == "always"


def list_conversations(upstream: Upstream, behaviour: Behaviour, query: dict) -> dict:
    limit = min(_int_param(query, "limit", 50, 1), behaviour.max_page_size)
    offset = decode_cursor(query["cursor"]) if query.get("cursor") else 0
    status = query.get("status") or behaviour.default_status
    if status not in STATUSES + ("all",):
        raise HTTPError(400, "invalid_parameter", "status must be open, closed, archived or all")
    agent_mode = query.get("agentMode") or "all"
    if agent_mode not in AGENT_MODES + ("all",):
        raise HTTPError(400, "invalid_parameter", "agentMode must be auto, human or all")
    view = _view(upstream, behaviour.list_order, status, query.get("surfaceId"),
                 query.get("search"), agent_mode)
    total = len(view)
    has_more = offset + limit < total
    pagination = {
        "currentOffset": offset, "hasMore": has_more, "hasPrev": offset > 0,
        "limit": limit, "nextCursor": encode_cursor(offset + limit) if has_more else None,
        "prevCursor": encode_cursor(max(0, offset - limit)) if offset > 0 else None,
        "currentPage": offset // limit + 1,
    }
    if _counted(behaviour, query):
        pagination.update(totalCount=total, totalPages=math.ceil(total / limit))
    return {"data": [render_list_record(r, behaviour) for r in view[offset:offset + limit]],
            "pagination": pagination}


def list_messages(upstream: Upstream, behaviour: Behaviour, conversation_id: str,
                  query: dict) -> dict:
    limit = min(_int_param(query, "limit", 100, 1), behaviour.max_page_size)
    order = query.get("order", "asc")
    if order not in ("asc", "desc"):
        raise HTTPError(400, "invalid_parameter", "order must be asc or desc")
    offset = 0
    if behaviour.message_paging == "offset":
        offset = _int_param(query, "offset", 0, 0)
    messages = upstream._message_records(conversation_id)
    if messages is None:
        raise _not_found(conversation_id)
    ordered = messages if order == "asc" else messages[::-1]
    return {"data": [render_message(m, behaviour) for m in ordered[offset:offset + limit]],
            "totalCount": len(messages)}


def create_message(upstream: Upstream, behaviour: Behaviour, conversation_id: str,
                   body: bytes) -> dict:
    data = _json_body(body)
    content, role = data.get("content"), data.get("role")
    if not isinstance(content, str) or not content:
        raise HTTPError(400, "validation_error", "content is required")
    if not isinstance(role, str) or not role:
        raise HTTPError(400, "validation_error", "role is required")
    if len(data.get("externalMessageId") or "") > 500:
        raise HTTPError(400, "validation_error", "externalMessageId is too long")
    if upstream._record(conversation_id) is None:
        raise _not_found(conversation_id)
    fields = {k: data[k] for k in _MESSAGE_OPTIONAL if k in data}
    return render_message(upstream.add_message(conversation_id, content, role, **fields),
                          behaviour)


def take_over(upstream: Upstream, behaviour: Behaviour, conversation_id: str, body: bytes,
              headers: dict) -> dict:
    """POST .../{id}/takeover: the key's user takes the conversation; 409 naming the holder
    when it is already taken over (the claim is atomic: the caller holds the lock)."""
    reason = _json_body(body).get("reason")
    if reason is not None and not isinstance(reason, str):
        raise HTTPError(400, "validation_error", "reason must be a string")
    record = upstream._record(conversation_id)
    if record["agentMode"] == "human":
        raise HTTPError(409, "conflict", "The conversation is already taken over",
                        takeoverActorId=record["takeoverActorId"])
    upstream.takeover(conversation_id, _actor_of(headers), "user", reason)
    return render_mode(record, behaviour)


def resume(upstream: Upstream, behaviour: Behaviour, conversation_id: str) -> dict:
    """POST .../{id}/resume: back to the agent; 409 when the conversation is in auto mode."""
    record = upstream._record(conversation_id)
    if record["agentMode"] != "human":
        raise HTTPError(409, "conflict", "The conversation is already in auto mode")
    upstream.resume(conversation_id)
    return render_mode(record, behaviour)


def send(upstream: Upstream, behaviour: Behaviour, conversation_id: str, body: bytes) -> dict:
    """POST .../{id}/send: a human-written outbound message, pending delivery."""
    data = _json_body(body)
    content, metadata = data.get("content"), data.get("metadata") or {}
    if not isinstance(content, str) or not content:
        raise HTTPError(400, "validation_error", "content is required")
    if not isinstance(metadata, dict):
        raise HTTPError(400, "validation_error", "metadata must be an object")
    if data.get("requireHumanMode") and upstream._record(conversation_id)["agentMode"] != "human":
        raise HTTPError(409, "conflict", "The conversation is not in human mode")
    message = upstream.add_message(conversation_id, content, "assistant", direction="outbound",
                                   metadata={**metadata, "deliveryStatus": "pending"})
    return {"message": render_message(message, behaviour),
            "deliveryResult": {"deliveryStatus": "pending", "externalMessageId": None}}


def _actor_of(headers: dict) -> str:
    """A stable user id for the caller's key, which it never reveals."""
    key = BEARER.fullmatch(headers.get("authorization", "").strip()).group(1)
    return "user_" + hashlib.blake2b(key.encode(), digest_size=6).hexdigest()


def _not_found(conversation_id: str) -> HTTPError:
    return HTTPError(404, "not_found", f"Conversation {conversation_id} not found")


def route(upstream: Upstream, behaviour: Behaviour, method: str, path: str, query: dict,
           body: bytes, headers: dict) -> tuple[int, dict]:
    path = path.rstrip("/")
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        raise HTTPError(404, "not_found", f"No route for {path}")
    parts = path[len(PREFIX):].strip("/").split("/") if path != PREFIX else []
    if not parts:
        if method == "GET":
            return 200, list_conversations(upstream, behaviour, query)
        if method == "POST":
            fields = {k: v for k, v in _json_body(body).items() if k not in _READ_ONLY}
            return 201, render_detail(upstream._record(
                upstream.create_conversation(**fields)["id"]), behaviour)
    elif len(parts) == 1:
        cid = parts[0]
        if upstream._record(cid) is None:
            raise _not_found(cid)
        if method == "GET":
            return 200, render_detail(upstream._record(cid), behaviour)
        if method == "PUT":
            fields = {k: v for k, v in _json_body(body).items() if k not in _READ_ONLY}
            upstream.update_conversation(cid, **fields)
            return 200, render_detail(upstream._record(cid), behaviour)
        if method == "DELETE":
            upstream.delete_conversation(cid)
            return 200, {"success": True}
    elif len(parts) == 2 and parts[1] == "messages":
        if method == "GET":
            return 200, list_messages(upstream, behaviour, parts[0], query)
        if method == "POST":
            return 201, create_message(upstream, behaviour, parts[0], body)
    elif len(parts) == 2 and parts[1] in ("takeover", "resume", "send"):
        if method == "POST":
            return 200, _mode_action(upstream, behaviour, parts, body, headers)
    else:
        raise HTTPError(404, "not_found", f"No route for {path}")
    raise HTTPError(405, "method_not_allowed", f"{method} is not allowed on {path}")


def _mode_action(upstream: Upstream, behaviour: Behaviour, parts: list, body: bytes,
                 headers: dict) -> dict:
    cid, action = parts
    if upstream._record(cid) is None:
        raise _not_found(cid)
    if action == "takeover":
        return take_over(upstream, behaviour, cid, body, headers)
    if action == "resume":
        return resume(upstream, behaviour, cid)
    return send(upstream, behaviour, cid, body)
