"""Survey files are read by what they contain, not by what they are called."""
from __future__ import annotations

import gzip
import shutil

import pytest
from astropy.table import Table

from xm_helpers import APOGEE
from xpmet.errors import BadInput
from xpmet.etl.survey import load_survey_file, survey_format


def test_format_comes_from_the_content(tmp_path):
    misnamed_fits = tmp_path / "apogee.csv"
    shutil.copy(APOGEE, misnamed_fits)
    assert survey_format(misnamed_fits) == "fits"
    t = Table.read(APOGEE)
    as_csv = tmp_path / "apogee_export.dat"
    t[[c for c in t.colnames if t[c].ndim == 1]].write(as_csv, format="ascii.csv")
    assert survey_format(as_csv) == "ascii.csv"
    gz = tmp_path / "apogee.vot.gz"
    vot = tmp_path / "apogee.vot"
    t[[c for c in t.colnames if t[c].ndim == 1]].write(vot, format="votable")
    gz.write_bytes(gzip.compress(vot.read_bytes()))
    assert survey_format(gz) == "votable"
    junk = tmp_path / "apogee.fits"
    junk.write_bytes(b"\x00\x01 not a table at all")
    with pytest.raises(BadInput, match="apogee.fits"):
        survey_format(junk)


def test_a_misnamed_file_loads_like_the_original(clean_db, tmp_path):
    misnamed = tmp_path / "allStar.csv"   # a FITS file with the wrong suffix
    shutil.copy(APOGEE, misnamed)
    r = load_survey_file("apogee", misnamed)
    assert r.n_rows == len(Table.read(APOGEE)) and not r.skipped
