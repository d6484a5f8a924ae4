"""The command line: the only place that prints or exits. Each command builds from ctx.obj,
calls one function, renders its result, and turns syncer's errors into exit codes:
0 ok, 1 some work failed (retried next run), 2 bad usage/configuration/database,
3 the API refused the key, 4 another process is writing the mirror."""
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

from . import __version__, config
from .cli_context import CONTEXT, App, Choice, SyncerCommand, install_stop_handlers, pass_app
from .errors import ConfigError, SyncerError
from .logs import setup_logging

log = logging.getLogger("syncer")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every `finally` runs (an export removes its partial
    file). sync and daemon install their own handlers, which stop gracefully instead."""


def _terminate(signum, frame):
    raise Terminated()


# The group's own options, which people also type after the command (`syncer search --db x.db
# refund`): those taking a value, and the flags.
GLOBAL_VALUED = ("--db", "--config", "--log-format", "--color", "--tz")
GLOBAL_FLAGS = ("--verbose", "--quiet", "-q")
def _is_global(arg: str) -> bool:
    return (arg in GLOBAL_FLAGS or (arg.startswith("-v") and set(arg[1:]) == {"v"})
            or arg in GLOBAL_VALUED or arg.split("=", 1)[0] in GLOBAL_VALUED)


def hoist_global_options(args: list[str], keep: dict[str, tuple[str, ...]]) -> list[str]:
    """`args` with the group's options moved from after the command name to before it, so they
    work in either place. Stops at `--`; `keep` names, per command, options it has of its own."""
    i = 0
    while i < len(args) and args[i].startswith("-"):       # the group's options come first
        i += 2 if args[i] in GLOBAL_VALUED else 1
    if i >= len(args):
        return args
    before, command, rest = args[:i], args[i], args[i + 1:]
    moved, kept, j = [], [], 0
    while j < len(rest):
        arg = rest[j]
        if arg == "--":
            kept += rest[j:]
            break
        if _is_global(arg) and arg.split("=", 1)[0] not in keep.get(command, ()):
            takes_value = arg in GLOBAL_VALUED
            moved += rest[j:j + 2] if takes_value else [arg]
            j += 2 if takes_value else 1
            continue
        kept.append(arg)
        j += 1
    return before + moved + [command] + kept


class SyncerGroup(click.Group):
    """Turns syncer's errors into one line on stderr and the documented exit code, and takes the
    global options after the command too."""

    command_class = SyncerCommand

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        own = {name: tuple(o for p in command.params for o in p.opts)
               for name, command in self.commands.items()}
        return super().parse_args(ctx, hoist_global_options(list(args), own))

    def invoke(self, ctx: click.Context):
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
        try:
            return super().invoke(ctx)
        except SyncerError as e:
            self._fail(ctx, str(e), e.exit_code)
        except sqlite3.Error as e:     # a query on a damaged or vanished database, a full disk
            from .store import Store
            error = Store.error_for(getattr(ctx.obj, "database", None) or "the database", e)
            self._fail(ctx, str(error), error.exit_code)
        except Terminated:
            self._fail(ctx, "stopped by SIGTERM", 1)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    @staticmethod
    def _fail(ctx: click.Context, message: str, exit_code: int):
        if getattr(ctx.obj, "log_format", "text") == "json":
            log.error("%s", message)    # one JSON line, like every other log line
        else:
            click.echo(f"error: {message}", err=True)
        ctx.exit(exit_code)


@click.group(cls=SyncerGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="syncer")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help=f"TOML config file (default: ./{config.DEFAULT_CONFIG_FILE} if present).")
@click.option("--db", "db_path", type=click.Path(dir_okay=False),
              help="SQLite database of the mirror (overrides [store].path).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv: every request).")
@click.option("-q", "--quiet", is_flag=True, help="Errors only (for cron).")
@click.option("--log-format", type=Choice(["text", "json"]), default="text",
              show_default=True, help="Log line format (json for log shippers).")
@click.option("--color", type=Choice(["auto", "always", "never"]), default="auto",
              show_default=True,
              help="Highlight matches in colour (auto: on a terminal, unless NO_COLOR is set).")
@click.option("--tz", metavar="local|UTC|ZONE",
              help="Show times in this zone (default UTC; also SYNCER_TZ or [display].tz), "
                   "e.g. Europe/Paris; dates typed without an offset (--since) are read in "
                   "it. JSON, JSON Lines, CSV and exports stay ISO 8601 in UTC.")
@click.pass_context
def main(ctx: click.Context, config_path, db_path, verbose, quiet, log_format, color, tz):
    """Mirror Runtype messaging conversations into SQLite and use them offline.

    The options above also work after the command (`syncer search --db x.db refund`).

    \b
    Examples:
      syncer demo
      RUNTYPE_API_KEY=rt_live_... syncer --db mirror.db sync
      syncer --db mirror.db search refund
      syncer COMMAND -h
    """
    setup_logging(verbose=verbose, quiet=quiet, fmt=log_format,
                  secret=os.environ.get(config.API_KEY_ENV))
    ctx.obj = App(config_path, db_path, log_format, color=color, tz=tz)


@main.command()
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


def _queued(db_path: str) -> int | None:
    from . import status
    try:
        return status.gather(db_path, runs=1)["queue"]["size"]
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
    if summary.gaps and (summary.gaps_changed or log.getEffectiveLevel() <= logging.INFO):
        sample = ", ".join(f"{cid} {held}/{count}" for cid, count, held in summary.gaps[:5])
        more = f" and {len(summary.gaps) - 5} more" if len(summary.gaps) > 5 else ""
        click.echo(f"  {_n(len(summary.gaps), 'conversation is', 'conversations are')} "
                   "incomplete: the server serves fewer messages than it reports "
                   f"(held/reported: {sample}{more})")
    if summary.outcome == "interrupted":
        what = ("" if left is None else
                f"{_n(left, 'conversation is', 'conversations are')} still queued; ")
        click.echo(f"  stopped before the end: {what}the next `syncer sync` resumes from there")
    if summary.error:
        click.echo(f"error: {summary.error}", err=True)


@main.command()
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
@click.option("--api-key", default="rt_test_simulator", show_default=True,
              help="The key the simulator accepts.")
def simulate(host, port, seed, conversations, messages_per_conversation, latency_ms, fault_rate,
             rate_limit, rate_window, list_order, message_paging, api_key):
    """Run the local Runtype API simulator until interrupted.

    \b
    Examples:
      syncer simulate --port 8765 --conversations 1000
      syncer simulate --port 0 --fault-rate 0.1 --rate-limit 50
    """
    from .simulator import Behaviour, SimulatorServer, generate
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError("the simulator only listens on loopback addresses")
    upstream = generate(seed, conversations, messages_per_conversation=messages_per_conversation)
    behaviour = Behaviour(latency_ms=latency_ms, fault_rate=fault_rate, rate_limit=rate_limit,
                          rate_window=rate_window, list_order=list_order,
                          message_paging=message_paging, api_key=api_key)
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


@main.command()
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


@main.command()
@click.option("--fix", is_flag=True,
              help="Queue every difference for the next sync (and rebuild a full-text index "
                   "out of step).")
@click.option("--deep", is_flag=True,
              help="Also read every conversation's messages and compare each held message.")
@click.option("--format", "fmt", type=Choice(["text", "json"]), default="text",
              show_default=True, help="json: the whole report, for monitoring.")
@pass_app
def verify(app: App, fix: bool, deep: bool, fmt: str):
    """Compare the mirror's rows with the API's conversation list (--deep: and every message).

    Exits 0 only when the mirror is exact: nothing missing, extra or stale, every conversation
    holding the messages it should (recorded gaps are listed, not counted), no message of no
    conversation, the full-text index in step, and everything compared. Otherwise 1.

    \b
    Examples:
      syncer --db mirror.db verify
      syncer --db mirror.db verify --deep --format json
      syncer --db mirror.db verify --fix && syncer --db mirror.db sync
    """
    from .runner import run_verify
    report = run_verify(app.settings(), fix=fix, deep=deep)
    if fmt == "json":
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        from .verify import describe
        for line in describe(report, fix=fix):
            click.echo(line)
    sys.exit(0 if report.exact else 1)


@main.command()
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


from . import cli_browse, cli_ops  # noqa: E402

for _command in cli_browse.COMMANDS + cli_ops.COMMANDS:
    main.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    main()
