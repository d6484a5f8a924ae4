"""Turn query results into text: aligned tables for people, JSON / JSON Lines / CSV for programs.

Machine formats are stable: keys are the column names of the store (migrations.py) plus the
documented extras (`kind`, `snippet`, `rank` for search hits); JSON fields are nested objects in
JSON and JSON Lines and JSON text in CSV; NULL is null in JSON and an empty field in CSV.
Highlighted words in a snippet are wrapped in `**` in every format but a terminal table.
Times are stored UTC and stay so in machine formats; text for people shows them in one style,
in the display zone, labelled (zones.py).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TextIO

from .query import MARK
from .zones import DEFAULT, Zone

LISTING_FORMATS = ("table", "json", "jsonl", "csv")
USEFUL = 12      # a table column narrower than this says too little to be worth its place
PLAIN_MARK = ("**", "**")


def marked(text: str | None, mark: tuple[str, str] = PLAIN_MARK) -> str | None:
    if text is None:
        return None
    return text.replace(MARK[0], mark[0]).replace(MARK[1], mark[1])


def plain_snippets(rows: list[dict]) -> list[dict]:
    return [dict(r, snippet=marked(r["snippet"])) if "snippet" in r else r for r in rows]


def dump_json(value: object, out: TextIO) -> None:
    json.dump(value, out, ensure_ascii=False, indent=2)
    out.write("\n")


def dump_jsonl(rows: Sequence[dict], out: TextIO) -> None:
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")


def dump_csv(rows: Sequence[dict], out: TextIO, columns: Sequence[str] | None = None) -> None:
    import csv    # here: only --format csv needs it
    columns = list(columns or (rows[0].keys() if rows else []))
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else json.dumps(row[c], ensure_ascii=False)
                         if isinstance(row.get(c), (dict, list)) else row[c] for c in columns])


def width(text: str, marks: int = 0) -> int:
    """Columns a string takes on a terminal: wide (CJK, most emoji) take two, combining marks
    none, and each highlight marker `marks` (0 when it becomes a colour, 1 as a bracket)."""
    import wcwidth  # here: only tables measure text, and its import costs more than a search
    return sum(marks if ch in MARK else max(wcwidth.wcwidth(ch), 0) for ch in text)


def fit(text: str, limit: int, marks: int = 0) -> str:
    """`text` on one line in exactly `limit` columns (highlight markers `marks` wide each): cut
    with an ellipsis, or padded. A highlighted match that would be cut off is brought into view
    by cutting the start instead."""
    text = " ".join(text.split())
    if width(text, marks) <= limit:
        return text + " " * (limit - width(text, marks))
    start = text.find(MARK[0])
    if start > 0 and width(text[:text.find(MARK[1], start) + 1], marks) > limit - 1:
        text = "…" + text[max(0, start - max(limit // 4, 1)):]
    out, used, is_open = [], 0, False
    for ch in text:
        w = width(ch, marks)
        opens = ch == MARK[0] or (is_open and ch != MARK[1])
        if used + w + 1 + (marks if opens else 0) > limit:   # room for "…" and a closing mark
            break
        out.append(ch)
        used, is_open = used + w, opens
    cut = "".join(out)
    if is_open:
        cut += MARK[1]                            # a highlight cut in its middle ends here
        used += marks
    return cut + "…" + " " * (limit - 1 - used)


def table(rows: Sequence[dict], columns: Sequence[tuple[str, str]], total_width: int,
          style: Callable[[str], str] = lambda s: s, zone: Zone = DEFAULT,
          whole: Sequence[str] = (), optional: Sequence[str] = (), marks: int = 0) -> str:
    """An aligned table of `columns` ((key, title) pairs) that fits `total_width` columns of a
    terminal: the widest column gives way first, down to a few characters each. Columns named
    in `whole` (ids, times) are never cut; when the others would get fewer than USEFUL
    characters each, the `optional` ones are left out, first named first. `style` is applied to
    a cell after fitting (for highlight markers, `marks` columns wide each once styled); times are
    shown in `zone`."""
    natural = {key: max([width(title)] + [width(" ".join(_cell(r.get(key), zone).split()), marks)
                                          for r in rows]) for key, title in columns}
    columns = list(columns)
    for key in optional:
        room = total_width - 2 * (len(columns) - 1) - sum(natural[k] for k, _ in columns
                                                          if k in whole)
        if room >= sum(min(natural[k], USEFUL) for k, _ in columns if k not in whole):
            break
        columns = [c for c in columns if c[0] != key]
    widths = [natural[key] for key, _ in columns]
    shrinkable = [i for i, (key, _) in enumerate(columns) if key not in whole]
    room = total_width - 2 * (len(columns) - 1)
    while shrinkable and sum(widths) > room and max(widths[i] for i in shrinkable) > 6:
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= max(1, (sum(widths) - room) // 4)
        widths[widest] = max(widths[widest], 6)
    cells = [[_cell(r.get(key), zone) for key, _ in columns] for r in rows]
    lines = ["  ".join(fit(title, w) for (_, title), w in zip(columns, widths)).rstrip()]
    for row in cells:
        lines.append("  ".join(style(fit(c, w, marks)) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def when(value: str | None, zone: Zone = DEFAULT) -> str:
    """A stored timestamp as shown to people: one style everywhere, to the minute, in `zone`,
    labelled with it (`2024-05-01 14:03 CEST`)."""
    return zone.show(value)


def _cell(value: object, zone: Zone) -> str:
    if value is None:
        return ""
    if isinstance(value, str) and len(value) == 27 and value.endswith("Z") and value[10] == "T":
        return zone.show(value)
    return str(value)


def bar_chart(items: Sequence[tuple[str, int]], bar_width: int = 40) -> str:
    """Labelled horizontal ASCII bars."""
    if not items:
        return "  (none)"
    top = max(n for _, n in items) or 1
    label = max(width(str(k)) for k, _ in items)
    digits = max(len(str(n)) for _, n in items)
    return "\n".join(f"  {fit(str(k), label)}  {n:>{digits}}  {'#' * round(bar_width * n / top)}"
                     for k, n in items)
