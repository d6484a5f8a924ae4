"""The docs stay honest: every command has help and is shown in the README, and the README
begins with the two set-up commands that CI and newcomers run."""
import re
import shlex
from pathlib import Path

import click
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


def _code_lines(text: str) -> list[str]:
    """The lines of the README's code: fenced blocks and blocks indented by four spaces."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced or line.startswith("    "):
            lines.append(line.strip())
    return lines


SEPARATORS = {";", "&&", "||", "|", ">", ">>", "<", "&"}


def _invocations(line: str) -> list[list[str]]:
    """Each `syncer ...` command on a shell line (a path ending in /syncer too, and inside
    `sh -c '...'`), as its arguments up to the next separator or redirection."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    tokens = list(lexer)
    found, at_start = [], True
    for i, token in enumerate(tokens):
        if " " in token and re.search(r"(^|[\s/;])syncer\s", token):
            found += _invocations(token)                       # sh -c '...'
        if at_start and (token == "syncer" or token.endswith("/bin/syncer")):
            args = []
            for arg in tokens[i + 1:]:
                if arg in SEPARATORS:
                    break
                args.append(arg)
            found.append(args)
        if token in SEPARATORS:
            at_start = True
        elif not re.fullmatch(r"[A-Z_]+=\S*", token):          # VAR=value keeps the start
            at_start = False
    return found


# Lines of code are whole commands; `syncer ...` in prose may name a command or an option
# without its arguments, or mark an option optional with [ ].
README_INVOCATIONS = [(line, args, True) for line in _code_lines(README) if "syncer" in line
                      for args in _invocations(line)] + [
    (span, args, False) for span in re.findall(r"`(syncer [^`\n]+)`", README)
    for args in _invocations(span.replace("[", "").replace("]", ""))]


def _parse(args: list[str], whole: bool = True) -> None:
    """Parse `syncer ARGS` as the command line would, without running it: unknown commands
    and options raise click's usage errors, and for a `whole` command line bad values and
    missing or extra arguments too."""
    try:
        ctx = main.make_context("syncer", list(args))
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, command, rest = main.resolve_command(ctx, rest)
        if whole:
            command.make_context(name, rest, parent=ctx)
            return
        own = {"--help", "-h"} | {o for p in command.params for o in p.opts}
        unknown = [a for a in rest if a.startswith("-") and a.split("=")[0] not in own]
        if unknown:
            raise click.NoSuchOption(unknown[0], ctx=ctx)
    except click.exceptions.Exit as e:               # --help, -h, --version
        assert e.exit_code == 0


def test_the_readme_shows_many_syncer_command_lines():
    assert len([whole for _, _, whole in README_INVOCATIONS if whole]) >= 25
    assert {args[0] for _, args, _ in README_INVOCATIONS
            if args and not args[0].startswith("-")} >= set(main.commands) - {"simulate"}


@pytest.mark.parametrize("line, args, whole", README_INVOCATIONS)
def test_every_syncer_command_line_in_the_readme_parses(line, args, whole):
    _parse(args, whole)


def test_the_check_catches_what_a_reader_would_hit():
    for args in (["search", "--colour", "x"], ["conversations", "--status", "opne"],
                 ["sync", "--fulll"], ["serach", "x"], ["show"]):
        with pytest.raises(click.UsageError):
            _parse(args)
    for args in (["search", "--colour"], ["serach"]):
        with pytest.raises(click.UsageError):
            _parse(args, whole=False)
    _parse(["show"], whole=False)
    assert _invocations("*/15 * * * *  set -a; . /etc/env; set +a; /opt/v/bin/syncer -q "
                        "sync") == [["-q", "sync"]]
    assert _invocations("runuser -u syncer -- sh -c 'x=1; /opt/bin/syncer --db a doctor'") \
        == [["--db", "a", "doctor"]]
    assert _invocations("useradd --system syncer; crontab -u syncer -e") == []


def _options() -> set[str]:
    names = {"--help", "-h"} | {o for p in main.params for o in p.opts}
    for command in main.commands.values():
        names |= {o for p in command.params for o in p.opts}
    return names


def test_every_option_the_readme_names_exists():
    named = {o for span in re.findall(r"`([^`\n]+)`", README)
             for o in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", span)}
    named |= {a.split("=")[0] for _, args, _ in README_INVOCATIONS for a in args
              if a.startswith("--")}
    others = {"--now"}                               # systemctl's
    assert sorted(named - _options() - others) == []
