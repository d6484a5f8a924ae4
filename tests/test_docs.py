"""The docs stay honest: every command has help and is shown in the README, and the README
begins with the two set-up commands that CI and newcomers run."""
from pathlib import Path

import pytest

from syncer.cli import main

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_has_help_and_is_in_the_readme(name):
    command = main.commands[name]
    assert (command.help or "").strip(), f"{name} has no help text"
    assert f"syncer {name}" in README or f"syncer --db mirror.db {name}" in README \
        or f"syncer --db /var/lib/syncer/mirror.db {name}" in README, name
    undocumented = [p.name for p in command.params
                    if p.param_type_name == "option" and not (p.help or "").strip()]
    assert undocumented == [], f"{name}: options without help"


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    block = README.split("```sh\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(block) == 2
    demo, tests = block
    assert demo.endswith("syncer demo")
    test_command = tests.split("&& ")[-1].replace(".venv/bin/python", "python")
    assert test_command in (ROOT / ".ci" / "run").read_text()
