"""Broken environments through a real `syncer` process: a database that cannot be written, a
mirror on a read-only mount, a database damaged mid-file, an export stopped by SIGTERM or by a
full disk. Each ends with one line on stderr and the documented exit code, before any API
request where one would be wasted, and loses nothing: the database and any earlier export are
left as they were.

Read-only mounts and full disks are real: a private mount namespace (`unshare`) with a
read-only bind mount or a small tmpfs. Where namespaces are not allowed those tests skip."""
import os
import shutil
import signal
import sqlite3
import subprocess
import sys

import pytest
from support import KEY, build_mirror

from syncer.simulator import Behaviour, SimulatorServer, generate

SYNCER = [sys.executable, "-m", "syncer"]


def env_for(server=None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTYPE_", "SYNCER_"))}
    env.update(RUNTYPE_API_KEY=KEY, RUNTYPE_BASE_URL=server.base_url if server else
               "http://127.0.0.1:9")
    return env


def run(args, server=None, prefix=(), timeout=120):
    return subprocess.run([*prefix, *SYNCER, *args], capture_output=True, text=True,
                          env=env_for(server), timeout=timeout)


def one_line(r, code: int) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert len(lines) == 1, r.stderr
    return lines[0]


def _namespaces_work(tmp) -> bool:
    probe = tmp / "probe"
    probe.mkdir()
    r = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c",
                        'mount -t tmpfs -o size=16k tmpfs "$1" && mount -o remount,ro "$1"',
                        "sh", str(probe)], capture_output=True)
    return r.returncode == 0


@pytest.fixture(scope="module")
def namespaces(tmp_path_factory):
    if shutil.which("unshare") is None or not _namespaces_work(tmp_path_factory.mktemp("ns")):
        pytest.skip("no private mount namespaces here (unshare --map-root-user --mount)")


def read_only(directory) -> list[str]:
    """A prefix that runs a command with `directory` bind-mounted read-only over itself."""
    return ["unshare", "--map-root-user", "--mount", "sh", "-c",
            'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"',
            str(directory)]


@pytest.fixture(scope="module")
def served():
    upstream = generate(seed=43, conversations=15, messages_per_conversation=3)
    with SimulatorServer(upstream, Behaviour(message_paging="offset")) as server:
        yield upstream, server


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A mirror big enough that its messages export is several times a pipe's buffer."""
    return build_mirror(tmp_path_factory.mktemp("pristine") / "mirror.db", seed=17,
                        conversations=60)


@pytest.fixture
def mirror(pristine, tmp_path):
    d = tmp_path / "db"
    d.mkdir()
    shutil.copy(pristine, d / "m.db")
    return d / "m.db"


# -- a database that cannot be written ------------------------------------------------------------

@pytest.fixture
def unwritable(mirror):
    """The mirror file made unwritable for this process: immutable for root (who ignores
    permissions), mode 0444 for anyone else. The directory stays writable."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(mirror)], capture_output=True).returncode:
            pytest.skip("chattr +i is not supported here")
        try:
            yield mirror
        finally:
            subprocess.run(["chattr", "-i", str(mirror)], check=True)
    else:
        os.chmod(mirror, 0o444)
        yield mirror


@pytest.mark.parametrize("args", [["sync"], ["sync", "--full"], ["verify", "--fix"],
                                  ["daemon", "--interval", "1m"]])
def test_unwritable_database_is_one_line_exit_2_before_any_request(served, unwritable, args):
    upstream, server = served
    before = unwritable.read_bytes()
    server.reset_log()
    r = run(["--db", str(unwritable), *args], server, timeout=60)
    line = one_line(r, 2)
    assert line.startswith(f"error: cannot write the database {unwritable}: "), line
    assert "check permissions" in line
    assert server.count() == 0
    assert unwritable.read_bytes() == before


# -- a mirror on a read-only mount ------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["conversations", "--limit", "5", "--format", "json"],
    ["search", "refund", "--format", "jsonl"],
    ["show", "FIRST", "--format", "json"],
    ["stats", "--format", "json"],
    ["export", "conversations", "--format", "jsonl"],
])
def test_reads_work_on_a_read_only_mount(namespaces, pristine, mirror, tmp_path, args):
    args = [a if a != "FIRST" else sqlite3.connect(pristine).execute(
        "SELECT id FROM conversations ORDER BY rowid LIMIT 1").fetchone()[0] for a in args]
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    shutil.copy(pristine, elsewhere / "m.db")
    want = run(["--db", str(elsewhere / "m.db"), *args])
    assert want.returncode == 0 and want.stdout, want.stderr
    assert not list(mirror.parent.glob("m.db-*"))       # nothing beside it to lean on
    before = mirror.read_bytes()
    got = run(["--db", str(mirror), *args], prefix=read_only(mirror.parent))
    assert (got.returncode, got.stderr) == (0, ""), got.stderr
    assert got.stdout == want.stdout
    assert mirror.read_bytes() == before


def test_status_works_on_a_read_only_mount(namespaces, mirror):
    r = run(["--db", str(mirror), "status", "--format", "json"], prefix=read_only(mirror.parent))
    assert r.returncode == 0, r.stderr
    assert '"live": 60' in r.stdout


@pytest.mark.parametrize("args", [["sync"], ["daemon", "--interval", "1m"]])
def test_writers_on_a_read_only_mount_are_one_line_exit_2(namespaces, served, mirror, args):
    upstream, server = served
    server.reset_log()
    r = run(["--db", str(mirror), *args], server, prefix=read_only(mirror.parent))
    line = one_line(r, 2)
    assert "Read-only file system" in line or "cannot write the database" in line, line
    assert server.count() == 0


# -- a database damaged mid-file -------------------------------------------------------------

def damage(db) -> None:
    """Overwrite a leaf page of the messages table in the middle of the file with junk."""
    conn = sqlite3.connect(db)
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = [p for (p,) in conn.execute("SELECT pageno FROM dbstat WHERE name = 'messages' "
                                        "AND pagetype = 'leaf' ORDER BY pageno")]
    conn.close()
    assert len(pages) > 2
    with open(db, "r+b") as f:
        f.seek((pages[len(pages) // 2] - 1) * size)
        f.write(b"\xa5" * size)


DAMAGED = ("is damaged", "restore it from a backup, or move it aside and run `syncer sync`")


@pytest.mark.parametrize("args", [["sync"], ["sync", "--full"], ["verify"], ["verify", "--fix"],
                                  ["daemon", "--interval", "1m"]])
def test_damaged_database_stops_writers_before_any_request(served, mirror, args):
    upstream, server = served
    damage(mirror)
    before = mirror.read_bytes()
    server.reset_log()
    r = run(["--db", str(mirror), *args], server)
    line = one_line(r, 2)
    assert line.startswith(f"error: the database {mirror} is damaged"), line
    assert all(part in line for part in DAMAGED)
    assert server.count() == 0
    assert mirror.read_bytes() == before


# (stats no longer reads the messages' rows: it reads counts kept at write time)
@pytest.mark.parametrize("args", [["export", "messages", "-o", "OUT"],
                                  ["export", "messages", "--format", "parquet", "-o", "OUT"]])
def test_damaged_database_ends_reads_with_recovery_steps(mirror, tmp_path, args):
    """Read commands do not check the whole file first; these read every message, so they
    meet the damaged page, and say what to do instead of printing a traceback."""
    damage(mirror)
    out = tmp_path / "earlier.out"
    out.write_text("earlier export\n")
    r = run(["--db", str(mirror), *[str(out) if a == "OUT" else a for a in args]])
    line = one_line(r, 2)
    assert line.startswith(f"error: the database {mirror} is damaged"), line
    assert all(part in line for part in DAMAGED)
    assert out.read_text() == "earlier export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "earlier.out"]


# -- exports stopped part-way ---------------------------------------------------------------

def test_export_stopped_by_sigterm_leaves_no_partial_file(mirror, tmp_path):
    """The partial file is a FIFO we read slowly, so the export is certainly mid-way when the
    signal comes."""
    out = tmp_path / "messages.csv"
    out.write_text("earlier export\n")
    partial = tmp_path / ".messages.csv.partial"
    os.mkfifo(partial)
    p = subprocess.Popen([*SYNCER, "--db", str(mirror), "export", "messages", "-o", str(out)],
                         env=env_for(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    with open(partial, "rb") as pipe:      # opens once the export has opened it for writing
        assert pipe.read(4096).startswith(b"id,")
        assert p.poll() is None
        p.send_signal(signal.SIGTERM)
        pipe.read()                         # what the export still flushes, up to its close
        stdout, stderr = p.communicate(timeout=60)
    r = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    assert one_line(r, 1) == "error: stopped by SIGTERM"
    assert out.read_text() == "earlier export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "messages.csv"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_export_onto_a_full_disk_keeps_the_earlier_file(namespaces, mirror, tmp_path, fmt):
    small = tmp_path / "small"
    small.mkdir()
    listing, kept = tmp_path / "listing", tmp_path / "kept"
    script = ('small=$0 listing=$1 kept=$2; shift 2; '
              'mount -t tmpfs -o size=16k tmpfs "$small" && '
              'printf "earlier export\\n" > "$small/x" && "$@"; rc=$?; '
              'ls -A "$small" > "$listing"; cat "$small/x" > "$kept"; exit $rc')
    r = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", script,
                        str(small), str(listing), str(kept), *SYNCER, "--db", str(mirror),
                        "export", "messages", "--format", fmt, "-o", str(small / "x")],
                       capture_output=True, text=True, env=env_for(), timeout=120)
    if not listing.exists():
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    line = one_line(r, 2)
    assert line.startswith(f"error: cannot write {small / 'x'}: No space left on device"), line
    assert listing.read_text().split() == ["x"]
    assert kept.read_text() == "earlier export\n"
