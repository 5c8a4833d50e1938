"""Label homogenisation views on the real database: the real APOGEE-GALAH overlap and injected offsets."""
from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from xm_helpers import APOGEE, GALAH, GBS, gaia_from_real_samples, insert_gaia, write_table
from xpmet import labels as xlabels
from xpmet.xmatch import run_xmatch
from xpmet.errors import XpmetError
from xpmet.etl.provenance import file_load
from xpmet.etl.survey import load_survey_file
from xpmet.io.pgcopy import Col, copy_rows

DISCORDANT = 3606400136265939456
CONTRACT = ("source_id ra dec phot_g_mean_mag phot_bp_mean_mag phot_rp_mean_mag bp_rp phot_g_mean_flux parallax "
            "parallax_error ag_gspphot bp_coefficients bp_coefficient_errors rp_coefficients rp_coefficient_errors "
            "teff teff_err logg logg_err feh feh_err alpha_fe alpha_fe_err n_surveys surveys label_flags "
            "xmatch_version reference").split()


def rows(engine, sql, **kw):
    with engine.connect() as c:
        return c.execute(sa.text(sql), kw).mappings().all()


def bit(name):
    return 1 << xlabels.LABEL_BITS[name]


def test_real_apogee_galah_overlap_one_label_per_star(clean_db, tmp_path):
    insert_gaia(tmp_path, gaia_from_real_samples())
    load_survey_file("apogee", APOGEE)
    load_survey_file("galah", GALAH)
    run_xmatch()
    s = xlabels.refresh(reference="apogee")
    assert s["n_labels"] == 1612 + 1061 - 12
    n = rows(clean_db, "SELECT count(*) AS n, count(DISTINCT source_id) AS d FROM xpmet.labels")[0]
    assert n["n"] == n["d"]
    both = {r["source_id"]: r for r in rows(clean_db, "SELECT * FROM xpmet.labels WHERE n_surveys = 2")}
    assert len(both) == 12
    assert all(r["surveys"] == ["apogee", "galah"] and r["feh_n"] == 2 for r in both.values())
    flagged = {sid for sid, r in both.items() if r["label_flags"] & bit("feh_discordant")}
    assert flagged == {DISCORDANT}
    # its uncertainty is inflated by the disagreement; the others are not
    assert both[DISCORDANT]["feh_err"] > 3 * max(r["feh_err"] for sid, r in both.items() if sid != DISCORDANT)
    zp = {(z["survey"], z["label"]): z for z in xlabels.zero_points()}
    assert zp[("galah", "feh")]["status"] == "calibrated" and zp[("galah", "feh")]["n_stars"] >= 10
    assert zp[("apogee", "feh")]["status"] == "reference"
    with pytest.raises(XpmetError, match="not loaded"):
        xlabels.refresh(reference="gbs")
    # the real benchmark stars as the reference: they share no star with these samples
    load_survey_file("gbs", GBS)
    run_xmatch()
    xlabels.refresh(reference="gbs", fallback="")
    before = {(z["survey"], z["label"]): z for z in xlabels.zero_points()}
    xlabels.refresh(reference="gbs", fallback="apogee")
    after = {(z["survey"], z["label"]): z for z in xlabels.zero_points()}
    # GBS has no alpha_fe: without a fallback nobody's alpha_fe is calibrated; with APOGEE as the
    # fallback, APOGEE's scale is used and GALAH is put on it through their shared stars (the joint
    # calibration: status calibrated, on APOGEE)
    assert before[("apogee", "alpha_fe")]["status"] == before[("galah", "alpha_fe")]["status"] == "uncalibrated"
    assert after[("apogee", "alpha_fe")]["status"] == "fallback_scale"
    g, direct = after[("galah", "alpha_fe")], zp[("galah", "alpha_fe")]   # direct: APOGEE as the reference
    assert g["status"] == "calibrated" and g["calibrated_on"] == "apogee" and g["n_stars"] == direct["n_stars"] >= 10
    assert g["zero_point"] == pytest.approx(direct["zero_point"], abs=1e-6) and g["zero_point"] != 0
    cal = rows(clean_db, "SELECT value, raw_value, calibration FROM xpmet.calibrated_measurement "
                         "WHERE survey = 'galah' AND label = 'alpha_fe'")
    assert len(cal) > 1000 and {r["calibration"] for r in cal} == {"calibrated"}
    np.testing.assert_allclose([r["raw_value"] - r["value"] for r in cal], g["zero_point"], atol=1e-5)


def _simulate(rng, n):
    """True labels of n stars: thin-disc-like and halo-like mixture."""
    feh = np.concatenate([rng.normal(-0.2, 0.3, n - n // 3), rng.normal(-1.4, 0.5, n // 3)])
    return {"teff": rng.uniform(4200, 6500, n), "logg": rng.uniform(1.5, 4.8, n), "feh": feh,
            "alpha_fe": np.clip(-0.25 * feh, 0, 0.4) + rng.normal(0, 0.02, n)}


def test_injected_offsets_are_recovered(clean_db, tmp_path):
    """Simulated in the test (the simulator's survey output was not available when this was written)."""
    rng = np.random.default_rng(42)
    n = 1500
    truth = _simulate(rng, n)
    ids = np.arange(1000, 1000 + n, dtype=np.int64)
    ra, dec = rng.uniform(0, 20, n), rng.uniform(-10, 10, n)
    insert_gaia(tmp_path, {"source_id": ids, "ra": ra, "dec": dec, "pmra": np.zeros(n), "pmdec": np.zeros(n)})
    gbs_i = np.arange(0, 80)                      # benchmark stars
    apo_i = np.arange(0, 1000)                    # APOGEE covers the benchmarks
    gal_i = np.arange(400, 1000)                  # GALAH overlaps APOGEE only
    gal_i = np.append(gal_i, [5])                 # ... and one benchmark star: calibrated through APOGEE
    apo_off = {"teff": 40.0, "logg": -0.08, "feh": 0.07, "alpha_fe": 0.03}
    gal_off = {"teff": -70.0, "logg": 0.1, "feh": -0.12, "alpha_fe": -0.04}
    noise = {"gbs": {"teff": 25, "logg": 0.03, "feh": 0.04}, "apogee": {"teff": 60, "logg": 0.06, "feh": 0.04,
             "alpha_fe": 0.03}, "galah": {"teff": 80, "logg": 0.1, "feh": 0.06, "alpha_fe": 0.04}}

    def obs(i, survey, lab, off=0.0):
        return truth[lab][i] + off + rng.normal(0, noise[survey][lab], len(i))

    write_table(tmp_path / "gbs_v3.fits", {
        "hip": [f"HIP{i}" for i in gbs_i], "ra_j2000": ra[gbs_i], "dec_j2000": dec[gbs_i],
        "source_id_gaiadr3": ids[gbs_i], **{lab: obs(gbs_i, "gbs", lab) for lab in ("teff", "logg")},
        "e_teff": np.full(len(gbs_i), 25.0), "e_logg": np.full(len(gbs_i), 0.03), "fe_h": obs(gbs_i, "gbs", "feh")})
    m = len(apo_i)
    write_table(tmp_path / "apogee_dr17_allstar.fits", {
        "APOGEE_ID": [f"2M{i}" for i in apo_i], "RA": ra[apo_i], "DEC": dec[apo_i],
        "GAIAEDR3_SOURCE_ID": ids[apo_i], "SNR": np.full(m, 200.0),
        "TEFF": obs(apo_i, "apogee", "teff", apo_off["teff"]), "TEFF_ERR": np.full(m, 60.0),
        "LOGG": obs(apo_i, "apogee", "logg", apo_off["logg"]), "LOGG_ERR": np.full(m, 0.06),
        "FE_H": obs(apo_i, "apogee", "feh", apo_off["feh"]), "FE_H_ERR": np.full(m, 0.04),
        "ALPHA_M": obs(apo_i, "apogee", "alpha_fe", apo_off["alpha_fe"]), "ALPHA_M_ERR": np.full(m, 0.03),
        "ASPCAPFLAG": np.zeros(m, np.int64), "EXTRATARG": np.zeros(m, np.int64)})
    k = len(gal_i)
    gal_trend = 0.1
    gal_feh = obs(gal_i, "galah", "feh", gal_off["feh"]) + gal_trend * (truth["feh"][gal_i] + 0.5)
    outlier = 10                                   # one GALAH star 1.5 dex off: seen by 3 surveys? no: 2
    gal_feh[outlier] += 1.5
    write_table(tmp_path / "galah_dr3.fits", {
        "sobject_id": np.arange(k, dtype=np.int64), "ra_dr2": ra[gal_i], "dec_dr2": dec[gal_i],
        "dr3_source_id": ids[gal_i], "teff": obs(gal_i, "galah", "teff", gal_off["teff"]),
        "e_teff": np.full(k, 80.0), "logg": obs(gal_i, "galah", "logg", gal_off["logg"]), "e_logg": np.full(k, 0.1),
        "fe_h": gal_feh, "e_fe_h": np.full(k, 0.06),
        "alpha_fe": obs(gal_i, "galah", "alpha_fe", gal_off["alpha_fe"]), "e_alpha_fe": np.full(k, 0.04),
        "flag_sp": np.zeros(k, np.int64), "flag_fe_h": np.zeros(k, np.int64),
        "flag_alpha_fe": np.zeros(k, np.int64), "flag_repeat": np.zeros(k, np.int64)})
    for name in ("gbs", "apogee", "galah"):
        load_survey_file(name, tmp_path / {"gbs": "gbs_v3.fits", "apogee": "apogee_dr17_allstar.fits",
                                           "galah": "galah_dr3.fits"}[name])
    run_xmatch()
    xlabels.refresh(reference="gbs", fallback="apogee")
    zp = {(z["survey"], z["label"]): z for z in xlabels.zero_points()}
    for lab in ("teff", "logg", "feh"):
        z = zp[("apogee", lab)]
        assert z["status"] == "calibrated" and z["n_shared_with_reference"] == 80 and z["n_stars"] >= 600
        assert abs(z["zero_point"] - apo_off[lab]) < 3 * z["zero_point_err"], (lab, z)
    for lab in ("teff", "logg", "feh", "alpha_fe"):
        z = zp[("galah", lab)]
        assert z["status"] == "calibrated" and z["calibrated_on"] == ("apogee" if lab == "alpha_fe" else "gbs")
        assert z["n_shared_with_reference"] == (601 if lab == "alpha_fe" else 1)
        want = gal_off[lab] - (apo_off[lab] if lab == "alpha_fe" else 0)  # no benchmark alpha: APOGEE's scale
        if lab == "feh":   # the zero point is the mean offset over the shared stars
            want += gal_trend * (np.mean(truth["feh"][gal_i]) + 0.5)
        assert abs(z["zero_point"] - want) < 3 * z["zero_point_err"], (lab, z)
    assert zp[("apogee", "alpha_fe")]["status"] == "fallback_scale"   # no benchmark alpha_fe
    # calibrated labels carry no offset any more
    lab = rows(clean_db, "SELECT source_id, feh, feh_err, teff, label_flags FROM xpmet.labels ORDER BY source_id")
    got = np.array([r["feh"] for r in lab])
    resid = got - truth["feh"][np.array([r["source_id"] for r in lab]) - 1000]
    ok = np.abs(resid) < 0.5
    assert abs(np.mean(resid[ok])) < 0.01
    assert abs(np.mean([r["teff"] for r in lab]) - np.mean(truth["teff"][ids[:1000] - 1000])) < 20
    # the GALAH outlier: two surveys disagree by 1.5 dex -> flagged, uncertainty inflated
    bad = [r for r in lab if r["source_id"] == ids[gal_i[outlier]]][0]
    assert bad["label_flags"] & bit("feh_discordant")
    assert sum(1 for r in lab if r["label_flags"] & bit("feh_discordant")) < 10
    # GALAH's [Fe/H] offset has a trend (slope gal_trend per dex of the true value): fitted on 600
    # stars and removed
    z = zp[("galah", "feh")]
    assert z["slope"] != 0 and abs(z["slope"] - gal_trend) < 3 * z["slope_err"], z
    cal = rows(clean_db, "SELECT source_id, value FROM xpmet.calibrated_measurement "
                         "WHERE survey = 'galah' AND label = 'feh'")
    t = truth["feh"][np.array([r["source_id"] for r in cal]) - 1000]
    r = np.array([r["value"] for r in cal]) - t
    ok = np.abs(r) < 0.5
    # (a piecewise-linear model: its slope is known to the knots' errors, not to a line's)
    assert abs(np.polyfit(t[ok], r[ok], 1)[0]) < max(0.02, 3 * z["slope_err"]) and abs(np.mean(r[ok])) < 0.02


def test_three_surveys_reject_the_discordant_one_and_training_set(clean_db, tmp_path):
    rng = np.random.default_rng(3)
    n = 60
    ids = np.arange(1, n + 1, dtype=np.int64)
    ra, dec = rng.uniform(0, 5, n), rng.uniform(0, 5, n)
    insert_gaia(tmp_path, {"source_id": ids, "ra": ra, "dec": dec, "pmra": np.zeros(n), "pmdec": np.zeros(n),
                           "phot_g_mean_mag": np.full(n, 14.0), "phot_g_mean_flux": np.full(n, 1e5),
                           "parallax": np.full(n, 1.0), "bp_rp": np.full(n, 0.8)})
    feh = rng.normal(-0.5, 0.4, n)
    for name, f in (("gbs", "gbs_v3.fits"), ("apogee", "apogee_dr17_allstar.fits"), ("galah", "galah_dr3.fits")):
        v = feh + rng.normal(0, 0.03, n)
        if name == "galah":
            v[0] += 1.0                                  # one discordant GALAH value among three surveys
        cols = {"gbs": {"ra_j2000": ra, "dec_j2000": dec, "source_id_gaiadr3": ids, "teff": np.full(n, 5000.0),
                        "fe_h": v},
                "apogee": {"RA": ra, "DEC": dec, "GAIAEDR3_SOURCE_ID": ids, "FE_H": v, "FE_H_ERR": np.full(n, 0.03)},
                "galah": {"ra_dr2": ra, "dec_dr2": dec, "dr3_source_id": ids, "fe_h": v,
                          "e_fe_h": np.full(n, 0.03)}}[name]
        load_survey_file(name, write_table(tmp_path / f, cols))
    run_xmatch()
    xlabels.refresh(reference="gbs")
    star = rows(clean_db, "SELECT * FROM xpmet.labels WHERE source_id = 1")[0]
    assert star["label_flags"] & bit("rejected_measurement") and not star["label_flags"] & bit("feh_discordant")
    assert star["feh_n"] == 2 and star["surveys"] == ["apogee", "gbs"]
    assert abs(star["feh"] - feh[0]) < 0.1
    rej = rows(clean_db, "SELECT survey FROM xpmet.label_measurement WHERE rejected")
    assert [r["survey"] for r in rej] == ["galah"]

    # training_set: XP rows for three sources; one has a zero coefficient error and is cut
    coef = rng.normal(0, 1, (3, 55)) * 100
    err = np.full((3, 55), 0.5)
    err[2, 7] = 0.0
    cols = [Col("source_id", "i8"), Col("load_id", "i4"), Col("bp_coefficients", "f8[]", 55),
            Col("bp_coefficient_errors", "f4[]", 55), Col("rp_coefficients", "f8[]", 55),
            Col("rp_coefficient_errors", "f4[]", 55)]
    p = tmp_path / "xp.npy"
    np.save(p, coef)
    with file_load(p, "test:xp", ("xpmet.xp_continuous",)) as ld:
        with ld.conn.cursor() as cur:
            copy_rows(cur, "xpmet.xp_continuous", cols, {
                "source_id": ids[:3], "load_id": np.full(3, ld.load_id, np.int32), "bp_coefficients": coef,
                "bp_coefficient_errors": err, "rp_coefficients": coef, "rp_coefficient_errors": err})
    ts = rows(clean_db, "SELECT * FROM xpmet.training_set ORDER BY source_id")
    assert [r["source_id"] for r in ts] == [1, 2]
    assert set(CONTRACT) <= set(ts[0].keys())
    assert ts[0]["reference"] == "gbs" and ts[0]["xmatch_version"].startswith("xm-")
    assert len(ts[0]["bp_coefficients"]) == 55
    xlabels.refresh(min_xp_snr=1e9)
    assert rows(clean_db, "SELECT count(*) AS n FROM xpmet.training_set")[0]["n"] == 0
    xlabels.refresh(min_xp_snr=30)
    # too few shared stars for any zero point: the [Fe/H] of apogee and galah is uncalibrated (not
    # on the reference scale), so the stars they measured train nothing
    xlabels.refresh(min_overlap=1000)
    star = rows(clean_db, "SELECT * FROM xpmet.labels WHERE source_id = 2")[0]
    assert star["label_flags"] & bit("uncalibrated_survey")
    assert rows(clean_db, "SELECT count(*) AS n FROM xpmet.training_set")[0]["n"] == 0
    xlabels.refresh(min_overlap=3)
    assert rows(clean_db, "SELECT count(*) AS n FROM xpmet.training_set")[0]["n"] == 2


def test_cli_labels(clean_db, run_cli, tmp_path):
    insert_gaia(tmp_path, gaia_from_real_samples())
    run_cli("etl", "survey", "apogee", APOGEE)
    run_cli("etl", "survey", "galah", GALAH)
    out = run_cli("xmatch", "--override", "galah:radius=1.5").output
    assert "2673 survey rows, 2673 matched" in out
    out = run_cli("labels", "--reference", "apogee").output
    assert "on the apogee scale" in out and "galah" in out and "calibrated" in out
    r = run_cli("labels", "--reference", "nosuch", ok=False)
    assert r.exit_code == 1 and "not loaded" in r.output
    r = run_cli("xmatch", "--override", "galah=3", ok=False)
    assert r.exit_code == 1 and "SURVEY:PARAM=ARCSEC" in r.output


@pytest.fixture(scope="module")
def simulated_sky(tmp_path_factory):
    from xpmet.simulate import simulate
    return simulate(tmp_path_factory.mktemp("sky"), n_stars=3000, seed=7, correlations=False, progress=False)


def test_simulator_offsets_recovered_within_uncertainty(clean_db, simulated_sky):
    """xpmet simulate output, loaded with xpmet etl: every injected offset without an injected trend
    is recovered within 3 sigma of the zero point's uncertainty (GBS reference, APOGEE fallback)."""
    import json
    from xpmet.etl.gaia import load_gaia_source
    load_gaia_source([str(simulated_sky / "gaia_source")], progress=False)
    from xpmet.simulate import survey_files
    for name, path in survey_files(simulated_sky).items():
        load_survey_file(name, path)
    run = run_xmatch()
    assert run.n_matched > 0.97 * run.n_rows
    xlabels.refresh(reference="gbs", fallback="apogee")
    truth = json.loads((simulated_sky / "survey_truth.json").read_text())
    zp = {(z["survey"], z["label"]): z for z in xlabels.zero_points()}
    checked = 0
    for survey in ("apogee", "galah", "lamost"):
        for lab, off in truth[survey]["offset"].items():
            z = zp.get((survey, lab))
            if z is None or lab in truth[survey].get("trend", {}) or z["status"] not in ("calibrated",):
                continue
            assert abs(z["zero_point"] - off) < 3 * z["zero_point_err"], (survey, lab, off, z)
            checked += 1
    assert checked >= 6
    # alpha_fe: the benchmark stars have none, so GALAH is put on APOGEE's scale
    z = zp[("galah", "alpha_fe")]
    want = truth["galah"]["offset"]["alpha_fe"] - truth["apogee"]["offset"]["alpha_fe"]
    assert z["status"] == "calibrated" and z["calibrated_on"] == "apogee"
    assert abs(z["zero_point"] - want) < 3 * z["zero_point_err"], z
