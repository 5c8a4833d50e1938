"""The read-only role ``xpmet_reader`` (migrations 0003 and 0004) and the URLs that log in as it."""
from __future__ import annotations

import os
from urllib.parse import quote, urlsplit, urlunsplit

from xpmet.errors import XpmetError

READER = "xpmet_reader"

MISSING = (f"The role {READER} does not exist. Run `xpmet db migrate` (as a user allowed to create roles), "
           "or ask an administrator to run db/sql/readonly_role.sql and db/sql/reader_boundary.sql.")


def as_reader(url: str) -> str:
    """The same server and database as ``url``, logged in as xpmet_reader.

    Unix-socket URLs of the embedded cluster need no password. A URL with a password (TCP) gets the
    reader's: XPMET_READER_PASSWORD when set, else the embedded cluster's password file.
    """
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    password = os.environ.get("XPMET_READER_PASSWORD")
    if password is None and parts.password is not None:
        from xpmet.config import settings
        from xpmet.db.cluster import read_passwords
        password = read_passwords(settings().home).get(READER)
    auth = quote(READER) + (":" + quote(password, safe="") if password else "")
    return urlunsplit((parts.scheme, f"{auth}@{host}", parts.path, parts.query, parts.fragment))


def check_role(conn) -> None:
    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (READER,)).fetchone():
        raise XpmetError(MISSING)


def readonly_url(start: bool = True) -> str:
    """libpq URL for the role that may SELECT the published tables and views and modify nothing.

    Embedded cluster: local connections need no password. Own server (XPMET_DATABASE_URL): the
    configured URL with the user replaced; the password comes from XPMET_READER_PASSWORD (an
    administrator sets it with ALTER ROLE xpmet_reader PASSWORD '...').
    """
    from xpmet.db.engine import libpq_url, raw_connect
    url = libpq_url(start=start)
    with raw_connect(url, autocommit=True) as conn:
        check_role(conn)
    return as_reader(url)


def reader_connect(url: str, **kw):
    """A psycopg connection whose session user is xpmet_reader, for SQL written by users.

    Logging in as the role (rather than SET ROLE from the owner) matters: SET ROLE can be undone by
    set_config('role', ...) inside the user's own expression, a login cannot.
    """
    import psycopg

    from xpmet.db.connection import SESSION_OPTIONS, describe
    from xpmet.db.engine import raw_connect
    with raw_connect(url, autocommit=True) as conn:
        check_role(conn)
    reader = as_reader(url)
    try:
        return psycopg.connect(reader, options=SESSION_OPTIONS, **kw)
    except psycopg.OperationalError as e:
        why = (str(e).strip().splitlines() or ["refused"])[-1].strip()
        raise XpmetError(f"Cannot log in as {READER} at {describe(reader)} ({why}). With a server of your own "
                         "or over TCP, export XPMET_READER_PASSWORD (an administrator sets it with "
                         f"ALTER ROLE {READER} PASSWORD '...').") from None
