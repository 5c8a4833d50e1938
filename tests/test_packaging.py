"""pyproject.toml ships every package and every file the code finds through xpmet.resources."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONF = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_under_xpmet_is_listed():
    listed = set(CONF["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "xpmet").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_mapped_folders_are_packages_with_their_data():
    mapping = CONF["tool"]["setuptools"]["package-dir"]
    data = CONF["tool"]["setuptools"]["package-data"]
    for package, folder in mapping.items():
        assert (ROOT / folder / "__init__.py").exists(), folder
        assert package in CONF["tool"]["setuptools"]["packages"]
    assert mapping["xpmet.migrations"] == "migrations" and "xpmet.migrations.versions" in CONF["tool"]["setuptools"]["packages"]
    assert data["xpmet.sql"] == ["*.sql"] and data["xpmet.survey_descriptors"] == ["*.toml"]


def test_resources_resolve_through_the_import_system():
    from xpmet import resources
    assert (resources.migrations_dir() / "env.py").exists()
    assert "CREATE MATERIALIZED VIEW xpmet.labels" in resources.sql_text("labels.sql")
    assert "apogee" in resources.survey_descriptor_names()


def test_python_range_is_the_tested_one():
    import sys
    spec = CONF["project"]["requires-python"]
    assert spec.startswith(">=3.11") and sys.version_info >= (3, 11)
