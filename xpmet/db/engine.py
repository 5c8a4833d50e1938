"""Connections to the configured database: the embedded cluster (started on demand) or XPMET_DATABASE_URL."""
from __future__ import annotations

import functools
from urllib.parse import urlsplit

import psycopg
import sqlalchemy as sa

from xpmet.config import settings
from xpmet.db.cluster import PORT, Cluster
from xpmet.errors import XpmetError

#: Session settings for every connection: q3c plans do not profit from JIT.
SESSION_OPTIONS = "-c jit=off"


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
    if start and not (c.running() and (c.run / f".s.PGSQL.{PORT}").exists()):
        c.start()
        ensure_schema()
    return c.url()


def ensure_schema() -> None:
    """Bring the embedded database's schema to head, so every command works on a fresh cluster.

    Only for the embedded cluster, which xpmet owns; a server of your own is migrated explicitly
    with ``xpmet db migrate``.
    """
    from xpmet.db import migrate
    if migrate.current() != migrate.head():
        migrate.upgrade("head")


def to_libpq(url: str) -> str:
    """postgresql+psycopg://... -> postgresql://... (what psql and psycopg accept)."""
    scheme, rest = url.split("://", 1)
    if not scheme.startswith("postgres"):
        raise XpmetError(f"XPMET_DATABASE_URL must be a postgresql:// URL, not {scheme}://")
    return "postgresql://" + rest


def to_sqlalchemy(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def describe(url: str) -> str:
    """The URL without its password, for messages."""
    p = urlsplit(url)
    netloc = p.netloc.rsplit("@", 1)[-1]
    user = p.username or ""
    return f"{p.scheme}://{user + '@' if user else ''}{netloc}{p.path}{'?' + p.query if p.query else ''}"


def raw_connect(url: str | None = None, **kw) -> psycopg.Connection:
    """A psycopg connection (for COPY and server-side cursors) with xpmet's session settings."""
    url = url or libpq_url()
    try:
        return psycopg.connect(url, options=SESSION_OPTIONS, **kw)
    except psycopg.OperationalError as e:
        raise XpmetError(f"Cannot connect to {describe(url)}: {str(e).strip()}\n"
                         "Check XPMET_DATABASE_URL (or unset it to use the embedded database).") from None


def check_server(url: str) -> None:
    """Fail clearly when the server is too old or lacks q3c."""
    with raw_connect(url, autocommit=True) as conn:
        version = conn.info.server_version
        if version < 140000:
            raise XpmetError(f"{describe(url)} runs PostgreSQL {version // 10000}; xpmet needs 14 or newer.")
        if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'q3c'").fetchone():
            return
        try:
            conn.execute("CREATE EXTENSION q3c")
        except psycopg.Error as e:
            raise XpmetError(f"The server at {describe(url)} has no q3c extension ({str(e).strip()}). "
                             f"Install it on the server (Debian: postgresql-{version // 10000}-q3c) "
                             "and run CREATE EXTENSION q3c as a superuser.") from None


@functools.lru_cache(maxsize=8)
def _engine(url: str) -> sa.Engine:
    check_server(url)
    return sa.create_engine(to_sqlalchemy(url), connect_args={"options": SESSION_OPTIONS},
                            pool_pre_ping=True)


def connect(url: str | None = None) -> sa.Engine:
    """SQLAlchemy engine for the configured database (embedded by default), as the CLI uses it.

    >>> import xpmet, sqlalchemy as sa
    >>> with xpmet.connect().connect() as c: c.execute(sa.text("select count(*) from xpmet.gaia_source")).scalar()
    """
    return _engine(to_libpq(url) if url else libpq_url())
