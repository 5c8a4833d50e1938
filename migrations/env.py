"""Alembic environment: migrates schema ``xpmet`` of the database xpmet is configured for."""
from alembic import context
from sqlalchemy import text

from xpmet.db.connection import engine_for
from xpmet.db.migrate import include_object
from xpmet.db.models import SCHEMA, metadata


def run_migrations_online():
    connectable = context.config.attributes.get("connection")
    if connectable is None:
        url = context.config.attributes.get("url")
        if not url:
            raise RuntimeError("run migrations through xpmet.db.migrate.upgrade(url) or `xpmet db migrate`")
        connectable = engine_for(url)
        with connectable.connect() as conn:
            _run(conn)
    else:
        _run(connectable)


MIGRATION_LOCK = 0x78706D6574  # "xpmet": concurrent migrators wait instead of racing


def _run(conn):
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
    conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    context.configure(connection=conn, target_metadata=metadata, include_schemas=True,
                      include_object=include_object, version_table_schema=SCHEMA,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
    conn.commit()


if context.is_offline_mode():
    context.configure(url="postgresql://", target_metadata=metadata, literal_binds=True,
                      version_table_schema=SCHEMA)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
