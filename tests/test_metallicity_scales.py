"""[M/H] surveys become [Fe/H] with their [alpha/Fe]; XP-derived metallicities are never label sources."""
from __future__ import annotations

import numpy as np
import pytest

from xm_helpers import write_table
from xpmet.errors import XpmetError
from xpmet.etl.descriptor import load_descriptor, parse_descriptor
from xpmet.etl.metallicity import feh_from_mh
from xpmet.etl.survey import normalise
from xpmet.flags import SURVEY_QUALITY_BITS


def test_salaris_conversion():
    feh, err = feh_from_mh([0.0, -1.0, -1.0, 0.2], [0.1, 0.1, 0.1, 0.1], [0.0, 0.4, np.nan, 0.1], [0.0, 0.05, 0.1, 0.0])
    assert feh[0] == pytest.approx(0.0, abs=1e-12)               # solar mixture: [M/H] = [Fe/H]
    assert feh[1] == pytest.approx(-1.0 - np.log10(0.638 * 10 ** 0.4 + 0.362))   # ~ -1.30
    assert feh[1] < -1.25 and np.isnan(feh[2])
    assert err[1] > 0.1 and err[0] == pytest.approx(0.1)


def test_gspspec_mh_becomes_feh_and_rows_without_alpha_are_flagged(tmp_path):
    d = load_descriptor("gspspec")
    assert d.metallicity == "m_h"
    path = write_table(tmp_path / "gsp.fits", {
        "source_id": np.array([1, 2, 3], np.int64), "ra": [10.0, 11.0, 12.0], "dec": [1.0, 2.0, 3.0],
        "mh_gspspec": [-1.0, -1.0, 0.1], "mh_gspspec_error": [0.1, 0.1, 0.1],
        "alphafe_gspspec": [0.4, np.nan, 0.0], "alphafe_gspspec_error": [0.05, 0.05, 0.05]})
    from astropy.table import Table
    notes = []
    data, _ = normalise(path, Table.read(path), d, notes)
    assert data["feh"][0] == pytest.approx(-1.0 - np.log10(0.638 * 10 ** 0.4 + 0.362))
    assert np.isnan(data["feh"][1]) and data["quality_flags"][1] & (1 << SURVEY_QUALITY_BITS["mh_without_alpha"])
    assert data["feh"][2] == pytest.approx(0.1)
    assert any("mh_without_alpha" in n for n in notes)


def test_pristine_is_never_a_label_source(tmp_path):
    d = load_descriptor("pristine")
    assert d.training is False and d.as_json()["labels"]["training"] is False
    path = write_table(tmp_path / "pristine.fits", {
        "source_id": np.array([5, 6], np.int64), "RA": [1.0, 2.0], "Dec": [3.0, 4.0],
        "FeH": [-2.5, -1.0], "FeH_err": [0.2, 0.2]})
    from astropy.table import Table
    data, _ = normalise(path, Table.read(path), d)
    assert not data["quality_ok"].any()          # so survey_measurement, labels and training_set skip them
    assert (data["quality_flags"] & (1 << SURVEY_QUALITY_BITS["not_a_label_source"])).all()
    assert np.allclose(data["feh"], [-2.5, -1.0])  # the values themselves stay in survey_star


def test_rave_reads_no_mh_as_feh():
    assert not any(c.startswith("m_h") for c in load_descriptor("rave").columns["feh"])


def test_descriptor_checks_the_labels_table(tmp_path):
    raw = dict(load_descriptor("apogee").raw)
    with pytest.raises(XpmetError, match="metallicity must be one of"):
        parse_descriptor({**raw, "labels": {"metallicity": "z"}}, tmp_path / "x.toml")
    no_alpha = {**raw, "columns": {k: v for k, v in raw["columns"].items() if not k.startswith("alpha")}}
    with pytest.raises(XpmetError, match="needs an alpha_fe column"):
        parse_descriptor({**no_alpha, "labels": {"metallicity": "m_h"}}, tmp_path / "x.toml")
