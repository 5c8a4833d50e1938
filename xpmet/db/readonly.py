"""The read-only role ``xpmet_reader`` (created by migration 0003) and the URL that logs in as it."""
from __future__ import annotations

import os
from urllib.parse import quote, urlsplit, urlunsplit

from xpmet.errors import XpmetError

READER = "xpmet_reader"


def readonly_url(start: bool = True) -> str:
    """libpq URL for the role that may SELECT from schema xpmet and modify nothing.

    Embedded cluster: local connections need no password. Own server (XPMET_DATABASE_URL): the
    configured URL with the user replaced; the password comes from XPMET_READER_PASSWORD (an
    administrator sets it with ALTER ROLE xpmet_reader PASSWORD '...').
    """
    from xpmet.config import settings
    from xpmet.db.engine import libpq_url, raw_connect
    url = libpq_url(start=start)
    with raw_connect(url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (READER,)).fetchone():
            raise XpmetError(f"The role {READER} does not exist. Run `xpmet db migrate` (as a user allowed to "
                             "create roles), or ask an administrator to run db/sql/readonly_role.sql.")
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    password = None if settings().embedded else os.environ.get("XPMET_READER_PASSWORD")
    auth = quote(READER) + (":" + quote(password, safe="") if password else "")
    return urlunsplit((parts.scheme, f"{auth}@{host}", parts.path, parts.query, parts.fragment))
