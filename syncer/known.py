"""The values a mirror holds for the filters whose set is open (surfaces, roles), so that a
typo on the command line is named with what would match instead of quietly matching nothing."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .store import Store


def _distinct(store: Store, table: str, expr: str) -> set[str]:
    """The distinct values of `expr`, one index lookup each (an index leads with `expr`,
    migrations.V6): a walk from each value to the next, not a scan of every row."""
    next_value = f"(SELECT min({expr}) FROM {table} WHERE {expr} > v.v)"
    return {value for (value,) in store.conn.execute(
        f"WITH RECURSIVE v(v) AS (SELECT (SELECT min({expr}) FROM {table}) "
        f"UNION ALL SELECT {next_value} FROM v WHERE v.v IS NOT NULL) SELECT v FROM v") if value}


def surfaces(store: Store) -> set[str]:
    """Surface ids and surface types of the mirror's conversations."""
    return (_distinct(store, "conversations", "surfaceId")
            | _distinct(store, "conversations", "json_extract(surface, '$.type')"))


def roles(store: Store) -> set[str]:
    return _distinct(store, "messages", "role")


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
    import difflib    # here: only an unknown value needs a suggestion
    close = difflib.get_close_matches(value, listed, n=1)
    return message + (f"; did you mean {close[0]!r}?" if close else "")
