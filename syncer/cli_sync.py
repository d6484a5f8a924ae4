"""Commands that talk to the API or run services: sync, simulate, demo, verify, doctor."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import sqlite3
import sys
import threading
from pathlib import Path

import click

from . import config
from .cli_context import App, Choice, command, install_stop_handlers, pass_app
from .errors import ConfigError, SyncerError

log = logging.getLogger("syncer")


@command()
@click.option("--full", is_flag=True,
              help="Walk the whole list and mark conversations gone upstream as deleted.")
@click.option("--rebind", is_flag=True,
              help="Move this mirror to the API it is now pointed at (another base URL): "
                   "walk the whole list there and mark what is not found deleted.")
@click.option("--max-delete", metavar="N|P%",
              help="Tombstone at most this many conversations (or share of the live mirror) "
                   "in this run; overrides [sync].max_delete (default 10%).")
@click.option("--allow-insecure-http", is_flag=True,
              help="Allow a plain http:// base URL to a non-loopback host (sends the key in clear).")
@pass_app
def sync(app: App, full: bool, rebind: bool, max_delete: str | None,
         allow_insecure_http: bool):
    """Pull what changed since the last run into the mirror.

    The API key comes from RUNTYPE_API_KEY (or [api].key in the config file), the API's
    address from RUNTYPE_BASE_URL (or [api].base_url); `syncer doctor` shows both and where
    they came from.

    Exit codes: 0 the mirror is complete and current; 1 some conversations failed or the run
    was cut short (what is left is fetched first next run); 2 bad usage, configuration or
    database; 3 the API refused the key; 4 another process is writing the mirror.

    \b
    Examples:
      export RUNTYPE_API_KEY=rt_live_...
      syncer --db mirror.db sync
      syncer --db mirror.db sync --full --max-delete 100%
      syncer -q --db mirror.db sync          # from cron: silent unless it fails
    """
    from .runner import run_sync
    settings = app.settings(allow_insecure_http=True if allow_insecure_http else None)
    if max_delete is not None:
        max_delete = config.check_max_delete(max_delete, "--max-delete")
    stop = threading.Event()
    install_stop_handlers(stop)
    with _progress_display(app.log_format) as display:
        summary = run_sync(settings, full=full, stop=stop,
                           progress=display.report if display else None,
                           max_delete=max_delete, rebind=rebind)
    _print_summary(summary, settings, app.log_format)
    sys.exit(summary.exit_code)


def _progress_display(log_format: str):
    """The live progress line, on a terminal's stderr only: not under -q, not for json logs."""
    if (log_format != "text" or not sys.stderr.isatty()
            or log.getEffectiveLevel() > logging.WARNING):
        return contextlib.nullcontext()
    from .progress import TerminalLine
    return TerminalLine(sys.stderr)


def _n(count: int, one: str, many: str) -> str:
    return f"{count:,} {one if count == 1 else many}"


def gap_lines(gaps: list[tuple[str, int | None, int]]) -> list[str]:
    """What was seen of the incomplete conversations, (id, messageCount, held) each: fewer
    messages served than the count says, more held than it says, or no count to judge by."""
    kinds = (("fewer", "the server serves fewer messages than it reports"),
             ("more", "the mirror holds more messages than the server's messageCount says"),
             ("unknown", "the server's messageCount could not be stored"))
    lines = []
    for kind, text in kinds:
        some = [(cid, count, held) for cid, count, held in gaps
                if ("unknown" if count is None else "fewer" if held < count else "more") == kind]
        if not some:
            continue
        sample = ", ".join(f"{cid} {held}/{'?' if count is None else count}"
                           for cid, count, held in some[:5])
        more = f" and {len(some) - 5} more" if len(some) > 5 else ""
        lines.append(f"  {_n(len(some), 'conversation is', 'conversations are')} incomplete: "
                     f"{text} (held/reported: {sample}{more})")
    return lines


def _queued(db_path: str) -> int | None:
    from . import status
    try:
        return status.gather(db_path, runs=1, probe=False)["queue"]["size"]
    except (SyncerError, sqlite3.Error):
        return None


def _print_summary(summary, settings, log_format: str) -> None:
    from .runner import describe
    c = summary.counts
    left = _queued(settings.db_path) if summary.outcome in ("interrupted", "partial") else None
    if log_format == "json":
        # one object with the counts as fields, for log shippers (errors are logged as JSON)
        record = {"event": "sync_summary", "outcome": summary.outcome, "mode": summary.mode,
                  "seconds": round(summary.seconds, 3), **c,
                  "incomplete_conversations": len(summary.gaps),
                  "incomplete_changed": summary.gaps_changed, "queued": left,
                  "early_stop": summary.early_stop}
        click.echo(json.dumps(record))
        if summary.error:
            log.error("%s", summary.error)
        return
    if log.getEffectiveLevel() > logging.WARNING and summary.outcome == "ok":
        return
    click.echo(describe(summary))
    if c.get("conversations_failed"):
        failed = c["conversations_failed"]
        click.echo(f"  {_n(failed, 'conversation', 'conversations')} failed and "
                   f"{'stays' if failed == 1 else 'stay'} queued for the next run")
    if c.get("rejects"):
        rejects = c["rejects"]
        click.echo(f"  {_n(rejects, 'record', 'records')} failed validation and "
                   f"{'was' if rejects == 1 else 'were'} quarantined in _rejects")
    if c.get("anomalies"):
        click.echo(f"  {_n(c['anomalies'], 'conversation holds', 'conversations hold')} a value "
                   "SQLite cannot store (a messageCount over 2^63): mirrored with that column "
                   "empty, the value kept in _raw (see the log)")
    if c.get("messages_oversized"):
        click.echo(f"  {_n(c['messages_oversized'], 'message is', 'messages are each')} over "
                   f"[api].max_response_mb ({settings.max_response_bytes // (1024 * 1024)} MB) "
                   "on its own and could not be read: a gap of its conversation (see the log); "
                   "raise the limit to mirror them")
    if summary.gaps and (summary.gaps_changed or log.getEffectiveLevel() <= logging.INFO):
        for line in gap_lines(summary.gaps):
            click.echo(line)
    if summary.outcome == "interrupted":
        what = ("" if left is None else
                f"{_n(left, 'conversation is', 'conversations are')} still queued; ")
        click.echo(f"  stopped before the end: {what}the next `syncer sync` resumes from there")
    if summary.error:
        click.echo(f"error: {summary.error}", err=True)


@command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Loopback address to listen on.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port (0: any free).")
@click.option("--seed", default=1, show_default=True, type=int,
              help="Seed of the deterministic data generator.")
@click.option("--conversations", default=200, show_default=True, type=int,
              help="Conversations to generate.")
@click.option("--messages", "messages_per_conversation", default=8, show_default=True, type=int,
              help="Typical messages per conversation.")
@click.option("--latency-ms", default=0.0, show_default=True, type=float,
              help="Delay added to every answer.")
@click.option("--fault-rate", default=0.0, show_default=True, type=float,
              help="Share of requests answered with an injected fault (0..1).")
@click.option("--rate-limit", type=int, help="Requests allowed per --rate-window seconds.")
@click.option("--rate-window", default=10.0, show_default=True, type=float,
              help="Seconds of the rate-limit window.")
@click.option("--list-order", default="updated_desc", show_default=True,
              type=Choice(["updated_desc", "created_desc", "last_message_desc", "id_asc",
                                 "shuffled"]),
              help="Order of the conversation list (undocumented upstream).")
@click.option("--message-paging", default="none", show_default=True,
              type=Choice(["none", "offset"]),
              help="Whether messages past the first 100 can be paged with `offset`.")
@click.option("--timestamp-style", default="z", show_default=True,
              type=Choice(["z", "fraction", "offset", "mixed", "lower", "long_fraction",
                           "numoffset", "rfc3339"]),
              help="How timestamps are spelt (all RFC 3339, the same instants): rfc3339 mixes "
                   "every spelling, lowercase, 9-12 fraction digits and numeric offsets too.")
@click.option("--count-mode", default="on_request", show_default=True,
              type=Choice(["on_request", "always", "never"]),
              help="When the list carries totalCount: on includeCount=true (as the API), "
                   "always, or never.")
@click.option("--api-key", default="rt_test_simulator", show_default=True,
              help="The key the simulator accepts.")
def simulate(host, port, seed, conversations, messages_per_conversation, latency_ms, fault_rate,
             rate_limit, rate_window, list_order, message_paging, timestamp_style, count_mode,
             api_key):
    """Run the local Runtype API simulator until interrupted.

    \b
    Examples:
      syncer simulate --port 8765 --conversations 1000
      syncer simulate --port 0 --fault-rate 0.1 --rate-limit 50
      syncer simulate --timestamp-style rfc3339 --count-mode never
    """
    from .simulator import Behaviour, SimulatorServer, generate
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError("the simulator only listens on loopback addresses")
    upstream = generate(seed, conversations, messages_per_conversation=messages_per_conversation)
    behaviour = Behaviour(latency_ms=latency_ms, fault_rate=fault_rate, rate_limit=rate_limit,
                          rate_window=rate_window, list_order=list_order,
                          message_paging=message_paging, timestamp_style=timestamp_style,
                          count_mode=count_mode, api_key=api_key)
    server = SimulatorServer(upstream, behaviour, host=host, port=port)
    try:
        url = server.start()
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    click.echo(f"Runtype simulator on {url} ({conversations} conversations, seed {seed})")
    click.echo(f"try: RUNTYPE_BASE_URL={url} RUNTYPE_API_KEY={api_key} syncer sync")
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    stop.wait()
    server.stop()


@command()
@click.option("--db", "demo_db", type=click.Path(dir_okay=False),
              help="Where the demo mirror goes (default ./demo.db): a new file, or a demo "
                   "database made earlier (replaced); anything else is refused.")
@click.option("--conversations", default=300, show_default=True,
              type=click.IntRange(min=10), help="Conversations the demo's simulator serves.")
@pass_app
def demo(app: App, demo_db: str | None, conversations: int):
    """Sync a local simulator into ./demo.db, change data upstream, sync again, search.

    Never overwrites a mirror: it writes only to a new file or to a database an earlier
    `syncer demo` made, and refuses anything else (exit 2) without changing it. `--db` may be
    given before or after `demo`.

    \b
    Examples:
      syncer demo
      syncer demo --db /tmp/try.db --conversations 50
    """
    from .demo import run_demo
    if app.db_path and demo_db and Path(app.db_path).resolve() != Path(demo_db).resolve():
        raise ConfigError(f"two databases given ({app.db_path} and {demo_db}): give --db once")
    path = Path(demo_db or app.db_path or "demo.db")
    run_demo(path, conversations, echo=click.echo, command=_syncer_command())


def _syncer_command() -> str:
    """How the user who started this process can run syncer again from the same directory."""
    argv0 = sys.argv[0]
    as_module = os.path.basename(argv0) == "__main__.py"
    me = os.path.join(os.path.dirname(sys.executable), "syncer") if as_module else argv0
    found = shutil.which("syncer")
    if found and os.path.realpath(found) == os.path.realpath(me):
        return "syncer"
    if as_module:
        return f"{shlex.quote(sys.executable)} -m syncer"
    return shlex.quote(argv0)


@command()
@click.option("--fix", is_flag=True,
              help="Queue every difference for the next sync (and rebuild a full-text index "
                   "out of step).")
@click.option("--deep", is_flag=True,
              help="Also read every conversation's messages and compare each held message.")
@click.option("--integrity", is_flag=True,
              help="Instead: check every page of the file for damage (no API request), with "
                   "a progress line.")
@click.option("--format", "fmt", type=Choice(["text", "json"]), default="text",
              show_default=True, help="json: the whole report, for monitoring.")
@pass_app
def verify(app: App, fix: bool, deep: bool, integrity: bool, fmt: str):
    """Compare the mirror's rows with the API's conversation list (--deep: and every message).

    Exits 0 only when the mirror is exact: nothing missing, extra or stale, every conversation
    holding the messages it should (recorded gaps are listed, not counted), no message of no
    conversation, the full-text index in step, and everything compared. Otherwise 1.

    \b
    Examples:
      syncer --db mirror.db verify
      syncer --db mirror.db verify --deep --format json
      syncer --db mirror.db verify --fix && syncer --db mirror.db sync
      syncer --db mirror.db verify --integrity   # the whole file, for damage; 1 if damaged
    """
    if integrity:
        if fix or deep:
            raise ConfigError("--integrity checks the file only; run --fix or --deep apart")
        _verify_integrity(app, fmt)
    from .runner import run_verify
    report = run_verify(app.settings(), fix=fix, deep=deep)
    if fmt == "json":
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        from .verify import describe
        for line in describe(report, fix=fix):
            click.echo(line)
    sys.exit(0 if report.exact else 1)


def _verify_integrity(app: App, fmt: str) -> None:
    """`verify --integrity`: SQLite's integrity check of every page, a progress line on a
    terminal's stderr; exit 0 intact, 1 damaged (with the recovery advice)."""
    from .integrity import check_all
    from .store import Store
    path = app.settings().db_path
    line = sys.stderr.isatty() and app.log_format == "text"

    def progress(done: int, total: int, table: str) -> None:
        if line:
            sys.stderr.write(f"\r\x1b[Kchecking {path}: {done * 100 // max(total, 1)} % "
                             f"({table})")
            sys.stderr.flush()
    store = Store.open_readonly(path)
    try:
        result = check_all(store.conn, progress)
    finally:
        store.close()
        if line:
            sys.stderr.write("\r\x1b[K")
    if fmt == "json":
        click.echo(json.dumps({"database": path, "ok": result.ok, "covered": result.covered,
                               "problem": result.problem}, indent=2))
    elif result.ok:
        click.echo(f"{path}: no damage found in {result.covered}")
    if not result.ok:
        raise SyncerError(Store.damaged(path, result.problem or "integrity check"))
    sys.exit(0)


@command()
@pass_app
def doctor(app: App):
    """Check the configuration, the database and the API, and say what to fix.

    Lists every setting with where it came from (flag, environment variable, config file or
    default; the API key only as set or unset), then checks the database and the upstream it
    belongs to, and makes one request to the API: reachable, key accepted, rate-limit headers.
    Exits 0 when every check is OK, 1 otherwise.

    \b
    Examples:
      syncer doctor
      syncer --config /etc/syncer/syncer.toml --db /var/lib/syncer/mirror.db doctor
    """
    from .doctor import examine
    report = examine(app.config_path, app.db_path, tz_flag=app.tz)
    click.echo(f"configuration ({report.config_file or 'no config file'}):")
    name_width = max(len(name) for name, _, _ in report.values)
    value_width = min(40, max(len(shown) for _, shown, _ in report.values))
    for name, shown, source in report.values:
        click.echo(f"  {name:<{name_width}}  {shown:<{value_width}}  ({source})")
    click.echo("checks:")
    for check in report.checks:
        click.echo(f"  {'OK  ' if check.ok else 'FIX '}  {check.text}")
    sys.exit(0 if report.ok else 1)


COMMANDS = [sync, simulate, demo, verify, doctor]
