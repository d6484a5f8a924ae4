"""The daemon: `run_sync` on a schedule, one run at a time, until told to stop.

One writer: the daemon takes the mirror's writer lock when it starts and holds it until it
exits, so a `syncer sync` from cron (or a second daemon) fails at once with exit 4 whether or
not a run is in progress, and no run of this daemon can ever find the lock taken between ticks.
Each run's `run_sync` nests inside the held lock (lock.writing is re-entrant per process).
Inside the process, APScheduler runs the job with max_instances=1 and coalesces missed ticks.

A run that fails (API down, a 5xx storm, a database error) is logged with its cause and the
next tick tries again; the daemon never dies of a run's error. Only an API key refused by
AUTH_FAILURES_TO_STOP runs in a row stops it, with AuthError (exit 3).

What the daemon says is its own: a line when it starts and stops, one per run, a progress line
every PROGRESS_EVERY seconds while a run lasts (SYNCER_PROGRESS_EVERY overrides it, for tests),
and a line when a run outlasts its interval. APScheduler's own log records (a tick skipped
because the run is still going, "maximum number of running instances reached") are silenced:
the events they describe reach the daemon through listeners and are said in its words.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from datetime import datetime

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from . import binding, lock
from .config import Settings, parse_duration
from .errors import AuthError, ConfigError, SyncerError
from .progress import ProgressLog
from .runner import describe, run_sync
from .status import duration
from .store import Store

log = logging.getLogger(__name__)

AUTH_FAILURES_TO_STOP = 3
PROGRESS_EVERY = 30.0                # seconds between two progress lines of a long run
MIN_INTERVAL = 1.0
_JOB = "sync"
_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def progress_every() -> float:
    try:
        return max(float(os.environ.get("SYNCER_PROGRESS_EVERY", PROGRESS_EVERY)), 0.1)
    except ValueError:
        return PROGRESS_EVERY


def silence_apscheduler() -> None:
    """No record of APScheduler's reaches the user: its warnings are about our own job,
    whose events the daemon reports itself. (Without a handler of its own, a record would go
    to logging's last-resort handler on stderr.)"""
    aps = logging.getLogger("apscheduler")
    aps.handlers[:] = [logging.NullHandler()]
    aps.propagate = False
    aps.setLevel(logging.CRITICAL + 1)


def parse_interval(text: str) -> float:
    """--interval's value: a duration with a unit (a bare 15 is refused, not guessed)."""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise ConfigError(f"--interval: {e}") from None


def _crontab_weekdays(field: str) -> str:
    """Crontab weekday numbers (0 or 7 = Sunday) as names, because APScheduler 3 counts
    0 = Monday (apscheduler #286). Names, `*` and `*/n` pass through unchanged."""
    out: list[str] = []
    for part in field.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?(?:/(\d+))?", part)
        if not m:
            out.append(part)
            continue
        first = int(m[1])
        last = int(m[2]) if m[2] else (7 if m[3] else first)
        step = int(m[3]) if m[3] else 1
        if first > 7 or last > 7 or first > last or step < 1:
            raise ValueError(f"bad weekday {part!r} (0-7, 0 and 7 are Sunday)")
        out += [_CRON_DAYS[d] for d in range(first, last + 1, step)
                if _CRON_DAYS[d] not in out]
    return ",".join(out)


def cron_trigger(expr: str, jitter: float = 0.0) -> CronTrigger:
    """A crontab expression (minute hour day month weekday, local time) -> trigger."""
    fields = expr.split()
    if len(fields) != 5:
        raise ConfigError(f"cron expression {expr!r}: expected 5 fields "
                          f"(minute hour day-of-month month day-of-week), got {len(fields)}")
    minute, hour, day, month, weekday = fields
    try:
        return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                           day_of_week=_crontab_weekdays(weekday), jitter=int(jitter) or None)
    except ValueError as e:
        raise ConfigError(f"cron expression {expr!r}: {e}") from None


def make_trigger(interval: float | None, cron: str | None,
                 jitter: float) -> tuple[BaseTrigger, str]:
    """(trigger, description). A cron expression wins over an interval. The interval's jitter
    is capped at a tenth of the interval, so a short interval stays short."""
    if cron:
        return cron_trigger(cron, jitter), f"on cron {cron!r} (jitter {duration(int(jitter))})"
    if interval is None or interval < MIN_INTERVAL:
        raise ConfigError(f"schedule interval must be at least {MIN_INTERVAL:g}s, "
                          f"got {interval!r}s")
    jitter = min(jitter, interval / 10)
    return (IntervalTrigger(seconds=interval, jitter=jitter or None),
            f"every {duration(interval)} (jitter {duration(jitter)})")


class Daemon:
    def __init__(self, settings: Settings, trigger: BaseTrigger, *, schedule: str = "",
                 initial_run: bool = True, stop: threading.Event | None = None):
        self.settings = settings
        self.trigger = trigger
        self.schedule = schedule
        self.initial_run = initial_run
        self.stop = stop or threading.Event()
        self.auth_failures = 0
        self.fatal: SyncerError | None = None
        self._guard = threading.Lock()
        self._run_stop: threading.Event | None = None
        self._skipped = 0                 # ticks skipped while the current run goes on

    def run(self) -> None:
        """Run until `stop` is set. Raises LockedError if another process writes the mirror,
        StoreError if the database is unusable, AuthError after repeated refusals."""
        self.settings.require_key()
        db = self.settings.db_path
        with lock.writing(db, role="daemon"):
            store = Store.open(db)  # a foreign or unusable database fails now, not every tick
            try:
                binding.check(store, self.settings)   # so does another upstream's mirror
            finally:
                store.close()
            silence_apscheduler()
            scheduler = BackgroundScheduler(job_defaults={
                "max_instances": 1, "coalesce": True, "misfire_grace_time": None})
            scheduler.add_listener(self._tick_skipped, EVENT_JOB_MAX_INSTANCES)
            extra = {"next_run_time": datetime.now().astimezone()} if self.initial_run else {}
            scheduler.add_job(self._tick, self.trigger, id=_JOB, name="sync", **extra)
            scheduler.start()
            log.info("daemon started: syncing %s %s%s", db, self.schedule,
                     "; first run now" if self.initial_run else "")
            try:
                while not self.stop.wait(1.0):
                    pass
                log.info("daemon stopping: finishing the work in hand")
            finally:
                with self._guard:
                    if self._run_stop is not None:
                        self._run_stop.set()
                scheduler.shutdown(wait=True)
        if self.fatal is not None:
            raise self.fatal
        log.info("daemon stopped")

    def _tick_skipped(self, event: JobSubmissionEvent) -> None:
        """A tick came while the run is still going: it is skipped, and the next run starts
        at the first tick after this one ends. Said once per run."""
        self._skipped += 1
        if self._skipped == 1:
            log.info("the run is taking longer than the schedule's interval: the next run "
                     "starts at the first tick after it ends")

    def _tick(self) -> None:
        # each run gets its own stop event (the engine sets it to cancel its own work when a
        # run fails); the daemon's stop is forwarded to it by `run`
        run_stop = threading.Event()
        with self._guard:
            if self.stop.is_set():
                return
            self._run_stop = run_stop
        started = time.monotonic()
        self._skipped = 0
        try:
            with ProgressLog(log, progress_every()) as progress:
                summary = run_sync(self.settings, stop=run_stop, progress=progress.report)
        except SyncerError as e:
            log.error("sync failed after %.1fs: %s; retrying at the next tick",
                      time.monotonic() - started, e)
            return
        except Exception:  # noqa: BLE001 - the daemon outlives any run; the cause is logged
            log.exception("sync crashed; retrying at the next tick")
            return
        finally:
            with self._guard:
                self._run_stop = None
        line = describe(summary)
        if summary.outcome == "ok":
            self.auth_failures = 0
            log.info("%s", line)
        elif summary.outcome == "interrupted":
            log.info("%s; the next run resumes where this one stopped", line)
        elif summary.outcome == "partial":
            self.auth_failures = 0
            log.warning("%s; the rest is retried at the next tick", line)
        elif summary.outcome == "auth_failed":
            self.auth_failures += 1
            if self.auth_failures >= AUTH_FAILURES_TO_STOP:
                log.error("sync auth_failed: %s", summary.error)
                self.fatal = AuthError(
                    f"the API refused the key {self.auth_failures} runs in a row "
                    f"({summary.error}); daemon stopped")
                self.stop.set()
                return
            log.error("sync auth_failed: %s; retrying at the next tick (stopping after %d in "
                      "a row)", summary.error, AUTH_FAILURES_TO_STOP)
        else:
            log.error("%s: %s; retrying at the next tick", line, summary.error)
