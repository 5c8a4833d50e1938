"""Run Alembic migrations from Python (``xpmet db migrate`` and tests use this)."""
from __future__ import annotations

from alembic import command
from alembic.config import Config

from xpmet import resources

SCHEMA = "xpmet"


def include_object(obj, name, type_, reflected, compare_to):
    """Keep hand-written objects out of autogenerate: functional q3c indexes (named *_q3c)."""
    if type_ == "index" and name and name.endswith("_q3c"):
        return False
    if type_ == "table" and getattr(obj, "schema", SCHEMA) != SCHEMA:
        return False
    return True


def alembic_config(url: str | None = None) -> Config:
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


def upgrade(revision: str = "head", url: str | None = None) -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(revision: str = "base", url: str | None = None) -> None:
    command.downgrade(alembic_config(url), revision)


def head() -> str:
    from alembic.script import ScriptDirectory
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current(url: str | None = None) -> str | None:
    from alembic.runtime.migration import MigrationContext
    from xpmet.db.engine import connect
    with connect(url).connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table_schema": "xpmet"}).get_current_revision()
