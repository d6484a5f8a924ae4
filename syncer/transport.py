"""The API client's httpx transport: every wait on the network ends at the request's deadline,
or soon after a stop.

httpx bounds each connect, write and read, not a whole request: a server that sends a byte a
second never trips its timeout (LESSONS.md #16), and a read waits out its whole timeout before
it notices a stop. Here a socket read waits at most SLICE seconds at a time and, between
slices, checks the deadline and the stop event of the request its thread is making. A sync
httpx request does its I/O in the calling thread, so a thread-local holds that request's
deadline (`Bounds.request`).

Once a stop is asked, requests in flight get STOP_GRACE seconds to finish (a quick answer is
still saved), then end with Stopped; a request that runs past its deadline ends with
DeadlineExceeded. Both pass through httpx unchanged (it re-raises what it does not know).
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator

import httpcore
import httpx

SLICE = 0.5          # seconds: the longest a socket read waits before the bounds are checked
STOP_GRACE = 2.0     # seconds a request in flight may still take once a stop is asked


class Cancelled(Exception):
    """A request ended by its bounds rather than by the server."""


class DeadlineExceeded(Cancelled):
    pass


class Stopped(Cancelled):
    pass


class Bounds:
    """The deadline of each thread's request, and the stop event shared by all of them.
    `clock` (seconds) and `slice_seconds` (the longest socket wait, on our clock) can be
    given so that tests run the deadlines and the grace of a stop faster than real time."""

    def __init__(self, stop: threading.Event, *, clock: Callable[[], float] = time.monotonic,
                 slice_seconds: float = SLICE):
        self.stop = stop
        self.clock = clock
        self.slice = slice_seconds
        self._local = threading.local()
        self._lock = threading.Lock()
        self._stop_seen: float | None = None

    @contextlib.contextmanager
    def request(self, seconds: float) -> Iterator[None]:
        """Bound the request this thread makes inside the block to `seconds` in all."""
        self._local.deadline = self.clock() + seconds
        try:
            yield
        finally:
            self._local.deadline = None

    def left(self) -> float:
        """Seconds this thread's request may still take; raises once it must end."""
        now = self.clock()
        ends = getattr(self._local, "deadline", None) or math.inf
        with self._lock:
            if not self.stop.is_set():
                self._stop_seen = None
            elif self._stop_seen is None:
                self._stop_seen = now
            if self._stop_seen is not None:
                if now >= self._stop_seen + STOP_GRACE:
                    raise Stopped("stopped")
                ends = min(ends, self._stop_seen + STOP_GRACE)
        if now >= ends:
            raise DeadlineExceeded("deadline")
        return ends - now


def _within(limit: float | None, left: float) -> float:
    return left if limit is None else min(limit, left)


class _BoundedStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, bounds: Bounds):
        self._stream = stream
        self._bounds = bounds

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        # httpx's read timeout still holds for each read; it is waited out in slices
        gives_up = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = min(self._bounds.slice, self._bounds.left())
            if gives_up is not None:
                wait = min(wait, gives_up - time.monotonic())
            try:
                return self._stream.read(max_bytes, timeout=max(wait, 0.01))
            except httpcore.ReadTimeout:
                if gives_up is not None and time.monotonic() >= gives_up:
                    raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout=_within(timeout, self._bounds.left()))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:
        stream = self._stream.start_tls(ssl_context, server_hostname,
                                        _within(timeout, self._bounds.left()))
        return _BoundedStream(stream, self._bounds)

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


class _BoundedBackend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend, bounds: Bounds):
        self._backend = backend
        self._bounds = bounds

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        stream = self._backend.connect_tcp(host, port, _within(timeout, self._bounds.left()),
                                           local_address, socket_options)
        return _BoundedStream(stream, self._bounds)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        stream = self._backend.connect_unix_socket(path, _within(timeout, self._bounds.left()),
                                                   socket_options)
        return _BoundedStream(stream, self._bounds)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def bounded_transport(bounds: Bounds, limits: httpx.Limits) -> httpx.HTTPTransport:
    """httpx's own transport, its sockets wrapped so that every wait obeys `bounds`."""
    transport = httpx.HTTPTransport(limits=limits)
    # httpx 0.28 takes no network backend (encode/httpx discussion #3180); its pool does.
    # tests/test_deadline.py fails if a new httpx moves this.
    pool = transport._pool
    pool._network_backend = _BoundedBackend(pool._network_backend, bounds)
    return transport
