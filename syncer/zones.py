"""The time zone people read times in, and the one style times are shown in.

The mirror stores every time in UTC, and machine formats (JSON, JSON Lines, CSV, exports) give
them as stored. Text for people shows a time in the display zone (`--tz`, `SYNCER_TZ` or
`[display].tz`: `local`, `UTC` or an IANA name such as `Europe/Paris`) as `2024-05-01 14:03
CEST`: to the minute, with the zone's abbreviation at that instant, so that every time on a
screen says which zone it is in, even across a daylight-saving change. A date or time a person
types without an offset (`--since 2024-05-01`) is read in the same zone.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone, tzinfo

LOCAL = "local"
UTC = "UTC"
HINT = "use local, UTC or an IANA name such as Europe/Paris"


@dataclass(frozen=True)
class Zone:
    """A display zone: `name` as given (canonical case); `tz` None means the system's own
    rules (`local`, which follow the TZ environment variable)."""
    name: str = UTC
    tz: tzinfo | None = field(default=timezone.utc, compare=False)

    def at(self, instant: datetime) -> datetime:
        return instant.astimezone(self.tz)

    def show(self, value: str | None) -> str:
        """A stored UTC time as people read it: `2024-05-01 14:03 CEST`; `-` when there is
        none, and an unreadable value as it is."""
        if not value:
            return "-"
        try:
            instant = datetime.fromisoformat(value)
        except ValueError:
            return value
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=timezone.utc)
        local = self.at(instant)
        return f"{local:%Y-%m-%d %H:%M} {label(local)}"

    def read(self, text: str, *, end: bool = False) -> str:
        """`text` with an offset when it is a date or a time without one, read in this zone
        (a bare date is its midnight, or with `end` the next midnight); anything else (an
        instant with its offset, a duration, a typo) is returned unchanged for the caller to
        parse or refuse."""
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                day = date.fromisoformat(text) + timedelta(days=1 if end else 0)
                return self._attach(datetime(day.year, day.month, day.day)).isoformat()
            if re.match(r"\d{4}-", text):
                dt = datetime.fromisoformat(text)
                return text if dt.tzinfo else self._attach(dt).isoformat()
        except (ValueError, OverflowError):
            pass
        return text

    def _attach(self, naive: datetime) -> datetime:
        if self.tz is None:
            return naive.astimezone()          # a naive time is taken as the system's local
        return naive.replace(tzinfo=self.tz)


def label(local: datetime) -> str:
    """The zone's abbreviation at that instant: UTC, CEST, EDT, or tzdata's own (+03) for a
    zone that has none."""
    return local.tzname() or local.strftime("UTC%z")


def parse_zone(spec: str) -> Zone:
    """`local`, `UTC` (any case) or an IANA zone name (any case) -> Zone. ValueError naming the
    value, the closest known name if one is close, and what to use."""
    text = spec.strip()
    if text.lower() == LOCAL:
        return Zone(LOCAL, None)
    if text.upper() == UTC:
        return Zone(UTC, timezone.utc)
    # here, not at the top: a command shown in UTC (the default) never loads tzdata's index
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones
    try:
        return Zone(text, ZoneInfo(text))
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    known = {name.lower(): name for name in available_timezones()}
    if text.lower() in known:                     # europe/paris
        return Zone(known[text.lower()], ZoneInfo(known[text.lower()]))
    known.update(local=LOCAL, utc=UTC)
    import difflib
    close = difflib.get_close_matches(text.lower(), list(known), n=1)
    guess = f"; did you mean {known[close[0]]}?" if close else ""
    raise ValueError(f"unknown time zone {spec!r}{guess} ({HINT})")


DEFAULT = Zone()
