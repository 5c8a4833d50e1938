"""Files shipped inside the package: the Alembic migrations, the SQL they apply, the survey and photometry descriptors.

In the repository they live at the top (migrations/, db/sql/, etl/surveys/, etl/photometry/, as the design card
lays out); pyproject.toml maps them into the package (xpmet.migrations, xpmet.sql,
xpmet.survey_descriptors, xpmet.photometry_descriptors), so a wheel carries them and an editable install finds them in place.
They are always found through the import system, never through the checkout's path.
"""
from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

MIGRATIONS = "xpmet.migrations"
SQL = "xpmet.sql"
SURVEY_DESCRIPTORS = "xpmet.survey_descriptors"
PHOTOMETRY_DESCRIPTORS = "xpmet.photometry_descriptors"


def _directory(package: str) -> Path:
    """A shipped folder as a real path (Alembic reads its scripts from the file system)."""
    root = files(package)
    if not isinstance(root, Path):  # e.g. a zip import: nothing xpmet is installed as
        raise RuntimeError(f"{package} must be installed as files, not inside {root}")
    return root


def migrations_dir() -> Path:
    return _directory(MIGRATIONS)


def sql_text(name: str) -> str:
    """The text of db/sql/<name>."""
    return files(SQL).joinpath(name).read_text()


def _toml(package: str, name: str) -> Traversable:
    return files(package).joinpath(f"{name}.toml")


def _toml_names(package: str) -> list[str]:
    return sorted(p.name[:-5] for p in files(package).iterdir() if p.name.endswith(".toml"))


def survey_descriptor(name: str) -> Traversable:
    """etl/surveys/<name>.toml (may not exist: check .is_file())."""
    return _toml(SURVEY_DESCRIPTORS, name)


def survey_descriptor_names() -> list[str]:
    return _toml_names(SURVEY_DESCRIPTORS)


def photometry_descriptor(name: str) -> Traversable:
    """etl/photometry/<name>.toml (may not exist: check .is_file())."""
    return _toml(PHOTOMETRY_DESCRIPTORS, name)


def photometry_descriptor_names() -> list[str]:
    return _toml_names(PHOTOMETRY_DESCRIPTORS)
