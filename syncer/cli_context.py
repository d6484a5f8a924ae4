"""What every command of the command line shares: the application object the group builds
in ctx.obj (settings on demand, colour, the display zone), the command class, click's Choice
with a suggestion, and the stop handlers of the long-running commands. cli.py assembles the
group; cli_browse.py, cli_export.py, cli_ops.py and cli_sync.py define commands on top of this
module, so imports run one way. `syncer --help` imports it, so it imports little itself."""
from __future__ import annotations

import functools
import os
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import threading

    from . import config, zones

CONTEXT = {"help_option_names": ["-h", "--help"]}


class App:
    """What the group's options say, and what a command derives from them on demand. The
    modules behind it (config, zones, logs) are imported when used, not for `--help`."""

    def __init__(self, config_path: str | None, db_path: str | None, log_format: str = "text",
                 color: str = "auto", tz: str | None = None):
        self.config_path = config_path
        self.db_path = db_path
        self.log_format = log_format
        self.color = color
        self.tz = tz                       # --tz as given
        self.database: str | None = None   # the database the command uses, for errors about it
        self._zone: zones.Zone | None = None
        if tz is not None:                 # refused at once, even by a command that shows no time
            from . import config
            config.display_zone(tz, None, {}, "")

    def settings(self, **overrides) -> config.Settings:
        from . import config
        from .logs import redact
        settings = config.load(self.config_path, db_path=self.db_path, tz=self.tz, **overrides)
        redact(settings.api_key)     # a key from the file is scrubbed from the logs too
        self.database = settings.db_path
        self._zone = settings.zone
        return settings

    def zone(self) -> zones.Zone:
        """The zone times are shown in (--tz > SYNCER_TZ > [display].tz > UTC)."""
        if self._zone is None:
            self.settings()
        return self._zone

    def use_color(self) -> bool:
        """--color always/never, else colour only on a terminal and without NO_COLOR."""
        if self.color != "auto":
            return self.color == "always"
        return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


pass_app = click.make_pass_decorator(App)


class Choice(click.Choice):
    """click's Choice that, like its unknown options, suggests the closest value."""

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as e:
            import difflib
            close = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=1)
            if close:
                e.message = f"{e.message.rstrip('.')}. Did you mean {close[0]!r}?"
            raise


class SyncerCommand(click.Command):
    """A command whose summary in `syncer --help` is its whole first sentence, never cut."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("context_settings", CONTEXT)
        super().__init__(*args, **kwargs)

    def get_short_help_str(self, limit: int = 45) -> str:
        if self.short_help:
            return self.short_help
        first = (self.help or "").split("\n\n", 1)[0]
        return " ".join(first.split(". ", 1)[0].split()).rstrip(".")


command = functools.partial(click.command, cls=SyncerCommand)


def install_stop_handlers(stop: threading.Event) -> None:
    """First SIGINT/SIGTERM: finish the work in hand and stop. Second: exit at once (every
    write is a transaction, so the database stays consistent)."""
    import logging
    import signal
    log = logging.getLogger("syncer")

    def handler(signum, frame):
        if stop.is_set():
            # through the log, so a progress line on the terminal is wiped first
            log.warning("%s again: quitting at once", signal.Signals(signum).name)
            os._exit(130)
        stop.set()
        log.warning("%s: stopping after the work in hand (signal again to quit at once)",
                    signal.Signals(signum).name)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
