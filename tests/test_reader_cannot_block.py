"""A read-only session cannot hold the label refresh (REFRESH MATERIALIZED VIEW) hostage."""
from __future__ import annotations

import time

import psycopg
import pytest

from xpmet import labels as xlabels
from xpmet.db.readonly import readonly_url


def test_refresh_ends_a_reader_transaction_holding_the_label_views(clean_db):
    xlabels.refresh()                                   # the views exist and are populated
    reader = psycopg.connect(readonly_url())            # not autocommit: the transaction stays open
    reader.execute("SET default_transaction_read_only = off")
    reader.execute("SELECT count(*) FROM xpmet.labels").fetchone()   # ACCESS SHARE held from here on
    t0 = time.perf_counter()
    xlabels.refresh()
    assert time.perf_counter() - t0 < 30                # not the lock timeout, let alone forever
    with pytest.raises(psycopg.OperationalError):       # the hostage-taker was sent away
        reader.execute("SELECT 1").fetchone()
    reader.close()
    with psycopg.connect(readonly_url(), autocommit=True) as again:   # readers are welcome back
        assert again.execute("SELECT count(*) FROM xpmet.labels").fetchone()[0] == 0
