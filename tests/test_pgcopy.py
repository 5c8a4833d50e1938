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


def test_row_reader_any_block_cut_and_a_cut_stream(engine):
    """The decoder gives the same rows whatever the block boundaries (header split included), and a
    stream without its trailer is refused rather than passed as complete."""
    import pytest

    from xpmet.errors import XpmetError
    from xpmet.io.copyout import RowReader
    rng = np.random.default_rng(2)
    n = 300
    cols = [Col("source_id", "i8"), Col("coef", "f8[]", 55), Col("g", "f4")]
    data = {"source_id": np.arange(n, dtype=np.int64), "coef": rng.normal(size=(n, 55)),
            "g": rng.random(n).astype(np.float32)}
    with raw_connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE t (source_id bigint, coef float8[], g real)")
        copy_rows(cur, "t", cols, data)
        with cur.copy("COPY (SELECT * FROM t ORDER BY source_id) TO STDOUT (FORMAT binary)") as cp:
            stream = b"".join(bytes(b) for b in cp)
    for cut in (1, 7, 19, 1000, len(stream)):
        reader = RowReader(cols, max_rows=64)
        out = [b for i in range(0, len(stream), cut) for b in reader.feed(stream[i:i + cut])] + reader.finish()
        assert [len(b["source_id"]) for b in out[:-1]] == [64] * (len(out) - 1)
        for k, v in data.items():
            np.testing.assert_array_equal(np.concatenate([b[k] for b in out]), v)
    reader = RowReader(cols, max_rows=64)
    reader.feed(stream[:-2])  # everything but the trailer
    with pytest.raises(XpmetError, match="ended early"):
        reader.finish()
