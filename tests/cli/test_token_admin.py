"""`gateway token add` refuses what OCPP 2.0.1's IdTokenType does not allow (an empty, over-long or
non-printable idToken, a type outside IdTokenEnumType) with one line and exit status 2, before
anything is written; it used to store it, or print a database traceback."""

from __future__ import annotations

import argparse
import asyncio
import re

import pytest
from ocpp.v201.enums import IdTokenEnumType

from gateway.cli import build_parser
from tests.cli.test_station_admin import fetch, gateway

BAD_ID_TOKENS = {
    "empty": ("", "empty"),
    "37 characters": ("A" * 37, "37 characters, at most 36"),
    "40 characters": ("04A2B3C4" * 5, "40 characters, at most 36"),
    "an ASCII control": ("04A2\x01", "non-printable"),
    "a newline": ("04A2\nB3", "non-printable"),
    "a zero-width space": ("04A2\u200b", "non-printable"),
    "a non-breaking space": ("04A2\u00a0B3", "non-printable"),
}


@pytest.mark.parametrize(("id_token", "problem"), BAD_ID_TOKENS.values(), ids=BAD_ID_TOKENS.keys())
def test_a_bad_id_token_is_refused_naming_the_problem(id_token: str, problem: str) -> None:
    from gateway.db.admin import IdTokenError, check_id_token

    with pytest.raises(IdTokenError, match=re.escape(problem)):
        check_id_token(id_token, "ISO14443")


@pytest.mark.parametrize("type_", ["", "Foo", "iso14443", "ISO14443 ", "x" * 21])
def test_a_type_outside_id_token_enum_type_is_refused(type_: str) -> None:
    from gateway.db.admin import IdTokenError, check_id_token

    with pytest.raises(IdTokenError, match=f"unknown idToken type {re.escape(repr(type_))}: one of Central, "):
        check_id_token("04A2B3C4", type_)


def test_every_ocpp_type_and_a_36_character_token_are_accepted() -> None:
    from gateway.db.admin import check_id_token

    for t in IdTokenEnumType:
        check_id_token("A" * 36, t.value)
    check_id_token("Émile's card 7", "Local")  # printable beyond ASCII, and spaces


@pytest.mark.parametrize("argv", [
    ["token", "add", ""],
    ["token", "add", "04A2B3C4" * 5],
    ["token", "add", "04A2\x01"],
    ["token", "add", "04A2B3C4", "--type", "Foo"],
    ["token", "add", "04A2B3C4", "--type", "x" * 21],  # longer than the type column too
], ids=["empty", "40 characters", "control character", "unknown type", "21-character type"])
def test_token_add_refuses_in_one_line_and_writes_nothing(clean_db: str, argv: list[str]) -> None:
    result = gateway(argv, clean_db)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert re.fullmatch(r"error: (invalid idToken|unknown idToken type) .+\n", result.stderr), result.stderr
    assert asyncio.run(fetch(clean_db, "SELECT id_token FROM id_tokens")) == []


def test_token_add_still_stores_a_good_token(clean_db: str) -> None:
    result = gateway(["token", "add", "A" * 36, "--type", "eMAID"], clean_db)
    assert result.returncode == 0, result.stderr
    rows = asyncio.run(fetch(clean_db, "SELECT id_token, type FROM id_tokens"))
    assert [tuple(r) for r in rows] == [("A" * 36, "eMAID")]


def test_the_help_names_exactly_the_ocpp_types() -> None:
    # The help lists the types in prose (the parser does not import the OCPP library); this keeps
    # that list the enum the command checks with.
    def sub(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        found: argparse.ArgumentParser = action.choices[name]
        return found

    add = sub(sub(build_parser(), "token"), "add")
    help_text = next(a.help for a in add._actions if "--type" in a.option_strings) or ""
    listed = set(re.findall(r"[A-Za-z0-9]+", help_text.split(":", 1)[1])) - {"default", "or"}
    assert listed == {t.value for t in IdTokenEnumType}
