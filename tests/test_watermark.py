"""The watermark, order and dirty rules as pure functions over plain values."""
from datetime import datetime, timezone

from syncer.watermark import EVIDENCE_NEEDED, OrderCheck, is_dirty, safe_watermark


def rows(*pairs):
    return [{"updatedAt": u, "lastMessageAt": m} for u, m in pairs]


T = "2024-06-12T14:50:00.000000Z"
EARLIER = "2024-06-12T14:49:59.000000Z"
LATER = "2024-06-12T14:50:01.000000Z"


def test_safe_watermark_is_walk_start_minus_lookback_in_the_fixed_form():
    start = datetime(2024, 6, 12, 15, 0, 0, tzinfo=timezone.utc)
    assert safe_watermark(start, 600) == "2024-06-12T14:50:00.000000Z"


def test_early_stop_needs_order_evidence_and_a_record_strictly_past_the_watermark():
    check = OrderCheck(bumps=True)
    check.feed(rows((LATER, None), (T, None)))
    assert not check.may_stop(T)               # a tie at the watermark is still read
    check.feed(rows((EARLIER, None)))
    assert check.may_stop(T)
    assert not check.may_stop(None)            # no watermark yet: walk everything


def test_unsorted_page_forbids_early_stop_for_the_rest_of_the_walk():
    check = OrderCheck(bumps=True)
    check.feed(rows((EARLIER, None), (LATER, None)))
    check.feed(rows(("2020-01-01T00:00:00.000000Z", None)))
    assert not check.sorted_desc and not check.may_stop(T)


def test_message_after_update_proves_messages_do_not_bump():
    check = OrderCheck(bumps=True)
    check.feed(rows((EARLIER, LATER)))
    assert check.bumps is False and not check.may_stop(LATER)


def test_bumping_is_concluded_only_from_positive_evidence():
    check = OrderCheck()
    check.feed(rows(*[(LATER, T)] * 100))       # no counter-example is no evidence
    assert check.bumps is None
    gained = [{"id": f"c{k}", "updatedAt": LATER, "lastMessageAt": T, "messageCount": 3}
              for k in range(EVIDENCE_NEEDED)]
    held = {f"c{k}": (EARLIER, 2) for k in range(EVIDENCE_NEEDED)}
    check.feed(gained[:-1], held)
    assert check.bumps is None
    check.feed(gained[-1:], held)                # seen to gain a message, updatedAt moving
    assert check.bumps is True
    check.feed([{"id": "d", "updatedAt": T, "lastMessageAt": T, "messageCount": 5}],
               {"d": (T, 4)})                    # gained one and kept its updatedAt
    assert check.bumps is False


def test_dirty_when_new_tombstoned_or_changed():
    assert is_dirty(None, False, "abc", known=False)
    assert is_dirty("abc", True, "abc", known=True)
    assert is_dirty("abc", False, "abd", known=True)
    assert not is_dirty("abc", False, "abc", known=True)
