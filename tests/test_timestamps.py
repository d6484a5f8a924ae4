"""Timestamps: every spelling RFC 3339's grammar allows is read as its instant, to the
microsecond; what is not a timestamp is refused with a reason. Property tests over the grammar
(section 5.6, with its note that "T" and "Z" may be lower case), judged by an independent
computation of the instant in integer microseconds."""
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncer.transform import BadRecord, normalize_timestamp

DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
MIN_US = (date(1, 1, 1).toordinal() - EPOCH_ORDINAL) * 86_400 * 10**6
MAX_US = (date(9999, 12, 31).toordinal() - EPOCH_ORDINAL + 1) * 86_400 * 10**6 - 1


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


@st.composite
def rfc3339(draw):
    """(spelling, instant in microseconds since 1970 UTC) of one RFC 3339 date-time."""
    year = draw(st.integers(1, 9999))
    month = draw(st.integers(1, 12))
    last = 29 if month == 2 and _leap(year) else 28 if month == 2 else DAYS_IN_MONTH[month - 1]
    day = draw(st.integers(1, last))
    hour, minute = draw(st.integers(0, 23)), draw(st.integers(0, 59))
    second = draw(st.integers(0, 60))
    digits = draw(st.one_of(st.none(), st.text("0123456789", min_size=1, max_size=15)))
    offset = draw(st.one_of(st.just(None),
                            st.tuples(st.sampled_from("+-"), st.integers(0, 23),
                                      st.integers(0, 59))))
    t = draw(st.sampled_from("Tt "))
    text = f"{year:04d}-{month:02d}-{day:02d}{t}{hour:02d}:{minute:02d}:{second:02d}"
    if digits is not None:
        text += "." + digits
    if offset is None:
        text += draw(st.sampled_from("Zz"))
        shift = 0
    else:
        sign, oh, om = offset
        text += f"{sign}{oh:02d}:{om:02d}"
        shift = (1 if sign == "+" else -1) * (oh * 60 + om) * 60 * 10**6
    micro = int(digits[:6].ljust(6, "0")) if digits else 0
    if second == 60:                 # a leap second: the last microsecond of its minute
        second, micro = 59, 999_999
    days = date(year, month, day).toordinal() - EPOCH_ORDINAL
    local = ((days * 24 + hour) * 60 + minute) * 60 + second
    return text, local * 10**6 + micro - shift


def _store_form(us: int) -> str:
    """Microseconds since 1970 UTC -> `YYYY-MM-DDTHH:MM:SS.ffffffZ`, computed apart from the
    code under test (integer arithmetic and date.fromordinal only)."""
    seconds, micro = divmod(us, 10**6)
    days, rest = divmod(seconds, 86_400)
    day = date.fromordinal(days + EPOCH_ORDINAL)
    hour, rest = divmod(rest, 3600)
    minute, second = divmod(rest, 60)
    return (f"{day.year:04d}-{day.month:02d}-{day.day:02d}T{hour:02d}:{minute:02d}:"
            f"{second:02d}.{micro:06d}Z")


@given(rfc3339())
def test_every_rfc3339_spelling_is_its_instant(case):
    text, us = case
    if MIN_US <= us <= MAX_US:
        assert normalize_timestamp(text) == _store_form(us)
    else:                            # e.g. 0001-01-01T00:00:00+01:00: before year 1 in UTC
        with pytest.raises(BadRecord, match="out of range"):
            normalize_timestamp(text)


@given(rfc3339(), rfc3339())
def test_store_form_orders_as_the_instants(a, b):
    """String order of the stored form is time order (what the watermark relies on)."""
    (ta, ua), (tb, ub) = a, b
    if all(MIN_US <= u <= MAX_US for u in (ua, ub)):
        assert (normalize_timestamp(ta) < normalize_timestamp(tb)) == (ua < ub)


@st.composite
def out_of_grammar(draw):
    """A date-time with exactly one field outside what RFC 3339 allows."""
    fields = {"month": 5, "day": 17, "hour": 10, "minute": 30, "second": 15, "oh": 2, "om": 0}
    bad = draw(st.sampled_from([("month", 0), ("month", 13), ("day", 0), ("day", 32),
                                ("hour", 24), ("minute", 60), ("second", 61), ("oh", 24),
                                ("om", 60)]))
    fields[bad[0]] = bad[1]
    if bad[0] == "day" and bad[1] == 32:
        fields["day"] = draw(st.sampled_from([32, 99]))
    f = fields
    return (f"2024-{f['month']:02d}-{f['day']:02d}T{f['hour']:02d}:{f['minute']:02d}:"
            f"{f['second']:02d}+{f['oh']:02d}:{f['om']:02d}")


@given(out_of_grammar())
def test_a_field_out_of_range_is_refused(text):
    with pytest.raises(BadRecord, match="timestamp"):
        normalize_timestamp(text)


@pytest.mark.parametrize("text", ["2024-02-30T00:00:00Z", "2023-02-29T00:00:00Z",
                                  "2024-06-10T25:15:00Z", "yesterday", "2024-13-10T09:15:00Z",
                                  "２０２４-06-10T09:15:00Z", "", "2024-06-10T09:15:00+24:00"])
def test_what_is_not_a_timestamp_is_refused(text):
    with pytest.raises(BadRecord):
        normalize_timestamp(text)


@pytest.mark.parametrize("text, instant", [
    ("2024-06-10T09:15:00", "2024-06-10T09:15:00.000000Z"),        # no offset: taken as UTC
    ("2024-06-10T09:15+02:00", "2024-06-10T07:15:00.000000Z"),
    ("2024-06-10T09:15:00+0530", "2024-06-10T03:45:00.000000Z"),
])
def test_other_iso_8601_forms_are_read_as_before(text, instant):
    """Beyond RFC 3339, the ISO 8601 forms Python reads stay accepted, as they always were."""
    assert normalize_timestamp(text) == instant


def test_the_same_instant_in_several_spellings():
    spellings = ["2024-11-21T21:09:02Z", "2024-11-21t21:09:02z", "2024-11-21T21:09:02.000Z",
                 "2024-11-21T21:09:02.000000000000z", "2024-11-21T22:39:02+01:30",
                 "2024-11-21T13:09:02-08:00", "2024-11-21T21:09:02-00:00",
                 "2024-11-22T11:09:02+14:00", "2024-11-21 21:09:02Z"]
    assert {normalize_timestamp(s) for s in spellings} == {"2024-11-21T21:09:02.000000Z"}
