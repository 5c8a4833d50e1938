"""Concurrent writers on the real database, made deterministic: the test holds a table lock that
stops one process at a known point (it has taken its snapshot or its file lock), starts the other,
waits until the server shows the second one waiting or done, then lets the first go on."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import sqlalchemy as sa

from predict_helpers import ColourPredictor
from test_etl_xp import _first_value, make_bulk
from xm_helpers import APOGEE, GALAH, GBS, gaia_from_real_samples, insert_gaia
from xpmet.xmatch import run_xmatch
from xpmet.db.engine import raw_connect
from xpmet.etl.survey import load_survey_file
from xpmet.etl.xp_loader import load_xp
from xpmet.predict import predict

XPMET = [sys.executable, "-m", "xpmet"]


def q(engine, sql, **kw):
    with engine.connect() as c:
        return c.execute(sa.text(sql), kw).scalar()


def start(*args):
    return subprocess.Popen([*XPMET, *map(str, args)], env=dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_until(engine, sql, timeout=120, **kw):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if q(engine, sql, **kw):
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {sql}")


class Held:
    """A table lock held by the test on its own connection until release()."""

    def __init__(self, table, mode):
        self.conn = raw_connect()
        self.conn.execute(f"LOCK TABLE {table} IN {mode} MODE")

    def release(self):
        self.conn.rollback()
        self.conn.close()


def waiting_on(table):
    return f"SELECT count(*) FROM pg_locks WHERE relation = '{table}'::regclass AND NOT granted"


#: a process waiting for an advisory lock: a file load lock, or the crossmatch lock
WAITING_ON_FILE = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"


def test_two_loaders_of_the_same_files_at_once_both_succeed(clean_db, tmp_path):
    files = [make_bulk(tmp_path / f"XpContinuousMeanSpectrum_{k:02d}.csv.gz", range(1000 * k + 1, 1000 * k + 101),
                       mutate=lambda i, ln, k=k: _first_value(ln, "oops") if k in (3, 7) and i == 4 else ln)
             for k in range(12)]
    bad = tmp_path / "bad.tsv"
    args = ("etl", "xp", tmp_path, "--no-correlations", "--no-progress", "--errors-to", bad)
    # A takes file 0's load lock and stops at its COPY; B, given the same files, must wait for A
    held = Held("xpmet.xp_continuous", "SHARE")
    try:
        a = start(*args, "--workers", 2)
        wait_until(clean_db, waiting_on("xpmet.xp_continuous"))
        b = start(*args)
        wait_until(clean_db, WAITING_ON_FILE)
    finally:
        held.release()
    out_a, out_b = a.communicate(timeout=300)[0], b.communicate(timeout=300)[0]
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    assert "already loaded from" not in out_a + out_b and "FAILED" not in out_a + out_b
    assert "loaded by another process while this one waited" in out_b, out_b
    assert q(clean_db, "SELECT count(*) FROM xpmet.xp_continuous") == 1200 - 2
    assert q(clean_db, "SELECT count(DISTINCT source_id) FROM xpmet.xp_continuous") == 1200 - 2
    assert q(clean_db, "SELECT count(*) FROM xpmet.etl_load WHERE status = 'done'") == 12
    assert q(clean_db, "SELECT count(*) FROM xpmet.etl_load WHERE status <> 'done'") == 0
    lines = bad.read_text().splitlines()
    assert lines.count("file\trow\tcolumn\treason") == 1 and len(lines) == 3, lines


def _xmatch_in_thread():
    box = {}

    def go():
        try:
            box["run"] = run_xmatch(labels=True)
        except BaseException as e:  # handed to the test
            box["error"] = e
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, box


def test_survey_load_and_second_xmatch_during_xmatch(clean_db, tmp_path):
    insert_gaia(tmp_path, gaia_from_real_samples())
    load_survey_file("apogee", APOGEE)
    load_survey_file("gbs", GBS)
    n_before = q(clean_db, "SELECT count(*) FROM xpmet.survey_star")
    # the run takes its snapshot, searches candidates, then stops at its INSERT into xmatch
    held = Held("xpmet.xmatch", "EXCLUSIVE")
    try:
        t, box = _xmatch_in_thread()
        wait_until(clean_db, waiting_on("xpmet.xmatch"))
        # a second xmatch is refused in one line, at once
        r = subprocess.run([*XPMET, "xmatch"], env=dict(os.environ), capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
        msg = (r.stdout + r.stderr).strip().splitlines()
        assert len(msg) == 1 and "another `xpmet xmatch` or label refresh is running" in msg[0], msg
        # a label refresh waits for the run
        labels = start("labels", "--no-show")
        wait_until(clean_db, WAITING_ON_FILE)
        # a survey committed during the run
        load_survey_file("galah", GALAH)
    finally:
        held.release()
    t.join(300)
    assert "error" not in box, box.get("error")
    out = labels.communicate(timeout=300)[0]
    assert labels.returncode == 0, out
    run = box["run"]
    galah = q(clean_db, "SELECT load_id FROM xpmet.etl_load WHERE kind = 'survey:galah'")
    # excluded explicitly: not read (not "stored as unmatched"), not among the run's loads, and the run says stale
    assert run.n_rows == n_before and galah not in run.loads
    assert q(clean_db, "SELECT count(*) FROM xpmet.xmatch x JOIN xpmet.survey_star s USING (star_id) "
                       "WHERE x.run_id = :r AND s.load_id = :g", r=run.run_id, g=galah) == 0
    reason = q(clean_db, "SELECT stale_reason FROM xpmet.xmatch_run_status WHERE run_id = :r", r=run.run_id)
    assert reason.startswith("survey:galah 1 file(s) loaded since this crossmatch")
    assert q(clean_db, "SELECT labels_xmatch_version FROM xpmet.label_status") == run.version
    rerun = run_xmatch(labels=True)
    assert rerun.n_rows == n_before + 1061 and rerun.n_matched == rerun.n_rows
    assert not q(clean_db, "SELECT stale FROM xpmet.xmatch_run_status WHERE is_current")


def test_two_first_survey_loads_at_once_get_different_ids(clean_db):
    # both loads stop where they register their survey, then go on together
    held = Held("xpmet.survey", "SHARE ROW EXCLUSIVE")
    try:
        a, b = start("etl", "survey", "apogee", APOGEE), start("etl", "survey", "galah", GALAH)
        wait_until(clean_db, waiting_on("xpmet.survey") + " HAVING count(*) >= 2")
    finally:
        held.release()
    out = a.communicate(timeout=300)[0] + b.communicate(timeout=300)[0]
    assert a.returncode == 0 and b.returncode == 0, out
    assert q(clean_db, "SELECT count(DISTINCT survey_id) FROM xpmet.survey") == 2
    assert q(clean_db, "SELECT count(*) FROM xpmet.survey_star") == 1612 + 1061


PRED_CHECKSUM = ("SELECT count(*) || ':' || md5(string_agg(concat_ws('|', source_id, teff, feh, quality_flags, "
                 "recommended), ',' ORDER BY source_id)) FROM xpmet.predictions WHERE model_id = :m")


def test_predict_while_etl_xp_replace_runs(clean_db, tmp_path):
    a = [make_bulk(tmp_path / f"a{k}.csv.gz", range(1000 * k + 1, 1000 * k + 121)) for k in range(3)]
    load_xp(a, progress=False)
    # b gives file 1's sources other spectra and wins (--replace); it stops before its first write
    b = make_bulk(tmp_path / "b.csv.gz", list(range(1002, 1121)) + [1001])
    held = Held("xpmet.xp_continuous", "SHARE")
    try:
        p = start("etl", "xp", b, "--replace", "--no-progress")
        wait_until(clean_db, waiting_on("xpmet.xp_continuous"))
        r = predict(ColourPredictor(), chunk_rows=50, progress=False)  # meanwhile: reads the rows before it
        assert r.written == 360
    finally:
        held.release()
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0, out
    mid = r.model_id
    assert q(clean_db, "SELECT n_stale FROM xpmet.prediction_status WHERE model_id = :m", m=mid) == 120
    again = predict(ColourPredictor(), chunk_rows=50, progress=False)
    assert again.written == 120
    assert q(clean_db, "SELECT n_stale FROM xpmet.prediction_status WHERE model_id = :m", m=mid) == 0

    class Clean(ColourPredictor):
        pass
    clean = predict(Clean(), chunk_rows=50, progress=False)
    assert q(clean_db, PRED_CHECKSUM, m=mid) == q(clean_db, PRED_CHECKSUM, m=clean.model_id)
