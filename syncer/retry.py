"""When to retry, how long to wait, and pacing from rate-limit headers. The only sleeper.

Waits are exponential with full jitter, capped; a `Retry-After` (or, failing that, the
`X-RateLimit-Reset` header) from the server overrides the computed wait. The Pacer spreads the
requests left in the current rate-limit window over the time left in it, so that a long sync
uses its allowance without living on 429s; a 429 pauses every thread until the server's reset.

A reset or Retry-After given as a point in time is read on the server's clock (its `Date`
header, or the ServerClock's estimate from earlier answers), never on ours: a skew between the
two would otherwise turn into waits far too long or into 429 storms. Every wait is capped.
"""
from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

MAX_WAIT = 60.0          # seconds: the longest single wait, whatever the server asks for
_RESERVE_SHARE = 0.05    # of the window's limit, kept back for other clients of the same key
_EPOCH = 1e9             # a reset above this is a Unix time, not a number of seconds


def backoff(attempt: int, *, base: float = 0.25, cap: float = 8.0) -> float:
    """Seconds to wait before retry number `attempt` (1-based): full jitter."""
    return random.uniform(0, min(cap, base * 2 ** attempt))


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        n = float(value)
    except ValueError:
        return None
    return n if n >= 0 else None


def http_date(value: str | None) -> float | None:
    """An HTTP date (as in `Date` or `Retry-After`) as a Unix time, or None."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _server_now(headers: Mapping[str, str], now: float | None) -> float:
    """The server's time: the caller's estimate, else the answer's Date, else our clock."""
    if now is not None:
        return now
    dated = http_date(headers.get("date"))
    return dated if dated is not None else time.time()


def _capped(seconds: float) -> float:
    return max(0.0, min(seconds, MAX_WAIT))


def reset_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """X-RateLimit-Reset as seconds from now, capped; the header may be a delay or a Unix time.
    A Unix time is read against `now`, the server's time (see _server_now)."""
    reset = _number(headers.get("x-ratelimit-reset"))
    if reset is None:
        return None
    if reset > _EPOCH:
        reset = reset - _server_now(headers, now)
    return _capped(reset)


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait the server asks for, capped: Retry-After (seconds or an HTTP date), else the
    rate-limit reset. Points in time are read against the server's time `now`."""
    value = headers.get("retry-after")
    wait = _number(value)
    if wait is not None:
        return _capped(wait)
    until = http_date(value)
    if until is not None:
        return _capped(until - _server_now(headers, now))
    return reset_seconds(headers, now)


class ServerClock:
    """The server's clock as its `Date` headers show it, as an offset from ours.

    A Date is the server's time cut to the second, stamped between our sending the request and
    our reading the answer's headers. So each answer bounds the offset from below
    (Date - received) and from above (Date + 1 - sent). The estimate is the largest lower bound
    seen, the one least late; an answer whose upper bound falls below the estimate shows the
    server's clock was set back, and starts it afresh. A slow answer moves neither bound
    wrongly, however slow."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.offset: float | None = None    # server minus local, seconds

    def observe(self, date: str | None, sent: float | None = None,
                received: float | None = None) -> float | None:
        """Take one answer's Date header, with our times (Unix) of sending the request and of
        reading the headers (now, if not given). Returns the lower bound it shows, or None if
        there is no usable date."""
        dated = http_date(date)
        if dated is None:
            return None
        received = received if received is not None else time.time()
        sent = sent if sent is not None else received
        low, high = dated - received, dated + 1 - sent
        with self._lock:
            if self.offset is None or low > self.offset or high < self.offset:
                self.offset = low
        return low

    def now(self, local: float | None = None) -> float:
        """The server's time now (Unix), as far as we know it; ours if it never said."""
        return (local if local is not None else time.time()) + (self.offset or 0.0)


class Pacer:
    """Shared by all request threads: call `wait()` before a request, `observe()` after.

    Requests are spaced evenly at the allowance, window / (limit - reserve), where the window is
    the longest `X-RateLimit-Reset` seen: that holds for fixed windows (the allowance refills at
    the reset) and sliding ones (it refills as old requests age out). Should the allowance
    still run out (other clients share the key), every thread waits for the reset."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0.0
        self._interval = 0.0
        self._window = 0.0

    def wait(self, stop: threading.Event | None = None) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            if stop is not None:
                stop.wait(start - now)
            else:
                time.sleep(start - now)

    def observe(self, headers: Mapping[str, str], now: float | None = None) -> None:
        """Take one answer's rate-limit headers; `now` is the server's time (see reset_seconds)."""
        limit = _number(headers.get("x-ratelimit-limit"))
        remaining = _number(headers.get("x-ratelimit-remaining"))
        reset = reset_seconds(headers, now)
        if limit is None or remaining is None or reset is None or limit < 1:
            return
        reserve = max(1.0, limit * _RESERVE_SHARE)
        with self._lock:
            self._window = max(self._window, reset)
            self._interval = self._window / max(limit - reserve, 1.0)
            if remaining <= 1:
                self._next = max(self._next, time.monotonic() + reset)

    @property
    def interval(self) -> float:
        return self._interval

    def pause(self, seconds: float) -> None:
        """Hold every thread back: the server said 429."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + _capped(seconds))
