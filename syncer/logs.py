"""Logging set-up for the command line (the library only logs through `logging.getLogger`).

A filter scrubs the API key from every record, whatever the level or format, as a last line of
defence: the code never puts the key into a message in the first place.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone


class RedactSecret(logging.Filter):
    def __init__(self, secret: str | None):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secret:
            message = record.getMessage()
            if self.secret in message:
                record.msg, record.args = message.replace(self.secret, "***"), None
        return True


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
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s",
                                               datefmt="%H:%M:%S"))
    root = logging.getLogger("syncer")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    logging.getLogger("httpx").setLevel(logging.WARNING)
