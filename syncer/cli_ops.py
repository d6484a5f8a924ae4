"""Operating commands: daemon, status, purge."""
from __future__ import annotations

import json
import logging
import sys
import threading

import click

from .cli_context import App, Choice, install_stop_handlers, command, pass_app
from .config import parse_duration
from .errors import ConfigError, DamagedError, SyncerError


def _daemon_logging() -> None:
    """The daemon says one line per run and a progress line during a long one by default
    (INFO from syncer.scheduler); -q keeps only errors, -v/-vv add everything. APScheduler's
    own records never reach the user (scheduler.py silences them)."""
    root = logging.getLogger("syncer")
    logging.getLogger("syncer.scheduler").setLevel(
        logging.INFO if root.level == logging.WARNING else logging.NOTSET)


@command()
@click.option("--interval", metavar="DURATION",
              help="Sync every DURATION (30s, 5m, 1h); overrides [schedule].interval and cron.")
@click.option("--cron", "cron_expr", metavar="EXPR",
              help="Sync on a crontab schedule, local time (e.g. '*/10 * * * *'); overrides "
                   "[schedule].")
@click.option("--no-initial-run", is_flag=True,
              help="Wait for the first tick instead of syncing at start.")
@click.option("--allow-insecure-http", is_flag=True,
              help="Allow plain http:// to a non-loopback host (sends the key in clear).")
@pass_app
def daemon(app: App, interval: str | None, cron_expr: str | None, no_initial_run: bool,
           allow_insecure_http: bool):
    """Sync on a schedule until SIGTERM or SIGINT.

    Holds the mirror's writer lock for its whole life, runs one sync at a time, logs a failing
    run and retries it at the next tick. A first signal finishes the work in hand and exits 0;
    a second exits at once. Exits 3 after the API refuses the key 3 runs in a row, 4 if another
    syncer is writing the mirror, 2 on a bad schedule.

    \b
    Examples:
      syncer --db mirror.db daemon --interval 5m
      syncer --db mirror.db daemon --cron '*/10 * * * *' --no-initial-run
    """
    from .scheduler import Daemon, make_trigger, parse_interval
    if interval and cron_expr:
        raise ConfigError("--interval and --cron exclude each other; give one")
    settings = app.settings(allow_insecure_http=True if allow_insecure_http else None)
    if interval:
        seconds, cron = parse_interval(interval), None
    elif cron_expr:
        seconds, cron = None, cron_expr
    else:
        seconds, cron = settings.schedule_interval, settings.schedule_cron
    trigger, schedule = make_trigger(seconds, cron, settings.schedule_jitter)
    _daemon_logging()
    stop = threading.Event()
    install_stop_handlers(stop)
    Daemon(settings, trigger, schedule=schedule, initial_run=not no_initial_run,
           stop=stop).run()


@command("status")
@click.option("--format", "fmt", type=Choice(["text", "json"]), default="text",
              show_default=True, help="json for monitoring.")
@click.option("--check", is_flag=True,
              help="Exit 1 when the last successful sync finished longer ago than --max-age.")
@click.option("--max-age", default="1h", show_default=True, metavar="DURATION",
              help="How old the last successful sync may be for --check.")
@click.option("--runs", default=5, show_default=True, type=click.IntRange(1, 1000),
              help="How many recent runs to list.")
@pass_app
def status_command(app: App, fmt: str, check: bool, max_age: str, runs: int):
    """Show recent runs, the watermark, the queue, gaps, rejects and the database size.

    Reads only (never takes the writer lock), so it works while a sync runs. It probes the
    file for damage (every page of a small file, a sample of a large one; `verify --integrity`
    reads every page). With --check it is a health check: exit 0 healthy, 1 stale, never
    synced or damaged, 2 no usable database. A damaged file exits 1 without --check too.

    \b
    Examples:
      syncer --db mirror.db status
      syncer --db mirror.db status --check --max-age 1h --format json
    """
    from . import status
    try:
        max_seconds = parse_duration(max_age)
    except ValueError as e:
        raise ConfigError(f"--max-age: {e}") from None
    settings = app.settings()
    try:
        info = status.gather(settings.db_path, runs=runs)
    except DamagedError as e:
        if fmt == "json":
            click.echo(json.dumps({"database": settings.db_path,
                                   "integrity": {"ok": False, "problem": str(e)},
                                   "check": {"healthy": False, "message": f"unhealthy: {e}"}},
                                  indent=2))
            sys.exit(1)
        raise SyncerError(str(e)) from None      # exit 1, the one line and its advice
    healthy, message = status.check(info, max_seconds)
    if fmt == "json":
        info["check"] = {"healthy": healthy, "max_age_seconds": max_seconds, "message": message}
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(status.render(info, app.zone()))
        if check:
            click.echo(message)
    if check and not healthy:
        sys.exit(1)


def _duration_option(name: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None


@command()
@click.option("--deleted", is_flag=True,
              help="Forget conversations deleted upstream (tombstoned by a sync).")
@click.option("--older-than", metavar="DURATION",
              help="With --deleted: only those tombstoned more than DURATION ago (e.g. 30d).")
@click.option("--retain", metavar="DURATION",
              help="Forget conversations whose last activity is older than DURATION (e.g. "
                   "365d); a sync fetches them again only if they change upstream.")
@click.option("--dry-run", is_flag=True, help="Say what would be forgotten; change nothing.")
@pass_app
def purge(app: App, deleted: bool, older_than: str | None, retain: str | None, dry_run: bool):
    """Forget conversations: their messages, full-text entries and personal fields.

    Each keeps only its id, timestamps, status and tombstone, so that a sync does not fetch it
    again. The purge is recorded in _purges, and the file is then scrubbed (full-text index
    merged, VACUUM, WAL emptied) so that the text is gone from its bytes. Takes the writer lock
    like sync (exit 4 while another process writes); exit 1 if a reader kept the WAL from being
    emptied (run it again).

    \b
    Examples:
      syncer --db mirror.db purge --deleted --older-than 30d
      syncer --db mirror.db purge --retain 365d --dry-run
    """
    from . import purge as forgetting
    if older_than is not None and not deleted:
        raise ConfigError("--older-than applies to --deleted; add --deleted")
    if not deleted and retain is None:
        raise ConfigError("say what to forget: --deleted, --retain DURATION, or both")
    retain_seconds = _duration_option("--retain", retain)
    if retain_seconds == 0:
        raise ConfigError("--retain: must be longer than 0 (it would forget everything)")
    label = " ".join(part for part in (
        "--deleted" if deleted else "", f"--older-than {older_than}" if older_than else "",
        f"--retain {retain}" if retain else "") if part)
    criteria = forgetting.Criteria(deleted=deleted,
                                   older_than=_duration_option("--older-than", older_than),
                                   retain=retain_seconds, label=label)
    db_path = app.settings().db_path
    if dry_run:
        result = forgetting.plan(db_path, criteria)
    else:
        result = forgetting.run_purge(db_path, criteria)
    verb = "would forget" if dry_run else "forgot"
    line = (f"{verb} {result.conversations} conversations ({result.deleted} deleted upstream, "
            f"{result.conversations - result.deleted} inactive) and {result.messages} messages")
    if dry_run and result.sample:
        more = " ..." if result.conversations > len(result.sample) else ""
        line += f": {', '.join(result.sample)}{more}"
    click.echo(line)
    if dry_run:
        click.echo("dry run: nothing changed")
    elif result.scrubbed:
        click.echo(f"the database and its WAL are scrubbed (purge {result.purge_id} in _purges)")
    else:
        click.echo("error: another process kept the write-ahead log from being emptied; "
                   "purged text may remain in it: run `syncer purge` again", err=True)
        sys.exit(1)


COMMANDS = [daemon, status_command, purge]
