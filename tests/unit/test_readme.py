"""The README is a front page whose every command works as written.

Each ``uv run ml_playground ...`` line parses with the real parser and its experiment and overrides
validate (the paths it names exist); each ``make`` target exists; the error shown is the one the
CLI prints; the experiments table and the commands list are the package's own; every link opens.
The main job itself runs (on a small slice) in ``tests/e2e/test_cli.py``.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from ml_playground.cli import _load, build_parser, main
from ml_playground.configuration import list_experiments

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text("utf-8")
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_LINES = 200


def shell_lines(text: str = README) -> list[str]:
    """Every command line of a page's bash blocks, comments cut, continuations joined."""
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for raw in block.replace("\\\n", " ").splitlines():
            line = raw.split("  #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def ml_playground_commands(text: str = README) -> list[list[str]]:
    return [shlex.split(line)[3:] for line in shell_lines(text) if line.startswith("uv run ml_playground ")]


def docs_commands() -> list[list[str]]:
    return [command for page in DOCS for command in ml_playground_commands(page.read_text("utf-8"))]


def test_the_front_page_is_short() -> None:
    assert len(README.splitlines()) <= MAX_LINES


def test_the_readme_shows_the_two_commands_and_the_main_job() -> None:
    assert shell_lines()[:2] == ["make setup", "make test"]
    assert any(command[:2] == ["loop", "shakespeare"] for command in ml_playground_commands())


@pytest.mark.parametrize("command", ml_playground_commands() + docs_commands(), ids=" ".join)
def test_every_command_parses_and_its_config_validates(command: list[str]) -> None:
    """In the README and in docs/."""
    args = build_parser().parse_args(command)
    if getattr(args, "experiment", None) is not None:
        config = _load(args)
        assert config.train.out_dir
    for value in (v for v in command if "input_path=" in v):
        assert (ROOT / value.split("=", 1)[1]).exists(), value


def test_every_make_target_exists() -> None:
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text("utf-8"), flags=re.MULTILINE))
    shown = {line.split()[1] for line in shell_lines() if line.startswith("make ")}
    assert shown
    assert shown <= targets


def test_the_commands_list_is_the_parser_s(capsys: pytest.CaptureFixture[str]) -> None:
    block = re.search(r"## Commands\n```\n(.*?)```", README, flags=re.DOTALL)
    assert block is not None
    listed = {line.split()[1] for line in block.group(1).splitlines() if line.startswith("ml_playground ")}
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert listed == set(subparsers.choices)
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "COMMAND" in capsys.readouterr().out


def test_the_experiments_table_is_the_package_s(capsys: pytest.CaptureFixture[str]) -> None:
    table = re.findall(r"^\| `(\w+)` \|", README, flags=re.MULTILINE)
    assert sorted(table) == sorted(name for name, _ in list_experiments())
    assert main(["experiments"]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in table)


def test_the_error_shown_is_the_one_printed(capsys: pytest.CaptureFixture[str]) -> None:
    shown = re.search(r"^\$ uv run ml_playground (.+)\nerror: \.\.\.(.+)$", README, flags=re.MULTILINE)
    assert shown is not None
    assert main(shlex.split(shown.group(1))) == 2
    printed = capsys.readouterr().err.strip()
    assert printed.startswith("error: ")
    assert printed.endswith(shown.group(2))
    assert "\n" not in printed


def test_every_link_opens() -> None:
    links = re.findall(r"\]\(([^)#]+)\)", README)
    assert links
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing


def test_every_tool_a_page_runs_exists() -> None:
    pages = [README, *(page.read_text("utf-8") for page in DOCS)]
    tools = {word for page in pages for line in shell_lines(page) for word in line.split() if word.startswith("tools/")}
    assert tools
    assert all((ROOT / tool).is_file() for tool in tools), tools
