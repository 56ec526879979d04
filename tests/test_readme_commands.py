"""Every `chainrule ...` command shown in the README parses with the real command line: options
renamed or removed in the code break this test before they break a reader's first try."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from chainrule.cli.main import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()  # a trailing comment
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("chainrule "):
                    commands.append(part)
                elif part.startswith("torchrun ") and " -m chainrule " in part:
                    commands.append("chainrule " + part.split(" -m chainrule ", 1)[1])
    return commands


def test_the_readme_shows_commands():
    assert len(readme_commands()) >= 20


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    parser = build_parser()
    try:
        args = parser.parse_args(shlex.split(command)[1:])
    except SystemExit as exc:  # argparse's way of refusing
        pytest.fail(f"README command does not parse (exit {exc.code}): {command}")
    assert callable(args.func)
