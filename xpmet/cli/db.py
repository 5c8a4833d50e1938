"""``xpmet db``: the embedded cluster and migrations."""
from __future__ import annotations

import time

import click

from xpmet.config import settings


@click.group()
def db():
    """Manage the database: the embedded PostgreSQL+q3c cluster, or XPMET_DATABASE_URL."""


def _external_note():
    s = settings()
    if not s.embedded:
        from xpmet.db.engine import describe
        click.echo(f"XPMET_DATABASE_URL is set ({describe(s.database_url)}): the embedded cluster is not used.")
        return True
    return False


@db.command()
def start():
    """Start the embedded cluster (initdb, CREATE EXTENSION q3c and migrations on first use). Idempotent."""
    from xpmet.db.engine import check_server, cluster, ensure_schema, libpq_url
    if _external_note():
        check_server(libpq_url())
        click.echo("server reachable, q3c present")
        return
    t0 = time.perf_counter()
    c = cluster()
    launched = c.start()
    ensure_schema(c.url())
    what = f"started in {time.perf_counter() - t0:.1f} s" if launched else "already running"
    click.echo(f"embedded PostgreSQL {what} (data: {c.data}, socket: {c.run})")
    click.echo(c.url())


@db.command()
def stop():
    """Stop the embedded cluster (fast shutdown)."""
    from xpmet.db.engine import cluster
    if _external_note():
        return
    click.echo("stopped" if cluster().stop() else "not running")


@db.command()
def status():
    """Show whether the database runs, where its files are, and the schema revision."""
    from xpmet.db.engine import cluster, describe, libpq_url
    s = settings()
    if s.embedded:
        for k, v in cluster().status().items():
            click.echo(f"{k:12s} {v}")
        if not cluster().running():
            return
    else:
        click.echo(f"url          {describe(libpq_url())}")
    from xpmet.db import migrate
    rev = migrate.current(libpq_url())
    click.echo(f"revision     {rev or 'none (run: xpmet db migrate)'}")
    if rev and rev >= "0005":  # what derived rows were built from (migration 0005)
        from xpmet.etl.provenance import derived_status
        for what, state in derived_status():
            click.echo(f"{what:12s} {state}")


@db.command()
@click.option("--sqlalchemy", is_flag=True, help="Print the postgresql+psycopg:// form for SQLAlchemy.")
@click.option("--read-only", "read_only", is_flag=True,
              help="URL of the role xpmet_reader, which can SELECT but not modify anything.")
def url(sqlalchemy, read_only):
    """Print the connection URL, e.g.  psql "$(xpmet db url)"  (starts the embedded cluster)."""
    from xpmet.db.engine import libpq_url, to_sqlalchemy
    if read_only:
        from xpmet.db.readonly import readonly_url
        u = readonly_url()
    else:
        u = libpq_url()
    click.echo(to_sqlalchemy(u) if sqlalchemy else u)


@db.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def migrate(revision):
    """Upgrade the schema with Alembic (idempotent)."""
    from xpmet.db import migrate as m
    from xpmet.db.engine import libpq_url
    url = libpq_url()  # the embedded cluster migrates itself to head when it starts
    m.upgrade(url, revision)
    click.echo(f"schema at revision {m.current(url)}")
