"""Commands start quickly: `syncer --help` imports no command module, and each command imports
only what it uses (no HTTP client, scheduler or sqlite-utils for a reader; no config parser
without a config file; no time-zone database for UTC; no CSV writer, hashing or exporter unless
asked for), checked in a real `syncer` process for each command. The group lists the commands
from one table (cli.COMMANDS), which is checked here against the commands themselves."""
import importlib
import os
import subprocess
import sys

import pytest
from support import build_mirror, dict_rows

from syncer import cli

WRITE_SIDE = ("httpx", "httpcore", "h11", "apscheduler", "sqlite_utils", "dateutil", "pyarrow")
# what no read command needs in its usual form (the table below adds each command's own)
NOT_FOR_READING = ("tomllib", "zoneinfo", "csv", "hashlib", "wcwidth", "concurrent",
                   "subprocess", "difflib", "syncer.cli_sync", "syncer.export",
                   "syncer.feed", "syncer.api", "syncer.sync", "syncer.runner", "syncer.scheduler")
COMMAND_MODULES = ("syncer.cli_browse", "syncer.cli_export", "syncer.cli_ops", "syncer.cli_sync")

# Runs the command as the console script does, then records which modules it had imported
# (without importing anything itself).
PROBE = """
import atexit, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write("\\n".join(sorted(sys.modules))))
from syncer.cli import main
main(sys.argv[1:], prog_name="syncer")
"""


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return build_mirror(tmp_path_factory.mktemp("startup") / "mirror.db", seed=5,
                        conversations=20)


def imported(tmp_path, *args) -> set[str]:
    out = tmp_path / "modules.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTYPE_", "SYNCER_"))}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(out), *args], env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return set(out.read_text().split())


def loaded(modules: set[str], names) -> list[str]:
    """Which of `names` (a package stands for its submodules too) were imported."""
    return sorted(m for m in modules for n in names if m == n or m.startswith(n + "."))


def commands(db, tmp_path):
    """name: (arguments, the command's module, modules it must not import beyond the rest)"""
    cid = dict_rows(db, "SELECT id FROM conversations LIMIT 1")[0]["id"]
    no_export = ("syncer.stats",)
    return {
        "search": (["--db", db, "search", "the", "--role", "user", "--since", "3650d"],
                   "syncer.cli_browse", no_export),
        "show": (["--db", db, "show", cid, "--format", "json"], "syncer.cli_browse", no_export),
        "conversations": (["--db", db, "conversations"], "syncer.cli_browse", no_export),
        "stats": (["--db", db, "stats", "--format", "json"], "syncer.cli_browse", ()),
        "status": (["--db", db, "status"], "syncer.cli_ops", ("syncer.query",)),
        "export": (["--db", db, "export", "messages", "-o", str(tmp_path / "out.csv")],
                   "syncer.cli_export", ()),
    }


def test_help_imports_no_command_module_and_nothing_a_command_needs(tmp_path):
    modules = imported(tmp_path, "--help")
    assert "syncer.cli" in modules   # the probe ran the real command line
    ours = sorted(m for m in modules if m.startswith("syncer."))
    assert ours == ["syncer.cli", "syncer.cli_context"]
    assert loaded(modules, WRITE_SIDE + NOT_FOR_READING + (
        "logging", "sqlite3", "json", "dataclasses")) == []


@pytest.mark.parametrize("name", ["search", "show", "conversations", "stats", "status",
                                  "export"])
def test_read_commands_import_only_what_they_use(db, tmp_path, name):
    args, module, also_not = commands(db, tmp_path)[name]
    modules = imported(tmp_path, *args)
    assert module in modules   # the probe ran the real command
    others = tuple(m for m in COMMAND_MODULES if m != module and not (
        module == "syncer.cli_export" and m == "syncer.cli_browse"))  # export builds on browse
    not_needed = NOT_FOR_READING + also_not + others
    if name == "export":   # the exporter itself (and its helper processes) is the point
        not_needed = tuple(n for n in not_needed if n not in (
            "syncer.export", "syncer.feed", "subprocess", "concurrent", "csv", "difflib"))
    assert loaded(modules, WRITE_SIDE) == []
    assert loaded(modules, not_needed) == []


def test_the_command_table_is_the_commands():
    """Every command the modules define is in cli.COMMANDS with its module and its summary
    (the first sentence of its help, as `syncer COMMAND --help` shows it), and nothing else is."""
    defined = {}
    for module in COMMAND_MODULES:
        for command in importlib.import_module(module).COMMANDS:
            defined[command.name] = (module.split(".")[1], command)
    assert sorted(cli.COMMANDS) == sorted(defined)
    for name, (module, attribute, summary) in cli.COMMANDS.items():
        assert (module, getattr(importlib.import_module(f"syncer.{module}"), attribute)) == \
            defined[name], name
        assert summary == defined[name][1].get_short_help_str(), name


def test_help_lists_every_command_with_its_summary():
    r = subprocess.run([sys.executable, "-m", "syncer", "--help"], capture_output=True,
                       text=True, timeout=60)
    listing = r.stdout.split("Commands:\n", 1)[1]
    rows = []   # a row starts with the command's name; its summary may wrap onto more lines
    for line in listing.splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            rows.append(line.split(None, 1))
        elif line.strip():
            rows[-1][1] += " " + line.strip()
    assert [(name, " ".join(summary.split())) for name, summary in rows] == \
        [(name, summary) for name, (_, _, summary) in sorted(cli.COMMANDS.items())]


def test_an_unknown_command_gets_a_suggestion():
    r = subprocess.run([sys.executable, "-m", "syncer", "serach", "refund"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "No such command 'serach'" in r.stderr and "search" in r.stderr.split("serach", 1)[1]
