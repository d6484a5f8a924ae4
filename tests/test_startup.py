"""Read commands start quickly: they import neither the HTTP client, the scheduler nor
sqlite-utils (the write path's helpers), checked in a real `syncer` process for each command."""
import json
import os
import subprocess
import sys

import pytest
from support import build_mirror, dict_rows

WRITE_SIDE = ("httpx", "httpcore", "h11", "apscheduler", "sqlite_utils", "dateutil", "pyarrow")

# Runs the command as the console script does, then records which modules it had imported.
PROBE = """
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from syncer.cli import main
main(sys.argv[1:], prog_name="syncer")
"""


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return build_mirror(tmp_path_factory.mktemp("startup") / "mirror.db", seed=5,
                        conversations=20)


def imported(tmp_path, *args) -> set[str]:
    out = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTYPE_", "SYNCER_"))}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(out), *args], env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(out.read_text()))


def commands(db, tmp_path):
    cid = dict_rows(db, "SELECT id FROM conversations LIMIT 1")[0]["id"]
    return {
        "help": ["--help"],
        "search": ["--db", db, "search", "the", "--role", "user", "--since", "3650d"],
        "show": ["--db", db, "show", cid, "--format", "json"],
        "conversations": ["--db", db, "conversations"],
        "stats": ["--db", db, "stats", "--format", "json"],
        "status": ["--db", db, "status"],
        "export": ["--db", db, "export", "messages", "-o", str(tmp_path / "out.csv")],
    }


@pytest.mark.parametrize("name", ["help", "search", "show", "conversations", "stats",
                                  "status", "export"])
def test_read_commands_import_no_write_side_library(db, tmp_path, name):
    modules = imported(tmp_path, *commands(db, tmp_path)[name])
    assert "syncer.cli_browse" in modules   # the probe ran the real command line
    assert sorted(m for m in modules if m.split(".")[0] in WRITE_SIDE) == []
