"""``xpmet db``: the embedded cluster and migrations."""
from __future__ import annotations

import time

import click

from xpmet.config import settings
from xpmet.errors import XpmetError


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
@click.option("--listen", metavar="HOST:PORT", default=None,
              help="Also listen on TCP (e.g. 0.0.0.0:5433) for remote workers, with SCRAM passwords kept in "
                   "XPMET_HOME/db-passwords.json (0600); `xpmet db url --tcp` prints the URL. Default: Unix socket only.")
def start(listen):
    """Start the embedded cluster (initdb, CREATE EXTENSION q3c and migrations on first use). Idempotent."""
    from xpmet.db.cluster import parse_listen
    from xpmet.db.engine import check_server, cluster, describe, ensure_schema, libpq_url
    if _external_note():
        if listen:
            raise XpmetError("--listen is for the embedded cluster; XPMET_DATABASE_URL names a server of your own.")
        check_server(libpq_url())
        click.echo("server reachable, q3c present")
        return
    where = parse_listen(listen) if listen else None
    t0 = time.perf_counter()
    c = cluster()
    launched = c.start(listen=where)
    ensure_schema(c.url())
    if where:
        c.set_passwords()  # again after the migrations, which create xpmet_reader
    what = f"started in {time.perf_counter() - t0:.1f} s" if launched else "already running"
    click.echo(f"embedded PostgreSQL {what} (data: {c.data}, socket: {c.run})")
    click.echo(c.url())
    if c.listening():
        click.echo(f"TCP: {describe(c.tcp_url())} (password in {c.home / 'db-passwords.json'}; "
                   "`xpmet db url --tcp` prints the full URL)")


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
              help="URL of the role xpmet_reader, which can SELECT the published tables and views and modify nothing.")
@click.option("--tcp", is_flag=True,
              help="The TCP URL, with its password, that remote workers use (after `xpmet db start --listen`).")
def url(sqlalchemy, read_only, tcp):
    """Print the connection URL, e.g.  psql "$(xpmet db url)"  (starts the embedded cluster)."""
    from xpmet.db.engine import cluster, libpq_url, to_sqlalchemy
    from xpmet.db.readonly import READER, readonly_url
    if tcp:
        if not settings().embedded:
            raise XpmetError("--tcp is for the embedded cluster; XPMET_DATABASE_URL already names your server.")
        libpq_url()  # starts the cluster (Unix socket only) when it is not running
        u = cluster().tcp_url(READER if read_only else "xpmet")
    elif read_only:
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
