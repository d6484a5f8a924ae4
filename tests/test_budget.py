"""The hourly request budget ([api].max_requests_per_hour, issue item 9): a sliding window that
caps the requests of any hour, earlier runs' included, and slows nothing that fits. Real
simulator over loopback and real SQLite; a fake clock only for the hour itself."""
import os
import subprocess
import sys
import threading

import pytest
from support import KEY, read_store, settings_for, wait_for

from syncer import budget
from syncer.api import RuntypeClient
from syncer.budget import HOUR, Budget
from syncer.config import Settings
from syncer.errors import ConfigError, Interrupted
from syncer.progress import Tally, line
from syncer.runner import run_sync
from syncer.simulator import Behaviour, SimulatorServer, generate


class FakeHour:
    """A clock and a wait that advances it: an hour passes in no time."""

    def __init__(self):
        self.now = 1000.0
        self.waits = []

    def clock(self):
        return self.now

    def wait(self, stop, seconds):
        self.waits.append(seconds)
        self.now += seconds
        return stop.is_set()


def test_the_window_slides_and_earlier_runs_count_for_an_hour():
    hour = FakeHour()
    b = Budget(30, clock=hour.clock, wait=hour.wait)
    b.count_earlier([(HOUR - 60, 10), (HOUR + 1, 99), (120, 400)])  # 400 capped at 30
    assert b.used() == 40
    stop = threading.Event()
    b2 = Budget(30, clock=hour.clock, wait=hour.wait)
    b2.count_earlier([(HOUR - 60, 10)])     # 10 made 59 minutes ago
    for _ in range(20):
        b2.take(stop)
    assert hour.waits == []                 # 30 in the hour: no wait
    b2.take(stop)                           # the 31st waits for the 10 to age out
    assert hour.waits == [pytest.approx(60)]
    assert b2.used() == 21 and b2.made == 21


def test_a_wait_for_the_budget_ends_with_the_stop_event():
    hour = FakeHour()
    b = Budget(2, clock=hour.clock, wait=hour.wait)
    stop = threading.Event()
    b.take(stop)
    b.take(stop)
    stop.set()
    with pytest.raises(Interrupted):
        b.take(stop)
    assert b.made == 2


def test_auto_is_half_the_announced_allowance_per_hour_else_500():
    assert budget.per_hour((1000, 3600)) == (500, 1000)
    assert budget.per_hour((100, 10)) == (18_000, 36_000)
    assert budget.per_hour(None) == (500, None)
    upstream = generate(seed=5, conversations=5)
    with SimulatorServer(upstream, Behaviour(rate_limit=1000, rate_window=3600)) as server:
        settings = Settings(base_url=server.base_url, api_key=KEY)
        with RuntypeClient(settings) as client:
            assert client.budget.per_hour == 500
            client.probe()
            assert client.budget.per_hour == 500
    with SimulatorServer(upstream, Behaviour()) as server:   # unthrottled: 1,000,000 a 10 s
        with RuntypeClient(Settings(base_url=server.base_url, api_key=KEY)) as client:
            client.probe()
            assert client.budget.per_hour == 180_000_000


@pytest.fixture
def in_thread():
    """Start a sync in a thread: (stop, thread, out). A failing test still stops it, so a
    thread waiting for the budget never holds the interpreter open."""
    started = []

    def start(settings, reports):
        stop = threading.Event()
        out = {}

        def target():
            out["summary"] = run_sync(settings, stop=stop, progress=reports.append)
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        started.append((stop, thread))
        return stop, thread, out
    yield start
    for stop, thread in started:
        stop.set()
        thread.join(10)


def waiting(reports) -> bool:
    return any(r.get("budget_wait") for r in list(reports))


@pytest.fixture
def world(tmp_path):
    upstream = generate(seed=13, conversations=40, messages_per_conversation=3,
                        big_conversations=0)
    with SimulatorServer(upstream, Behaviour()) as server:   # the suite's huge allowance
        yield upstream, server, tmp_path / "m.db"


def test_the_budget_caps_a_run_then_it_waits_and_a_stop_ends_it(world, in_thread):
    upstream, server, db = world
    reports = []
    stop, thread, out = in_thread(settings_for(server, db, max_requests_per_hour=30),
                                      reports)
    wait_for(lambda: waiting(reports), "a wait for the request budget")
    wait_for(lambda: len(server.requests) >= 30, "the requests taken to be answered")
    thread.join(0.5)
    assert thread.is_alive() and len(server.requests) == 30     # and no more while it waits
    tally = Tally()
    for r in reports:
        tally.update(r)
    shown = line(tally.snapshot(), 300)
    assert "waiting for the request budget: 1 h" in shown and "ETA" in shown
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    summary = out["summary"]
    assert summary.outcome == "interrupted" and summary.counts["requests"] == 30
    assert len(server.requests) == 30


def test_requests_of_runs_in_the_last_hour_count_against_the_next(world, in_thread):
    upstream, server, db = world
    first = run_sync(settings_for(server, db, max_requests_per_hour=200))
    assert first.outcome == "ok" and first.counts["requests"] < 200     # full speed
    made = first.counts["requests"]
    for cid in upstream.conversation_ids()[:20]:
        upstream.add_message(cid, "one more")
    server.reset_log()
    reports = []
    stop, thread, out = in_thread(settings_for(server, db, max_requests_per_hour=made + 5),
                                  reports)
    wait_for(lambda: waiting(reports), "a wait for the request budget")
    wait_for(lambda: len(server.requests) >= 5, "the requests taken to be answered")
    thread.join(0.5)
    assert len(server.requests) == 5          # what the first run left of the hour
    stop.set()
    thread.join(10)
    assert out["summary"].outcome == "interrupted"
    with read_store(db) as store:
        assert [n for _, n in store.requests_since("2000-01-01T00:00:00Z")] == [made, 5]


def test_the_unthrottled_simulator_of_the_suite_leaves_the_budget_out_of_the_way(world):
    upstream, server, db = world
    reports = []
    summary = run_sync(settings_for(server, db), progress=reports.append)
    assert summary.outcome == "ok"
    assert not waiting(reports)
    assert reports[-1]["budget"] == 180_000_000


@pytest.mark.parametrize("text", ["0", "-5", '"lots"', "1.5", "true", '"12 an hour"'])
def test_bad_budget_in_the_file_is_one_error_naming_the_key(tmp_path, text):
    from syncer import config
    path = tmp_path / "c.toml"
    path.write_text(f"[api]\nmax_requests_per_hour = {text}\n")
    with pytest.raises(ConfigError) as e:
        config.load(str(path), env={})
    assert "[api].max_requests_per_hour" in str(e.value) and str(path) in str(e.value)


def test_the_budget_from_flag_env_file_or_auto(tmp_path):
    from syncer import config
    path = tmp_path / "c.toml"
    path.write_text("[api]\nmax_requests_per_hour = 300\n")
    assert config.load(None, env={}).max_requests_per_hour is None
    assert config.load(str(path), env={}).max_requests_per_hour == 300
    env = {config.BUDGET_ENV: "200"}
    assert config.load(str(path), env=env).max_requests_per_hour == 200
    assert config.load(str(path), env=env, max_requests_per_hour="auto") \
        .max_requests_per_hour is None
    with pytest.raises(ConfigError, match=config.BUDGET_ENV):
        config.load(None, env={config.BUDGET_ENV: "many"})


def cli(args, server=None, **env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTYPE_", "SYNCER_"))}
    env["RUNTYPE_API_KEY"] = KEY
    if server is not None:
        env["RUNTYPE_BASE_URL"] = server.base_url
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "syncer", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_a_bad_budget_flag_exits_2_with_one_line(tmp_path):
    r = cli(["--db", str(tmp_path / "m.db"), "sync", "--max-requests-per-hour", "0"])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: --max-requests-per-hour: 0 is not a positive number of requests an hour "
        'or "auto" (e.g. 500)']
    assert not (tmp_path / "m.db").exists()


def test_doctor_shows_the_allowance_and_the_share_syncer_takes(tmp_path):
    upstream = generate(seed=3, conversations=5)
    with SimulatorServer(upstream, Behaviour(rate_limit=1000, rate_window=3600)) as server:
        auto = cli(["doctor"], server, SYNCER_DB=str(tmp_path / "m.db"))
        told = cli(["doctor"], server, SYNCER_DB=str(tmp_path / "m.db"),
                   SYNCER_MAX_REQUESTS_PER_HOUR="250")
        greedy = cli(["doctor"], server, SYNCER_DB=str(tmp_path / "m.db"),
                     SYNCER_MAX_REQUESTS_PER_HOUR="2000")
    assert auto.returncode == 0, auto.stdout
    assert ("request budget: the server announces 1,000 requests an hour (1,000 per 3600 s); "
            "syncer takes 500 of 1,000 requests an hour (50 %)") in " ".join(auto.stdout.split())
    assert "syncer takes 250 of 1,000 requests an hour (25 %)" in told.stdout
    assert "[api].max_requests_per_hour 250 (SYNCER_MAX_REQUESTS_PER_HOUR)" in \
        " ".join(told.stdout.split())
    assert greedy.returncode == 1 and "more than the server allows" in greedy.stdout
    assert KEY not in auto.stdout + auto.stderr + told.stdout + greedy.stdout
