"""`syncer demo` as a user runs it: it writes a new file or its own earlier demo, never
anything else (refused with exit 2, the file left byte for byte), `--db` means the same before
and after `demo`, and its last line is a command that works from where the user stands."""
import os
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from support import build_mirror, dict_rows

SCRIPT = Path(sys.executable).with_name("syncer")     # the installed console script


def env_without_venv() -> dict:
    """The environment with syncer's directory off PATH (as for a user who did not activate
    the venv) and nothing that would point syncer elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTYPE_", "SYNCER_"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and Path(p).resolve() != SCRIPT.parent.resolve())
    return env


def demo(cwd, *args, argv=None, env=None):
    argv = argv or [sys.executable, "-m", "syncer"]
    return subprocess.run([*argv, *args], cwd=cwd, capture_output=True, text=True,
                          env=env or env_without_venv(), timeout=180)


def placements(db: str, *rest: str) -> dict[str, list[str]]:
    return {"group --db": ["--db", db, "demo", *rest],
            "demo --db": ["demo", "--db", db, *rest]}


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _text_file(path: Path) -> None:
    path.write_text("my notes, not a database\n")


def _foreign_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE mine (x)")
    conn.execute("INSERT INTO mine VALUES ('precious')")
    conn.commit()
    conn.close()


def _syncer_mirror(path: Path) -> None:
    build_mirror(path, seed=71, conversations=12)


@pytest.mark.parametrize("make", [_text_file, _foreign_sqlite, _syncer_mirror],
                         ids=["text file", "foreign sqlite", "syncer mirror"])
@pytest.mark.parametrize("where", ["group --db", "demo --db"])
def test_demo_refuses_anything_it_did_not_make_and_leaves_it_as_it_was(tmp_path, make, where):
    target = tmp_path / "mirror.db"
    make(target)
    before = snapshot(tmp_path)
    r = demo(tmp_path, *placements("mirror.db", "--conversations", "12")[where])
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.splitlines() == [
        "error: mirror.db exists and is not a database made by `syncer demo`; the demo writes "
        "only a new file or its own earlier demo: pass --db NEW.db"]
    assert r.stdout == ""
    assert snapshot(tmp_path) == before


def test_demo_refuses_a_write_ahead_log_without_its_database(tmp_path):
    (tmp_path / "demo.db-wal").write_bytes(b"frames of a mirror someone moved")
    before = snapshot(tmp_path)
    r = demo(tmp_path, "demo", "--conversations", "12")
    assert r.returncode == 2 and "demo.db-wal exists without its database" in r.stderr
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("companion", ["mirror.db-wal", "mirror.db-shm", "mirror.db-journal"])
def test_demo_refuses_the_companion_path_of_a_mirror(tmp_path, companion):
    """Not there while the mirror is closed, but SQLite's the moment it is opened again."""
    _syncer_mirror(tmp_path / "mirror.db")
    before = snapshot(tmp_path)
    r = demo(tmp_path, "demo", "--db", companion, "--conversations", "12")
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(f"error: {companion} is the ")
    assert "of the syncer database mirror.db" in r.stderr and r.stdout == ""
    assert snapshot(tmp_path) == before


def test_two_different_databases_are_an_error(tmp_path):
    r = demo(tmp_path, "--db", "a.db", "demo", "--db", "b.db")
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["error: two databases given (a.db and b.db): give --db once"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["group --db", "demo --db"])
def test_demo_writes_a_new_file_and_replaces_only_its_own(tmp_path, where):
    args = placements("mine.db", "--conversations", "12")[where]
    r = demo(tmp_path, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (tmp_path / "demo.db").exists()            # --db was honoured, wherever given
    db = tmp_path / "mine.db"
    assert dict_rows(db, "SELECT value FROM _sync_state WHERE key = 'demo'") == [{"value": "1"}]
    assert [r["mode"] for r in dict_rows(db, "SELECT mode FROM _sync_runs ORDER BY id")] == \
        ["full", "incremental", "full"]
    r = demo(tmp_path, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    # replaced, not added to: a fresh demo's three runs
    assert [r["mode"] for r in dict_rows(db, "SELECT mode FROM _sync_runs ORDER BY id")] == \
        ["full", "incremental", "full"]


def _hint(stdout: str) -> list[str]:
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("mirror: ") and "(try: " in last, last
    return shlex.split(last.split("(try: ", 1)[1].rstrip(")"))


@pytest.mark.parametrize("how", ["console script off PATH", "python -m", "syncer on PATH"])
def test_the_hint_runs_from_where_the_user_stands(tmp_path, how):
    env = env_without_venv()
    argv = {"console script off PATH": [str(SCRIPT)],
            "python -m": [sys.executable, "-m", "syncer"],
            "syncer on PATH": ["syncer"]}[how]
    if how == "syncer on PATH":
        env["PATH"] = os.pathsep.join([str(SCRIPT.parent), env["PATH"]])
    r = demo(tmp_path, "demo", "--conversations", "12", argv=argv, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    hint = _hint(r.stdout)
    assert hint == [*argv, "--db", "demo.db", "search", "refund"]
    found = subprocess.run(hint, cwd=tmp_path, capture_output=True, text=True, env=env,
                           timeout=60)
    assert found.returncode == 0, found.stderr
    assert "refund" in found.stdout.lower()
