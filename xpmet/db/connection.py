"""Connecting to a database given its URL: URL forms, session settings, server checks, engines.

Nothing here decides *which* database: :mod:`xpmet.db.engine` does that (XPMET_DATABASE_URL or the
embedded cluster) and :mod:`xpmet.db.migrate` takes the URL it is given.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import psycopg

from xpmet.errors import XpmetError

if TYPE_CHECKING:
    import sqlalchemy as sa

#: Session settings for every connection: q3c plans do not profit from JIT.
SESSION_OPTIONS = "-c jit=off"


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


def psycopg_connect(url: str, **kw) -> psycopg.Connection:
    """A psycopg connection to ``url`` with xpmet's session settings; a refusal is a one-line error."""
    try:
        return psycopg.connect(url, options=SESSION_OPTIONS, **kw)
    except psycopg.OperationalError as e:
        detail = " ".join(str(e).split())  # libpq's message spans lines (its hint on a tab-indented one)
        raise XpmetError(f"Cannot connect to {describe(url)}: {detail}; check XPMET_DATABASE_URL "
                         "(or unset it to use the embedded database).") from None


def check_server(url: str) -> None:
    """Fail clearly when the server is too old or lacks q3c."""
    with psycopg_connect(url, autocommit=True) as conn:
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
def engine_for(url: str) -> sa.Engine:
    """One pooled SQLAlchemy engine per libpq URL (checked once)."""
    import sqlalchemy as sa  # here, not at the top: `etl` and `predict` workers need only psycopg (~0.5 s of imports)
    check_server(url)
    return sa.create_engine(to_sqlalchemy(url), connect_args={"options": SESSION_OPTIONS},
                            pool_pre_ping=True)
