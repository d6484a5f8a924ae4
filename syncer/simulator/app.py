"""Request handling of the fake Runtype API, independent of sockets.

`handle(...)` turns one request into `(status, headers, body)`: the test's hook, latency, auth,
the rate limit and injected faults here, the endpoints in endpoints.py. It raises
`DropConnection` when the simulated fault is a connection closed without an answer.
"""

from __future__ import annotations

import json
import math
import time
from email.utils import format_datetime

from .behaviour import Behaviour
from .endpoints import BEARER, HTTPError, route
from .upstream import Upstream

__all__ = ["DropConnection", "HTTPError", "handle"]

UNLIMITED = 1_000_000  # X-RateLimit-Limit reported when Behaviour.rate_limit is None
HTML_PAGE = (b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
             b"<body><h1>Bad Gateway</h1><p>The upstream server is unavailable.</p></body></html>")


class DropConnection(Exception):
    """The server should close the connection without sending a response."""


# -- auth, rate limit, faults ---------------------------------------------------------------------
def _auth_error(behaviour: Behaviour, headers: dict) -> HTTPError | None:
    header = headers.get("authorization")
    if header is None:
        return HTTPError(401, "unauthorized", "Missing Authorization header")
    match = BEARER.fullmatch(header.strip())
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
                              "code": err.error.upper(), **err.extra}, headers)


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
            status, payload = route(upstream, behaviour, method, path, query, body, headers)
        except HTTPError as err:
            return _error(err, base)
        except (ValueError, TypeError) as err:
            return _error(HTTPError(400, "invalid_request", str(err)), base)
        result = _json(status, payload, base)
    if fault == "invalid_json":
        return result[0], result[1], result[2][: max(1, len(result[2]) // 2)]
    return result
