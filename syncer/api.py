"""The Runtype messaging API client: list pages, conversation details, messages.

Policy lives here (auth header, timeouts, retries, pacing, size limit, no redirects); the I/O is
an httpx transport that tests may swap (by default transport.py's, whose reads end at a
request's deadline or soon after a stop). Errors are translated into syncer.errors in one
place, `_request`. The key is only ever in the Authorization header: never in a URL, log or
error.

`[api].timeout` bounds a whole request, however slowly the server answers. A refused
connection, an unknown host or a refused certificate before the server ever answered is not
retried: the URL is wrong, not the network. The server's clock is read from its `Date` headers
(`clock_skew`); rate-limit resets given as a time are read on it, and a skew or a missing
`Date` is logged once.
"""
from __future__ import annotations

import json
import logging
import math
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from . import __version__, retry, transport as bounded
from .config import Settings
from .errors import (ApiError, AuthError, BadRequestError, Interrupted, NotFoundError,
                     ProtocolError, RetriesExhausted, RetryableError, TooLargeError,
                     UnreachableError)
from .validate import problem

log = logging.getLogger(__name__)

CONVERSATIONS = "/v1/messaging/conversations"
USER_AGENT = f"syncer/{__version__} (+Runtype mirror)"
MESSAGE_PAGE = 100
SKEW_TO_REPORT = 5.0     # seconds between the server's clock and ours worth a warning


@dataclass
class Counters:
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def snapshot(self) -> dict[str, int]:
        return {"requests": self.requests, "retries": self.retries, "throttled": self.throttled}


@dataclass
class ListPage:
    records: list
    next_cursor: str | None
    has_more: bool
    total_count: int | None
    server_time: datetime
    dated: bool = True            # server_time is the server's Date, not our clock


def conversation_path(cid: str) -> str:
    segment = quote(cid, safe="")
    if segment in (".", ".."):
        segment = segment.replace(".", "%2E")
    return f"{CONVERSATIONS}/{segment}"


def _server_time(response: httpx.Response, clock: retry.ServerClock) -> datetime:
    date = response.headers.get("date")
    if date:
        try:
            return parsedate_to_datetime(date).astimezone(timezone.utc)
        except (TypeError, ValueError):
            pass
    return datetime.fromtimestamp(clock.now(), timezone.utc)


def _origin(url: str) -> str:
    """The base URL as it may be shown: no user, password, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _causes(error: BaseException):
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def connect_failure(error: Exception) -> tuple[str, bool]:
    """Why a connection could not be made, and whether that is final while the server has
    never answered (refused, unknown host, certificate refused: retrying changes nothing)."""
    if isinstance(error, httpx.ConnectTimeout):
        return "connection timed out", False
    for cause in _causes(error):
        if isinstance(cause, ssl.SSLCertVerificationError):
            detail = getattr(cause, "verify_message", None)
            return "TLS certificate not accepted" + (f": {detail}" if detail else ""), True
        if isinstance(cause, ssl.SSLError):
            return "TLS handshake failed", False
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused", True
        if isinstance(cause, socket.gaierror):
            return "DNS lookup failed" + (f": {cause.strerror}" if cause.strerror else ""), True
        if isinstance(cause, TimeoutError):
            return "connection timed out", False
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[:1].lower() + cause.strerror[1:], False
    return type(error).__name__, False


def _error_text(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    if isinstance(data, dict):
        parts = [str(data[k])[:200] for k in ("error", "message") if data.get(k)]
        return ": ".join(parts)
    return ""


class RuntypeClient:
    def __init__(self, settings: Settings, *, transport: httpx.BaseTransport | None = None,
                 stop: threading.Event | None = None, bounds: bounded.Bounds | None = None):
        """`bounds`: the deadlines of requests (tests give one with a faster clock); its stop
        event is then the client's."""
        key = settings.require_key()
        self.settings = settings
        # set: waits end at once, no more retries, requests in flight end within seconds
        self.stop = bounds.stop if bounds is not None else stop or threading.Event()
        self.counters = Counters()
        self.pacer = retry.Pacer()
        self.clock = retry.ServerClock()
        self.undated_answers = 0        # answers without a usable Date header
        self._answered = False          # the server has answered at least once
        self._said: set[str] = set()    # warnings already logged
        self._lock = threading.Lock()
        self._bounds = bounds or bounded.Bounds(self.stop)
        self._where = _origin(settings.base_url)
        pool = settings.concurrency + 2
        limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
        self._http = httpx.Client(
            base_url=settings.base_url,
            headers={"Authorization": f"Bearer {key}", "User-Agent": USER_AGENT,
                     "Accept": "application/json"},
            timeout=httpx.Timeout(settings.timeout, connect=min(settings.timeout, 10.0)),
            limits=limits,
            follow_redirects=False,
            transport=transport or bounded.bounded_transport(self._bounds, limits),
        )

    @property
    def clock_skew(self) -> float | None:
        """The server's clock minus ours in seconds (to about a second, from its Date
        headers), or None while no answer has carried a Date."""
        return self.clock.offset

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RuntypeClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- endpoints ---------------------------------------------------------------------------
    def list_conversations(self, *, cursor: str | None, limit: int, status: str,
                           surface_id: str | None = None) -> ListPage:
        # the real list counts only when asked; the walk's guard and shift check need it
        params: dict[str, str | int] = {"limit": limit, "status": status, "includeCount": "true"}
        if cursor:
            params["cursor"] = cursor
        if surface_id:
            params["surfaceId"] = surface_id
        body, response = self._get_json(CONVERSATIONS, params, "conversation_list_response")
        pagination = body.get("pagination") or {}
        next_cursor = pagination.get("nextCursor")
        has_more = pagination.get("hasMore")
        return ListPage(
            records=body["data"],
            next_cursor=next_cursor,
            has_more=bool(next_cursor) if has_more is None else bool(has_more),
            total_count=pagination.get("totalCount"),
            server_time=_server_time(response, self.clock),
            dated=bool(response.headers.get("date")),
        )

    def probe(self) -> tuple[dict, httpx.Headers]:
        """One list request for one conversation (`syncer doctor`): the body and the headers."""
        body, response = self._get_json(CONVERSATIONS, {"limit": 1, "status": "all",
                                                        "includeCount": "true"},
                                         "conversation_list_response")
        return body, response.headers

    def get_conversation(self, cid: str) -> dict:
        body, _ = self._get_json(conversation_path(cid), {}, "conversation_detail_envelope")
        wrapped = body.get("data")
        if "id" not in body and isinstance(wrapped, dict) and "id" in wrapped:
            return wrapped          # a server that wraps single records in {"data": ...}
        return body

    def list_messages(self, cid: str, *, order: str = "desc", offset: int | None = None,
                      cursor: str | None = None,
                      limit: int = MESSAGE_PAGE) -> tuple[list, str | None, int]:
        """One page of a conversation's messages, the next cursor if the server offers one
        (undocumented; some servers paginate messages like the conversation list), and the
        answer's size in bytes."""
        params: dict[str, str | int] = {"limit": limit, "order": order}
        if offset:
            params["offset"] = offset
        if cursor:
            params["cursor"] = cursor
        body, response = self._get_json(conversation_path(cid) + "/messages", params,
                                        "message_list_response")
        pagination = body.get("pagination")
        next_cursor = None
        if isinstance(pagination, dict) and pagination.get("hasMore") is not False:
            candidate = pagination.get("nextCursor")
            next_cursor = candidate if isinstance(candidate, str) and candidate else None
        return body["data"], next_cursor, response.num_bytes_downloaded

    # -- transport ---------------------------------------------------------------------------
    def _get_json(self, path: str, params: dict, kind: str) -> tuple[dict, httpx.Response]:
        """GET with retries. Returns the parsed JSON object and the final response."""
        attempt = 0
        while True:
            try:
                body, response = self._request(path, params)
                if kind == "conversation_detail_envelope":
                    if not isinstance(body, dict):
                        raise RetryableError(f"GET {path}: answer is not a JSON object", path=path)
                else:
                    reason = problem(kind, body)
                    if reason:
                        raise RetryableError(f"GET {path}: malformed answer ({reason})", path=path)
                return body, response
            except RetryableError as e:
                if self.stop.is_set():
                    raise Interrupted(f"{e} (not retried: stopping)") from None
                attempt += 1
                if attempt > self.settings.max_retries:
                    raise RetriesExhausted(f"{e} (gave up after {attempt} attempt"
                                           f"{'' if attempt == 1 else 's'})",
                                           path=path, status=e.status) from None
                wait = e.retry_after if e.retry_after is not None else retry.backoff(attempt)
                log.info("retrying GET %s in %.1fs: %s", path, wait, e)
                if self.stop.wait(wait):
                    raise Interrupted(f"{e} (not retried: stopping)") from None
                self.counters.add("retries")

    def _request(self, path: str, params: dict) -> tuple[object, httpx.Response]:
        self.pacer.wait(self.stop)
        self.counters.add("requests")
        started, sent = time.monotonic(), time.time()
        limit = self.settings.max_response_bytes
        timeout = self.settings.timeout
        try:
            with self._bounds.request(timeout), \
                    self._http.stream("GET", path, params=params) as response:
                self._answered = True
                self._read_clock(response, sent)
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise TooLargeError(f"GET {path}: answer of {int(declared)} bytes is over the "
                                        f"{limit} byte limit ([api].max_response_mb)", path=path,
                                        size=int(declared))
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    self._bounds.left()     # also for a transport that is not ours
                    size += len(chunk)
                    if size > limit:
                        raise TooLargeError(f"GET {path}: answer is over the {limit} byte limit "
                                            "([api].max_response_mb)", path=path)
                    chunks.append(chunk)
                body = b"".join(chunks)
        except bounded.Stopped:
            raise RetryableError(f"GET {path}: ended by a stop request", path=path) from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            reason, final = connect_failure(e)
            text = f"cannot reach {self._where} ({reason})"
            if final and not self._answered:
                raise UnreachableError(text, path=path) from None
            raise RetryableError(text, path=path) from None
        except (bounded.DeadlineExceeded, httpx.TimeoutException):
            raise RetryableError(f"GET {path}: timed out after {timeout:g}s ([api].timeout)",
                                 path=path) from None
        except httpx.TransportError as e:
            raise RetryableError(f"GET {path}: connection failed ({type(e).__name__})",
                                 path=path) from None
        status = response.status_code
        log.debug("GET %s %s -> %s (%.0f ms, %d bytes)", path, _query_text(params), status,
                  (time.monotonic() - started) * 1000, len(body))
        self.pacer.observe(response.headers, now=self.clock.now())
        if 200 <= status < 300:
            try:
                return json.loads(body), response
            except RecursionError:
                raise ProtocolError(f"GET {path}: answer is nested too deeply to read",
                                    path=path, status=status) from None
            except ValueError:
                raise RetryableError(f"GET {path}: answer is not valid JSON "
                                     f"({response.headers.get('content-type', 'no type')})",
                                     path=path, status=status) from None
        raise self._status_error(path, response, body)

    def _read_clock(self, response: httpx.Response, sent: float) -> None:
        """Learn the server's clock from an answer's Date, read as its headers arrive."""
        if self.clock.observe(response.headers.get("date"), sent=sent) is None:
            with self._lock:
                self.undated_answers += 1
            self._say_once("undated", "the server's answers carry no Date header: the local "
                           "clock dates the watermark and reads rate-limit reset times")
            return
        skew = self.clock.offset
        if skew is not None and abs(skew) > SKEW_TO_REPORT:
            # a Date is cut to the second: the true offset is at most a second above
            self._say_once("skew", "the server's clock is %+ds from ours (its Date header); "
                           "rate-limit waits are read on the server's clock", math.ceil(skew))

    def _say_once(self, what: str, message: str, *args: object) -> None:
        with self._lock:
            if what in self._said:
                return
            self._said.add(what)
        log.warning(message, *args)

    def _status_error(self, path: str, response: httpx.Response, body: bytes) -> ApiError:
        status = response.status_code
        detail = _error_text(body)
        text = f"GET {path}: HTTP {status}" + (f" ({detail})" if detail else "")
        if status in (401, 403):
            what = "refused the API key" if status == 401 else "the API key lacks messaging read scope"
            return AuthError(f"{what} (HTTP {status}); check {'RUNTYPE_API_KEY'}",
                             path=path, status=status)
        if status in (404, 410):
            return NotFoundError(text, path=path, status=status)
        if status == 400:
            return BadRequestError(text, path=path, status=status)
        if status == 429 or status == 408 or status >= 500:
            wait = retry.retry_after(response.headers, now=self.clock.now())
            if status == 429:
                self.counters.add("throttled")
                self.pacer.pause(wait if wait is not None else 1.0)
            return RetryableError(text, path=path, status=status, retry_after=wait)
        if 300 <= status < 400:
            target = urlsplit(response.headers.get("location", "")).hostname or "elsewhere"
            return ProtocolError(f"GET {path}: redirected ({status}) to {target}; not followed, "
                                 "so the key is not sent there", path=path, status=status)
        return ProtocolError(text, path=path, status=status)


def _query_text(params: dict) -> str:
    return "&".join(f"{k}={v}" for k, v in params.items())
