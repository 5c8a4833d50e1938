"""The joint calibration (xpmet.calibration) on the real database: a small overlap network with known
offsets, a Teff trend, a compressed metal-poor scale and too-small errors, loaded as survey files."""
from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from xm_helpers import insert_gaia, write_table
from xpmet import calibration
from xpmet import labels as xlabels
from xpmet.etl.survey import load_survey_file
from xpmet.xmatch import run_xmatch

APO_OFF, APO_TEFF_SLOPE = -0.06, -4e-5          # APOGEE: offset, and a trend with Teff (per K)
GAL_OFF, GAL_BELOW, GAL_FACTOR = 0.08, -1.5, 0.6   # GALAH: offset, metal-poor end compressed
GAL_UNDER = 1.6                                 # GALAH's reported errors are this much too small


def rows(engine, sql, **kw):
    with engine.connect() as c:
        return c.execute(sa.text(sql), kw).mappings().all()


def _load_network(tmp_path, rng, n=3000):
    """GBS (benchmarks, a fifth metal-poor) -- APOGEE -- GALAH: GALAH shares no star with GBS."""
    feh = np.concatenate([rng.normal(-0.3, 0.3, n - n // 3), rng.uniform(-3.6, -1.0, n // 3)])
    rng.shuffle(feh)
    teff = rng.uniform(4300, 6400, n)
    logg = rng.uniform(1.5, 4.6, n)
    ids = np.arange(10_000, 10_000 + n, dtype=np.int64)
    ra, dec = rng.uniform(0, 20, n), rng.uniform(-10, 10, n)
    insert_gaia(tmp_path, {"source_id": ids, "ra": ra, "dec": dec, "pmra": np.zeros(n), "pmdec": np.zeros(n)})
    poor = np.flatnonzero(feh < -1.5)
    n_apo = 3 * n // 5
    gbs_i = np.concatenate([np.arange(48), poor[(poor >= 48) & (poor < n_apo)][:12]])
    apo_i = np.arange(0, n_apo)
    gal_i = np.setdiff1d(np.arange(n_apo // 2, n), gbs_i)
    gbs_feh = feh[gbs_i] + rng.normal(0, 0.04, gbs_i.size)
    write_table(tmp_path / "gbs_v3.fits", {
        "hip": [f"HIP{i}" for i in gbs_i], "ra_j2000": ra[gbs_i], "dec_j2000": dec[gbs_i],
        "source_id_gaiadr3": ids[gbs_i], "teff": teff[gbs_i] + rng.normal(0, 25, gbs_i.size),
        "e_teff": np.full(gbs_i.size, 25.0), "logg": logg[gbs_i], "e_logg": np.full(gbs_i.size, 0.03),
        "fe_h": gbs_feh})
    m = apo_i.size
    apo_teff = teff[apo_i] + rng.normal(0, 50, m)
    write_table(tmp_path / "apogee_dr17_allstar.fits", {
        "APOGEE_ID": [f"2M{i}" for i in apo_i], "RA": ra[apo_i], "DEC": dec[apo_i],
        "GAIAEDR3_SOURCE_ID": ids[apo_i], "SNR": np.full(m, 200.0),
        "TEFF": apo_teff, "TEFF_ERR": np.full(m, 50.0), "LOGG": logg[apo_i] + rng.normal(0, 0.05, m),
        "LOGG_ERR": np.full(m, 0.05),
        "FE_H": feh[apo_i] + APO_OFF + APO_TEFF_SLOPE * (teff[apo_i] - 5000) + rng.normal(0, 0.04, m),
        "FE_H_ERR": np.full(m, 0.04), "ASPCAPFLAG": np.zeros(m, np.int64), "EXTRATARG": np.zeros(m, np.int64)})
    k = gal_i.size
    t = feh[gal_i]
    gal_true_sigma = 0.08
    gal = t + GAL_OFF + np.where(t < GAL_BELOW, (GAL_FACTOR - 1) * (t - GAL_BELOW), 0) \
        + rng.normal(0, gal_true_sigma, k)
    write_table(tmp_path / "galah_dr3.fits", {
        "sobject_id": np.arange(k, dtype=np.int64), "ra_dr2": ra[gal_i], "dec_dr2": dec[gal_i],
        "dr3_source_id": ids[gal_i], "teff": teff[gal_i] + rng.normal(0, 80, k), "e_teff": np.full(k, 80.0),
        "logg": logg[gal_i] + rng.normal(0, 0.1, k), "e_logg": np.full(k, 0.1),
        "fe_h": gal, "e_fe_h": np.full(k, gal_true_sigma / GAL_UNDER),
        "flag_sp": np.zeros(k, np.int64), "flag_fe_h": np.zeros(k, np.int64),
        "flag_alpha_fe": np.zeros(k, np.int64), "flag_repeat": np.zeros(k, np.int64)})
    for name, f in (("gbs", "gbs_v3.fits"), ("apogee", "apogee_dr17_allstar.fits"), ("galah", "galah_dr3.fits")):
        load_survey_file(name, tmp_path / f)
    return ids, feh


def test_network_recovers_offsets_trend_compression_and_error_scale(clean_db, tmp_path):
    ids, feh = _load_network(tmp_path, np.random.default_rng(11))
    run = run_xmatch(labels=True)               # the labels are refreshed inside the crossmatch's transaction
    assert run.labels["n_labels"] > 0
    zp = {(z["survey"], z["label"]): z for z in xlabels.zero_points()}
    apo, gal = zp[("apogee", "feh")], zp[("galah", "feh")]
    assert zp[("gbs", "feh")]["status"] == "reference"
    # GALAH shares no star with the reference: calibrated through APOGEE
    assert gal["status"] == "calibrated" and gal["calibrated_on"] == "gbs" and gal["n_shared_with_reference"] == 0
    assert gal["n_stars"] > 800 and gal["n_pairs"] >= gal["n_stars"]
    knots = np.array(gal["knots"])
    want = GAL_OFF + np.where(knots < GAL_BELOW, (GAL_FACTOR - 1) * (knots - GAL_BELOW), 0)
    err = np.array(gal["offset_errs"])
    assert np.all(np.abs(np.array(gal["offsets"]) - want) < 3 * err + 0.02), (gal["offsets"], want, err)
    assert np.all(np.abs(np.array(apo["offsets"]) - APO_OFF) < 3 * np.array(apo["offset_errs"]) + 0.02), apo
    assert apo["teff_coef"] == pytest.approx(APO_TEFF_SLOPE, abs=1e-5)
    # GALAH's errors are too small by GAL_UNDER, APOGEE's are right: the fitted error model says so
    total = lambda z, e: np.hypot(z["err_scale"] * e, z["error_floor_fitted"])  # noqa: E731
    assert total(gal, 0.08 / GAL_UNDER) == pytest.approx(0.08, rel=0.15), gal
    assert total(apo, 0.04) == pytest.approx(0.04, rel=0.15), apo
    # the homogenised [Fe/H] is on the true scale down to the metal-poor end, to within the
    # calibration's systematic error (12 metal-poor benchmark stars anchor it there)
    lab = rows(clean_db, "SELECT source_id, feh, feh_err, feh_err_sys, feh_n FROM xpmet.labels WHERE feh IS NOT NULL")
    sid = np.array([r["source_id"] for r in lab])
    res = np.array([r["feh"] for r in lab]) - feh[sid - ids[0]]
    z = res / np.array([r["feh_err"] for r in lab])
    sys_ = np.array([r["feh_err_sys"] for r in lab])
    for lo, hi in ((-4, -2.5), (-2.5, -1.5), (-1.5, 0.5)):
        m = (feh[sid - ids[0]] >= lo) & (feh[sid - ids[0]] < hi)
        assert m.sum() > 100 and abs(np.median(res[m])) < 3 * np.median(sys_[m]) + 0.02, (lo, hi, np.median(res[m]))
        assert 0.75 < 1.4826 * np.median(np.abs(z[m] - np.median(z[m]))) < 1.3, (lo, hi)
    # the reference-only calibration (before 0009) had no way to see GALAH's compression: without
    # it, GALAH's metal-poor stars would be ~0.4 dex too metal-rich
    gal_only = np.array([r["feh_n"] == 1 for r in lab]) & (feh[sid - ids[0]] < -2.5)
    assert gal_only.sum() > 20 and abs(np.median(res[gal_only])) < 0.1


def test_systematic_error_is_not_averaged_down(clean_db, tmp_path):
    _load_network(tmp_path, np.random.default_rng(12), n=1500)
    run_xmatch(labels=True)
    per = rows(clean_db, "SELECT source_id, survey, err, err_sys FROM xpmet.calibrated_measurement "
                         "WHERE label = 'feh'")
    by_star = {}
    for r in per:
        by_star.setdefault(r["source_id"], []).append(r)
    lab = {r["source_id"]: r for r in rows(clean_db, "SELECT source_id, feh_err, feh_err_sys, feh_n FROM xpmet.labels")}
    both = [s for s, v in by_star.items()
            if {r["survey"] for r in v} == {"apogee", "galah"} and lab[s]["feh_n"] == 2]
    assert len(both) > 100
    for s in both:
        w = np.array([1 / r["err"] ** 2 for r in by_star[s]])
        sys_ = np.array([r["err_sys"] for r in by_star[s]])
        assert sys_.min() > 0
        # the weighted mean of the surveys' systematic errors (fully correlated), not / sqrt(2)
        assert lab[s]["feh_err_sys"] == pytest.approx(np.sum(w * sys_) / np.sum(w), rel=1e-6)
        assert lab[s]["feh_err"] >= lab[s]["feh_err_sys"]
    # the reference's own values carry no calibration error
    assert all(r["err_sys"] == 0 for r in per if r["survey"] == "gbs")


def _rows(entries):
    """survey_source_label-like arrays from (source_id, survey_id, survey, label, value, err)."""
    a = list(zip(*entries))
    return {"source_id": np.array(a[0], np.int64), "survey_id": np.array(a[1], np.int32),
            "survey": np.array(a[2], object), "label": np.array(a[3], object), "value": np.array(a[4], float),
            "err": np.array(a[5], float), "floor0": np.full(len(a[0]), 0.05)}


SETTINGS = {"min_overlap": 3, "min_trend_overlap": 50, "clip": 4.0}


@pytest.mark.parametrize("case,entries,want", [
    ("no overlap", [(1, 1, "gbs", "feh", -0.5, 0.05), (2, 2, "apogee", "feh", -0.4, 0.03)],
     {"gbs": "reference", "apogee": "uncalibrated"}),
    ("one star", [(1, 1, "gbs", "feh", -0.5, 0.05), (1, 2, "apogee", "feh", -0.4, 0.03)],
     {"gbs": "reference", "apogee": "too_few"}),
    ("NaN values", [(i, s, n, "feh", np.nan, 0.05) for i in range(5) for s, n in ((1, "gbs"), (2, "apogee"))],
     {"gbs": "reference", "apogee": "uncalibrated"}),
    ("no reference", [(i, s, n, "feh", -0.5, 0.05) for i in range(5) for s, n in ((2, "galah"), (3, "apogee"))],
     {"galah": "uncalibrated", "apogee": "uncalibrated"}),
])
def test_degenerate_inputs_give_a_status(case, entries, want):
    got = {r["survey"]: r["status"] for r in calibration.fit(_rows(entries), "gbs", None, SETTINGS)}
    assert got == want, case


def test_one_survey_loaded_is_uncalibrated_not_an_error(clean_db, tmp_path):
    rng = np.random.default_rng(5)
    n = 40
    ids = np.arange(1, n + 1, dtype=np.int64)
    ra, dec = rng.uniform(0, 5, n), rng.uniform(0, 5, n)
    insert_gaia(tmp_path, {"source_id": ids, "ra": ra, "dec": dec, "pmra": np.zeros(n), "pmdec": np.zeros(n)})
    load_survey_file("apogee", write_table(tmp_path / "apogee_dr17_allstar.fits", {
        "RA": ra, "DEC": dec, "GAIAEDR3_SOURCE_ID": ids, "FE_H": rng.normal(-0.3, 0.2, n),
        "FE_H_ERR": np.full(n, 0.03)}))
    run_xmatch(labels=True)
    s = xlabels.refresh(reference="apogee")
    assert s["n_labels"] == n and s["zero_points"] == {"reference": 1}
    xlabels.refresh(reference="apogee")          # refit on a fitted table: same answer
    assert {z["status"] for z in xlabels.zero_points()} == {"reference"}
