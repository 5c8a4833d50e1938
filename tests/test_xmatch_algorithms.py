"""Crossmatch algorithms are small classes chosen by name; both share the evidence and ranking rules."""
from __future__ import annotations

import re

import pytest

from xpmet.errors import XpmetError
from xpmet.xmatch import ALGORITHMS, XmatchParams, algorithm


def test_algorithms_by_name():
    assert set(ALGORITHMS) == {"propagate", "gaia"}
    for name in ALGORITHMS:
        a = algorithm(name)
        assert a.name == name and a.description
        for part in ("all", "main", "worker"):
            sql = a.candidates_sql(part)
            assert "q3c_join" in sql and "%(radius)s" in sql
            assert "row_number() OVER" in a.rows_sql(part) and "%(run_id)s" in a.rows_sql(part)
        assert "UPDATE xpmet.xmatch_r7 " in a.claims_sql("xpmet.xmatch_r7")
    with pytest.raises(XpmetError, match="choose one of propagate, gaia"):
        algorithm("nearest")
    with pytest.raises(XpmetError, match="must be one of"):
        XmatchParams(epoch="nearest").validate()


def test_only_propagation_searches_from_the_gaia_side():
    """Fast movers probe survey_star from Gaia only when positions are propagated."""
    assert "g.pmra * g.pmra + g.pmdec * g.pmdec > %(pm_cap)s" in algorithm("propagate").candidates_sql("worker")
    assert "%(pm_cap)s" not in algorithm("gaia").candidates_sql("worker")
    gaia_side = re.compile(r"FROM xpmet\.gaia_source g\s+CROSS JOIN LATERAL")
    for part in ("all", "main", "worker"):   # each part ranks its own rows: it needs all their pairs
        assert gaia_side.search(algorithm("propagate").candidates_sql(part))
        assert not gaia_side.search(algorithm("gaia").candidates_sql(part))
