"""Times for people: one labelled style in the zone asked for (--tz, SYNCER_TZ, [display].tz),
dates typed without an offset read in it, machine formats untouched, unknown zones refused."""
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner
from support import build_mirror

from syncer.cli import main

SUMMER = "2024-05-31T23:30:00Z"     # 2024-06-01 01:30 in Paris (CEST), 19:30 in New York (EDT)
WINTER = "2024-01-15T12:00:00Z"     # 13:00 in Paris (CET)
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")
SHOWN = re.compile(r"\d{4}-\d\d-\d\d( \d\d:\d\d [A-Z]{3,4}\b)?")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    ids = {}

    def prepare(upstream):
        summer, winter = upstream.conversation_ids()[:2]
        ids.update(summer=summer, winter=winter)
        upstream.add_message(summer, "zanzibar in summer", createdAt=SUMMER)
        upstream.update_conversation(summer, updatedAt=SUMMER)
        upstream.add_message(winter, "zanzibar in winter", createdAt=WINTER)
        upstream.update_conversation(winter, updatedAt=WINTER)
    db = build_mirror(tmp_path_factory.mktemp("tz") / "mirror.db", seed=9, conversations=12,
                      prepare=prepare)
    return db, ids


def cli(*args, env=None, cwd=None):
    env = {"SYNCER_TZ": None, "COLUMNS": "200", **(env or {})}
    if cwd is None:
        return CliRunner().invoke(main, list(args), env=env)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, list(args), env=env)
    finally:
        os.chdir(old)


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


@pytest.mark.parametrize("where", ["before", "after"])
def test_tz_shows_table_times_in_that_zone_labelled(mirror, where):
    db, ids = mirror
    tz = ["--tz", "Europe/Paris"]
    for command in (["search", "zanzibar"], ["conversations"]):
        args = (["--db", db, *tz, *command] if where == "before"
                else [*command, "--db", db, *tz]) + ["--format", "table"]
        r = cli(*args)
        assert r.exit_code == 0, r.output
        summer = lines_with(r.output, ids["summer"])
        winter = lines_with(r.output, ids["winter"])
        if command[0] == "search":
            summer = [line for line in summer if "2024-06-01" in line]
            winter = [line for line in winter if "2024-01-15" in line]
        assert len(summer) == 1 and "2024-06-01 01:30 CEST" in summer[0], r.output
        assert len(winter) == 1 and "2024-01-15 13:00 CET" in winter[0], r.output


def test_the_default_zone_is_utc_and_labelled(mirror):
    db, ids = mirror
    r = cli("--db", db, "conversations", "--format", "table", "--conversation", ids["summer"])
    assert r.exit_code == 0, r.output
    assert "2024-05-31 23:30 UTC" in lines_with(r.output, ids["summer"])[0]


def test_flag_beats_environment_beats_config_file(mirror, tmp_path):
    db, ids = mirror
    (tmp_path / "syncer.toml").write_text('[display]\ntz = "Asia/Tokyo"\n')
    args = ["--db", db, "conversations", "--format", "table", "--conversation", ids["summer"]]
    cases = [([], {}, "2024-06-01 08:30 JST"),
             ([], {"SYNCER_TZ": "America/New_York"}, "2024-05-31 19:30 EDT"),
             (["--tz", "Europe/Paris"], {"SYNCER_TZ": "America/New_York"},
              "2024-06-01 01:30 CEST")]
    for flag, env, shown in cases:
        r = cli(*args, *flag, env=env, cwd=tmp_path)
        assert r.exit_code == 0, r.output
        assert shown in lines_with(r.output, ids["summer"])[0], (flag, env, r.output)


def test_show_has_one_labelled_style_in_the_zone(mirror):
    db, ids = mirror
    r = cli("--db", db, "show", ids["summer"], "--format", "table", "--tz", "Europe/Paris")
    assert r.exit_code == 0, r.output
    assert not ISO.search(r.output), r.output
    assert "updated 2024-06-01 01:30 CEST" in r.output
    assert "[2024-06-01 01:30 CEST] user:" in r.output
    for match in SHOWN.finditer(r.output):
        assert match.group(1), f"unlabelled time {match.group(0)!r} in:\n{r.output}"


def test_status_has_one_labelled_style_in_the_zone(mirror):
    db, _ = mirror
    r = cli("--db", db, "status", "--tz", "America/New_York")
    assert r.exit_code == 0, r.output
    assert not ISO.search(r.output), r.output
    times = list(SHOWN.finditer(r.output))
    assert times and all(m.group(1) and m.group(0).endswith(("EST", "EDT")) for m in times), \
        r.output
    assert re.search(r"^last ok     \d{4}-\d\d-\d\d \d\d:\d\d E[SD]T \(", r.output, re.M)


@pytest.mark.parametrize("command", [
    ["search", "zanzibar", "--format", "jsonl"], ["search", "zanzibar", "--format", "csv"],
    ["conversations", "--format", "json"], ["show", "{summer}", "--format", "json"],
    ["export", "messages", "--format", "csv"], ["export", "conversations", "--format", "jsonl"]])
def test_machine_formats_stay_utc_whatever_the_zone(mirror, command):
    db, ids = mirror
    command = [part.format(**ids) for part in command]
    plain = cli("--db", db, *command)
    zoned = cli("--db", db, "--tz", "Asia/Kolkata", *command)
    assert plain.exit_code == zoned.exit_code == 0, zoned.output
    assert zoned.output == plain.output
    assert "2024-05-31T23:30:00.000000Z" in plain.output


def ids_of(db, *args, env=None):
    r = cli("--db", db, "conversations", "--format", "jsonl", "--limit", "0", *args, env=env)
    assert r.exit_code == 0, r.output
    return {line.split('"id": "')[1].split('"')[0] for line in r.output.splitlines()}


@pytest.mark.parametrize("args, in_utc, in_paris", [
    (["--since", "2024-06-01"], False, True),          # 01:30 on June 1st in Paris
    (["--until", "2024-05-31"], True, False),          # the end of May 31st, where one is
    (["--since", "2024-06-01T01:00"], False, True),    # a time without an offset
    (["--since", "2024-06-01T02:00:00+02:00"], False, False),   # an offset is an offset
    (["--until", "2024-06-01T00:00Z"], True, True),
])
def test_since_and_until_without_an_offset_are_read_in_the_display_zone(mirror, args, in_utc,
                                                                         in_paris):
    db, ids = mirror
    assert (ids["summer"] in ids_of(db, *args)) is in_utc
    assert (ids["summer"] in ids_of(db, *args, "--tz", "Europe/Paris")) is in_paris
    assert (ids["summer"] in ids_of(db, *args, env={"SYNCER_TZ": "Europe/Paris"})) is in_paris


@pytest.mark.parametrize("args, env, config, source", [
    (["--tz", "Europe/Pariss"], {}, None, "--tz"),
    (["search", "x", "--tz", "Europe/Pariss"], {}, None, "--tz"),
    ([], {"SYNCER_TZ": "Europe/Pariss"}, None, "SYNCER_TZ"),
    ([], {}, '[display]\ntz = "Europe/Pariss"\n', "[display].tz in syncer.toml"),
])
def test_an_unknown_zone_is_one_line_exit_2_with_a_suggestion(mirror, tmp_path, args, env,
                                                               config, source):
    db, _ = mirror
    if config:
        (tmp_path / "syncer.toml").write_text(config)
    full = ["--db", db, *args] + ([] if "search" in args else ["search", "x"])
    r = subprocess.run([sys.executable, "-m", "syncer", *full], capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, "SYNCER_TZ": "", **env}, timeout=60)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == (f"error: {source}: unknown time zone 'Europe/Pariss'; did you mean "
                        "Europe/Paris? (use local, UTC or an IANA name such as Europe/Paris)\n")


def test_a_zone_name_in_any_case_is_accepted(mirror):
    db, ids = mirror
    r = cli("--db", db, "--tz", "europe/paris", "conversations", "--format", "table",
            "--conversation", ids["summer"])
    assert r.exit_code == 0, r.output
    assert "2024-06-01 01:30 CEST" in r.output


def test_local_follows_the_system_zone(mirror):
    db, ids = mirror
    for args, env in ((["--tz", "local"], {}), ([], {"SYNCER_TZ": "local"})):
        r = subprocess.run([sys.executable, "-m", "syncer", "--db", db, *args, "conversations",
                            "--format", "table", "--conversation", ids["summer"]],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "TZ": "America/New_York", **env})
        assert r.returncode == 0, r.stderr
        assert "2024-05-31 19:30 EDT" in r.stdout, r.stdout


def test_help_says_which_zone_and_that_machine_formats_stay_utc():
    text = " ".join(cli("-h").output.split())
    assert "--tz local|UTC|ZONE" in text
    assert "JSON, JSON Lines, CSV and exports stay ISO 8601 in UTC" in text
    assert "SYNCER_TZ" in text and "[display].tz" in text
    since = " ".join(cli("search", "-h").output.split())
    assert "without an offset, in --tz" in since


def test_doctor_shows_the_display_zone_and_where_it_came_from(tmp_path):
    r = cli("--db", str(tmp_path / "none.db"), "--tz", "Europe/Paris", "doctor",
            env={"RUNTYPE_API_KEY": None, "RUNTYPE_BASE_URL": "http://127.0.0.1:9"})
    line = lines_with(r.output, "[display].tz")
    assert len(line) == 1 and line[0].split() == ["[display].tz", "Europe/Paris", "(--tz)"]
    r = cli("--db", str(tmp_path / "none.db"), "doctor",
            env={"RUNTYPE_API_KEY": None, "RUNTYPE_BASE_URL": "http://127.0.0.1:9",
                 "SYNCER_TZ": "local"})
    assert lines_with(r.output, "[display].tz")[0].split() == ["[display].tz", "local",
                                                               "(SYNCER_TZ)"]
