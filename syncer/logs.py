"""Logging set-up for the command line (the library only logs through `logging.getLogger`).

A filter scrubs the API key from every record, whatever the level or format, as a last line of
defence: the code never puts the key into a message in the first place.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone


class RedactSecret(logging.Filter):
    """Replaces each secret with *** in every record. A secret is scrubbed as it is sent
    (without surrounding whitespace); anything shorter than MIN_LENGTH is not a key, and
    scrubbing it would mangle ordinary text (a key of one space once replaced every space)."""
    MIN_LENGTH = 8

    def __init__(self, secret: str | None = None):
        super().__init__()
        self.secrets: set[str] = set()
        self.add(secret)

    def add(self, secret: str | None) -> None:
        secret = (secret or "").strip()
        if len(secret) >= self.MIN_LENGTH:
            self.secrets.add(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = original = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "***")
            if message != original:
                record.msg, record.args = message, None
        return True


def redact(secret: str | None) -> None:
    """Scrub `secret` too (a key read from the config file) from syncer's log output."""
    for handler in logging.getLogger("syncer").handlers:
        for f in handler.filters:
            if isinstance(f, RedactSecret):
                f.add(secret)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = repr(record.exc_info[1])
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(*, verbose: int = 0, quiet: bool = False, fmt: str = "text",
                  secret: str | None = None) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactSecret(secret))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        # times in UTC and labelled so, whatever the machine's zone (a daemon's log spans days)
        text = logging.Formatter("%(asctime)s %(levelname)s %(message)s",
                                 datefmt="%Y-%m-%d %H:%M:%S UTC")
        text.converter = time.gmtime
        handler.setFormatter(text)
    root = logging.getLogger("syncer")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    logging.getLogger("httpx").setLevel(logging.WARNING)
