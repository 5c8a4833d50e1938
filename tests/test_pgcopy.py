"""Binary COPY encoding round-trips through a real server, NULL patterns and text included."""
import numpy as np
import sqlalchemy as sa

from xpmet.db.engine import raw_connect
from xpmet.io.pgcopy import Col, copy_rows


def test_round_trip_with_null_patterns(engine):
    rng = np.random.default_rng(1)
    n = 257
    coef = rng.normal(size=(n, 55)) * 1e5
    err = rng.random((n, 55)).astype(np.float32)
    coef[::7] = np.nan          # missing band -> NULL array
    err[::7] = np.nan
    g = rng.random(n).astype(np.float32)
    g[::5] = np.nan             # missing scalar -> NULL
    ids = np.arange(n, dtype=np.int64) * 34359738368
    names = [None if i % 11 == 0 else f"star-{i}-é" for i in range(n)]
    cols = [Col("source_id", "i8"), Col("coef", "f8[]", 55), Col("err", "f4[]", 55), Col("g", "f4"),
            Col("ok", "bool"), Col("name", "text")]
    with raw_connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE t (source_id bigint, coef float8[], err real[], g real, ok bool, name text)")
        copy_rows(cur, "t", cols, {"source_id": ids, "coef": coef, "err": err, "g": g,
                                   "ok": ids % 2 == 0, "name": names})
        rows = cur.execute("SELECT source_id, coef, err, g, ok, name FROM t ORDER BY source_id").fetchall()
    assert len(rows) == n
    for i, (sid, c, e, gg, ok, name) in enumerate(rows):
        assert sid == ids[i] and ok == (ids[i] % 2 == 0) and name == names[i]
        if i % 7 == 0:
            assert c is None and e is None
        else:
            assert np.array_equal(np.array(c), coef[i])                       # bit-exact float64
            assert np.array_equal(np.array(e, dtype=np.float32), err[i])      # bit-exact float32
        assert (gg is None) if i % 5 == 0 else np.float32(gg) == g[i]
