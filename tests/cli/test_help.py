"""`gateway --help` and every command's help are plain text for an operator, and offer only the
options the command uses."""

from __future__ import annotations

import argparse
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import build_parser
from tests.test_cli import GATEWAY

# Sphinx roles (:class:`...`), reST literals (``...``) and the import paths they point at.
MARKUP = re.compile(r":[a-z]+:`|``|~gateway\.|gateway\.[a-z_]+\.[A-Z]")


def help_text(*args: str) -> str:
    result = subprocess.run([GATEWAY, *args, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def parsers(parser: argparse.ArgumentParser, prog: str = "gateway") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, f"{prog} {name}")


def test_the_top_level_help_is_plain_text() -> None:
    text = help_text()
    assert not MARKUP.search(text), text
    assert "Settings" not in text  # the code's name for the settings, not the operator's
    for command in ("serve", "db", "station", "token", "sim", "scenario", "evaluate", "demo"):
        assert command in text


@pytest.mark.parametrize("prog", [prog for prog, _ in parsers(build_parser())])
def test_no_commands_help_shows_markup(prog: str) -> None:
    text = dict(parsers(build_parser()))[prog].format_help()
    assert not MARKUP.search(text), f"{prog}:\n{text}"


def test_the_demos_help_does_not_offer_a_site_file() -> None:
    text = help_text("demo")
    assert "--config" not in text
    assert "--database-url" in text and "--log-level" in text
    assert "--config" in help_text("serve")


def test_the_demo_still_refuses_a_site_file_saying_why(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text("[site]\nimport_limit_kw = 100\n")
    result = subprocess.run([GATEWAY, "demo", "--config", str(site)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2 and "--config is not used by the demo" in result.stderr, result.stderr
