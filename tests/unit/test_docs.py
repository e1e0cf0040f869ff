"""The documentation site builds strictly (a broken link or a missing page fails), and every
`maas` command the docs and the README show parses and is exercised by a test."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import click
import pytest

from conftest import ROOT
from maas.cli import cli

PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]


def shown_commands() -> list[tuple[str, list[str]]]:
    """(page, argv after `maas`) for every maas command in a fenced code block."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```(?:bash|console)\n(.*?)```", page.read_text(), re.S):
            text = re.sub(r"\\\n\s*", " ", block)  # join continued lines
            for line in text.splitlines():
                line = line.split(" #")[0].strip()
                for part in re.split(r"&&|\||;", line):
                    part = part.strip().removeprefix("$ ").strip()
                    if part.startswith("maas ") or part == "maas":
                        found.append((page.relative_to(ROOT).as_posix(), shlex.split(part)[1:]))
    return found


def unparsed(ctx: click.Context) -> list[str]:
    """A group's subcommand and its arguments: Click 8 keeps the first in protected_args
    (deprecated), Click 9 will have them all in args."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return [*getattr(ctx, "protected_args", []), *ctx.args]


def command_path(argv: list[str]) -> list[str]:
    """Parse argv as the maas CLI would (options, arguments, choices); the (sub)command names."""
    ctx = cli.make_context("maas", list(argv))
    names, group, args = [], cli, unparsed(ctx)
    while isinstance(group, click.Group) and args:
        name, command, args = group.resolve_command(ctx, args)
        names.append(name)
        ctx = command.make_context(name, list(args), parent=ctx)
        group, args = command, unparsed(ctx) if isinstance(command, click.Group) else []
    return names


COMMANDS = shown_commands()


def cli_calls() -> list[tuple[str, set[str]]]:
    """(test file, the string constants among one call's arguments) for every call in the tests:
    how a test hands argv to the CLI (CliRunner().invoke, subprocess.run, a helper)."""
    import ast

    found = []
    for path in (ROOT / "tests").rglob("*.py"):
        if path.name == "test_docs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                found.append((path.name, {n.value for n in ast.walk(node)
                                          if isinstance(n, ast.Constant) and isinstance(n.value, str)}))
    return found


CALLS = cli_calls()
# Commands whose tests drive the function they run, not the CLI (the command is its thin wrapper)
THROUGH_THE_API = {("cluster", "start"): "test_cluster.py", ("swarm", "start"): "test_swarm.py",
                   ("swarm", "scale"): "test_swarm.py", ("swarm", "update"): "test_swarm.py", ("swarm", "stop"): "test_swarm.py"}


def exercised(names: list[str]) -> bool:
    """A test calls the CLI with these names as arguments of one call, or with the group's names in
    one call (a helper such as `maas(*args)` prefixing "cluster") and the leaf's in another."""
    if any(set(names) <= strings for _, strings in CALLS):
        return True
    group, leaf = set(names[:-1]), names[-1]
    files = {f for f, strings in CALLS if group and group <= strings}
    return any(f in files and leaf in strings for f, strings in CALLS) or tuple(names) in THROUGH_THE_API


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) > 40 and {p for p, _ in COMMANDS} >= {"README.md", "docs/how-to/package-your-model.md"}


@pytest.mark.parametrize("page,argv", COMMANDS, ids=[f"{p}:{' '.join(a)[:50]}" for p, a in COMMANDS])
def test_every_command_shown_parses_and_is_exercised_by_a_test(page: str, argv: list[str], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the files a command names exist where it runs (click checks them)
    for token in argv:
        if re.search(r"\.(json|yaml|onnx|pt2|npz|py|txt)$", token) and not token.startswith("-"):
            (tmp_path / token).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / token).touch()
    try:
        names = command_path(argv)
    except click.exceptions.Exit:  # --help
        return
    except click.ClickException as exc:
        pytest.fail(f"{page}: `maas {' '.join(argv)}` does not parse: {exc.format_message()}")
    assert names, f"{page}: `maas {' '.join(argv)}` names no command"
    assert exercised(names), f"{page}: `maas {' '.join(names)}` is shown but no test calls it"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    cli_page = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    for command in ("package", "serve", "loadtest", "release", "export-kserve", "init"):
        assert command in cli_page  # generated from the click commands
