"""Is the file intact? A bounded probe for `status`, the whole check for `verify --integrity`.

`probe` runs SQLite's `quick_check` (every page, every b-tree) while the file is under
WHOLE_BELOW bytes, which takes tens of milliseconds there. A larger file gets a sample: its
header, then as many pages, in random order, as `budget` seconds allow, each checked for the
shape SQLite gives its pages (the page header, the cell pointers inside the page, each table
row's record header adding up to its size, child and overflow page numbers within the file);
pages on the free list are skipped. The sample finds damage spread over a file in proportion
to the share of pages it reads, and says what it covered; `check_all` reads everything.

A page that looks damaged is read again before it is called damaged: a checkpoint writing it
at that instant is not damage.
"""
from __future__ import annotations

import os
import random
import sqlite3
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

WHOLE_BELOW = 32 * 1024 * 1024    # bytes: a smaller file is checked whole by quick_check
BUDGET = 0.06                     # seconds of page sampling for a larger one
MAGIC = b"SQLite format 3\x00"
_FREE_TRUNKS = 256                # free-list trunk pages read at most (each lists ~1,000)
_LOCK_BYTE = 1 << 30              # the page holding this offset is never used by SQLite


@dataclass(frozen=True)
class Probe:
    ok: bool
    covered: str                  # what was checked, in words
    problem: str | None = None    # what is wrong, for the one-line error


def probe(conn: sqlite3.Connection, path: str, *, whole_below: int = WHOLE_BELOW,
          budget: float = BUDGET) -> Probe:
    """Check the mirror at `path` (open on `conn`) within about `budget` seconds."""
    try:
        size = os.path.getsize(path)
    except OSError as e:
        return Probe(False, "nothing", f"cannot read the file ({e.strerror})")
    if size < whole_below:
        first = _quick_check(conn)
        covered = "every page (SQLite's quick_check)"
        return Probe(first is None, covered, first)
    return _sample(path, size, budget)


def _quick_check(conn: sqlite3.Connection) -> str | None:
    """None when quick_check finds nothing; else its first finding."""
    try:
        first = conn.execute("PRAGMA quick_check(1)").fetchone()
    except sqlite3.DatabaseError as e:
        return str(e)
    return None if first is None or first[0] == "ok" else first[0]


def check_all(conn: sqlite3.Connection,
              progress: Callable[[int, int, str], None] | None = None) -> Probe:
    """SQLite's integrity_check of every table with its indexes, one table at a time (so
    `progress(pages_done, pages, table)` can follow), then the whole file's page accounting
    by quick_check. Reads every page."""
    try:
        sizes = dict(conn.execute("SELECT name, count(*) FROM dbstat GROUP BY name"))
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND sql NOT LIKE "
            "'CREATE VIRTUAL TABLE%' ORDER BY name")]
        indexes = dict(conn.execute("SELECT name, tbl_name FROM sqlite_master "
                                    "WHERE type = 'index'"))
    except sqlite3.DatabaseError as e:
        return Probe(False, "the schema", str(e))
    weight = {t: sizes.get(t, 1) for t in tables}
    for index, table in indexes.items():
        if table in weight:
            weight[table] += sizes.get(index, 0)
    total, done = sum(weight.values()), 0
    for table in tables:
        if progress is not None:
            progress(done, total, table)
        try:
            rows = conn.execute(f'PRAGMA integrity_check("{table}")').fetchall()
        except sqlite3.DatabaseError as e:
            return Probe(False, f"the tables up to {table}", f"{table}: {e}")
        findings = [r[0] for r in rows if r[0] != "ok"]
        if findings:
            return Probe(False, f"the tables up to {table}", f"{table}: {findings[0]}")
        done += weight[table]
    if progress is not None:
        progress(total, total, "the free list")
    first = _quick_check(conn)
    covered = f"every page: {len(tables)} tables with their indexes, and the free list"
    return Probe(first is None, covered, first)


# -- sampling ------------------------------------------------------------------------------
def _u16(data: bytes, at: int) -> int:
    return (data[at] << 8) | data[at + 1]


def _u32(data: bytes, at: int) -> int:
    return struct.unpack_from(">I", data, at)[0]


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """(value, next offset) of the SQLite varint at `at`; IndexError past the end."""
    value = 0
    for i in range(8):
        byte = data[at + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    return (value << 8) | data[at + 8], at + 9


def _serial_size(kind: int) -> int:
    if kind >= 12:
        return (kind - 12) // 2
    return (0, 1, 2, 3, 4, 6, 8, 8, 0, 0, 0, 0)[kind]


class _File:
    def __init__(self, fd: int, header: bytes, size: int):
        self.fd = fd
        self.page_size = _u16(header, 16)
        if self.page_size == 1:
            self.page_size = 65536
        self.usable = self.page_size - header[20]
        self.pages = size // self.page_size
        counted = _u32(header, 28)
        if counted and _u32(header, 92) == _u32(header, 24):
            self.pages = min(self.pages, counted)   # the rest is not in use
        self.limit = self.pages       # child and overflow page numbers are at most this
        self.auto_vacuum = _u32(header, 52) != 0
        self.free, self.free_known = self._free_list(_u32(header, 32), _u32(header, 36))

    def read(self, number: int) -> bytes:
        return os.pread(self.fd, self.page_size, (number - 1) * self.page_size)

    def _free_list(self, trunk: int, count: int) -> tuple[set[int], bool]:
        free: set[int] = set()
        for _ in range(_FREE_TRUNKS):
            if trunk == 0 or len(free) >= count:
                return free, True
            if not 1 < trunk <= self.pages or trunk in free:
                return free, False
            data = self.read(trunk)
            free.add(trunk)
            leaves = min(_u32(data, 4), (self.usable - 8) // 4)
            free.update(_u32(data, 8 + 4 * i) for i in range(leaves))
            trunk = _u32(data, 0)
        return free, trunk == 0

    def damage(self, number: int, data: bytes) -> str | None:
        """What is wrong with page `number`, or None when it has the shape of a page."""
        at = 100 if number == 1 else 0
        kind = data[at]
        if kind in (2, 5, 10, 13):
            return self._btree(data, at, kind)
        if self.auto_vacuum or not self.free_known:
            return None               # pointer-map or free pages are not told apart
        if not any(data):
            return "a page of zeros that is not free"
        following = _u32(data, 0)     # an overflow page begins with the next one's number
        if following > self.limit:
            return f"not a page SQLite writes (type byte {kind})"
        return None

    def _btree(self, data: bytes, at: int, kind: int) -> str | None:
        interior = kind in (2, 5)
        cells, content = _u16(data, at + 3), _u16(data, at + 5) or 65536
        pointers = at + (12 if interior else 8)
        end = pointers + 2 * cells
        if end > self.usable or content > self.usable or (cells and content < end):
            return f"a page header out of bounds ({cells} cells, content at {content})"
        if data[at + 7] > 60:
            return "more fragmented bytes than SQLite leaves"
        freeblock = _u16(data, at + 1)
        if freeblock and not end <= freeblock <= self.usable - 4:
            return "a free block outside the page"
        if interior and not 1 < _u32(data, at + 8) <= self.limit:
            return "a child page number outside the file"
        for i in range(cells):
            cell = _u16(data, pointers + 2 * i)
            if not content <= cell < self.usable:
                return "a cell outside the page's content area"
            try:
                problem = self._cell(data, cell, kind)
            except IndexError:
                problem = "a cell running past the page"
            if problem:
                return problem
        return None

    def _cell(self, data: bytes, at: int, kind: int) -> str | None:
        if kind in (2, 5):
            if not 1 < _u32(data, at) <= self.limit:
                return "a child page number outside the file"
            at += 4
            if kind == 5:
                _varint(data, at)     # the key (a rowid)
                return None
        payload, at = _varint(data, at)
        if kind == 13:
            _, at = _varint(data, at)     # the rowid
        local_max = self.usable - 35 if kind == 13 else (self.usable - 12) * 64 // 255 - 23
        if payload > local_max:
            return None               # spills to overflow pages: its header may too
        return self._record(data, at, payload)

    def _record(self, data: bytes, at: int, payload: int) -> str | None:
        if at + payload > self.usable:
            return "a cell running past the page"
        header, cursor = _varint(data, at)
        if not 0 < header <= payload:
            return "a record header of impossible size"
        total = header
        while cursor < at + header:
            kind, cursor = _varint(data, cursor)
            if kind in (10, 11):
                return "a record with a reserved column type"
            total += _serial_size(kind)
        if cursor != at + header or total != payload:
            return "a record whose columns do not add up to its size"
        return None


def _sample(path: str, size: int, budget: float) -> Probe:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        return Probe(False, "nothing", f"cannot read the file ({e.strerror})")
    try:
        header = os.pread(fd, 100, 0)
        if len(header) < 100 or not header.startswith(MAGIC):
            return Probe(False, "the file header", "the file header is not SQLite's")
        f = _File(fd, header, size)
        if f.page_size < 512 or f.page_size & (f.page_size - 1):
            return Probe(False, "the file header", "the file header gives no valid page size")
        if os.path.exists(path + "-wal") and os.path.getsize(path + "-wal"):
            f.limit = 1 << 31         # the log may hold pages past the file's end
        # pages in random order, as many as could be read in time (a shuffle of every page
        # number of a large file would take longer than the budget)
        order = random.sample(range(1, f.pages + 1), min(f.pages, int(5000 + budget * 20000)))
        lock_page = _LOCK_BYTE // f.page_size + 1
        deadline, checked = time.monotonic() + budget, 0
        for number in order:
            if time.monotonic() > deadline:
                break
            if number in f.free or number == lock_page:
                continue
            checked += 1
            if f.damage(number, f.read(number)) is None:
                continue
            time.sleep(0.01)          # a checkpoint writing this page just now
            found = f.damage(number, f.read(number))
            if found:
                return Probe(False, f"{checked:,} of {f.pages:,} pages, sampled",
                             f"page {number}: {found}")
        share = checked / max(f.pages, 1) * 100
        return Probe(True, f"{checked:,} of {f.pages:,} pages ({share:.0f} %), sampled; "
                           "`syncer verify --integrity` checks every page")
    finally:
        os.close(fd)
