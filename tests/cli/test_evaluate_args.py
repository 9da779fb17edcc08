"""`gateway evaluate` refuses what it cannot run with one line and exit status 2, before a run
that may take hours: a missing episode file, counts below one, an output it cannot write."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main


@pytest.mark.parametrize(("argv", "says"), [
    (["--episode", "/nonexistent/day.json"], "cannot read episode"),
    (["--site", "workplace", "--days", "0"], "--days: must be at least 1"),
    (["--site", "workplace", "--stations", "-3"], "--stations: must be at least 1"),
    (["--site", "workplace", "--json", "/nonexistent/out.json"], "--json: cannot write"),
    (["--site", "workplace", "--report", "."], "--report: cannot write"),
])
def test_a_run_it_cannot_do_is_one_line_and_status_2(
        argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        rc = main(["evaluate", *argv, "--no-progress"])
        raise SystemExit(rc)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_an_inconsistent_episode_file_is_named_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "day.json"
    bad.write_text("{not json")
    assert main(["evaluate", "--episode", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gateway: error:") and str(bad) in err and "Traceback" not in err
