"""Request handling of the fake Runtype API, independent of sockets.

`handle(...)` turns one request into `(status, headers, body)`; it raises `DropConnection`
when the simulated fault is a connection closed without an answer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import time
import zlib
from email.utils import format_datetime

from .behaviour import Behaviour
from .upstream import (
    CONVERSATION_DETAIL_FIELDS, CONVERSATION_LIST_FIELDS, CONVERSATION_TIMESTAMPS,
    MESSAGE_FIELDS, MESSAGE_TIMESTAMPS, Upstream, parse_ts,
)

PREFIX = "/v1/messaging/conversations"
STATUSES = ("open", "closed", "archived")
UNLIMITED = 1_000_000  # X-RateLimit-Limit reported when Behaviour.rate_limit is None
_BEARER = re.compile(r"Bearer (\S+)")
_LIST_KNOWN = set(CONVERSATION_LIST_FIELDS)
_DETAIL_ONLY = set(CONVERSATION_DETAIL_FIELDS)
_DETAIL_KNOWN = _LIST_KNOWN | _DETAIL_ONLY
_MESSAGE_KNOWN = set(MESSAGE_FIELDS)
_MESSAGE_OPTIONAL = ("direction", "externalMessageId", "flowStepResultId", "metadata")
_READ_ONLY = ("id", "messageCount", "createdAt", "updatedAt", "lastMessageAt")
HTML_PAGE = (b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
             b"<body><h1>Bad Gateway</h1><p>The upstream server is unavailable.</p></body></html>")


class DropConnection(Exception):
    """The server should close the connection without sending a response."""


class HTTPError(Exception):
    def __init__(self, status: int, error: str, message: str):
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


# -- rendering ------------------------------------------------------------------------------------
def _salt(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def render_ts(value, style: str, salt: str = "") -> str | None:
    """One instant in a wire style; never drops a non-zero fraction, whatever the style."""
    dt = parse_ts(value)
    if dt is None:
        return None
    if style == "mixed":
        style = ("z", "fraction", "offset")[_salt(salt) % 3]
    base, us = dt.strftime("%Y-%m-%dT%H:%M:%S"), dt.microsecond
    if style == "fraction":
        short = us % 1000 == 0 and _salt(salt) & 4
        return f"{base}.{us // 1000:03d}Z" if short else f"{base}.{us:06d}Z"
    fraction = f".{us:06d}" if us else ""
    return f"{base}{fraction}+00:00" if style == "offset" else f"{base}{fraction}Z"


def _render(record: dict, keep, ts_fields: tuple, behaviour: Behaviour) -> dict:
    """Copy `record` keeping keys for which keep(key) is true, timestamps in the wire style."""
    out = {k: v for k, v in record.items() if keep(k)}
    for name in ts_fields:
        if name in out:
            out[name] = render_ts(out[name], behaviour.timestamp_style, record["id"])
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


def _view(upstream: Upstream, order: str, status: str, surface_id, search) -> list[dict]:
    key = (order, status, surface_id, search)
    view = upstream.view_cache.get(key)
    if view is None:
        if len(upstream.view_cache) > 64:
            upstream.view_cache.clear()
        records = upstream._records()
        if status != "all":
            records = [r for r in records if r["status"] == status]
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
def list_conversations(upstream: Upstream, behaviour: Behaviour, query: dict) -> dict:
    limit = min(_int_param(query, "limit", 50, 1), behaviour.max_page_size)
    offset = decode_cursor(query["cursor"]) if query.get("cursor") else 0
    status = query.get("status") or behaviour.default_status
    if status not in STATUSES + ("all",):
        raise HTTPError(400, "invalid_parameter", "status must be open, closed, archived or all")
    view = _view(upstream, behaviour.list_order, status, query.get("surfaceId"),
                 query.get("search"))
    total = len(view)
    has_more = offset + limit < total
    return {
        "data": [render_list_record(r, behaviour) for r in view[offset:offset + limit]],
        "pagination": {
            "currentOffset": offset, "hasMore": has_more, "hasPrev": offset > 0,
            "limit": limit, "nextCursor": encode_cursor(offset + limit) if has_more else None,
            "prevCursor": encode_cursor(max(0, offset - limit)) if offset > 0 else None,
            "currentPage": offset // limit + 1, "totalCount": total,
            "totalPages": math.ceil(total / limit),
        },
    }


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


def _not_found(conversation_id: str) -> HTTPError:
    return HTTPError(404, "not_found", f"Conversation {conversation_id} not found")


def _route(upstream: Upstream, behaviour: Behaviour, method: str, path: str, query: dict,
           body: bytes) -> tuple[int, dict]:
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
    else:
        raise HTTPError(404, "not_found", f"No route for {path}")
    raise HTTPError(405, "method_not_allowed", f"{method} is not allowed on {path}")


# -- auth, rate limit, faults ---------------------------------------------------------------------
def _auth_error(behaviour: Behaviour, headers: dict) -> HTTPError | None:
    header = headers.get("authorization")
    if header is None:
        return HTTPError(401, "unauthorized", "Missing Authorization header")
    match = _BEARER.fullmatch(header.strip())
    if match is None:
        return HTTPError(401, "unauthorized", "Malformed Authorization header")
    if match.group(1) != behaviour.api_key:
        return HTTPError(401, "unauthorized", "Invalid or revoked API key")
    if behaviour.forbidden:
        return HTTPError(403, "forbidden", "The API key lacks messaging read permission")
    return None


def _rate(behaviour: Behaviour, consume: bool, clock: float) -> tuple[bool, dict, int]:
    """(allowed, rate-limit headers, seconds until a slot frees). Sliding window. `clock` is
    the server's Unix time, for a reset given as an epoch (`Behaviour.rate_reset`)."""
    now, window = time.monotonic(), behaviour._window
    while window and window[0] <= now - behaviour.rate_window:
        window.popleft()
    limit = behaviour.rate_limit if behaviour.rate_limit is not None else UNLIMITED
    allowed = len(window) < limit
    if consume and allowed:
        window.append(now)
    wait = math.ceil(window[0] + behaviour.rate_window - now) if window else 0
    reset = wait if window else math.ceil(behaviour.rate_window)
    if behaviour.rate_reset == "epoch":
        until = (window[0] + behaviour.rate_window - now) if window else behaviour.rate_window
        reset = math.ceil(clock + until)
    headers = {"X-RateLimit-Limit": str(limit),
               "X-RateLimit-Remaining": str(max(0, limit - len(window))),
               "X-RateLimit-Reset": str(max(0, reset))}
    return allowed, headers, max(1, wait)


def _draw_fault(behaviour: Behaviour) -> str | None:
    if behaviour.fault_rate <= 0 or not behaviour.fault_kinds:
        return None
    rng = behaviour.fault_rng()
    if rng.random() >= behaviour.fault_rate:
        return None
    return rng.choice(tuple(behaviour.fault_kinds))


def _json(status: int, payload, headers: dict) -> tuple[int, dict, bytes]:
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return status, {"Content-Type": "application/json", **headers}, body


def _error(err: HTTPError, headers: dict) -> tuple[int, dict, bytes]:
    return _json(err.status, {"error": err.error, "message": err.message,
                              "code": err.error.upper()}, headers)


def handle(upstream: Upstream, behaviour: Behaviour, method: str, path: str, query: dict,
           headers: dict, body: bytes = b"") -> tuple[int, dict, bytes]:
    """Serve one request: hook, latency, auth, rate limit, fault, then the endpoint."""
    if behaviour.on_request is not None:
        try:
            behaviour.on_request(method, path, dict(query))
        except HTTPError as err:            # a test's hook may fail one request on purpose
            return _error(err, {"Date": format_datetime(upstream.now(), usegmt=True)})
    if behaviour.latency_ms:
        time.sleep(behaviour.latency_ms / 1000)
    headers = {k.lower(): v for k, v in headers.items()}
    with upstream.lock:
        server_now = upstream.now()
        base = {"Date": format_datetime(server_now, usegmt=True)} if behaviour.date_header else {}
        denied = _auth_error(behaviour, headers)
        allowed, limits, wait = _rate(behaviour, consume=denied is None,
                                      clock=server_now.timestamp())
        base.update(limits)
        if denied is not None:
            return _error(denied, base)
        if not allowed:
            if behaviour.retry_after_header:
                base["Retry-After"] = str(wait)
            return _error(HTTPError(429, "rate_limited", "Too many requests"), base)
        fault = _draw_fault(behaviour)
    if fault == "drop":
        raise DropConnection()
    if fault == "timeout":
        time.sleep(behaviour.fault_timeout_s)
    elif fault in ("500", "503"):
        kind = "internal_error" if fault == "500" else "service_unavailable"
        return _error(HTTPError(int(fault), kind, "Simulated failure"), base)
    elif fault in ("429", "429_no_retry_after"):
        if fault == "429" and behaviour.retry_after_header:
            base["Retry-After"] = "1"
        return _error(HTTPError(429, "rate_limited", "Too many requests"), base)
    elif fault == "html_200":
        return 200, {**base, "Content-Type": "text/html; charset=utf-8"}, HTML_PAGE
    with upstream.lock:
        try:
            status, payload = _route(upstream, behaviour, method, path, query, body)
        except HTTPError as err:
            return _error(err, base)
        except (ValueError, TypeError) as err:
            return _error(HTTPError(400, "invalid_request", str(err)), base)
        result = _json(status, payload, base)
    if fault == "invalid_json":
        return result[0], result[1], result[2][: max(1, len(result[2]) // 2)]
    return result
