"""xpmet simulate: formats readable by astropy and GaiaXPy, physics consistency, determinism, truth."""
from __future__ import annotations

import gzip
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from xpmet.simulate import simulate

DATA = Path(__file__).parent / "data" / "simulate"
N_XP = 400


def _read(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FITS unit warnings
        return Table.read(path, **kw)


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    out = tmp_path_factory.mktemp("sky") / "sim"
    # More missing bands and pairs than the defaults, so small skies still contain them.
    simulate(out, n_stars=N_XP, seed=11, rows_per_file=300, missing_band_fraction=0.05, progress=False,
             plots=True, surveys=("all",))
    return out


@pytest.fixture(scope="module")
def truth(sky):
    return _read(sky / "truth.fits")


@pytest.fixture(scope="module")
def gaia(sky):
    from astropy.table import vstack
    return vstack([_read(p, format="ascii.ecsv") for p in sorted((sky / "gaia_source").glob("*.csv.gz"))])


@pytest.fixture(scope="module")
def xp(sky):
    from astropy.table import vstack
    return vstack([_read(p, format="ascii.ecsv") for p in sorted((sky / "xp_continuous").glob("*.csv.gz"))])


def test_layout_and_notice(sky):
    notice = (sky / "SIMULATED.txt").read_text()
    assert "SIMULATED" in notice and "seed: 11" in notice
    gs = sorted(p.name.split("_", 1)[1] for p in (sky / "gaia_source").glob("GaiaSource_*.csv.gz"))
    xs = sorted(p.name.split("_", 1)[1] for p in (sky / "xp_continuous").glob("XpContinuousMeanSpectrum_*.csv.gz"))
    assert len(gs) > 1 and gs == xs  # several HEALPix ranges; both kinds share them
    for name in ("apogee_dr17_allstar.fits", "galah_dr3.fits", "lamost_dr8_lrs.csv", "gbs_v3.fits"):
        assert (sky / "surveys" / name).stat().st_size > 0
    for name in ("kiel.png", "feh_hist.png", "sky.png"):
        assert (sky / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    assert not list(sky.rglob("*.part"))


def test_gaia_source_schema(gaia, truth):
    from xpmet.simulate.gaia_source import COLUMNS
    assert gaia.colnames == [c.name for c in COLUMNS]
    assert gaia["parallax"].unit == "mas" and gaia["source_id"].dtype == np.int64
    assert len(gaia) == len(truth) == 2 * N_XP
    assert gaia["has_xp_continuous"].sum() == N_XP
    assert np.ma.count_masked(gaia["radial_velocity"]) > 0  # missing values read as masked
    assert np.all(np.diff(gaia["source_id"]) > 0)


def test_xp_schema_matches_real_file(xp):
    real = _read(DATA / "XP_CONTINUOUS_RAW.ecsv", format="ascii.ecsv")
    assert xp.colnames == real.colnames
    for name in real.colnames:
        assert xp[name].dtype.kind == real[name].dtype.kind, name
    lengths = {len(v) for v in xp["bp_coefficients"]} | {len(v) for v in xp["rp_coefficient_correlations"]}
    assert lengths <= {0, 55, 1485}
    missing_bp = np.array([len(v) == 0 for v in xp["bp_coefficients"]])
    missing_rp = np.array([len(v) == 0 for v in xp["rp_coefficients"]])
    assert missing_bp.any() and missing_rp.any() and not (missing_bp & missing_rp).any()
    first = np.flatnonzero(missing_bp)[0]
    assert np.ma.is_masked(xp["bp_n_relevant_bases"][first]) and np.isnan(xp["bp_standard_deviation"][first])


def test_xp_text_format_like_gaia(sky):
    path = sorted((sky / "xp_continuous").glob("*.csv.gz"))[0]
    with gzip.open(path, "rt") as fh:
        lines = [line for line in fh if not line.startswith("#")]
    real = [line for line in (DATA / "XP_CONTINUOUS_RAW.ecsv").read_text().splitlines(True) if not line.startswith("#")]
    assert lines[0] == real[0]  # same header line
    assert ',"[' in lines[1] and ']",' in lines[1]


def test_correlations_are_valid_and_match_the_noise(xp):
    from xpmet.xp_coefficients import correlation_matrix
    row = next(i for i, v in enumerate(xp["bp_coefficient_correlations"]) if len(v) == 1485)
    c = correlation_matrix(np.asarray(xp["bp_coefficient_correlations"][row], float))
    assert np.linalg.eigvalsh(c).min() > 0
    assert np.all(np.abs(c) <= 1.0 + 1e-6)


def test_gaiaxpy_synthetic_g_agrees(sky, tmp_path, gaia):
    from gaiaxpy import PhotometricSystem, generate
    path = sorted((sky / "xp_continuous").glob("*.csv.gz"))[0]
    ecsv = tmp_path / "xp.ecsv"  # GaiaXPy reads .ecsv files the way it reads the archive's
    with gzip.open(path, "rb") as src, open(ecsv, "wb") as dst:
        shutil.copyfileobj(src, dst)
    phot = generate(str(ecsv), photometric_system=PhotometricSystem.Gaia_DR3_Vega, save_file=False)
    g = dict(zip(np.asarray(gaia["source_id"]), np.asarray(gaia["phot_g_mean_mag"], float)))
    synth = phot["GaiaDr3Vega_mag_G"].to_numpy(float)
    diff = synth - np.array([g[s] for s in phot["source_id"]])
    diff = diff[np.isfinite(diff)]  # a missing band gives NaN, as in GaiaXPy
    assert diff.size > 0.9 * len(phot)
    assert np.median(np.abs(diff)) < 0.01
    assert np.mean(np.abs(diff) < 0.03) > 0.9


def test_gaiaxpy_calibrate_reads_a_dataframe(xp):
    from gaiaxpy import calibrate
    full = [i for i in range(len(xp)) if len(xp["bp_coefficients"][i]) == 55 and len(xp["rp_coefficients"][i]) == 55]
    df = _xp_frame(xp, full[:3])  # arrays as numpy arrays, as a user's DataFrame would hold them
    spectra, sampling = calibrate(df, save_file=False)
    flux = np.stack(spectra["flux"].to_numpy())
    assert flux.shape == (3, sampling.size) and np.all(np.nanmedian(flux, axis=1) > 0)


def _xp_frame(xp, rows):
    import pandas as pd
    cols = {}
    for name in xp.colnames:
        vals = [xp[name][i] for i in rows]
        cols[name] = [np.asarray(v, float) for v in vals] if xp[name].dtype == object else vals
    return pd.DataFrame(cols)


def test_source_ids_encode_healpix(truth, sky):
    from xpmet.simulate.sky import healpix_level12
    sid = np.asarray(truth["source_id"])
    assert np.array_equal(sid // 2**35, healpix_level12(np.asarray(truth["ra"]), np.asarray(truth["dec"])))
    for path in (sky / "gaia_source").glob("*.csv.gz"):
        a, b = (int(x) for x in path.name[len("GaiaSource_"):-len(".csv.gz")].split("-"))
        ids = np.asarray(_read(path, format="ascii.ecsv")["source_id"])
        level8 = ids // 2**35 // 256
        assert np.all((level8 >= a) & (level8 <= b))


def test_close_pairs_exist(gaia):
    from astropy.coordinates import SkyCoord
    c = SkyCoord(gaia["ra"], gaia["dec"], unit="deg")
    _, sep, _ = c.match_to_catalog_sky(c, nthneighbor=2)
    close = (sep.arcsec >= 0.9) & (sep.arcsec <= 2.1)
    assert close.sum() >= 2 * round(0.03 * N_XP) - 2


def test_deterministic(tmp_path):
    a = simulate(tmp_path / "a", n_stars=60, seed=5, progress=False)
    b = simulate(tmp_path / "b", n_stars=60, seed=5, progress=False)
    c = simulate(tmp_path / "c", n_stars=60, seed=6, progress=False)
    for rel in ("xp_continuous", "gaia_source"):
        fa = sorted((a / rel).iterdir())
        assert [p.name for p in fa] == [p.name for p in sorted((b / rel).iterdir())]
        for p in fa:
            assert gzip.open(p).read() == gzip.open(b / rel / p.name).read()
    assert (a / "survey_truth.json").read_text() == (b / "survey_truth.json").read_text()
    ta, tc = _read(a / "truth.fits"), _read(c / "truth.fits")
    # equal_nan: quasars and white dwarfs have no [Fe/H]
    assert (np.array_equal(ta["feh"], _read(b / "truth.fits")["feh"], equal_nan=True)
            and not np.array_equal(ta["feh"], tc["feh"], equal_nan=True))


def test_refuses_non_empty_directory(tmp_path):
    from click.testing import CliRunner
    from xpmet.cli import main
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("keep me")
    r = CliRunner().invoke(main, ["simulate", str(tmp_path / "x"), "--n-stars", "5"])
    assert r.exit_code == 1 and "not empty" in r.output
    assert (tmp_path / "x" / "mine.txt").read_text() == "keep me"
    r = CliRunner().invoke(main, ["simulate", "--help"])
    assert "SIMULATED" in r.output and "R_V=3.1" in r.output


def _match(survey, table, truth):
    """Indices into truth of each survey row: Gaia ids where shipped, else nearest position (3 arcsec)."""
    index = {s: i for i, s in enumerate(np.asarray(truth["source_id"]))}
    id_col = {"apogee": "GAIAEDR3_SOURCE_ID", "galah": "dr3_source_id", "gbs": "source_id_gaiadr3",
              "gaia_eso": "GAIAEDR3_SOURCE_ID", "gspspec": "source_id", "pristine": "source_id"}.get(survey)
    if id_col:
        ids = np.asarray(table[id_col])
        return np.array([index.get(s, -1) for s in ids])
    from astropy.coordinates import SkyCoord
    ra, dec = {"lamost": ("ra", "dec"), "rave": ("RA_INPUT", "DEC_INPUT"), "segue": ("RA", "DEC")}[survey]
    rows = SkyCoord(table[ra], table[dec], unit="deg")
    cat = SkyCoord(truth["ra"], truth["dec"], unit="deg")
    j, sep, _ = rows.match_to_catalog_sky(cat)
    return np.where(sep.arcsec < 3.0, j, -1)


@pytest.mark.parametrize("survey,file,feh_col", [
    ("apogee", "apogee_dr17_allstar.fits", "FE_H"), ("galah", "galah_dr3.fits", "fe_h"),
    ("lamost", "lamost_dr8_lrs.csv", "feh"), ("gbs", "gbs_v3.fits", "fe_h"),
    ("gaia_eso", "gaia_eso_dr5.fits", "FEH"), ("rave", "rave_dr6.csv", "m_h_cal_madera"),
    ("segue", "segue_sspp.fits", "FEHADOP"), ("gspspec", "gspspec.fits", "mh_gspspec"),
    ("pristine", "pristine.csv", "FeH")])
def test_survey_offsets_recoverable(sky, truth, survey, file, feh_col):
    st = json.loads((sky / "survey_truth.json").read_text())[survey]
    table = _read(sky / "surveys" / file)
    assert len(table) == st["n_rows"]
    j = _match(survey, table, truth)
    feh = np.asarray(table[feh_col], float)
    good = (j >= 0) & np.isfinite(feh) & (feh > -9000)
    true = {k: np.asarray(truth[k], float)[j[good]] for k in ("teff", "logg", "feh")}
    resid = feh[good] - true["feh"]
    trend = st["trend"].get("feh")
    if trend:
        resid -= trend["slope"] * (true[trend["x"]] - trend["pivot"])
    c = st.get("compress", {}).get("feh")   # a compressed metal-poor scale
    if c:
        resid -= np.where(true["feh"] < c["below"], (c["factor"] - 1) * (true["feh"] - c["below"]), 0)
    # Median is robust to the injected outliers; tolerance from the survey's own noise level.
    tol = 4 * 1.25 * np.std(resid[np.abs(resid - np.median(resid)) < 0.3]) / np.sqrt(good.sum()) + 0.01
    assert abs(np.median(resid) - st["offset"]["feh"]) < tol
    assert good.sum() > 10


def test_survey_positions_at_survey_epoch(sky, truth):
    a = _read(sky / "surveys" / "apogee_dr17_allstar.fits")
    index = {s: i for i, s in enumerate(np.asarray(truth["source_id"]))}
    rows = np.flatnonzero(np.asarray(a["GAIAEDR3_SOURCE_ID"]) > 0)
    j = np.array([index[s] for s in np.asarray(a["GAIAEDR3_SOURCE_ID"])[rows]])
    ddec_mas = (np.asarray(a["DEC"])[rows] - np.asarray(truth["dec"])[j]) * 3.6e6
    assert np.allclose(ddec_mas, -16.0 * np.asarray(truth["pmdec"])[j], atol=1.0)
    sentinel = np.asarray(a["FE_H"]) == -9999
    assert np.all((np.asarray(a["ASPCAPFLAG"])[sentinel] >> 23) & 1)
    assert ((np.asarray(a["EXTRATARG"]) & 16) > 0).any()


def test_truth_columns(truth):
    for name in ("source_id", "ra", "dec", "pmra", "pmdec", "parallax", "teff", "logg", "feh", "alpha_fe", "ebv",
                 "a0", "phot_g_mean_mag", "has_xp", "population", "surveys"):
        assert name in truth.colnames, name
    pop = np.char.decode(np.asarray(truth["population"])) if truth["population"].dtype.kind == "S" else np.asarray(truth["population"])
    assert {"thin", "thick", "halo"} <= set(np.unique(pop)) <= {"thin", "thick", "halo", "extragalactic"}
    assert (np.asarray(truth["feh"])[pop == "halo"] < -1).mean() > 0.5
    assert np.nanmax(np.hypot(truth["pmra"], truth["pmdec"])) > 30  # fast stars exist


def test_metallicity_leaves_a_signal_in_xp(xp, truth):
    """Stars differing only in [Fe/H] differ in their XP coefficients by far more than the noise."""
    from xpmet.simulate import sed, xp_model
    teff, logg = np.array([5000.0, 5000.0]), np.array([2.5, 2.5])
    spec = sed.sed(teff, logg, np.array([0.0, -1.0]), np.array([0.0, 0.3]), np.full(2, 1e-10), np.zeros(2))
    bp, rp = xp_model.project(spec)
    g = xp_model.synthetic_mags(bp, rp)[:, 0]
    bp, rp = (bp * 10 ** (0.4 * (g[:, None] - 15.0))), (rp * 10 ** (0.4 * (g[:, None] - 15.0)))  # both at G = 15
    from xpmet.simulate.xp_noise import coefficient_errors
    err = coefficient_errors(np.random.default_rng(0), np.array([15.0]), "bp")[0]
    assert np.sqrt(np.sum(((bp[0] - bp[1]) / err) ** 2)) > 20


def test_gaiaxpy_calibrate_reproduces_the_sed():
    """The projection inverts GaiaXPy's external calibration: calibrate(coefficients) ~ SED (broad bins)."""
    import pandas as pd
    from gaiaxpy import calibrate
    from xpmet.simulate import sed, xp_model
    n = 3
    spec = sed.sed(np.array([4000.0, 5772.0, 7500.0]), np.array([4.6, 4.44, 4.0]), np.array([0.0, -1.0, 0.0]),
                   np.zeros(n), np.full(n, 1e-9), np.array([0.0, 0.0, 0.5]))
    bp, rp = xp_model.project(spec)
    rows = [{"source_id": i + 1, **{f"{b}_{k}": v for b, c in (("bp", bp[i]), ("rp", rp[i])) for k, v in (
        ("n_parameters", 55), ("coefficients", c), ("coefficient_errors", np.full(55, 1e-3 * abs(c[0]))),
        ("coefficient_correlations", np.zeros(1485)), ("standard_deviation", 1.0), ("n_relevant_bases", 55))}}
        for i in range(n)]
    spectra, wl = calibrate(pd.DataFrame(rows), save_file=False)
    for i in range(n):
        flux = np.asarray(spectra["flux"][i])
        ref = np.interp(wl, xp_model.WAVELENGTH, spec[i])
        for lo, hi in ((340, 400), (400, 500), (500, 650), (650, 800), (800, 1000)):
            k = (wl >= lo) & (wl < hi)
            assert abs(flux[k].sum() / ref[k].sum() - 1) < 0.01, (i, lo, hi)
