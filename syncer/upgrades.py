"""Python functions that the SQL of a migration calls, where SQLite's own functions cannot do
what the sync does (parse an RFC 3339 time, sign a record): `migrations.migrate` registers
them on the connection, so a migration stays one script in one transaction.

Each does exactly what transform.py does to a record at sync time, so that a row an upgrade
fills holds what a sync would have written from the same record. (SQLite's json_extract ends a
text at a NUL, which a sync keeps: the values are read in Python.)
"""
from __future__ import annotations

import functools
import json
import sqlite3

from .transform import BadRecord, conversation_row, list_signature, normalize_timestamp


def timestamp_or_null(value: object) -> str | None:
    """transform.normalize_timestamp of a text; NULL for anything else or for a text that does
    not parse (the value as received stays in `_raw`)."""
    if not isinstance(value, str):
        return None
    try:
        return normalize_timestamp(value)
    except BadRecord:
        return None


@functools.lru_cache(maxsize=1)
def _record(raw: str) -> object:
    """The record of a row's `_raw`, parsed once for all the row's columns (SQLite computes
    them one after another)."""
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return None


def field(raw: str, name: str) -> str | None:
    """A text field of the record as the sync stores it: takeoverAt normalised, NULL when it
    does not parse; NULL for a value that is not text."""
    record = _record(raw)
    value = record.get(name) if isinstance(record, dict) else None
    if name == "takeoverAt":
        return timestamp_or_null(value)
    return value if isinstance(value, str) else None


def resigned(raw: str, stored: str | None) -> str | None:
    """The list signature of the record in `raw` as the sync computes it now, if `stored` was
    its signature as syncer computed it before schema 9 (SIGNED_BEFORE_V9 alone); otherwise
    `stored` unchanged: a signature that was not valid (or none) keeps the conversation dirty,
    as it was."""
    record = _record(raw)
    try:
        row = conversation_row(dict(record))     # a copy: the cached record stays as read
    except (BadRecord, TypeError, ValueError, KeyError):
        return stored
    sig = list_signature(row)
    return sig if stored == sig[:16] else stored


def register(conn: sqlite3.Connection) -> None:
    """Make the functions callable from the migrations' SQL on `conn`."""
    conn.create_function("syncer_field", 2, field, deterministic=True)
    conn.create_function("syncer_resigned", 2, resigned, deterministic=True)

