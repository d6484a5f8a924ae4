"""Where syncer may write what a command outputs (an export file, a feed directory). No click.

Refused, before anything is written (OutputError: one line, exit 2):

- a path that is the mirror, one of its companions (`-wal`, `-shm`, `-journal`, and the
  writer's `.lock`, lock.py) or another syncer database or one of its companions. Two paths
  are the same file when both exist and have one device and inode (so symlinks, hard links,
  `./` and `..` spellings all count); a path not created yet is compared by its real path
  (its parent's symlinks resolved) with the mirror's files, under the mirror's name as given
  and its real one. A syncer database is a SQLite file marked with syncer's application id,
  or holding syncer's tables (a copy through `.dump` loses the id).
- binary output (Parquet) to stdout when stdout is a terminal, as gzip refuses.
- a feed directory that is any of those, that lies inside another feed directory (a
  directory above it holds a feed marker: the outer feed's parts and leftovers are found
  with a recursive walk, which would take the inner feed's for its own), or that holds the
  mirror (its companions are beside it).
"""
from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

from .errors import ConfigError
from .lock import lock_path
from .migrations import APPLICATION_ID, connect_untouched

FEED_MARKER = ".syncer-feed"     # a feed directory's marker file (feed.py)
COMPANIONS = {"-wal": "write-ahead log", "-shm": "shared-memory file",
              "-journal": "rollback journal", ".lock": "lock file"}
SYNCER_TABLES = frozenset({"conversations", "messages", "_sync_state"})
_SQLITE = b"SQLite format 3\x00"


class OutputError(ConfigError):
    """An output path syncer refuses to write: exit 2."""


def check_file(path: str, mirror: str) -> None:
    """Refuse `path` ("-" is stdout) as an export file of `mirror`."""
    if path != "-" and (what := clash(path, mirror)):
        raise OutputError(f"cannot write {path}: it is {what}; pass -o another file")


def check_terminal(path: str, fmt: str) -> None:
    """Refuse writing the binary format `fmt` to stdout ("-") when it is a terminal."""
    if path == "-" and sys.stdout.isatty():
        raise OutputError(f"{fmt} is binary and stdout is a terminal: write it to a file "
                          "with -o FILE, or to a pipe")


def check_feed_directory(path: str, mirror: str) -> None:
    """Refuse `path` as a feed directory of `mirror` (whether it exists or not)."""
    if path == "-":
        return                   # feed.check_directory says a feed needs a directory
    if what := clash(path, mirror):
        raise OutputError(f"cannot write the feed to {path}: it is {what}; pass -o another "
                          "directory")
    for above in Path(os.path.realpath(path)).parents:
        if (above / FEED_MARKER).exists():
            raise OutputError(f"cannot write the feed to {path}: it is inside the feed "
                              f"directory {above}; pass -o a directory outside it")
    for name in _spellings(mirror):
        if any(_same(str(above), path) for above in Path(name).parents):
            raise OutputError(f"cannot write the feed to {path}: it holds the mirror {mirror}; "
                              "pass -o a directory that does not hold it")


def clash(path: str, mirror: str) -> str | None:
    """What `path` is, if it is the mirror, one of its companions, or another syncer
    database or companion ("the write-ahead log of the mirror m.db"); else None."""
    for name in _spellings(mirror):
        if _same(path, name):
            return f"the mirror {mirror}"
        for suffix, what in COMPANIONS.items():
            if _same(path, name + suffix):
                return f"the {what} of the mirror {mirror}"
    if _same(path, str(lock_path(mirror))):
        return f"the lock file of the mirror {mirror}"
    if is_syncer_database(path):
        return f"the syncer database {path}"
    return companion_clash(path)


def companion_clash(path: str) -> str | None:
    """What `path` is if it is a companion of a syncer database ("the lock file of the syncer
    database other.db"); else None."""
    for suffix, what in COMPANIONS.items():
        if path.endswith(suffix) and is_syncer_database(base := path[:-len(suffix)]):
            return f"the {what} of the syncer database {base}"
    return None


def is_syncer_database(path: str) -> bool:
    """Whether `path` is a SQLite file syncer made (its application id, or its tables).
    Reads only; anything unreadable is not."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError:
        return False
    if not header.startswith(_SQLITE):
        return False
    if int.from_bytes(header[68:72], "big") == APPLICATION_ID:
        return True
    try:
        conn = connect_untouched(path)
        try:
            tables = {name for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False
    return SYNCER_TABLES <= tables


def _spellings(mirror: str) -> list[str]:
    """The mirror's path as given (absolute) and its real path: SQLite names the companions
    after one or the other."""
    return list(dict.fromkeys((os.path.abspath(mirror), os.path.realpath(mirror))))


def _same(a: str, b: str) -> bool:
    """One file on disk (device and inode) when both exist; else the same real path."""
    try:
        return os.path.samefile(a, b)
    except OSError:              # one does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)
