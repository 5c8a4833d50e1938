"""One transaction per file: skip on a second run, replace on request, nothing left by a failure."""
import pytest
import sqlalchemy as sa

from xpmet.etl.provenance import Skipped, file_load


def _count(engine, sql):
    with engine.connect() as c:
        return c.execute(sa.text(sql)).scalar()


def _insert_source(load, sid):
    load.conn.execute("INSERT INTO xpmet.gaia_source (source_id, ra, dec, load_id) VALUES (%s, 1, 2, %s)",
                      (sid, load.load_id))
    load.n_rows += 1


def test_skip_replace_and_failure(clean_db, tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("x\n1\n")
    tables = ("xpmet.gaia_source",)
    with file_load(f, "gaia_source", tables) as load:
        _insert_source(load, 1)
    with file_load(f, "gaia_source", tables) as load:
        assert isinstance(load, Skipped) and load.n_rows == 1
    with file_load(f, "gaia_source", tables, replace=True) as load:
        _insert_source(load, 1)
        assert load.replaced
    assert _count(clean_db, "SELECT count(*) FROM xpmet.gaia_source") == 1
    assert _count(clean_db, "SELECT count(*) FROM xpmet.etl_load WHERE status='replaced'") == 1
    g = tmp_path / "b.csv"
    g.write_text("x\n2\n")
    with pytest.raises(RuntimeError):
        with file_load(g, "gaia_source", tables) as load:
            _insert_source(load, 2)
            raise RuntimeError("bad row 7")
    assert _count(clean_db, "SELECT count(*) FROM xpmet.gaia_source WHERE source_id = 2") == 0
    assert _count(clean_db, "SELECT error FROM xpmet.etl_load WHERE status='failed'") == "bad row 7"
