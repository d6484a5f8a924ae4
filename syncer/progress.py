"""Where a sync run is, for the people watching it.

The engine reports plain dicts (sync.py `_report`): once at the start, what earlier runs left
queued and how many messages the mirror holds (`queued`, `held_messages`, and `whole`: the walk
covers the whole list rather than stopping at the watermark); on every list page, how far the
walk is (`walk` numbers the walk, `walked`, `total`); as each conversation is read, how many
were (`fetched`, and `read` messages); after every committed batch, the messages written
(`messages`: the writer commits in batches, seconds apart, so the rate is of messages read). A `Tally` gathers them from any thread and works out the elapsed
time, the recent rate and the time left. Two readers:
- `TerminalLine`, the live line of `syncer sync` at the bottom of a terminal's stderr. Anything
  else written to stderr meanwhile (a log record, a signal's warning) first wipes the line, which
  is drawn again after, so nothing glues onto it.
- `ProgressLog`, the daemon's line in its log every so many seconds while a run lasts.

Hand-rolled rather than rich's live display, by measurement on this machine: importing
rich.progress costs 43 ms and installing rich 13.5 MB (pygments and markdown-it come with it),
for one line of ASCII that needs no display-width measuring; and the part that needs care,
keeping log records off the line, would be ours either way, because the log handler writes to
the stderr it was given, not to rich's console.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

RECENT = 20.0       # seconds of history behind the rate and the ETA
REDRAW = 0.2        # seconds between two drawings of the terminal line


@dataclass(frozen=True)
class Snapshot:
    elapsed: float
    walked: int
    total: int | None            # the list's totalCount (None before the first page)
    whole: bool                  # the walk covers the whole list (no watermark to stop at)
    fetched: int                 # conversations read by this run
    read: int                    # messages read by this run
    messages: int                # messages written (committed) by this run
    queued: int                  # conversations earlier runs left queued
    held_messages: int | None    # messages the mirror held when the run began
    rate: float | None           # messages read per second, recently
    eta: float | None            # seconds left, when the work is known

    @property
    def resumed(self) -> bool:
        return self.queued > 0

    @property
    def finishing(self) -> bool:
        return self.whole and self.total is not None and self.walked >= self.total


class Tally:
    """What the engine reported so far. `update` is called from the engine's threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._walk = 0
        self._v = {"walked": 0, "total": None, "whole": False, "fetched": 0, "read": 0,
                   "messages": 0, "queued": 0, "held_messages": None}
        self._recent: deque[tuple[float, int, int]] = deque([(self._started, 0, 0)])

    def update(self, info: dict) -> None:
        with self._lock:
            if info.get("walk", self._walk) != self._walk:     # a new walk starts from the top
                self._walk = info["walk"]
                self._v["walked"] = 0
            for key in ("walked", "fetched", "read", "messages"):   # reported from threads
                if info.get(key) is not None:
                    self._v[key] = max(self._v[key], info[key])
            for key in ("total", "whole", "queued", "held_messages"):
                if key in info:
                    self._v[key] = info[key]

    def _work(self) -> tuple[int, int | None]:
        """(done, to do) in conversations: what earlier runs left queued, then the list."""
        v = self._v
        done = min(v["fetched"], v["queued"]) + v["walked"]
        if not v["whole"] or v["total"] is None:
            return done, None
        return done, v["queued"] + v["total"]

    def snapshot(self) -> Snapshot:
        with self._lock:
            now = self._clock()
            v = self._v
            done, work = self._work()
            if now - self._recent[-1][0] >= 1.0:
                self._recent.append((now, done, v["read"]))
            while len(self._recent) > 2 and now - self._recent[1][0] >= RECENT:
                self._recent.popleft()
            then, done_then, read_then = self._recent[0]
            span = now - then
            rate = (v["read"] - read_then) / span if span >= 1.0 else None
            eta = None
            if work is not None and span >= 1.0 and done > done_then:
                eta = max(work - done, 0) / ((done - done_then) / span)
            return Snapshot(elapsed=now - self._started, walked=v["walked"], total=v["total"],
                            whole=v["whole"], fetched=v["fetched"], read=v["read"],
                            messages=v["messages"],
                            queued=v["queued"], held_messages=v["held_messages"], rate=rate,
                            eta=eta)


def clock(seconds: float) -> str:
    """1:05, 12:00, 1:02:03."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _n(count: int, one: str, many: str) -> str:
    return f"{count:,} {one if count == 1 else many}"


def resume_notice(queued: int, held_messages: int | None) -> str:
    held = "" if held_messages is None else \
        f"; {_n(held_messages, 'message', 'messages')} already held"
    return (f"resuming: {_n(queued, 'conversation', 'conversations')} queued from the last "
            f"run{held}")


def parts(s: Snapshot) -> list[tuple[str, int, str, int]]:
    """The line's parts in display order, each as (text, rank to drop it, short form, rank
    to shorten it): when the terminal is narrow, what has the highest rank goes first."""
    out = [(clock(s.elapsed), 1, "", 0)]
    if s.resumed and s.fetched < s.queued:
        out.append((f"queue {s.fetched:,}/{s.queued:,}", 3, "", 0))
    if s.total is None:
        out.append((f"walked {_n(s.walked, 'conversation', 'conversations')}", 2,
                    f"walked {s.walked:,}", 6))
    elif s.whole:
        out.append((f"walked {s.walked:,}/{s.total:,} conversations", 2,
                    f"walked {s.walked:,}/{s.total:,}", 6))
    else:
        out.append((f"walked {s.walked:,} of up to {s.total:,} conversations", 2,
                    f"walked {s.walked:,} of {s.total:,}", 6))
    out.append((f"{s.fetched:,} fetched", 7, "", 0))
    held = (f", {s.held_messages + s.messages:,} held"
            if s.resumed and s.held_messages is not None else "")
    messages = _n(s.read, "message", "messages")
    out.append((f"{messages} ({s.messages:,} written{held})", 3, messages, 8))
    if s.rate is not None:
        out.append((f"{s.rate:,.0f} msg/s", 5, "", 0))
    if s.finishing:
        out.append(("finishing", 4, "", 0))
    elif s.eta is not None:
        out.append((f"ETA {clock(s.eta)}", 4, "", 0))
    return out


def line(s: Snapshot, width: int) -> str:
    """The progress line in at most `width` columns."""
    shown = [list(part) for part in parts(s)]
    while True:
        text = "  ".join(part[0] for part in shown)
        if len(text) <= width or len(shown) == 1:
            return text[:width]
        part = max(shown, key=lambda p: max(p[1], p[3]))
        if part[3] > part[1]:
            part[0], part[2], part[3] = part[2], "", 0
        else:
            shown.remove(part)


def summary_text(s: Snapshot) -> str:
    """The daemon's progress line."""
    total = "" if s.total is None else (f"/{s.total:,}" if s.whole else f" of up to {s.total:,}")
    text = (f"sync running for {clock(s.elapsed)}: walked {s.walked:,}{total} conversations, "
            f"{s.fetched:,} fetched, {_n(s.read, 'message', 'messages')} read "
            f"({s.messages:,} written)")
    if s.rate is not None:
        text += f", {s.rate:,.0f} msg/s"
    if s.eta is not None and not s.finishing:
        text += f", about {clock(s.eta)} left"
    return text


def columns(stream) -> int:
    """The terminal's width: COLUMNS when set (the convention), else the terminal's own."""
    try:
        return max(int(os.environ["COLUMNS"]), 20)
    except (KeyError, ValueError):
        pass
    try:
        size = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        size = 0
    return size if size >= 20 else 80


class _Guarded:
    """Stands for stderr while the line is shown: every write wipes the line first; the line
    is drawn again once what was written ends a line."""

    def __init__(self, display: "TerminalLine", real):
        self._display = display
        self._real = real

    def write(self, text: str) -> int:
        return self._display.write_through(text)

    def flush(self) -> None:
        self._real.flush()

    def __getattr__(self, name):
        return getattr(self._real, name)


class _Ticking:
    """Calls `tick()` every `every` seconds on a thread of its own, from `start` to `stop`;
    a tick that returns False ends the ticking."""

    def __init__(self, tick: Callable[[], bool | None], every: float, name: str):
        self._tick, self._every, self._name = tick, every, name
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self._every):
            if self._tick() is False:
                return


class TerminalLine:
    """The live progress line on a terminal's stderr. Use as a context manager; pass `report`
    to the engine as its progress callback."""

    def __init__(self, stream=None, *, tally: Tally | None = None, every: float = REDRAW):
        self.stream = stream or sys.stderr
        self.tally = tally or Tally()
        self._ticking = _Ticking(self.tick, every, "progress")
        self._lock = threading.RLock()
        self._shown = 0                  # columns of the line now on the screen
        self._at_line_start = True       # nobody else left half a line on the screen
        self._guarded = _Guarded(self, self.stream)
        self._handlers: list[logging.StreamHandler] = []

    def report(self, info: dict) -> None:
        self.tally.update(info)
        if info.get("queued"):
            self.notice(resume_notice(info["queued"], info.get("held_messages")))

    def notice(self, text: str) -> None:
        """A line that stays, above the progress line."""
        self.write_through(text + "\n")

    def write_through(self, text: str) -> int:
        with self._lock:
            self._wipe()
            n = self.stream.write(text)
            self.stream.flush()
            if text:
                self._at_line_start = text.endswith("\n")
            return n

    def _wipe(self) -> None:
        if self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self._shown = 0

    def draw(self) -> None:
        with self._lock:
            if not self._at_line_start:
                return
            width = columns(self.stream) - 1     # the last column would wrap on some terminals
            text = line(self.tally.snapshot(), width).ljust(min(self._shown, width))
            self.stream.write("\r" + text)
            self.stream.flush()
            self._shown = len(text)

    def tick(self) -> bool:
        try:
            self.draw()
        except OSError:        # the terminal went away: the run goes on without the line
            return False
        return True

    def __enter__(self) -> "TerminalLine":
        sys.stderr = self._guarded
        for handler in _stream_handlers():
            if handler.stream is self.stream:
                handler.setStream(self._guarded)
                self._handlers.append(handler)
        self._ticking.start()
        return self

    def __exit__(self, *exc) -> None:
        self._ticking.stop()
        with self._lock:
            self._wipe()
            self.stream.flush()
        for handler in self._handlers:
            handler.setStream(self.stream)
        if sys.stderr is self._guarded:
            sys.stderr = self.stream


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger()] + [logging.getLogger(name)
                                       for name in list(logging.root.manager.loggerDict)]
    return [h for lg in loggers for h in getattr(lg, "handlers", [])
            if isinstance(h, logging.StreamHandler)]


class ProgressLog:
    """Logs where the run is every `every` seconds while it lasts (the daemon's progress). Use
    as a context manager around the run; pass `report` to the engine."""

    def __init__(self, log: logging.Logger, every: float, *, tally: Tally | None = None):
        self.log = log
        self.tally = tally or Tally()
        self._ticking = _Ticking(self.tick, every, "progress-log")

    def report(self, info: dict) -> None:
        self.tally.update(info)
        if info.get("queued"):
            self.log.info("%s", resume_notice(info["queued"], info.get("held_messages")))

    def tick(self) -> None:
        self.log.info("%s", summary_text(self.tally.snapshot()))

    def __enter__(self) -> "ProgressLog":
        self._ticking.start()
        return self

    def __exit__(self, *exc) -> None:
        self._ticking.stop()
