"""The values a mirror holds for the filters whose set is open (surfaces, roles), so that a
typo on the command line is named with what would match instead of quietly matching nothing."""
from __future__ import annotations

import difflib

from .errors import ConfigError
from .store import Store


def surfaces(store: Store) -> set[str]:
    """Surface ids and surface types of the mirror's conversations."""
    rows = store.conn.execute(
        "SELECT DISTINCT surfaceId, json_extract(surface, '$.type') FROM conversations")
    return {value for row in rows for value in row if value}


def roles(store: Store) -> set[str]:
    return {role for (role,) in store.conn.execute("SELECT DISTINCT role FROM messages") if role}


def check(store: Store, *, surface: tuple[str, ...] = (), role: tuple[str, ...] = ()) -> None:
    """ConfigError (exit 2) naming the first value the mirror does not hold, and what it does."""
    for name, given, known in (("surface", surface, surfaces), ("role", role, roles)):
        if not given:
            continue
        held = known(store)
        for value in given:
            if value not in held:
                raise ConfigError(unknown(name, value, held))


def unknown(name: str, value: str, held: set[str]) -> str:
    listed = sorted(held)
    shown = ", ".join(listed[:8]) + (", ..." if len(listed) > 8 else "")
    message = f"no {name} {value!r} in this mirror (known: {shown or 'none'})"
    close = difflib.get_close_matches(value, listed, n=1)
    return message + (f"; did you mean {close[0]!r}?" if close else "")
