"""Pacing trusts the server's clock, not ours: an `X-RateLimit-Reset` given as an epoch time is
read against the answer's `Date` header, every wait is capped, and a skew or a missing `Date`
is said once. Pure logic over plain values first, then whole syncs against a skewed simulator."""
import logging
import threading
from datetime import timedelta
from email.utils import formatdate

import pytest
from support import assert_exact, settings_for

from syncer import retry
from syncer.api import RuntypeClient
from syncer.runner import run_sync
from syncer.simulator import Behaviour, SimulatorServer, generate

LOCAL = 1_750_000_000.0          # our clock, epoch seconds, in the pure tests
SKEWS = (-3600, -10, 0, 10, 3600)


@pytest.fixture
def said(caplog):
    """The warnings syncer logs during the test (whatever an earlier CLI test did to the
    handlers of the "syncer" logger)."""
    logger = logging.getLogger("syncer")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    caplog.handler.setLevel(logging.WARNING)
    try:
        yield lambda: [r.getMessage() for r in caplog.records]
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(level)
        logger.propagate = propagate


def answer(server_now, *, reset_in=None, reset_at=None, limit=100, remaining=99, **extra):
    """Rate-limit headers as a server whose clock reads `server_now` sends them."""
    reset = reset_at if reset_at is not None else int(server_now) + reset_in
    headers = {"date": formatdate(server_now, usegmt=True), "x-ratelimit-limit": str(limit),
               "x-ratelimit-remaining": str(remaining), "x-ratelimit-reset": str(reset)}
    headers.update(extra)
    return headers


@pytest.mark.parametrize("skew", SKEWS)
def test_an_epoch_reset_is_read_on_the_servers_clock(skew):
    server_now = LOCAL + skew
    assert retry.reset_seconds(answer(server_now, reset_in=7)) == 7
    assert retry.retry_after(answer(server_now, reset_in=7)) == 7
    # the answer's own Date wins over our clock; a clock estimate given by the caller wins over both
    assert retry.reset_seconds({"x-ratelimit-reset": str(int(server_now) + 7)},
                               now=server_now) == 7


@pytest.mark.parametrize("skew", SKEWS)
def test_every_wait_is_capped(skew):
    server_now = LOCAL + skew
    assert retry.reset_seconds(answer(server_now, reset_in=86_400)) == retry.MAX_WAIT
    assert retry.reset_seconds(answer(server_now, reset_in=-30)) == 0
    late = formatdate(server_now + 86_400, usegmt=True)
    assert retry.retry_after({"date": formatdate(server_now, usegmt=True),
                              "retry-after": late}) == retry.MAX_WAIT


@pytest.mark.parametrize("skew", SKEWS)
def test_a_retry_after_date_is_read_on_the_servers_clock(skew):
    server_now = LOCAL + skew
    headers = {"date": formatdate(server_now, usegmt=True),
               "retry-after": formatdate(server_now + 5, usegmt=True)}
    assert retry.retry_after(headers) == 5


@pytest.mark.parametrize("skew", SKEWS)
def test_the_pace_is_the_true_window_whatever_the_skew(skew):
    clock = retry.ServerClock()
    pacer = retry.Pacer()
    server_now = LOCAL + skew
    headers = answer(server_now, reset_in=1, limit=20, remaining=19)
    clock.observe(headers["date"], received=LOCAL)
    assert clock.offset == skew
    pacer.observe(headers, now=clock.now(local=LOCAL))
    assert pacer.interval == pytest.approx(1 / 19)


def test_the_clock_estimate_tightens_and_follows_a_step():
    """A Date header is the server's time cut to the second, stamped between our request and
    its answer: the estimate is the least late one seen, until an answer shows the server's
    clock was set back. A slow answer leaves it alone."""
    clock = retry.ServerClock()
    assert clock.offset is None and clock.now(local=LOCAL) == LOCAL
    true = 10.6

    def date(local):
        return formatdate(local + true, usegmt=True)
    for local in (LOCAL + 0.2, LOCAL + 0.5, LOCAL + 0.9):
        clock.observe(date(local), sent=local - 0.01, received=local)
    assert true - 0.15 <= clock.offset <= true
    best = clock.offset
    clock.observe(date(LOCAL + 3), sent=LOCAL + 3, received=LOCAL + 33)   # a 30 s answer
    assert clock.offset == best
    clock.observe("not a date", received=LOCAL + 40)
    assert clock.offset == best
    true = -60.0                                                         # set back
    clock.observe(date(LOCAL + 50), sent=LOCAL + 50, received=LOCAL + 50.1)
    assert clock.offset == pytest.approx(-60, abs=1.1)


# -- whole syncs against a rate-limited simulator whose clock is off ---------------------------

def skewed(skew, **behaviour):
    upstream = generate(seed=41, conversations=30, messages_per_conversation=2,
                        big_conversations=0)
    upstream.clock_skew = timedelta(seconds=skew)
    return upstream, SimulatorServer(upstream, Behaviour(**behaviour))


@pytest.mark.parametrize("skew", (-3600, 10, 3600))
def test_a_sync_paced_by_epoch_resets_is_not_throttled_whatever_the_skew(tmp_path, skew, said):
    upstream, server = skewed(skew, rate_limit=40, rate_window=1.0, rate_reset="epoch")
    stop = threading.Event()
    # a bound that proves the sync ends: at the pace a 60 s cap would set, it would take minutes
    timer = threading.Timer(60, stop.set)
    with server:
        timer.start()
        try:
            summary = run_sync(settings_for(server, tmp_path / "m.db", concurrency=4),
                               stop=stop)
        finally:
            timer.cancel()
        throttled = sum(1 for *_, status in server.requests if status == 429)
    assert summary.outcome == "ok", summary.error
    assert throttled <= 2 and summary.counts["throttled"] == throttled
    assert_exact(tmp_path / "m.db", upstream)
    skew_lines = [line for line in said() if "clock" in line]
    assert len(skew_lines) == 1, said()
    assert f"{skew:+d}s" in skew_lines[0]


@pytest.mark.parametrize("skew", SKEWS)
def test_the_client_paces_at_the_servers_window_whatever_the_skew(tmp_path, skew):
    upstream, server = skewed(skew, rate_limit=40, rate_window=1.0, rate_reset="epoch")
    with server, RuntypeClient(settings_for(server, tmp_path / "m.db")) as client:
        for _ in range(5):
            client.list_conversations(cursor=None, limit=5, status="all")
        # 38 of 40 requests a second (5 % kept back); whole-second headers may read the window
        # as up to 2 s; a 10 s skew read on our clock would make it 11 s, or none at all
        assert 1 / 38 <= client.pacer.interval <= 2 / 38
    assert all(status == 200 for *_, status in server.requests)


def test_the_client_exposes_the_skew_it_saw(tmp_path):
    upstream, server = skewed(-90)
    with server, RuntypeClient(settings_for(server, tmp_path / "m.db")) as client:
        assert client.clock_skew is None and client.undated_answers == 0
        client.list_conversations(cursor=None, limit=5, status="all")
        assert client.clock_skew == pytest.approx(-90, abs=2)
        assert client.undated_answers == 0


def test_answers_without_a_date_are_said_once(tmp_path, said):
    upstream, server = skewed(0, date_header=False)
    with server, RuntypeClient(settings_for(server, tmp_path / "m.db")) as client:
        for _ in range(3):
            client.list_conversations(cursor=None, limit=5, status="all")
        assert client.clock_skew is None and client.undated_answers == 3
    lines = said()
    assert len(lines) == 1 and "no Date header" in lines[0] and "local clock" in lines[0], lines


def test_agreeing_clocks_say_nothing(tmp_path, said):
    upstream, server = skewed(0, rate_limit=1000, rate_reset="epoch")
    with server:
        summary = run_sync(settings_for(server, tmp_path / "m.db"))
    assert summary.outcome == "ok"
    assert said() == []
