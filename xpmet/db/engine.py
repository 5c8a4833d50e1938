"""Connections to the configured database: the embedded cluster (started on demand) or XPMET_DATABASE_URL."""
from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg

from xpmet.config import settings
from xpmet.db.cluster import Cluster
from xpmet.db.connection import (  # noqa: F401  (re-exported: the names callers know)
    SESSION_OPTIONS, check_server, describe, engine_for, psycopg_connect, to_libpq, to_sqlalchemy)

if TYPE_CHECKING:
    import sqlalchemy as sa


def cluster() -> Cluster:
    """The embedded cluster of the current XPMET_HOME."""
    return Cluster(settings().home)


def libpq_url(start: bool = True) -> str:
    """The libpq connection URL of the configured database, starting the embedded one if needed."""
    s = settings()
    if s.database_url:
        return to_libpq(s.database_url)
    c = cluster()
    # Fast path: a running server with its socket in place needs no start-up checks (~45 ms).
    if start and not (c.running() and (c.run / f".s.PGSQL.{c.port()}").exists()):
        c.start()
        ensure_schema(c.url())
    return c.url()


def ensure_schema(url: str) -> None:
    """Bring the embedded database's schema to head, so every command works on a fresh cluster.

    Only for the embedded cluster, which xpmet owns; a server of your own is migrated explicitly
    with ``xpmet db migrate``.
    """
    from xpmet.db import migrate
    if migrate.current(url) != migrate.head():
        migrate.upgrade(url, "head")


def raw_connect(url: str | None = None, **kw) -> psycopg.Connection:
    """A psycopg connection (for COPY and server-side cursors) with xpmet's session settings."""
    return psycopg_connect(url or libpq_url(), **kw)


def connect(url: str | None = None) -> sa.Engine:
    """SQLAlchemy engine for the configured database (embedded by default), as the CLI uses it.

    >>> import xpmet, sqlalchemy as sa
    >>> with xpmet.connect().connect() as c: c.execute(sa.text("select count(*) from xpmet.gaia_source")).scalar()
    """
    return engine_for(to_libpq(url) if url else libpq_url())
