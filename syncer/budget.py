"""The request budget: at most `[api].max_requests_per_hour` requests in any hour.

A key's allowance (1,000 requests an hour by default) is shared with the customer's own
integrations, so the mirror takes a share of it and no more: the configured figure, else half of
what the server's rate-limit headers announce, converted to an hour (`auto`), else
DEFAULT_PER_HOUR while the server has announced nothing.

It is a sliding window, not a pace: a run that needs fewer requests than the budget makes them
at full speed; one that needs more makes the budget's worth, then each further request waits
until one of the last hour's ages out. Requests of earlier runs count: the run record
(`_sync_runs`) holds each run's requests and when it finished; they are counted as made at that
moment (the latest they can have been made, so never too few), and at most one budget's worth
of them (a run under the budget never made more in any hour). A run killed before its record
was finished recorded no requests, and the requests of `verify` and `doctor` are not recorded.

Waiting is interruptible by the stop event, reported to a callback (the progress line) and
logged. The clock and the wait are injectable, so the hour can be tested in seconds.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from .errors import Interrupted

log = logging.getLogger(__name__)

HOUR = 3600.0
DEFAULT_PER_HOUR = 500    # the budget while the server announces no allowance
SHARE = 0.5               # of the announced allowance, taken when the budget is `auto`
_BUCKET = 1.0             # seconds: requests this close together are kept as one entry


def per_hour(announced: tuple[float, float] | None) -> tuple[int, int | None]:
    """(the `auto` budget, the announced allowance per hour or None) for an allowance of
    (requests, seconds) as the Pacer estimates it."""
    if announced is None:
        return DEFAULT_PER_HOUR, None
    limit, window = announced
    hourly = limit * HOUR / window
    return max(1, math.floor(hourly * SHARE)), round(hourly)


def minutes(seconds: float) -> str:
    """A wait as people say it: '40 s', '12 min', '1 h 5 min'."""
    if seconds < 60:
        return f"{max(seconds, 0):.0f} s"
    m = math.ceil(seconds / 60)
    return f"{m} min" if m < 60 else f"{m // 60} h {m % 60} min" if m % 60 else f"{m // 60} h"


class Budget:
    """Shared by all request threads of a client: `take(stop)` before every request.

    `configured`: the budget per hour, or None for `auto` (then `announced()` gives the
    allowance the server announces, as the Pacer estimates it). `on_wait(seconds)` is called
    when a wait for the budget begins (seconds > 0) and when it ends (0)."""

    def __init__(self, configured: int | None,
                 announced: Callable[[], tuple[float, float] | None] = lambda: None, *,
                 clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[threading.Event, float], bool] | None = None,
                 on_wait: Callable[[float], None] | None = None):
        self.configured = configured
        self._announced = announced
        self._clock = clock
        self._wait = wait or (lambda stop, seconds: stop.wait(seconds))
        self.on_wait = on_wait
        self._lock = threading.Lock()
        self._spent: deque[list] = deque()   # [when, how many], oldest first, within the hour
        self._used = 0                       # requests in _spent
        self._until = 0.0                    # the end of the wait last reported
        self.made = 0                        # requests taken by this client
        self.waited = 0.0                    # seconds spent waiting for the budget

    @property
    def per_hour(self) -> int:
        return self.configured or per_hour(self._announced())[0]

    def count_earlier(self, runs: Iterable[tuple[float, int]]) -> None:
        """Count earlier runs' requests: (seconds ago they ended, how many)."""
        cap = self.per_hour
        now = self._clock()
        with self._lock:
            for ago, requests in sorted(runs, key=lambda r: -r[0]):
                if 0 < requests and ago < HOUR:
                    self._spent.append([now - max(ago, 0.0), min(requests, cap)])
                    self._used += min(requests, cap)

    def used(self) -> int:
        """Requests made in the last hour, as far as this budget knows."""
        with self._lock:
            self._expire(self._clock())
            return self._used

    def take(self, stop: threading.Event) -> None:
        """Return once a request may be made within the budget, counting it; Interrupted if
        `stop` is set while waiting (the request is then not made)."""
        waited = False
        while True:
            with self._lock:
                now = self._clock()
                self._expire(now)
                cap = self.per_hour
                if self._used < cap:
                    self._count(now)
                    break
                seconds = self._free_in(now, cap)
                report = now + seconds > self._until + 1.0
                if report:
                    self._until = now + seconds
            if report:
                log.info("waiting %s for the request budget: %d requests in the last hour, "
                         "%d allowed ([api].max_requests_per_hour)", minutes(seconds),
                         self._used, cap)
                if self.on_wait is not None:
                    self.on_wait(seconds)
            waited = True
            started = self._clock()
            stopped = self._wait(stop, seconds)
            self.waited += self._clock() - started
            if stopped or stop.is_set():
                raise Interrupted("stopped while waiting for the request budget")
        if waited and self.on_wait is not None:
            self.on_wait(0)

    def _count(self, now: float) -> None:
        last = self._spent[-1] if self._spent else None
        if last is not None and last[0] >= now - _BUCKET:
            last[0], last[1] = now, last[1] + 1   # counted as made at the latest of them
        else:
            self._spent.append([now, 1])
        self._used += 1
        self.made += 1

    def _expire(self, now: float) -> None:
        while self._spent and self._spent[0][0] <= now - HOUR:
            self._used -= self._spent.popleft()[1]

    def _free_in(self, now: float, cap: int) -> float:
        """Seconds until the requests of the last hour are fewer than `cap`."""
        over = self._used - cap + 1
        for when, n in self._spent:
            over -= n
            if over <= 0:
                return max(when + HOUR - now, 0.001)
        return 0.001
