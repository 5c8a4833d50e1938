"""Run Alembic migrations from Python (``xpmet db migrate`` and tests use this)."""
from __future__ import annotations

from alembic import command
from alembic.config import Config

from xpmet import resources
from xpmet.db.connection import engine_for

SCHEMA = "xpmet"


def include_object(obj, name, type_, reflected, compare_to):
    """Keep hand-written objects out of autogenerate: functional q3c indexes (named *_q3c)."""
    if type_ == "index" and name and name.endswith("_q3c"):
        return False
    if type_ == "table" and getattr(obj, "schema", SCHEMA) != SCHEMA:
        return False
    if type_ == "table" and reflected and name.startswith("xmatch_r") and name[8:].isdigit():
        return False  # a crossmatch run's partition of xmatch (made by the run, not by a migration)
    return True


def alembic_config(url: str | None = None) -> Config:
    """Alembic's configuration; ``url`` is required to run migrations (not to read the scripts)."""
    cfg = Config()  # no alembic.ini needed: everything Alembic reads ships in the package
    cfg.set_main_option("script_location", str(resources.migrations_dir()))
    cfg.attributes["url"] = url
    return cfg


def run_sql_file(name: str) -> None:
    """Execute db/sql/<name> inside a migration (views and functions are written as plain SQL files)."""
    import sqlalchemy as sa
    from alembic import op
    from xpmet.flags import render_sql
    sql = render_sql(resources.sql_text(name))
    op.execute(sa.text(sql).execution_options(no_parameters=True))


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` (a libpq URL: ``xpmet.db.engine.libpq_url()`` for the configured one)."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def head() -> str:
    from alembic.script import ScriptDirectory
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext
    with engine_for(url).connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table_schema": "xpmet"}).get_current_revision()
