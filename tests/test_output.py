"""Output people read: the search table carries the conversation id, tables fit the terminal
measured in display columns and keep the match in view, a cut list says so on a terminal, colour
follows NO_COLOR and --color, a long thread is paged, binary never goes to a terminal, the sync
summary is JSON under --log-format json. Terminal behaviour through a pseudo-terminal."""
import json
import os
import pty
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner
from support import KEY, build_mirror, read_terminal

from syncer import render
from syncer.cli import main
from syncer.query import MARK
from syncer.simulator import Behaviour, SimulatorServer, generate

ESC = "\x1b["


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return str(build_mirror(tmp_path_factory.mktemp("out") / "mirror.db", seed=12,
                            conversations=70))


def on_terminal(*args, columns=100, lines=24, **env_extra):
    """`syncer ARGS` with stdout on a pseudo-terminal: (stdout text, stderr text, exit code)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RUNTYPE_", "SYNCER_")) and k not in ("NO_COLOR", "PAGER")}
    env.update(COLUMNS=str(columns), LINES=str(lines), **env_extra)
    master, slave = pty.openpty()
    with subprocess.Popen([sys.executable, "-m", "syncer", *args], stdout=slave,
                          stderr=subprocess.PIPE, stdin=slave, env=env) as proc:
        os.close(slave)
        out = read_terminal(master)
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    return out.decode(errors="replace").replace("\r\n", "\n"), err, code


def test_search_table_shows_the_conversation_id(db):
    r = CliRunner().invoke(main, ["--db", db, "search", "the", "--format", "table",
                                  "--limit", "3"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    head, *rows = r.output.splitlines()
    assert head.startswith("conversation") and " time " in head
    assert len(rows) == 3 and all(re.match(r"conv_\w+ +\d{4}-\d\d-\d\d \d\d:\d\d UTC", row)
                                  for row in rows), rows


@pytest.mark.parametrize("command", [["search", "the"], ["conversations"]])
def test_at_80_columns_ids_and_times_stay_whole_and_an_id_opens_with_show(db, command):
    r = CliRunner().invoke(main, ["--db", db, *command, "--format", "table", "--limit", "5"],
                           env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    head, *rows = r.output.splitlines()
    assert len(rows) == 5 and all(render.width(line) <= 80 for line in r.output.splitlines())
    for row in rows:
        assert re.match(r"conv_[0-9a-f]{20}  +\d{4}-\d\d-\d\d \d\d:\d\d UTC  ", row), row
        shown = CliRunner().invoke(main, ["--db", db, "show", row.split()[0], "--format", "json"])
        assert shown.exit_code == 0, shown.output
    assert head.split()[-1] == ("match" if command[0] == "search" else "subject")


def test_tables_fit_the_terminal_in_display_columns():
    rows = [{"id": "conv_1", "who": "名前のとても長い参加者😀😀😀", "text": "x" * 300},
            {"id": "conv_2", "who": "Ana", "text": "مرحبا " * 30}]
    for width in (40, 60, 80, 120):
        text = render.table(rows, [("id", "id"), ("who", "who"), ("text", "text")], width)
        assert all(render.width(line) <= width for line in text.splitlines()), width


def test_a_snippet_keeps_its_match_in_view():
    snippet = "word " * 40 + MARK[0] + "refund" + MARK[1] + " and then more"
    cell = render.fit(snippet, 30)
    assert MARK[0] + "refund" + MARK[1] in cell and render.width(cell) == 30


def test_a_cut_list_and_no_matches_say_so_on_a_terminal(db):
    out, err, code = on_terminal("--db", db, "conversations", "--limit", "5")
    assert code == 0 and err == "showing 5 of 70 (use --limit or --offset)\n", err
    out, err, code = on_terminal("--db", db, "search", "the", "--limit", "2")
    assert code == 0 and "showing 2 of more than 2 matches (use --limit or --offset)" in err
    out, err, code = on_terminal("--db", db, "search", "zzzqqqnotthere")
    assert (code, err) == (0, "no matches\n")
    piped = CliRunner().invoke(main, ["--db", db, "conversations", "--limit", "5"])
    assert "showing" not in piped.output and len(piped.output.splitlines()) == 5


def test_colour_follows_no_color_and_the_flag(db):
    args = ("--db", db, "search", "the", "--limit", "3")
    assert ESC in on_terminal(*args)[0]
    assert ESC not in on_terminal(*args, NO_COLOR="1")[0]
    assert ESC not in on_terminal("--color", "never", *args)[0]
    assert ESC not in on_terminal(*args, "--color", "never")[0]
    r = CliRunner().invoke(main, [*args, "--format", "table", "--color", "always"])
    assert ESC in r.output


def test_a_long_thread_is_paged_on_a_terminal_unless_no_pager(db, tmp_path):
    cid = json.loads(CliRunner().invoke(main, ["--db", db, "conversations", "--sort", "messages",
                                               "--limit", "1"]).output)["id"]
    pager = f"{sys.executable} -c \"import sys; print('PAGED', len(sys.stdin.read()))\""
    out, err, code = on_terminal("--db", db, "show", cid, lines=10, PAGER=pager)
    assert code == 0 and out.startswith("PAGED "), out
    out, err, code = on_terminal("--db", db, "show", cid, "--no-pager", lines=10, PAGER=pager)
    assert code == 0 and "PAGED" not in out and " UTC" in out
    out, err, code = on_terminal("--db", db, "show", cid, lines=500, PAGER=pager)
    assert "PAGED" not in out


def test_sync_summary_is_one_json_object_under_log_format_json(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTYPE_", "SYNCER_"))}
    with SimulatorServer(generate(seed=2, conversations=12), Behaviour()) as server:
        env.update(RUNTYPE_API_KEY=KEY, RUNTYPE_BASE_URL=server.base_url)
        r = subprocess.run([sys.executable, "-m", "syncer", "--db", str(tmp_path / "m.db"),
                            "sync", "--log-format", "json"], capture_output=True, text=True,
                           env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert (record["event"], record["outcome"], record["conversations_seen"]) == \
        ("sync_summary", "ok", 12)
    assert isinstance(record["messages_written"], int) and record["messages_written"] > 0


def test_binary_output_to_a_terminal_is_refused(db, tmp_path):
    """Like gzip: Parquet bytes on a terminal help no one (and may set it in a strange
    state). One line saying what to do, exit 2, nothing on the terminal."""
    out, err, code = on_terminal("--db", db, "export", "messages", "--format", "parquet")
    assert (code, out) == (2, ""), (code, out[:200], err)
    assert len(err.splitlines()) == 1 and "-o FILE" in err and "pipe" in err, err
    assert "Traceback" not in err
    # text still prints there; Parquet goes to a file given with -o, or down a pipe
    out, err, code = on_terminal("--db", db, "export", "conversations", "--format", "jsonl")
    assert code == 0 and json.loads(out.splitlines()[0])["id"].startswith("conv_"), err
    target = tmp_path / "m.parquet"
    out, err, code = on_terminal("--db", db, "export", "messages", "--format", "parquet",
                                 "-o", str(target))
    assert (code, out) == (0, "") and target.read_bytes()[:4] == b"PAR1", err
    piped = subprocess.run([sys.executable, "-m", "syncer", "--db", db, "export", "messages",
                            "--format", "parquet"], capture_output=True, timeout=120)
    assert piped.returncode == 0 and piped.stdout == target.read_bytes(), piped.stderr
