"""Bad input that used to reach the tables or abort a run, against the real database and CLI.

Every case ends as a one-line message naming file (row, column where known) and never as a
traceback: a failing file fails alone, the others load, the exit status is 1.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from astropy.table import Table

from test_etl_gaia_source import HEADER, ROWS, bulk_file
from test_etl_xp import make_bulk
from xm_helpers import write_table
from xpmet.errors import BadInput
from xpmet.etl import runner
from xpmet.etl.gaia import load_gaia_source
from xpmet.etl.survey import load_survey_file
from xpmet.flags import SURVEY_QUALITY_BITS

XP = Path(__file__).parent / "data" / "xp"
BIG_ID = 4295806720123456789          # > 2**53: float64 cannot hold it (nearest: ...456768)


def scalar(engine, sql, **kw):
    with engine.connect() as c:
        return c.execute(sa.text(sql), kw).scalar()


def no_traceback(r):
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output


# ------------------------------------------------------------------ every per-file exception is a failed file

def _truncated_gzips(d: Path):
    """A gzip cut inside the ECSV header (gzip raises EOFError there) and one cut after 5 bytes."""
    raw = gzip.compress((HEADER + "1,\"x\",21,1.0,1.0,1,1,1,True,1\n" * 10).encode())
    (d / "header_cut.csv.gz").write_bytes(raw[:100])
    (d / "five_bytes.csv.gz").write_bytes(raw[:5])


def test_gzip_truncated_inside_header_fails_alone(clean_db, tmp_path, run_cli):
    bulk_file(tmp_path / "good.csv.gz", ROWS)
    _truncated_gzips(tmp_path)
    r = run_cli("etl", "gaia-source", tmp_path, "--no-progress", ok=False)
    no_traceback(r)
    assert r.exit_code == 1 and "1 file(s) loaded" in r.output and "2 failed" in r.output, r.output
    assert f"{tmp_path / 'header_cut.csv.gz'}: truncated or corrupt gzip" in r.output
    assert str(tmp_path / "five_bytes.csv.gz") in r.output
    assert scalar(clean_db, "SELECT count(*) FROM xpmet.gaia_source") == len(ROWS)
    failed = [ln for ln in r.output.splitlines() if ln.strip().startswith("FAILED")]
    assert len(failed) == 2 and all(ln.count("\n") == 0 for ln in failed)


def test_xp_truncated_header_with_two_workers(clean_db, tmp_path, run_cli):
    make_bulk(tmp_path / "a.csv.gz", range(1, 11))
    make_bulk(tmp_path / "b.csv.gz", range(11, 21))
    raw = (tmp_path / "a.csv.gz").read_bytes()
    (tmp_path / "cut.csv.gz").write_bytes(raw[:200])
    r = run_cli("etl", "xp", tmp_path, "--workers", 2, "--no-progress", ok=False)
    no_traceback(r)
    assert r.exit_code == 1 and "2 file(s) loaded" in r.output and "1 failed" in r.output, r.output
    assert f"{tmp_path / 'cut.csv.gz'}: truncated or corrupt gzip" in r.output
    assert scalar(clean_db, "SELECT count(*) FROM xpmet.xp_continuous") == 20


# load_one functions of the runner tests: module level, so spawned workers can import them

def _load_or_raise(path, report):
    name = Path(path).name
    if name.startswith("eof"):
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")
    if name.startswith("key"):
        raise KeyError("bp_coefficients")
    if name.startswith("die"):
        os._exit(3)  # the worker process dies: the pool is broken
    return runner.FileResult(str(path), "loaded", rows=1)


def _interrupt(path, report):
    raise KeyboardInterrupt


def test_runner_turns_any_exception_into_a_failed_file(tmp_path):
    for n in ("a.csv", "eof.csv.gz", "key.csv", "z.csv"):
        (tmp_path / n).write_text("x\n")
    s = runner.run("test", tmp_path, _load_or_raise, {}, progress=False)
    assert [f.status for f in s.files] == ["loaded", "failed", "failed", "loaded"]
    assert s.failed[0].error == f"{tmp_path / 'eof.csv.gz'}: EOFError: Compressed file ended before the " \
                                "end-of-stream marker was reached"
    assert s.failed[1].error == f"{tmp_path / 'key.csv'}: KeyError: 'bp_coefficients'"
    with pytest.raises(KeyboardInterrupt):
        runner.run("test", tmp_path, _interrupt, {}, progress=False)


def test_runner_pool_worker_death_fails_files_not_the_run(tmp_path):
    for n in ("die.csv", "ok.csv"):
        (tmp_path / n).write_text("x\n")
    s = runner.run("test", tmp_path, _load_or_raise, {}, workers=2, progress=False)
    assert len(s.files) == 2
    died = [f for f in s.files if f.path.endswith("die.csv")][0]
    assert died.status == "failed" and "BrokenProcessPool" in died.error and str(tmp_path / "die.csv") in died.error


def test_survey_files_fail_alone_database_error_one_line(clean_db, tmp_path, run_cli):
    good = write_table(tmp_path / "gbs_good.fits", {"ra_j2000": [1.0, 2.0], "dec_j2000": [3.0, 4.0],
                                                    "teff": [5000.0, 5100.0], "fe_h": [-0.1, 0.1]})
    hot = write_table(tmp_path / "gbs_hot.fits", {"ra_j2000": [5.0], "dec_j2000": [6.0], "teff": [9500.0],
                                                  "fe_h": [0.0]})
    # a non-ASCII byte in a FITS text column: astropy raises UnicodeDecodeError while normalising
    Table({"hip": np.array([b"HIP\xff2"]), "ra_j2000": [7.0], "dec_j2000": [8.0], "teff": [5000.0],
           "fe_h": [0.0]}).write(tmp_path / "gbs_bytes.fits")
    (tmp_path / "gbs_cut.csv.gz").write_bytes(gzip.compress(b"ra_j2000,dec_j2000,teff\n1,2,3\n")[:5])
    with clean_db.begin() as c:  # a real server-side rejection during COPY
        c.execute(sa.text("ALTER TABLE xpmet.survey_star ADD CONSTRAINT test_teff_below_9000 CHECK (teff < 9000)"))
    try:
        r = run_cli("etl", "survey", "gbs", good, hot, tmp_path / "gbs_bytes.fits", tmp_path / "gbs_cut.csv.gz",
                    ok=False)
    finally:
        with clean_db.begin() as c:
            c.execute(sa.text("ALTER TABLE xpmet.survey_star DROP CONSTRAINT test_teff_below_9000"))
    no_traceback(r)
    assert r.exit_code == 1 and "2 rows of gbs" in r.output, r.output
    lines = r.output.splitlines()
    assert any(ln.startswith(f"FAILED {hot}: CheckViolation:") and "test_teff_below_9000" in ln for ln in lines)
    assert any(ln.startswith(f"FAILED {tmp_path / 'gbs_bytes.fits'}: UnicodeDecodeError") for ln in lines)
    assert any(ln.startswith(f"FAILED {tmp_path / 'gbs_cut.csv.gz'}") for ln in lines)
    assert lines[-1].startswith("error: 3 of 4 file(s) failed")
    assert scalar(clean_db, "SELECT count(*) FROM xpmet.survey_star") == 2


# ------------------------------------------------------------------ infinite survey positions

def test_infinite_survey_position_is_null_and_flagged(clean_db, tmp_path, run_cli):
    p = tmp_path / "lamost_dr8_lrs.csv"
    p.write_text("obsid,designation,obsdate,ra,dec,teff,teff_err,logg,logg_err,feh,feh_err,snrg,rv\n"
                 "1,J1,2015-06-01,10.0,1.0,5000,50,4.5,0.1,-0.5,0.05,50,0\n"
                 "2,J2,2015-06-01,inf,1.0,5000,50,4.5,0.1,-0.5,0.05,50,0\n"
                 "3,J3,2015-06-01,10.2,-inf,5000,50,4.5,0.1,-0.5,0.05,50,0\n"
                 "4,J4,2015-06-01,-Infinity,1.0,5000,50,4.5,0.1,-0.5,0.05,50,0\n")
    r = run_cli("etl", "survey", "lamost", p)
    assert "4 rows of lamost" in r.output
    assert f"WARNING {p}, row 1, column ra: 2 infinite ra value(s) stored as NULL" in r.output
    assert f"WARNING {p}, row 2, column dec: 1 infinite dec value(s) stored as NULL" in r.output
    with clean_db.connect() as c:
        got = {row.file_row: row for row in c.execute(sa.text(
            "SELECT file_row, ra, dec, quality_flags FROM xpmet.survey_star ORDER BY file_row"))}
    assert got[0].ra == 10.0
    for i in (1, 2, 3):
        assert (got[i].ra is None or got[i].dec is None) and got[i].quality_flags & (1 << SURVEY_QUALITY_BITS["no_position"])
    assert scalar(clean_db, "SELECT count(*) FROM xpmet.survey_star WHERE ra IN ('Infinity', '-Infinity') "
                            "OR dec IN ('Infinity', '-Infinity')") == 0
    # the q3c index answers a cone search over the loaded rows
    assert scalar(clean_db, "SELECT count(*) FROM xpmet.survey_star WHERE q3c_radial_query(ra, dec, 10, 1, 1)") == 1


# ------------------------------------------------------------------ Gaia ids as float64

def test_float_source_id_beyond_2_53_rejected_gaia_source_and_xp(clean_db, tmp_path):
    exact = tmp_path / "exact.fits"
    Table({"source_id": np.array([4295806720.0, 34361129088.0]), "ra": [1.0, 2.0], "dec": [0.0, 0.0]}).write(exact)
    assert load_gaia_source([exact], progress=False).rows == 2          # small float ids are exact: loaded
    assert scalar(clean_db, "SELECT max(source_id) FROM xpmet.gaia_source") == 34361129088
    lossy = tmp_path / "lossy.fits"
    Table({"source_id": np.array([5.0, float(BIG_ID)]), "ra": [1.0, 2.0], "dec": [0.0, 0.0]}).write(lossy)
    vot = tmp_path / "lossy.xml"
    Table.read(lossy).write(vot, format="votable")
    s = load_gaia_source([lossy, vot], progress=False, check=False)
    assert len(s.failed) == 2
    for f, e in zip((lossy, vot), sorted(r.error for r in s.failed)):
        assert e.startswith(f"{f}, row 2, column source_id:") and "2**53" in e
    # a real XP product whose source_id column was written as float64 (a real DR3 id is ~1e18)
    t = Table.read(XP / "XP_CONTINUOUS_RAW.fits")
    t["source_id"] = t["source_id"].astype(np.float64)
    t.write(tmp_path / "xp_float_ids.fits")
    from xpmet.etl.xp_loader import load_xp
    s = load_xp([tmp_path / "xp_float_ids.fits"], progress=False, check=False)
    assert s.failed and "xp_float_ids.fits, row 1, column source_id" in s.failed[0].error
    assert scalar(clean_db, "SELECT count(*) FROM xpmet.xp_continuous") == 0


def test_float_gaia_ids_in_survey_files(clean_db, tmp_path):
    base = {"APOGEE_ID": ["a", "b"], "RA": [1.0, 2.0], "DEC": [0.0, 0.0], "SNR": [100.0, 100.0],
            "TEFF": [5000.0, 5000.0], "FE_H": [-0.5, -0.5], "ASPCAPFLAG": np.zeros(2, np.int64)}
    p = write_table(tmp_path / "apogee_float.fits", {**base, "GAIAEDR3_SOURCE_ID": np.array([11.0, float(BIG_ID)])})
    with pytest.raises(BadInput) as e:
        load_survey_file("apogee", p)
    assert "apogee_float.fits, row 1, column GAIAEDR3_SOURCE_ID" in str(e.value) and "2**53" in str(e.value)
    # CSV: one "...0" makes astropy read the column as float; the ids are re-read from their text
    d = tmp_path / "mine.toml"
    d.write_text('name = "mine"\n[position]\nra = "ra"\ndec = "dec"\nepoch = 2016.0\n'
                 '[gaia]\ncolumn = "gaia_id"\nrelease = "DR3"\n[columns]\nfeh = "feh"\n')
    c = tmp_path / "mine.csv"
    c.write_text(f"ra,dec,gaia_id,feh\n1,2,{BIG_ID}.0,-0.3\n3,4,,-0.2\n5,6,12,-0.1\n")
    assert load_survey_file(d, c).n_rows == 3
    with clean_db.connect() as conn:
        ids = conn.execute(sa.text("SELECT gaia_source_id FROM xpmet.survey_star ORDER BY file_row")).scalars().all()
    assert ids == [BIG_ID, None, 12]
    c2 = tmp_path / "mine_exp.csv"
    c2.write_text("ra,dec,gaia_id,feh\n1,2,12,-0.3\n3,4,4.295806720123456789e18,-0.2\n")
    with pytest.raises(BadInput, match=r"mine_exp.csv, row 1, column gaia_id: .*2\*\*53"):
        load_survey_file(d, c2)


# ------------------------------------------------------------------ misspelt optional gaia_source columns

def test_misspelt_gaia_source_columns_are_reported(clean_db, tmp_path, run_cli):
    f = tmp_path / "archive.csv"
    f.write_text("source_id,ra,dec,phot_g_mean_mgs,parralax,phot_bp_mean_mag,dist\n"
                 "4295806720,45.0,0.1,17.5,1.2,18.0,0.001\n")
    r = run_cli("etl", "gaia-source", f, "--no-progress")
    assert "1 file(s) loaded" in r.output
    warn = [ln for ln in r.output.splitlines() if "WARNING" in ln]
    assert len(warn) == 2, r.output
    assert f"{f}: unknown column(s) 'phot_g_mean_mgs' (did you mean 'phot_g_mean_mag'?), 'parralax' " \
           "(did you mean 'parallax'?)" in warn[0]
    assert f"{f}: 1 column(s) that gaia_source files do not have are ignored: dist" in warn[1]
    with clean_db.connect() as c:
        row = c.execute(sa.text("SELECT phot_g_mean_mag, parallax, phot_bp_mean_mag FROM xpmet.gaia_source")).one()
    assert row.phot_g_mean_mag is None and row.parallax is None and row.phot_bp_mean_mag == 18.0
    # the Gaia bulk layout (extra DR3 columns, all stored ones present or absent) warns about nothing
    s = load_gaia_source([bulk_file(tmp_path / "GaiaSource_1-2.csv.gz", [(7, 1.0, 1.0, 1, 1, 1, "True", 1)])],
                         progress=False)
    assert s.warnings == [] and "WARNING" not in str(s)


def test_real_xp_samples_raise_no_column_warning(tmp_path):
    from xpmet.io.xp_reader import read_xp
    for p in sorted(XP.iterdir()):
        if p.suffix in (".csv", ".ecsv", ".fits", ".xml"):
            warnings = []
            for _ in read_xp(p, on_warning=warnings.append):
                pass
            assert warnings == [], p.name
    f = tmp_path / "typo.csv"
    f.write_text((XP / "XP_CONTINUOUS_RAW.csv").read_text().replace("bp_standard_deviation", "bp_standard_deviaton", 1))
    warnings = []
    list(read_xp(f, on_warning=warnings.append))
    assert len(warnings) == 1 and "'bp_standard_deviaton' (did you mean 'bp_standard_deviation'?)" in warnings[0]
