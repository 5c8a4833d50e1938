"""Survey descriptors and the survey loader, on the real samples and on hand-made bad files."""
from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from xm_helpers import APOGEE, GALAH, GBS, write_table
from xpmet.errors import BadInput, XpmetError
from xpmet.etl.descriptor import load_descriptor, parse_descriptor, shipped
from xpmet.etl.survey import load_survey_file
from xpmet.flags import SURVEY_QUALITY_BITS as QUALITY_BITS


def q(engine, sql, **kw):
    with engine.connect() as c:
        return c.execute(sa.text(sql), kw).all()


def test_every_shipped_descriptor_validates():
    names = shipped()
    assert {"apogee", "galah", "lamost", "gaia_eso", "rave", "segue", "gspspec", "pristine", "gbs"} <= set(names)
    for n in names:
        d = load_descriptor(n)
        assert d.citation and d.metallicity_scale, n
    assert load_descriptor("gbs").reference
    assert load_descriptor("rave").gaia_release == "DR2"
    assert load_descriptor("lamost").epoch_column == ("obsdate",)


@pytest.mark.parametrize("patch, message", [
    ({"colour": 1}, "unknown key"),
    ({"position": {"ra": "RA", "dec": "DEC"}}, "exactly one of epoch"),
    ({"gaia": {"column": "x", "release": "DR9"}}, "release must be one of"),
    ({"units": {"teff": "degC"}}, "xpmet stores teff in"),
    ({"flags": [{"column": "A", "bits": [1], "sets": "nonsense"}]}, "is not one of"),
    ({"columns": {"snr": "SNR"}}, "maps none of the labels"),
])
def test_descriptor_errors_name_file_and_key(tmp_path, patch, message):
    raw = dict(load_descriptor("apogee").raw)
    raw.update(patch)
    with pytest.raises(XpmetError, match=message) as e:
        parse_descriptor(raw, tmp_path / "my.toml")
    assert "my.toml" in str(e.value)


def test_real_samples_load_every_row(clean_db):
    for name, path, n in (("apogee", APOGEE, 1612), ("galah", GALAH, 1061), ("gbs", GBS, 30)):
        r = load_survey_file(name, path)
        assert (r.n_rows, r.skipped) == (n, False)
    rows = dict(q(clean_db, "SELECT s.name, count(*) FROM xpmet.survey_star JOIN xpmet.survey s USING (survey_id) "
                            "GROUP BY 1"))
    assert rows == {"apogee": 1612, "galah": 1061, "gbs": 30}
    # declared ids stored with their release; GBS has no e_fe_h: NULL, never a sentinel
    assert q(clean_db, "SELECT count(*) FROM xpmet.survey_star WHERE gaia_source_id IS NULL")[0][0] == 0
    assert q(clean_db, "SELECT DISTINCT gaia_release FROM xpmet.survey_star ORDER BY 1") == [("DR3",), ("EDR3",)]
    assert q(clean_db, "SELECT count(*) FROM xpmet.survey_star WHERE teff < 0 OR feh < -10 OR logg < -5")[0][0] == 0
    # a second run skips the file; --replace reloads it
    assert load_survey_file("gbs", GBS).skipped
    assert load_survey_file("gbs", GBS, replace=True).n_rows == 30
    assert q(clean_db, "SELECT count(*) FROM xpmet.survey_star")[0][0] == 1612 + 1061 + 30


def test_sentinels_flags_and_epochs_lamost_csv(clean_db, tmp_path):
    p = tmp_path / "lamost_dr8_lrs.csv"
    p.write_text("obsid,designation,obsdate,ra,dec,teff,teff_err,logg,logg_err,feh,feh_err,snrg,rv\n"
                 "1,J1,2015-06-01,10.0,1.0,5000,50,4.5,0.1,-0.5,0.05,50,0\n"
                 "2,J2,2012-01-01,10.1,1.0,-9999,-9999,4.0,0.1,,,40,0\n"
                 "3,J3,2019-12-31,10.2,1.0,5500,60,4.2,0.1,-0.2,-9999,5,0\n"
                 "4,J4,2019-12-31,,,5500,60,4.2,0.1,-0.2,0.1,50,0\n")
    r = load_survey_file("lamost", p)
    assert r.n_rows == 4 and r.n_ok == 3
    rows = q(clean_db, "SELECT file_row, teff, teff_err, feh, feh_err, epoch, quality_flags, quality_ok "
                       "FROM xpmet.survey_star ORDER BY file_row")
    assert rows[0].epoch == pytest.approx(2015.414, abs=0.01)
    assert rows[1].teff is None and rows[1].teff_err is None and rows[1].feh is None
    assert rows[1].quality_flags & (1 << QUALITY_BITS["teff_invalid"])
    assert rows[1].quality_flags & (1 << QUALITY_BITS["feh_invalid"])
    assert rows[2].feh == pytest.approx(-0.2) and rows[2].feh_err is None
    assert rows[2].quality_flags & (1 << QUALITY_BITS["error_invalid"])
    assert rows[2].quality_flags & (1 << QUALITY_BITS["low_snr"]) and not rows[2].quality_ok
    assert rows[3].quality_flags & (1 << QUALITY_BITS["no_position"])


def test_apogee_layout_flag_rules(clean_db, tmp_path):
    n = 4
    p = write_table(tmp_path / "apogee_dr17_allstar.fits", {
        "APOGEE_ID": ["a", "b", "c", "d"], "RA": [1.0, 2, 3, 4], "DEC": [0.0, 0, 0, 0],
        "GAIAEDR3_SOURCE_ID": np.array([11, 0, 13, 14], np.int64), "SNR": [100.0, 100, 100, 10],
        "TEFF": [5000.0, 5000, 5000, 5000], "TEFF_ERR": [50.0] * n, "LOGG": [4.0] * n, "LOGG_ERR": [0.1] * n,
        "M_H": [-0.5] * n, "M_H_ERR": [0.05] * n, "ALPHA_M": [0.1, -9999, 0.1, 0.1], "ALPHA_M_ERR": [0.03] * n,
        "FE_H": [-0.5] * n, "FE_H_ERR": [0.05] * n,
        "ASPCAPFLAG": np.array([0, 1 << 23, 0, 0], np.int64), "STARFLAG": np.zeros(n, np.int64),
        "EXTRATARG": np.array([0, 0, 16, 0], np.int64)})
    r = load_survey_file("apogee", p)
    assert r.n_rows == 4 and r.n_ok == 1
    rows = q(clean_db, "SELECT gaia_source_id, alpha_fe, survey_flags, quality_flags FROM xpmet.survey_star "
                       "ORDER BY file_row")
    assert [x.gaia_source_id for x in rows] == [11, None, 13, 14]       # 0 = no id
    assert rows[1].alpha_fe is None and rows[1].survey_flags == 1 << 23
    assert rows[1].quality_flags & (1 << QUALITY_BITS["star_bad"])
    assert rows[2].quality_flags & (1 << QUALITY_BITS["duplicate"])
    assert rows[3].quality_flags & (1 << QUALITY_BITS["low_snr"])


def test_bad_input_names_file_row_column(clean_db, tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("obsid,obsdate,ra,dec,teff,feh\n1,2015-01-01,10,1,5000,-0.5\n2,2015-01-01,10,1,hot,-0.5\n")
    with pytest.raises(BadInput) as e:
        load_survey_file("lamost", p)
    assert "bad.csv" in str(e.value) and "row 1" in str(e.value) and "column teff" in str(e.value)
    p.write_text("obsid,obsdate,ra,dec,teff,feh\n1,2015-13-45,10,1,5000,-0.5\n")
    with pytest.raises(BadInput, match="row 0, column obsdate"):
        load_survey_file("lamost", p)
    p.write_text("obsid,obsdate,ra,dec,teff\n1,2015-01-01,10,1,5000\n")
    with pytest.raises(BadInput, match="no column for feh"):
        load_survey_file("lamost", p)
    p.write_text("obsid,obsdate,ra,dec,teff,feh\n1,2015-01-01,400,1,5000,-0.5\n")
    with pytest.raises(BadInput, match="outside"):
        load_survey_file("lamost", p)
    t = tmp_path / "truncated.fits"
    t.write_bytes(APOGEE.read_bytes()[:50000])
    with pytest.raises(BadInput, match="truncated.fits"):
        load_survey_file("apogee", t)
    assert q(clean_db, "SELECT count(*) FROM xpmet.survey_star")[0][0] == 0   # nothing half-written


def test_cli_user_descriptor(clean_db, run_cli, tmp_path):
    d = tmp_path / "my.toml"
    d.write_text('name = "mine"\n[position]\nra = "RA"\ndec = "DEC"\nepoch = 2000.0\n'
                 '[columns]\nfeh = ["FEH", "MH"]\nfeh_err = "E_MH"\n')
    f = write_table(tmp_path / "mine.fits", {"ra": [1.0, 2.0], "dec": [3.0, 4.0], "mh": [-1.0, -9999.0],
                                             "e_mh": [0.1, 0.1]})
    out = run_cli("etl", "survey", "--descriptor", d, f).output
    assert "2 rows of mine" in out and "feh_invalid 1" in out
    assert q(clean_db, "SELECT feh FROM xpmet.survey_star ORDER BY file_row") == [(-1.0,), (None,)]
    r = run_cli("etl", "survey", "nosuchsurvey", f, ok=False)
    assert r.exit_code == 1 and "no descriptor for survey" in r.output
