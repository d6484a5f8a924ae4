"""The command line says what to do: known value sets are choices, open sets are checked against
the mirror, global options work after the command, -h is --help, and every command's help has
examples and a whole first sentence as its summary. Through real `syncer` processes."""
import os
import re
import subprocess
import sys

import pytest
from support import build_mirror

from syncer.cli import hoist_global_options, main


def run(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTYPE_", "SYNCER_"))}
    env.update(COLUMNS="100", NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "syncer", *args], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return str(build_mirror(tmp_path_factory.mktemp("usage") / "mirror.db", seed=9,
                            conversations=30))


@pytest.mark.parametrize("args, needle", [
    (["conversations", "--status", "opne"], "'opne' is not one of 'open', 'closed', 'archived'"),
    (["conversations", "--sort", "updatd"], "Did you mean 'updated'?"),
    (["stats", "--per", "wek"], "Did you mean 'week'?"),
    (["search", "x", "--format", "tabel"], "Did you mean 'table'?"),
])
def test_known_sets_are_choices(db, args, needle):
    r = run("--db", db, *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle in r.stderr and r.stdout == ""


@pytest.mark.parametrize("args, needle", [
    (["conversations", "--surface", "emial"],
     "error: no surface 'emial' in this mirror (known: "),
    (["search", "refund", "--role", "usr"], "error: no role 'usr' in this mirror (known: "),
    (["stats", "--surface", "nowhere"], "error: no surface 'nowhere' in this mirror"),
    (["export", "messages", "--role", "robot"], "error: no role 'robot' in this mirror"),
])
def test_open_sets_name_what_the_mirror_holds(db, args, needle):
    r = run("--db", db, *args)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.startswith(needle) and len(r.stderr.splitlines()) == 1
    known = r.stderr.split("(known: ", 1)[1].split(")")[0].split(", ")
    assert known and all(known)


def test_open_set_suggests_the_close_value(db):
    assert "did you mean 'user'?" in run("--db", db, "search", "x", "--role", "usr").stderr
    assert "did you mean 'email'?" in run("--db", db, "conversations", "--surface",
                                          "emial").stderr


def test_a_held_surface_type_and_role_still_filter(db):
    r = run("--db", db, "conversations", "--surface", "email", "--format", "json")
    assert r.returncode == 0, r.stderr
    r = run("--db", db, "search", "the", "--role", "user", "--format", "jsonl")
    assert r.returncode == 0 and r.stdout, r.stderr


def test_global_options_work_after_the_command(db):
    before = run("--db", db, "-q", "conversations", "--format", "json", "--limit", "5")
    after = run("conversations", "--format", "json", "--db", db, "--limit", "5", "-q")
    equals = run("conversations", f"--db={db}", "--format", "json", "--limit", "5")
    assert before.returncode == after.returncode == equals.returncode == 0, after.stderr
    assert after.stdout == before.stdout == equals.stdout != ""


def test_hoisting_leaves_the_commands_own_options_and_words_after_double_dash():
    own = {"demo": ("--db",)}
    assert hoist_global_options(["search", "--db", "x.db", "-vv", "refund"], own) == \
        ["--db", "x.db", "-vv", "search", "refund"]
    assert hoist_global_options(["demo", "--db", "d.db"], own) == ["demo", "--db", "d.db"]
    assert hoist_global_options(["search", "--", "--db"], own) == ["search", "--", "--db"]
    assert hoist_global_options(["--config", "c.toml", "status", "--log-format", "json"], own) \
        == ["--config", "c.toml", "--log-format", "json", "status"]


@pytest.mark.parametrize("name", sorted(main.commands))
def test_dash_h_is_help_with_examples(name):
    r = run(name, "-h")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"Usage: syncer {name} ")
    examples = r.stdout.split("Examples:\n", 1)[1].split("\n\n", 1)[0]
    assert re.search(rf"^\s+(\S+=\S+ )?syncer .*{name}", examples, re.M), examples


def test_sync_help_names_the_environment_and_the_exit_codes():
    text = " ".join(run("sync", "--help").stdout.split())
    for needle in ("RUNTYPE_API_KEY", "RUNTYPE_BASE_URL", "Exit codes: 0", "1 some",
                   "2 bad usage", "3 the API refused the key", "4 another process"):
        assert needle in text, needle


def test_summaries_are_whole_sentences():
    r = run("-h")
    listing = r.stdout.split("Commands:\n", 1)[1]
    assert "..." not in listing
    for name, command in main.commands.items():
        first = " ".join(command.help.split("\n\n")[0].split()).split(". ")[0].rstrip(".")
        assert " ".join(first.split()) in " ".join(listing.split()), name


def test_imports_run_one_way():
    """The command modules build on cli_context and never import the group back."""
    code = ("import sys, syncer.cli_browse, syncer.cli_ops; "
            "print('syncer.cli' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr
    assert {"search", "show", "conversations", "stats", "export", "daemon", "status",
            "purge", "doctor", "sync"} <= set(main.commands)
