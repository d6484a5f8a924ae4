"""Files and directories readable by their owner only: what syncer writes holds names, emails
and message text. Files are created 600 and directories 700, whatever the umask allows
(a umask only ever removes permissions).

A directory that already exists and lets others in (a feed directory an older syncer made
755) is tightened to its owner's permissions when syncer writes into it (`tighten`); one that
is not this user's is left as it is (chmod would be refused).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o600
DIR_MODE = 0o700


def create_file(path: str | Path) -> BinaryIO:
    """`path` opened for writing, created 600 (emptied if it exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    return os.fdopen(fd, "wb")


def make_dirs(path: Path) -> None:
    """`path` and its missing parents, each created 700 (`os.makedirs` gives the parents the
    umask's mode); `path` itself tightened if it existed."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:       # another export made it meanwhile
            pass
    tighten((missing or [path])[0])


def tighten(path: Path) -> None:
    """Take group's and others' permissions off `path` if they have any and it is ours."""
    info = os.stat(path)
    if info.st_mode & 0o077 and info.st_uid == os.geteuid():
        os.chmod(path, stat.S_IMODE(info.st_mode) & 0o700)
