"""The README and docs/ as a user reads them: every `sagedrop` command they show parses
with the CLI's own parser, every setting the code reads is in the README's table, every
link they make leads to a file, and the README stays short enough to read."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from chalicelib.settings import ENVIRONMENT
from sagedrop import cli
from sagedrop.paths import REPO_ROOT

README = REPO_ROOT / "README.md"
PAGES = [README, *sorted((REPO_ROOT / "docs").glob("*.md")), REPO_ROOT / "bench" / "README.md"]


def commands(page: Path) -> list[str]:
    """``.venv/bin/sagedrop …`` lines of the page's code blocks, without their comments."""
    found, inside = [], False
    for line in page.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            inside = not inside
        elif inside and stripped.startswith(".venv/bin/sagedrop "):
            found.append(stripped.split(" #", 1)[0].strip())
    return found


def arguments(command: str) -> list[str]:
    """The command's arguments, with ``[--optional]`` parts taken as written inside."""
    return shlex.split(command.replace("[", "").replace("]", ""))[1:]


@pytest.mark.parametrize(
    "command", [c for page in PAGES for c in commands(page)], ids=lambda c: c[:60]
)
def test_every_command_shown_parses_with_the_cli(command):
    try:
        cli.build_parser().parse_args(arguments(command))
    except SystemExit as exc:  # argparse's way of refusing
        pytest.fail(f"{command!r} does not parse (exit {exc.code})")


def test_the_readme_shows_the_commands_a_user_needs():
    shown = {arguments(c)[0] for c in commands(README)}
    assert {"up", "drop", "status", "report", "models", "approve", "mlflow", "aws"} <= shown


def test_every_setting_is_in_the_readme():
    text = README.read_text()
    assert [name for name in ENVIRONMENT if f"`{name}`" not in text] == []


def test_links_lead_to_files():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_the_readme_reads_in_five_minutes():
    assert len(README.read_text().splitlines()) <= 250
