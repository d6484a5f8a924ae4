"""The install is what the README says: the distribution is runtype-syncer (the name `syncer` on
the package index is somebody else's), every install hint names it, and the README's commands
work from where a newcomer stands."""
import sys
import tomllib
from pathlib import Path

from click.testing import CliRunner

from syncer.cli import main

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_the_distribution_is_runtype_syncer_and_the_command_syncer():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert (project["name"], project["scripts"]) == ("runtype-syncer",
                                                     {"syncer": "syncer.cli:main"})


def test_no_install_hint_names_the_wrong_distribution():
    sources = [README] + [p.read_text() for p in (ROOT / "syncer").rglob("*.py")]
    assert not any("'syncer[" in s or " syncer[" in s for s in sources)
    assert "pip install 'runtype-syncer[parquet]'" in README


def test_export_help_names_the_real_extra():
    result = CliRunner().invoke(main, ["export", "--help"])
    assert result.exit_code == 0
    assert "runtype-syncer[parquet]" in " ".join(result.output.split())


def test_parquet_without_pyarrow_names_the_real_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)   # import fails like a missing one
    result = CliRunner().invoke(main, ["--db", str(tmp_path / "none.db"), "export", "messages",
                                       "--format", "parquet", "-o", str(tmp_path / "m.parquet")])
    assert result.exit_code == 2
    assert "pip install 'runtype-syncer[parquet]'" in result.output


def test_readme_puts_syncer_on_path_before_calling_it_bare():
    first_bare = README.index("\nsyncer ")
    assert README.index(". .venv/bin/activate") < first_bare
    pipx = README.index("pipx install")          # the other way, with what makes it work
    assert README.index("pipx ensurepath", pipx) < README.index("\nsyncer ", pipx)


def test_the_unattended_recipes_create_their_user_and_paths():
    setup = README.split("### Setting up a host", 1)[1].split("### From cron", 1)[0]
    for needed in ("useradd --system", "/var/lib/syncer", "/etc/syncer/env",
                   "/etc/syncer/syncer.toml", "/opt/syncer/.venv"):
        assert needed in setup, needed
