"""Backoff, Retry-After and pacing: pure logic over plain values."""
import time

from syncer import retry


def headers(limit, remaining, reset):
    return {"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": str(remaining),
            "x-ratelimit-reset": str(reset)}


def test_pacing_spreads_the_allowance_over_the_window():
    pacer = retry.Pacer()
    pacer.observe(headers(100, 99, 1))
    assert abs(pacer.interval - 1 / 95) < 1e-9           # 5 % kept in reserve
    # a sliding window reports a shorter reset as requests age out: the pace stays
    pacer.observe(headers(100, 60, 0.3))
    assert abs(pacer.interval - 1 / 95) < 1e-9


def test_exhausted_allowance_holds_every_thread_until_the_reset():
    pacer = retry.Pacer()
    pacer.observe(headers(100, 1, 0.2))
    started = time.monotonic()
    pacer.wait()
    assert time.monotonic() - started >= 0.15


def test_no_headers_no_pacing():
    pacer = retry.Pacer()
    pacer.observe({})
    assert pacer.interval == 0


def test_retry_after_and_reset_headers():
    assert retry.retry_after({"retry-after": "3"}) == 3
    assert retry.retry_after({"x-ratelimit-reset": "7"}) == 7
    assert retry.retry_after({"retry-after": "9999"}) == retry.MAX_WAIT
    epoch = time.time() + 5
    assert 4 <= retry.retry_after({"x-ratelimit-reset": str(epoch)}) <= 5
    assert retry.retry_after({"retry-after": "soon"}) is None


def test_backoff_grows_and_is_capped():
    for attempt in range(1, 12):
        assert 0 <= retry.backoff(attempt) <= min(8.0, 0.25 * 2 ** attempt)
