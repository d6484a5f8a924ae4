"""Turn query results into text: aligned tables for people, JSON / JSON Lines / CSV for programs.

Machine formats are stable: keys are the column names of the store (migrations.py) plus the
documented extras (`kind`, `snippet`, `rank` for search hits); JSON fields are nested objects in
JSON and JSON Lines and JSON text in CSV; NULL is null in JSON and an empty field in CSV.
Highlighted words in a snippet are wrapped in `**` in every format but a terminal table.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from typing import TextIO

from .query import MARK

LISTING_FORMATS = ("table", "json", "jsonl", "csv")
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
    columns = list(columns or (rows[0].keys() if rows else []))
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else json.dumps(row[c], ensure_ascii=False)
                         if isinstance(row.get(c), (dict, list)) else row[c] for c in columns])


def width(text: str) -> int:
    """Columns a string takes on a terminal: wide (CJK, most emoji) take two, combining marks
    and the highlight markers none."""
    import wcwidth  # here: only tables measure text, and its import costs more than a search
    return sum(0 if ch in MARK else max(wcwidth.wcwidth(ch), 0) for ch in text)


def fit(text: str, limit: int) -> str:
    """`text` on one line in exactly `limit` columns: cut with an ellipsis, or padded. A
    highlighted match that would be cut off is brought into view by cutting the start instead."""
    text = " ".join(text.split())
    if width(text) <= limit:
        return text + " " * (limit - width(text))
    start = text.find(MARK[0])
    if start > 0 and width(text[:text.find(MARK[1], start) + 1]) > limit - 1:
        text = "…" + text[max(0, start - max(limit // 4, 1)):]
    out, used = [], 0
    for ch in text:
        w = width(ch)
        if used + w > limit - 1:
            break
        out.append(ch)
        used += w
    cut = "".join(out)
    if cut.count(MARK[0]) > cut.count(MARK[1]):
        cut += MARK[1]                            # a highlight cut in its middle ends here
    return cut + "…" + " " * (limit - 1 - used)


def table(rows: Sequence[dict], columns: Sequence[tuple[str, str]], total_width: int,
          style: Callable[[str], str] = lambda s: s) -> str:
    """An aligned table of `columns` ((key, title) pairs) that fits `total_width` columns of a
    terminal: the widest column gives way first, down to a few characters each. `style` is
    applied to a cell after fitting (for highlight markers)."""
    cells = [[_cell(r.get(key)) for key, _ in columns] for r in rows]
    widths = [max([width(title)] + [width(" ".join(c[i].split())) for c in cells])
              for i, (_, title) in enumerate(columns)]
    room = total_width - 2 * (len(columns) - 1)
    while sum(widths) > room and max(widths) > 6:
        widest = widths.index(max(widths))
        widths[widest] -= max(1, (sum(widths) - room) // 4)
        widths[widest] = max(widths[widest], 6)
    lines = ["  ".join(fit(title, w) for (_, title), w in zip(columns, widths)).rstrip()]
    for row in cells:
        lines.append("  ".join(style(fit(c, w)) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def when(value: str | None) -> str:
    """A stored timestamp as shown to people: one style everywhere, to the minute, in UTC."""
    if not value:
        return "-"
    return f"{value[:10]} {value[11:16]} UTC"


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str) and len(value) == 27 and value.endswith("Z") and value[10] == "T":
        return when(value)
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
