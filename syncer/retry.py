"""When to retry, how long to wait, and pacing from rate-limit headers. The only sleeper.

Waits are exponential with full jitter, capped; a `Retry-After` (or, failing that, the
`X-RateLimit-Reset` header) from the server overrides the computed wait. The Pacer spreads the
requests left in the current rate-limit window over the time left in it, so that a long sync
uses its allowance without living on 429s; a 429 pauses every thread until the server's reset.
"""
from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping

MAX_WAIT = 60.0          # seconds: the longest single wait, whatever the server asks for
_RESERVE_SHARE = 0.05    # of the window's limit, kept back for other clients of the same key


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


def reset_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """X-RateLimit-Reset as seconds from now; the header may be a delay or an epoch time."""
    reset = _number(headers.get("x-ratelimit-reset"))
    if reset is None:
        return None
    if reset > 1e9:
        reset = reset - (now if now is not None else time.time())
    return max(0.0, min(reset, MAX_WAIT))


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait the server asks for: Retry-After, else the rate-limit reset."""
    wait = _number(headers.get("retry-after"))
    if wait is not None:
        return min(wait, MAX_WAIT)
    return reset_seconds(headers)


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

    def observe(self, headers: Mapping[str, str]) -> None:
        limit = _number(headers.get("x-ratelimit-limit"))
        remaining = _number(headers.get("x-ratelimit-remaining"))
        reset = reset_seconds(headers)
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
            self._next = max(self._next, time.monotonic() + seconds)
