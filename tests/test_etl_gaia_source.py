"""`xpmet etl gaia-source` against the real database: Gaia bulk layout, NULLs, formats, faults."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from astropy.table import Table

from xpmet.etl.gaia import load_gaia_source

HEADER = """# %ECSV 1.0
# ---
# delimiter: ','
# datatype:
# - {name: solution_id, datatype: int64}
# - {name: designation, datatype: string}
# - {name: source_id, datatype: int64}
# - {name: ra, datatype: float64}
# - {name: dec, datatype: float64}
# - {name: parallax, datatype: float64}
# - {name: phot_g_mean_mag, datatype: float32}
# - {name: radial_velocity, datatype: float32}
# - {name: has_xp_continuous, datatype: bool}
# - {name: teff_gspphot, datatype: float32}
# schema: astropy-2.0
solution_id,designation,source_id,ra,dec,parallax,phot_g_mean_mag,radial_velocity,has_xp_continuous,teff_gspphot
"""


def bulk_file(path, rows):
    """A GaiaSource_*.csv.gz in the bulk layout: extra columns, 'null' for missing values."""
    body = "".join(f"1636148068921376768,\"Gaia DR3 {sid}\",{sid},{ra},{dec},{plx},{g},{rv},{xp},{teff}\n"
                   for sid, ra, dec, plx, g, rv, xp, teff in rows)
    Path(path).write_bytes(gzip.compress((HEADER + body).encode()))
    return Path(path)


ROWS = [(4295806720, 44.99615537864534, 0.005615226341865997, 3.5182300427967836, 17.641426, "null", "False", "null"),
        (34361129088, 45.004316164207644, 0.021045032689712983, "null", 16.42506, -1.5, "True", 5123.4),
        (38655544960, 45.00401046175773, 0.019221240468724294, 0.5, "null", "null", "True", 4800.0)]


def test_bulk_layout_with_nulls(clean_db, tmp_path, run_cli):
    f = bulk_file(tmp_path / "GaiaSource_000000-003111.csv.gz", ROWS)
    r = run_cli("etl", "gaia-source", f, "--no-progress")
    assert "3 rows" in r.output
    with clean_db.connect() as c:
        got = c.execute(sa.text("SELECT * FROM xpmet.gaia_source ORDER BY source_id")).all()
    assert [g.source_id for g in got] == [r[0] for r in ROWS]
    assert got[0].ra == ROWS[0][1] and got[0].dec == ROWS[0][2]           # float64 exact
    assert got[0].radial_velocity is None and got[0].teff_gspphot is None  # 'null' -> NULL
    assert got[1].parallax is None and np.float32(got[1].phot_g_mean_mag) == np.float32(16.42506)
    assert got[2].phot_g_mean_mag is None and got[2].has_xp_continuous is True and got[0].has_xp_continuous is False
    assert got[0].pmra is None  # a column the file does not have loads as NULL
    r = run_cli("etl", "gaia-source", f, "--no-progress")
    assert "1 skipped" in r.output


def test_fits_input_and_duplicates_across_files(clean_db, tmp_path, run_cli):
    t = Table({"source_id": np.array([5, 6, 7], np.int64), "ra": [1.0, 2.0, 3.0], "dec": [-1.0, 0.0, 1.0],
               "phot_g_mean_mag": np.array([12.0, np.nan, 14.0], np.float32)})
    fits = tmp_path / "archive_result.fits"
    t.write(fits)
    s = load_gaia_source([fits], progress=False)
    assert s.rows == 3
    other = bulk_file(tmp_path / "GaiaSource_x.csv.gz", [(7, 3.0, 1.0, 1, 1, 1, "True", 1)])
    r = run_cli("etl", "gaia-source", other, "--no-progress", ok=False)
    assert r.exit_code == 1 and "source_id 7 is already loaded from" in r.output and str(fits.resolve()) in r.output


def test_bad_rows_and_files(clean_db, tmp_path, run_cli):
    good = bulk_file(tmp_path / "good.csv.gz", ROWS)
    bulk_file(tmp_path / "badpos.csv.gz", [(11, 10.0, 1.0, 1, 1, 1, "True", 1), (12, "null", 1.0, 1, 1, 1, "True", 1)])
    bulk_file(tmp_path / "badnum.csv.gz", [(13, 10.0, 1.0, "abc", 1, 1, "True", 1)])
    (tmp_path / "nora.csv").write_text("source_id,dec\n1,2\n")
    raw = gzip.compress((HEADER + "1,\"x\",21,1.0,1.0,1,1,1,True,1\n" * 4000).encode())
    (tmp_path / "trunc.csv.gz").write_bytes(raw[: len(raw) // 2])
    r = run_cli("etl", "gaia-source", tmp_path, "--no-progress", ok=False)
    assert r.exit_code == 1 and "1 file(s) loaded" in r.output and "4 failed" in r.output
    assert "badpos.csv.gz, row 2, column ra" in r.output
    assert "badnum.csv.gz, row 1, column parallax" in r.output
    assert "nora.csv" in r.output and "missing required column(s) ra" in r.output
    assert "trunc.csv.gz" in r.output
    q = tmp_path / "q.tsv"
    r = run_cli("etl", "gaia-source", tmp_path / "badpos.csv.gz", "--errors-to", q, "--no-progress")
    assert "1 bad row(s) quarantined" in r.output
    with clean_db.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM xpmet.gaia_source")).scalar() == 4
        # the good file's rows, all of them, come from the good file; nothing from the failed ones
        from_good = c.execute(sa.text("SELECT array_agg(g.source_id ORDER BY g.source_id) FROM xpmet.gaia_source g "
                                      "JOIN xpmet.etl_load l USING (load_id) WHERE l.path = :p"),
                              {"p": str(good.resolve())}).scalar()
        assert from_good == [r[0] for r in ROWS]
        assert c.execute(sa.text("SELECT count(*) FROM xpmet.gaia_source WHERE source_id IN (12, 13, 21)")).scalar() == 0

