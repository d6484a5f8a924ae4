"""The command line: the only place that prints or exits. Each command builds from ctx.obj,
calls one function, renders its result, and turns syncer's errors into exit codes:
0 ok, 1 some work failed (retried next run), 2 bad usage/configuration/database,
3 the API refused the key, 4 another process is writing the mirror."""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import MutableMapping

import click

from . import __version__
from .cli_context import CONTEXT, Choice, SyncerCommand


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


def hoist_global_options(args: list[str], keep) -> list[str]:
    """`args` with the group's options moved from after the command name to before it, so they
    work in either place. Stops at `--`; `keep.get(command, ())` names the options a command has of its own."""
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


# Every command: (module, attribute, summary). The group lists them in `syncer --help` from
# here and imports a command's module only when that command runs, so that no command pays for
# the others' imports. test_startup.py checks this table against the commands themselves.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "conversations": ("cli_browse", "conversations_command",
                      "List conversations (deleted ones only with --include-deleted)"),
    "daemon": ("cli_ops", "daemon", "Sync on a schedule until SIGTERM or SIGINT"),
    "demo": ("cli_sync", "demo", "Sync a local simulator into ./demo.db, change data "
                                 "upstream, sync again, search"),
    "doctor": ("cli_sync", "doctor",
               "Check the configuration, the database and the API, and say what to fix"),
    "export": ("cli_export", "export_command",
               "Export conversations or messages, streaming, to CSV, JSON Lines or Parquet"),
    "purge": ("cli_ops", "purge",
              "Forget conversations: their messages, full-text entries and personal fields"),
    "search": ("cli_browse", "search",
               "Full-text search of the mirror, best match (bm25) first, newest first on ties"),
    "serve": ("cli_browse", "serve",
              "Browse the mirror in Datasette: search ranked best first (the canned query "
              "`search`), facets on status, surface and role, and a thread view (`thread`)"),
    "show": ("cli_browse", "show", "Show one conversation: its header and every message in order"),
    "simulate": ("cli_sync", "simulate", "Run the local Runtype API simulator until interrupted"),
    "stats": ("cli_browse", "stats",
              "Counts by status, surface, role and direction; volume over time; median "
              "first-response time; busiest participants"),
    "status": ("cli_ops", "status_command",
               "Show recent runs, the watermark, the queue, gaps, rejects and the database size"),
    "sync": ("cli_sync", "sync", "Pull what changed since the last run into the mirror"),
    "verify": ("cli_sync", "verify", "Compare the mirror's rows with the API's conversation "
                                     "list (--deep: and every message)"),
}


class LazyCommands(MutableMapping):
    """The group's commands by name, each imported from its module (COMMANDS) when first looked
    up; listing or counting the names imports nothing."""

    def __init__(self, table: dict[str, tuple[str, str, str]]):
        self.table = table
        self.loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self.loaded:
            if name not in self.table:
                raise KeyError(name)
            module, attribute, _ = self.table[name]
            self.loaded[name] = getattr(importlib.import_module(f".{module}", __package__),
                                        attribute)
        return self.loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self.loaded[name] = command

    def __delitem__(self, name: str) -> None:
        self.loaded.pop(name, None)
        self.table = {k: v for k, v in self.table.items() if k != name}

    def __iter__(self):
        return iter(sorted(self.table.keys() | self.loaded.keys()))

    def __len__(self) -> int:
        return len(self.table.keys() | self.loaded.keys())

    def __contains__(self, name: object) -> bool:
        return name in self.table or name in self.loaded

    def summary(self, name: str) -> str:
        if name in self.loaded or name not in self.table:
            return self[name].get_short_help_str()
        return self.table[name][2]


class _OwnOptions:
    """For hoist_global_options: the options a command has of its own, read off the command
    named on the line only (so only its module is imported)."""

    def __init__(self, commands: LazyCommands):
        self.commands = commands

    def get(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        command = self.commands.get(name)
        return tuple(o for p in command.params for o in p.opts) if command else default


class SyncerGroup(click.Group):
    """Turns syncer's errors into one line on stderr and the documented exit code, takes the
    global options after the command too, and imports a command's module only to run it."""

    command_class = SyncerCommand

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.commands = LazyCommands(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.commands.summary(name)) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(list(args),
                                                            _OwnOptions(self.commands)))

    def invoke(self, ctx: click.Context):
        import signal
        import threading

        from .errors import SyncerError
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
        try:
            return super().invoke(ctx)
        except SyncerError as e:
            self._fail(ctx, str(e), e.exit_code)
        except Terminated:
            self._fail(ctx, "stopped by SIGTERM", 1)
        except Exception as e:
            # a query on a damaged or vanished database, a full disk (sqlite3 is only ever
            # imported by the commands that use a database)
            sqlite3 = sys.modules.get("sqlite3")
            if sqlite3 is None or not isinstance(e, sqlite3.Error):
                raise
            from .store import Store
            error = Store.error_for(getattr(ctx.obj, "database", None) or "the database", e)
            self._fail(ctx, str(error), error.exit_code)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    @staticmethod
    def _fail(ctx: click.Context, message: str, exit_code: int):
        if getattr(ctx.obj, "log_format", "text") == "json":
            import logging
            logging.getLogger("syncer").error("%s", message)  # one JSON line, like every log line
        else:
            click.echo(f"error: {message}", err=True)
        ctx.exit(exit_code)


@click.group(cls=SyncerGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="syncer")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config file (default: ./syncer.toml if present).")
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
    from . import config
    from .cli_context import App
    from .logs import setup_logging
    setup_logging(verbose=verbose, quiet=quiet, fmt=log_format,
                  secret=os.environ.get(config.API_KEY_ENV))
    ctx.obj = App(config_path, db_path, log_format, color=color, tz=tz)


if __name__ == "__main__":  # pragma: no cover
    main()
