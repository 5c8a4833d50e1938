"""Alembic environment and revisions of schema xpmet, shipped inside the package as xpmet.migrations."""
