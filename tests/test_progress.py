"""Progress people see: the live line of `syncer sync` on a terminal (elapsed, walked of the
total, messages, rate, ETA; a resumed run says so; log lines never glue onto it), the daemon's
progress line during a long run (and no scheduler library text), and the summary's lines.
Terminal behaviour through a pseudo-terminal, the daemon as a subprocess."""
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading

import pytest
from support import process_env, read_terminal, wait_for

from syncer.progress import Tally, line
from syncer.simulator import Behaviour, SimulatorServer, generate
from syncer.simulator.app import HTTPError

LIST = "/v1/messaging/conversations"
CLOCK = r"\d+:\d\d"
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"  # a log line's time


def on_terminal(args, env, *, columns=80, when=None):
    """`syncer ARGS` with stderr on a pseudo-terminal: (stderr as sent, stdout, exit code).
    `when(text_so_far, process)` is called as stderr arrives."""
    master, slave = pty.openpty()
    env = dict(env, COLUMNS=str(columns))
    with subprocess.Popen([sys.executable, "-m", "syncer", *args], stderr=slave,
                          stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env) as proc:
        os.close(slave)
        raw = read_terminal(master, when and (lambda text: when(text, proc)))
        out = proc.stdout.read().decode()
        code = proc.wait(timeout=60)
    return raw.decode(), out, code


def screen(raw: str) -> list[str]:
    """What a terminal shows after `raw`: a carriage return goes back to the start of the
    line, and what is written next overwrites what was there."""
    rows, col = [[]], 0
    for ch in raw:
        if ch == "\r":
            col = 0
        elif ch == "\n":
            rows.append([])
            col = 0
        else:
            row = rows[-1]
            row.extend(" " * (col + 1 - len(row)))
            row[col] = ch
            col += 1
    return ["".join(r).rstrip() for r in rows]


def frames(raw: str) -> list[str]:
    """Every progress line drawn."""
    return [f.strip() for f in re.split(r"[\r\n]", raw) if "walked" in f]


def fail_one_after(n: int, opened: threading.Event):
    """A hook that fails the n-th messages request, once `opened` (the test saw the line)."""
    calls = []

    def hook(method, path, query):
        if path.endswith("/messages"):
            calls.append(path)
            if len(calls) == n:
                opened.wait(30)
                raise HTTPError(500, "internal_error", "down for this one")
    return hook


def test_sync_on_a_terminal_shows_progress_that_log_lines_never_glue_onto(tmp_path):
    upstream = generate(seed=42, conversations=60, messages_per_conversation=3)
    seen = threading.Event()
    behaviour = Behaviour(message_paging="offset", latency_ms=20,
                          on_request=fail_one_after(10, seen))
    (tmp_path / "syncer.toml").write_text("[api]\nconcurrency = 1\npage_size = 10\n"
                                          "max_retries = 0\n")
    args = ["--config", str(tmp_path / "syncer.toml"), "--db", str(tmp_path / "m.db"), "sync"]
    with SimulatorServer(upstream, behaviour) as server:
        raw, out, code = on_terminal(args, process_env(server), columns=80,
                                     when=lambda text, proc: "walked" in text and seen.set())
        behaviour.on_request = None
        assert code == 1, raw + out
        drawn = frames(raw)
        assert drawn and all(len(f) <= 79 for f in drawn), drawn
        assert all(re.match(rf"{CLOCK}  walked \d+(/60)?( conversations)?  ", f)
                   for f in drawn), drawn
        assert any(re.search(r"walked \d+/60 conversations  .*\d messages?\b", f)
                   for f in drawn), drawn
        shown = [row for row in screen(raw) if row]
        warning = [row for row in shown if "WARNING" in row]
        assert len(warning) == 1 and re.fullmatch(
            STAMP + r" WARNING conversation conv_\w+ failed, will retry next run: .*",
            warning[0]), shown
        assert not any("walked" in row for row in shown), shown   # wiped at the end
        assert "1 conversation failed and stays queued for the next run" in out
        written = re.search(r"([\d,]+) messages written", out)[1]

        # the next run resumes what this one left, and says so
        raw, out, code = on_terminal(args, process_env(server))
        assert code == 0, raw + out
        shown = [row for row in screen(raw) if row]
        assert shown == [f"resuming: 1 conversation queued from the last run; {written} "
                         "messages already held"]


def test_an_interrupted_sync_says_what_is_left_and_the_next_run_resumes_it(tmp_path):
    upstream = generate(seed=48, conversations=80, messages_per_conversation=3)
    released = threading.Event()

    def hold(method, path, query):
        if path.endswith("/messages"):
            released.wait(30)

    def interrupt(text, proc):
        if "walked 80/80" in text and not hasattr(proc, "signalled"):
            proc.signalled = True
            proc.send_signal(signal.SIGINT)
        if "SIGINT: stopping" in text:
            released.set()

    args = ["--db", str(tmp_path / "m.db"), "sync"]
    with SimulatorServer(upstream, Behaviour(message_paging="offset", on_request=hold)) as server:
        raw, out, code = on_terminal(args, process_env(server), when=interrupt)
        assert code == 1, raw + out
        shown = [row for row in screen(raw) if row]
        assert len(shown) == 1 and re.fullmatch(
            STAMP + r" WARNING SIGINT: stopping after the work in hand \(signal again to "
            r"quit at once\)", shown[0]), shown
        assert out.startswith("sync interrupted (full) in ")
        left = re.search(r"\n  stopped before the end: ([\d,]+) conversations? (is|are) still "
                         r"queued; the next `syncer sync` resumes from there\n", out)
        assert left and int(left[1]) > 0, out

        raw, out, code = on_terminal(args, process_env(server))
        assert code == 0, raw + out
        shown = [row for row in screen(raw) if row]
        assert len(shown) == 1 and re.fullmatch(
            rf"resuming: {left[1]} conversations? queued from the last run; [\d,]+ messages? "
            r"already held", shown[0]), shown


@pytest.mark.parametrize("options", [["-q"], ["--log-format", "json"]])
def test_no_progress_line_when_quiet_or_logging_json(tmp_path, options):
    upstream = generate(seed=43, conversations=20, messages_per_conversation=3)
    with SimulatorServer(upstream, Behaviour(message_paging="offset", latency_ms=20)) as server:
        raw, out, code = on_terminal([*options, "--db", str(tmp_path / "m.db"), "sync"],
                                     process_env(server))
    assert code == 0, raw + out
    assert "walked 20" not in raw and "\r" not in raw.replace("\r\n", "\n")
    if "-q" in options:
        assert raw == "" and out == ""
    else:
        assert all(json.loads(row) for row in raw.splitlines())


def test_no_progress_line_when_stderr_is_not_a_terminal(tmp_path):
    upstream = generate(seed=44, conversations=20, messages_per_conversation=3)
    with SimulatorServer(upstream, Behaviour(message_paging="offset", latency_ms=20)) as server:
        r = subprocess.run([sys.executable, "-m", "syncer", "--db", str(tmp_path / "m.db"),
                            "sync"], env=process_env(server), capture_output=True, text=True,
                           timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith("sync ok (full) in ")


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_line_says_elapsed_walked_of_total_messages_rate_and_eta():
    clock = Clock()
    tally = Tally(clock)
    tally.update({"queued": 0, "whole": True, "held_messages": 5})
    tally.update({"walk": 1, "walked": 100, "total": 1000})
    tally.update({"fetched": 100, "read": 400})
    tally.update({"messages": 350})
    clock.now += 10
    s = tally.snapshot()
    assert (s.elapsed, s.rate, s.eta) == (10.0, 40.0, 90.0)     # 900 left at 10 a second
    assert line(s, 200) == ("0:10  walked 100/1,000 conversations  100 fetched  "
                            "400 messages (350 written)  40 msg/s  ETA 1:30")
    assert line(s, 80) == "0:10  walked 100/1,000 conversations  400 messages  40 msg/s  ETA 1:30"
    assert line(s, 60) == "0:10  walked 100/1,000  400 messages  40 msg/s  ETA 1:30"
    assert line(s, 40) == "0:10  walked 100/1,000  400 messages"
    assert line(s, 20) == "0:10"
    tally.update({"walk": 1, "walked": 1000})
    clock.now += 10
    assert line(tally.snapshot(), 200).endswith("finishing")


def test_a_resumed_run_counts_the_queue_first_and_what_earlier_runs_hold():
    clock = Clock()
    tally = Tally(clock)
    tally.update({"queued": 1234, "whole": True, "held_messages": 50_000})
    tally.update({"fetched": 234, "read": 1000})
    tally.update({"messages": 1000})
    tally.update({"walk": 1, "walked": 0, "total": 8766})
    clock.now += 10
    s = tally.snapshot()
    assert s.eta == 10_000 / (234 / 10) - 10       # 9,766 of 10,000 left at 23.4 a second
    assert line(s, 200) == ("0:10  queue 234/1,234  walked 0/8,766 conversations  234 fetched  "
                            "1,000 messages (1,000 written, 51,000 held)  100 msg/s  ETA 6:57")


def test_an_incremental_walk_gives_no_eta_and_a_second_walk_starts_from_zero():
    clock = Clock()
    tally = Tally(clock)
    tally.update({"queued": 0, "whole": False, "held_messages": 0})
    tally.update({"walk": 1, "walked": 300, "total": 5000})
    clock.now += 5
    s = tally.snapshot()
    assert s.eta is None and "walked 300 of up to 5,000 conversations" in line(s, 200)
    tally.update({"walk": 2, "walked": 100, "total": 5000})
    assert tally.snapshot().walked == 100


def test_a_daemon_run_longer_than_its_interval_logs_progress_and_no_scheduler_text(tmp_path):
    upstream = generate(seed=41, conversations=60, messages_per_conversation=3)
    behaviour = Behaviour(message_paging="offset", latency_ms=40)
    with SimulatorServer(upstream, behaviour) as server:
        (tmp_path / "syncer.toml").write_text('[api]\nconcurrency = 1\n'
                                              '[schedule]\ninterval = "1s"\n')
        log = tmp_path / "daemon.log"
        env = dict(process_env(server), SYNCER_PROGRESS_EVERY="0.5")
        with open(log, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "syncer", "--config", str(tmp_path / "syncer.toml"),
                 "--db", str(tmp_path / "m.db"), "daemon"],
                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err)
            try:
                wait_for(lambda: "sync ok" in log.read_text() or proc.poll() is not None,
                         "the first run to end", timeout=120)
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(60) == 0, log.read_text()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    text = log.read_text()
    assert "sync ok" in text
    assert "apscheduler" not in text.lower() and "maximum number of running" not in text
    assert "Execution of job" not in text
    assert text.count("the run is taking longer than the schedule's interval") == 1, text
    progress = [row for row in text.splitlines() if " sync running for " in row]
    assert progress, text
    assert all(re.fullmatch(STAMP + rf" INFO sync running for {CLOCK}: walked \d+"
                            r"(/60)? conversations, \d+ fetched, [\d,]+ messages? read "
                            r"\([\d,]+ written\).*", row)
               for row in progress), progress


def sync(server, db, *options):
    return subprocess.run([sys.executable, "-m", "syncer", "--db", str(db), "sync", *options],
                          env=process_env(server), capture_output=True, text=True, timeout=120)


INCOMPLETE = "incomplete: the server serves fewer messages than it reports"


def test_incomplete_conversations_are_reported_when_they_change_or_at_v(tmp_path):
    upstream = generate(seed=47, conversations=30, messages_per_conversation=3,
                        big_conversations=3)         # two of them longer than served
    db = tmp_path / "m.db"
    with SimulatorServer(upstream, Behaviour(message_paging="none")) as server:
        first = sync(server, db)
        assert first.returncode == 0, first.stderr
        assert f"  2 conversations are {INCOMPLETE} (held/reported: " in first.stdout
        again = sync(server, db)
        assert again.returncode == 0 and INCOMPLETE not in again.stdout, again.stdout
        verbose = sync(server, db, "-v")
        assert f"  2 conversations are {INCOMPLETE}" in verbose.stdout
        quiet_json = sync(server, db, "--log-format", "json")
        summary = json.loads(quiet_json.stdout)
        assert (summary["incomplete_conversations"], summary["incomplete_changed"]) == (2, False)

        gap = re.search(r"held/reported: (conv_\w+) ", first.stdout)[1]
        upstream.delete_conversation(gap)
        changed = sync(server, db, "--full")
        assert changed.returncode == 0, changed.stderr
        assert f"  1 conversation is {INCOMPLETE} (held/reported: conv_" in changed.stdout
        assert INCOMPLETE not in sync(server, db).stdout


def agrees(text: str) -> bool:
    """Every count in `text` agrees with its noun (1 conversation, 2 conversations, 0 ...)."""
    counts = re.findall(r"\b([\d,]+) (conversations?|messages?|requests?|retry|retries)\b", text)
    return bool(counts) and all((n == "1") == (noun in ("conversation", "message", "request",
                                                         "retry")) for n, noun in counts)


def test_the_summary_agrees_in_number(tmp_path):
    upstream = generate(seed=46, conversations=1, messages_per_conversation=1,
                        big_conversations=0)
    cid = upstream.conversation_ids()[0]
    with SimulatorServer(upstream, Behaviour(message_paging="offset")) as server:
        first = sync(server, tmp_path / "m.db")
        upstream.add_message(cid, "one more")
        second = sync(server, tmp_path / "m.db")
    for run in (first, second):
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("sync ok (") and agrees(run.stdout), run.stdout
    assert "1 conversation walked" in first.stdout and "1 message written" in second.stdout
    assert agrees("1 conversation walked, 2 messages written; 0 requests (1 retry")
    assert not agrees("1 conversations walked")


def test_a_second_signal_quits_at_once_without_leaving_the_line_on_screen(tmp_path):
    upstream = generate(seed=49, conversations=40, messages_per_conversation=3)
    never = threading.Event()

    def hold(method, path, query):
        if path.endswith("/messages"):
            never.wait(30)           # the work in hand never ends: only a second signal does

    def interrupt(text, proc):
        signalled = getattr(proc, "signalled", 0)
        if "walked" in text and signalled == 0 or "SIGINT: stopping" in text and signalled == 1:
            proc.signalled = signalled + 1
            proc.send_signal(signal.SIGINT)

    args = ["--db", str(tmp_path / "m.db"), "sync"]
    try:
        with SimulatorServer(upstream, Behaviour(message_paging="offset",
                                                 on_request=hold)) as server:
            raw, out, code = on_terminal(args, process_env(server), when=interrupt)
    finally:
        never.set()
    assert code == 130, raw + out
    shown = [row for row in screen(raw) if row]
    assert not any("walked" in row for row in shown), shown
    assert re.fullmatch(STAMP + r" WARNING SIGINT again: quitting at once", shown[-1]), shown
