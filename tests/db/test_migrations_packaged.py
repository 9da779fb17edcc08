"""A non-editable install (``pip install .``, a wheel) carries the Alembic scripts, which live
outside the packages (top-level migrations/): pyproject.toml installs them as data files under
the install's prefix, where gateway/db/migrate.py looks once there is no source beside it."""

from __future__ import annotations

import glob
import tomllib
from pathlib import Path

import pytest

from gateway.db import migrate

ROOT = Path(__file__).resolve().parents[2]


def test_every_migration_file_is_installed_by_a_wheel() -> None:
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    shipped: dict[str, str] = {}
    for target, patterns in data_files.items():
        for pattern in patterns:
            for f in glob.glob(pattern, root_dir=ROOT):
                shipped[f] = target
    wanted = {str(p.relative_to(ROOT)) for p in (ROOT / "migrations").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    assert wanted - set(shipped) == set(), "migration files a wheel would leave out"
    # Each lands where its place in migrations/ says (versions/ under versions/).
    for f, target in shipped.items():
        assert target == str(Path("share/ocpp-site-gateway") / Path(f).parent), (f, target)
    assert Path("share/ocpp-site-gateway/migrations") == migrate._INSTALLED


def test_the_installed_copy_is_used_where_no_source_is_beside_the_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed = tmp_path / "prefix" / migrate._INSTALLED
    installed.mkdir(parents=True)
    (installed / "env.py").write_text("")
    monkeypatch.setattr(migrate, "PLACES", (tmp_path / "no-source" / "migrations", installed))
    assert migrate.migrations_dir() == installed
    assert migrate.alembic_config("postgresql://u@h/db").get_main_option("script_location") == str(installed)
    monkeypatch.setattr(migrate, "PLACES", (tmp_path / "nowhere",))
    with pytest.raises(FileNotFoundError, match="migrations were not found"):
        migrate.migrations_dir()
