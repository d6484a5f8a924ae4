"""Wire spellings of one instant: every style below is valid RFC 3339 and denotes the instant the
Upstream holds (microsecond precision), however differently it is written.

A style is chosen per `Behaviour.timestamp_style`; where a style has a free choice (which
offset, how many extra digits, which style under "mixed" and "rfc3339") the choice comes from
a salt, so the same record always renders the same way.
"""

from __future__ import annotations

import zlib
from datetime import datetime, timedelta

from .upstream import parse_ts

# Local offsets of "numoffset", in minutes east of UTC; "-00:00" is RFC 3339's "UTC, local
# offset unknown", the same instant as "Z".
NUMERIC_OFFSETS = (330, -480, 840, "-00:00", 60, -210, 545, -720, 600, -300)
PLAIN_STYLES = ("z", "fraction", "offset", "lower", "long_fraction", "numoffset")


def salt_of(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def render_ts(value, style: str, salt: str = "") -> str | None:
    """One instant in a wire style; never drops a non-zero fraction, whatever the style."""
    dt = parse_ts(value)
    if dt is None:
        return None
    mix = salt_of(salt)
    if style == "mixed":
        style = ("z", "fraction", "offset")[mix % 3]
    elif style == "rfc3339":
        style = PLAIN_STYLES[mix % len(PLAIN_STYLES)]
    return _STYLES[style](dt, mix >> 4)


def _base(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S")


def _fraction(us: int) -> str:
    """`.ffffff` when there is a fraction, nothing for a whole second."""
    return f".{us:06d}" if us else ""


def _z(dt: datetime, mix: int) -> str:
    return f"{_base(dt)}{_fraction(dt.microsecond)}Z"


def _fraction_style(dt: datetime, mix: int) -> str:
    """Always a fraction: milliseconds where they say it all (for some records), else 6 digits."""
    us = dt.microsecond
    if us % 1000 == 0 and mix & 1:
        return f"{_base(dt)}.{us // 1000:03d}Z"
    return f"{_base(dt)}.{us:06d}Z"


def _offset(dt: datetime, mix: int) -> str:
    return f"{_base(dt)}{_fraction(dt.microsecond)}+00:00"


def _lower(dt: datetime, mix: int) -> str:
    """Lowercase `t` and `z`, trailing zeros of the fraction trimmed (`.5z`)."""
    fraction = _fraction(dt.microsecond).rstrip("0")
    return f"{dt.strftime('%Y-%m-%dt%H:%M:%S')}{fraction}z"


def _long_fraction(dt: datetime, mix: int) -> str:
    """9 to 12 fraction digits: the microseconds, then 3 to 6 digits below them. Truncated to
    microseconds, the instant is the upstream's; rounded, it may not be."""
    extra_digits = 3 + mix % 4
    extra = (mix >> 2) % 10 ** extra_digits
    return f"{_base(dt)}.{dt.microsecond:06d}{extra:0{extra_digits}d}Z"


def _numoffset(dt: datetime, mix: int) -> str:
    """A numeric offset other than +00:00, the local time shifted so the instant is unchanged."""
    minutes = NUMERIC_OFFSETS[mix % len(NUMERIC_OFFSETS)]
    if minutes == "-00:00":
        return f"{_base(dt)}{_fraction(dt.microsecond)}-00:00"
    local = dt + timedelta(minutes=minutes)
    sign, size = ("+" if minutes > 0 else "-"), abs(minutes)
    return f"{_base(local)}{_fraction(local.microsecond)}{sign}{size // 60:02d}:{size % 60:02d}"


_STYLES = {"z": _z, "fraction": _fraction_style, "offset": _offset, "lower": _lower,
           "long_fraction": _long_fraction, "numoffset": _numoffset}
