"""xpmet predict on the real database: values written, resumption after SIGKILL, idempotent reruns,
--where, parallel workers, refusals. The model is a deterministic double (tests/predict_helpers.py);
the database, the COPY streams and the processes are real."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from predict_helpers import ColourPredictor, expected, insert_sky
from xpmet.db.engine import raw_connect
from xpmet.errors import XpmetError
from xpmet.predict import LOCK_CLASS, chunk_ranges, predict


def stored(model_id=None):
    with raw_connect() as c:
        rows = c.execute("SELECT source_id, feh, teff, recommended, quality_flags, model_id "
                         "FROM xpmet.predictions ORDER BY source_id").fetchall()
    cols = list(zip(*rows)) if rows else [[]] * 6
    return {"source_id": np.array(cols[0], np.int64), "feh": np.array(cols[1], float),
            "teff": np.array(cols[2], float), "recommended": np.array(cols[3], bool),
            "quality_flags": np.array(cols[4], int), "model_id": np.array(cols[5], int)}


def check_values(sky, got):
    """Every stored prediction equals the double's function of that star's stored spectrum."""
    idx = np.searchsorted(sky["source_id"], got["source_id"])
    assert (sky["source_id"][idx] == got["source_id"]).all()
    e = expected(sky["bp"][idx], sky["rp"][idx], sky["g"][idx], got["source_id"])
    np.testing.assert_allclose(got["feh"], e["feh"].astype(np.float32), rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(got["teff"], e["teff"])
    assert (got["recommended"] == e["recommended"]).all()
    assert (got["quality_flags"] == e["quality_flags"]).all()


def test_predict_writes_every_star_once_and_rerun_writes_nothing(clean_db):
    sky = insert_sky(3000, seed=1)
    r = predict(ColourPredictor(), chunk_rows=400, batch=150, progress=False)
    assert r.written == 3000 and r.chunks >= 7
    got = stored()
    assert len(got["source_id"]) == 3000 and len(np.unique(got["source_id"])) == 3000
    check_values(sky, got)
    assert np.isnan(got["feh"]).sum() == 300  # missing BP -> NaN feh -> NULL
    again = ColourPredictor()
    r2 = predict(again, chunk_rows=400, batch=150, progress=False)
    assert r2.written == 0 and r2.already == 3000 and again.calls == 0
    assert r2.model_id == r.model_id  # the same model row is found again


def test_chunks_are_source_id_ranges_cut_at_healpix_edges(clean_db):
    sky = insert_sky(2000, seed=2)
    with raw_connect() as c:
        ranges = list(chunk_ranges(c, 300))
    assert ranges[0][0] == sky["source_id"][0]
    for (lo, hi), (lo2, _) in zip(ranges, ranges[1:]):
        assert hi == lo2 and hi % 2 ** 35 == 0  # level-12 pixel boundary
        n = ((sky["source_id"] >= lo) & (sky["source_id"] < hi)).sum()
        assert 0 < n <= 300
    assert ranges[-1][1] > sky["source_id"][-1]


def test_where_then_the_rest(clean_db):
    sky = insert_sky(1500, seed=3)
    r = predict(ColourPredictor(), where="g.phot_g_mean_mag < 14 AND x.bp_coefficients IS NOT NULL",
                chunk_rows=500, progress=False)
    want = (sky["g"] < 14) & ~np.isnan(sky["bp"]).all(1)
    assert r.written == want.sum()
    assert set(stored()["source_id"]) == set(sky["source_id"][want])
    r2 = predict(ColourPredictor(), chunk_rows=500, progress=False)
    assert r2.written == 1500 - want.sum() and r2.already == want.sum()
    check_values(sky, stored())


def test_resumes_after_sigkill(clean_db, tmp_path):
    sky = insert_sky(2400, seed=4)
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from predict_helpers import ColourPredictor
        from xpmet.predict import predict
        predict(ColourPredictor(delay=0.05), chunk_rows=200, batch=50, progress=False)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        n = 0
        while time.monotonic() < deadline and n < 400:
            time.sleep(0.1)
            assert proc.poll() is None, proc.stderr.read().decode()
            n = len(stored()["source_id"])
        # Sky queries keep working while predict writes (they see the committed chunks).
        from xpmet import query
        t = query.cone(0, 0, 180)
        assert 400 <= len(t) <= len(stored()["source_id"])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = len(stored()["source_id"])
    assert 400 <= killed_at < 2400, "the kill should land mid-run"
    # The server notices the dead client, rolls its open chunk back and frees its advisory lock.
    deadline = time.monotonic() + 30
    with raw_connect(autocommit=True) as c:
        while c.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid",
                        (LOCK_CLASS,)).fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.1)
    r = predict(ColourPredictor(), chunk_rows=200, batch=50, progress=False)
    assert r.already == killed_at and r.written == 2400 - killed_at
    got = stored()
    assert len(got["source_id"]) == 2400 == len(np.unique(got["source_id"]))
    assert len(set(got["model_id"])) == 1
    check_values(sky, got)


def test_two_workers(clean_db):
    sky = insert_sky(1200, seed=5)
    r = predict(ColourPredictor(), chunk_rows=150, batch=100, workers=2, progress=False)
    assert r.written == 1200 and r.chunks >= 8
    check_values(sky, stored())


def test_refusals(clean_db, tmp_path):
    insert_sky(50, seed=6)
    with pytest.raises(XpmetError, match="--where"):
        predict(ColourPredictor(), where="no_such_column > 1", progress=False)
    with pytest.raises(XpmetError, match="one SQL condition"):
        predict(ColourPredictor(), where="true; DELETE FROM xpmet.gaia_source", progress=False)
    with pytest.raises(XpmetError, match="does not exist"):
        predict(tmp_path / "nope", progress=False)

    class Broken(ColourPredictor):
        def predict(self, b):
            out = super().predict(b)
            del out["feh_err"]
            return out
    with pytest.raises(XpmetError, match="feh_err"):
        predict(Broken(), progress=False)
    assert len(stored()["source_id"]) == 0  # nothing half-written

    # A second run for the same model while one holds the lock is refused.
    predict(ColourPredictor(), where="false", progress=False)
    mid = stored()["model_id"]
    with raw_connect(autocommit=True) as c:
        model_id = c.execute("SELECT model_id FROM xpmet.models").fetchone()[0]
        assert c.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, model_id)).fetchone()[0]
        with pytest.raises(XpmetError, match="another `xpmet predict`"):
            predict(ColourPredictor(), progress=False)
    assert len(mid) == 0


def test_cli_predict_reports_missing_model(run_cli, tmp_path):
    r = run_cli("predict", "--model", tmp_path / "missing", ok=False)
    assert r.exit_code == 1 and "does not exist" in r.output


def test_model_foreign_key_holds_while_a_chunk_writes(clean_db):
    """The models key is checked once per chunk (a FOR KEY SHARE lock, the per-row check's own lock)
    instead of per row: while a chunk is open the model cannot be deleted, and the fast path is off
    as soon as the table has any other trigger."""
    import threading

    import psycopg

    from xpmet.predict.pipeline import _fk_check_per_chunk
    sky = insert_sky(600, seed=8)
    entered, release = threading.Event(), threading.Event()

    class Held(ColourPredictor):
        def predict(self, b):
            entered.set()
            assert release.wait(30)
            return super().predict(b)

    out = {}
    t = threading.Thread(target=lambda: out.update(r=predict(Held(), chunk_rows=300, progress=False)))
    t.start()
    try:
        assert entered.wait(30)
        with raw_connect(autocommit=True) as c:  # the writer thread takes the lock as its chunk begins
            deadline = time.monotonic() + 30
            while not c.execute("SELECT count(*) FROM pg_locks WHERE relation = 'xpmet.models'::regclass "
                                "AND mode = 'RowShareLock'").fetchone()[0] and time.monotonic() < deadline:
                time.sleep(0.05)
        with raw_connect() as c:
            model_id = c.execute("SELECT max(model_id) FROM xpmet.models").fetchone()[0]
            c.execute("SET lock_timeout = '300ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                c.execute("DELETE FROM xpmet.models WHERE model_id = %s", (model_id,))
    finally:
        release.set()
        t.join(60)
    assert out["r"].written == 600
    check_values(sky, stored())
    with raw_connect() as c:
        assert _fk_check_per_chunk(c)  # the embedded cluster: superuser, the key's triggers only
        c.execute("CREATE FUNCTION pg_temp.noop() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'")
        c.execute("CREATE TRIGGER t_noop BEFORE INSERT ON xpmet.predictions FOR EACH ROW EXECUTE FUNCTION pg_temp.noop()")
        assert not _fk_check_per_chunk(c)  # another trigger: it must fire, so rows are checked one by one
        c.rollback()
        c.execute("DELETE FROM xpmet.models WHERE model_id = %s", (model_id,))  # cascades as before
        assert c.execute("SELECT count(*) FROM xpmet.predictions").fetchone()[0] == 0
        c.rollback()
