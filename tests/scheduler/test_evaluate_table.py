"""`gateway evaluate`'s table: every metric under its full JSON name, on stdout unless the JSON is."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from gateway.episode import dump
from gateway.scheduler import evaluate as ev

from .episodes import small_episode


def _args(tmp_path: Path, json_file: Path | None) -> argparse.Namespace:
    path = tmp_path / "ep.json"
    dump(small_episode(3, seed=2), path)
    return argparse.Namespace(episode=[str(path)], site=None, stations=50, days=1, seed=1,
                              policies="uncontrolled,greedy,optimal", exact=False,
                              json=None if json_file is None else str(json_file), report=None, no_progress=True)


def _rows(table: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in table.splitlines()}


def test_the_table_goes_to_stdout_with_every_metric_named_in_full(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    assert ev.cli(_args(tmp_path, out)) == 0
    captured = capsys.readouterr()
    rows = _rows(captured.out)
    assert rows["metric"] == ["uncontrolled", "greedy", "optimal"]
    assert list(rows)[1:] == list(ev.TABLE_KEYS)  # savings_capture and savings_capture_total both there
    data = json.loads(out.read_text())["policies"]
    for key in ev.TABLE_KEYS:
        assert rows[key] == [f"{data[p][key]:.3f}" for p in ("uncontrolled", "greedy", "optimal")], key
    assert "savings_capture" not in captured.err
    # Fitted to its content: every line as wide as the widest cell makes it, no wider.
    lines = captured.out.splitlines()
    assert len({len(line) for line in lines}) == 1
    cells = [[line.split()[i] for line in lines] for i in range(4)]
    assert len(lines[0]) == sum(max(map(len, column)) for column in cells) + 2 * 3


def test_without_a_json_file_stdout_stays_json_and_the_table_goes_to_stderr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ev.cli(_args(tmp_path, None)) == 0
    captured = capsys.readouterr()
    assert set(json.loads(captured.out)["policies"]) == {"uncontrolled", "greedy", "optimal"}
    assert list(_rows(captured.err))[1:] == list(ev.TABLE_KEYS)


def test_a_capture_that_cannot_be_had_reads_n_a() -> None:
    result = {"policies": {"mpc": {k: 1.0 for k in ev.TABLE_KEYS} | {"savings_capture": None}}}
    assert _rows(ev.format_table(result))["savings_capture"] == ["n/a"]
