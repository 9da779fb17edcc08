"""The TOML site file (``--config``): refused as strictly as the REST API refuses the same inputs,
with errors that name the file and the key; every example in the repository still loads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config import Settings as GatewaySettings

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def _refused(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(ValueError) as err:  # SiteFileError
        GatewaySettings(config=path).with_site_file()
    message = str(err.value)
    assert str(path) in message, message
    return message


def test_misspelt_keys_are_refused_by_name(tmp_path: Path) -> None:
    message = _refused(tmp_path, '[site]\nname = "depot"\nimport_limit_kW = 80\nexport_limt_kw = 0\n')
    assert "site.import_limit_kW: unknown key" in message
    assert "site.export_limt_kw: unknown key" in message
    assert "tou[0].strat_hour: unknown key" in _refused(
        tmp_path, "tou = [{strat_hour = 0, end_hour = 8, import_price = 0.1, export_price = 0.0}]\n")
    assert "tariff: unknown key" in _refused(tmp_path, "[site]\nimport_limit_kw = 80\n[tariff]\nx = 1\n")


def test_out_of_range_and_non_finite_values_are_refused(tmp_path: Path) -> None:
    message = _refused(tmp_path, "[[site.tou]]\nstart_hour = 30\nend_hour = 30\n"
                                 "import_price = nan\nexport_price = -inf\n")
    assert re.search(r"site\.tou\[0\]\.start_hour: .*less than or equal to 24", message), message
    assert re.search(r"site\.tou\[0\]\.end_hour: .*less than or equal to 24", message), message
    assert "site.tou[0].import_price: Input should be a finite number" in message
    assert "site.tou[0].export_price: Input should be a finite number" in message
    assert "site.tou[0]: the window is empty" in _refused(
        tmp_path, "[[site.tou]]\nstart_hour = 8\nend_hour = 8\nimport_price = 0.2\nexport_price = 0.1\n")
    for line in ["import_limit_kw = -1", "export_limit_kw = inf", "import_limit_kw = 1e9",
                 "demand_charge_per_kw = nan", "demand_charge_per_kw = -5", "wear_cost_per_kwh = -0.1",
                 'import_limit_kw = "80"', "billing_day = true", "demand_interval_min = 0", 'name = ""',
                 'timezone = "Mars/Olympus"']:
        key = line.split(" = ")[0]
        assert f"site.{key}: " in _refused(tmp_path, f"[site]\n{line}\n"), line
    assert "site.tou[1].import_price" in _refused(tmp_path, "[site]\ntou = [\n"
        "  {start_hour = 0, end_hour = 8, import_price = 0.1, export_price = 0.0},\n"
        "  {start_hour = 8, end_hour = 24, import_price = 1000, export_price = 0.0},\n]\n")


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    from gateway.config import SiteFileError, load_site_file

    assert "site.toml" in _refused(tmp_path, "[site\n")
    with pytest.raises(SiteFileError, match=r"missing\.toml"):
        load_site_file(tmp_path / "missing.toml")


def test_a_valid_file_applies_every_key(tmp_path: Path) -> None:
    path = _write(tmp_path, '[site]\nname = "depot"\ntimezone = "Europe/Berlin"\nimport_limit_kw = 80\n'
                            "export_limit_kw = 0\ndemand_charge_per_kw = 0\nbilling_day = 5\n"
                            "demand_interval_min = 15\nwear_cost_per_kwh = 0\n"
                            "tou = [{start_hour = 22, end_hour = 6, import_price = -0.01, export_price = 0}]\n")
    site = GatewaySettings(config=path).with_site_file().site
    assert (site.name, site.import_limit_kw, site.export_limit_kw, site.billing_day) == ("depot", 80.0, 0.0, 5)
    assert site.tariff().periods[0].start_hour == 22 and site.tariff().periods[0].import_price == -0.01
    # Top-level keys without a [site] table are read as the site too.
    from gateway.config import load_site_file

    assert load_site_file(_write(tmp_path, "import_limit_kw = 42\n")).import_limit_kw == 42.0


def _repo_examples() -> list[tuple[str, str]]:
    """Every site TOML in the repository: *.toml files that look like one and the ```toml blocks
    of the Markdown docs (README's example is what operators copy)."""
    found: list[tuple[str, str]] = []
    skip = {".venv", ".git", "node_modules"}
    for path in ROOT.rglob("*.toml"):
        if skip.isdisjoint(path.relative_to(ROOT).parts) and path.name != "pyproject.toml":
            found.append((str(path.relative_to(ROOT)), path.read_text()))
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, block in enumerate(re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)):
            found.append((f"{doc.relative_to(ROOT)} block {i}", block))
    return found


def test_every_example_site_file_in_the_repository_loads(tmp_path: Path) -> None:
    from gateway.config import SiteConfig, load_site_file

    examples = _repo_examples()
    assert any(name.startswith("README.md") for name, _ in examples)  # the finder finds the known one
    for name, text in examples:
        site = load_site_file(_write(tmp_path, text))
        assert isinstance(site, SiteConfig), name


def test_site_configs_built_in_code_still_validate() -> None:
    # The demo builds its site from a generated episode; every site type must pass the bounds.
    from gateway.demo import site_config
    from simulators.models import SITES
    from simulators.scenario import ScenarioOptions, generate

    for kind in SITES:
        ep = generate(ScenarioOptions(site=kind, stations=2, days=1, seed=1, grid_event="always"))
        assert site_config(ep).import_limit_kw == ep.limits.import_kw
