"""Helpers for the predict and query tests: a small synthetic XP sky written into the real
database with binary COPY, and a model double whose outputs are a fixed function of its inputs.

The double stands in for a trained network only (the database is always real): predictions can
then be checked value by value against the stored spectra.
"""
from __future__ import annotations

import time

import numpy as np
from astropy_healpix import HEALPix

from xpmet.db.engine import raw_connect
from xpmet.io.pgcopy import Col, copy_rows

LEVEL12 = HEALPix(nside=2 ** 12, order="nested")


def insert_sky(n: int, seed: int = 7, missing_bp_every: int = 10) -> dict:
    """n Gaia sources, all with XP, ids and positions consistent (source_id >> 35 = level-12 pixel).

    Every ``missing_bp_every``-th star has no BP spectrum. Returns the arrays written.
    """
    rng = np.random.default_rng(seed)
    pix = np.sort(rng.choice(12 * 4 ** 12, size=n, replace=False))
    sid = (pix.astype(np.int64) << 35) + rng.integers(0, 2 ** 20, n)
    lon, lat = LEVEL12.healpix_to_lonlat(pix, dx=0.5, dy=0.5)
    ra, dec = lon.deg, lat.deg
    g = rng.uniform(9, 19, n).astype(np.float32)
    bp = rng.normal(0, 1, (n, 55))
    bp[:, 0] = rng.uniform(50, 150, n)
    rp = rng.normal(0, 1, (n, 55))
    rp[:, 0] = rng.uniform(50, 150, n)
    bp[::missing_bp_every] = np.nan
    err = np.abs(rng.normal(0.05, 0.01, (n, 55))).astype(np.float32)
    bp_err = err.copy()
    bp_err[::missing_bp_every] = np.nan
    with raw_connect() as conn, conn.cursor() as cur:
        load_id = cur.execute("INSERT INTO xpmet.etl_load (kind, path, size_bytes, sha256, status) "
                              "VALUES ('test', 'synthetic', 0, %s, 'done') RETURNING load_id",
                              (f"synthetic-{seed}-{n}-{time.time()}",)).fetchone()[0]
        lid = np.full(n, load_id, np.int32)
        copy_rows(cur, "xpmet.gaia_source",
                  [Col("source_id", "i8"), Col("ra", "f8"), Col("dec", "f8"), Col("phot_g_mean_mag", "f4"),
                   Col("phot_g_mean_flux", "f8"), Col("bp_rp", "f4"), Col("parallax", "f8"),
                   Col("has_xp_continuous", "bool"), Col("load_id", "i4")],
                  {"source_id": sid, "ra": ra, "dec": dec, "phot_g_mean_mag": g,
                   "phot_g_mean_flux": 10 ** (-0.4 * (g - 25.7)), "bp_rp": rng.uniform(0.3, 2.5, n).astype(np.float32),
                   "parallax": rng.uniform(0.1, 5, n), "has_xp_continuous": np.ones(n, bool), "load_id": lid})
        copy_rows(cur, "xpmet.xp_continuous",
                  [Col("source_id", "i8"), Col("bp_coefficients", "f8[]", 55), Col("bp_coefficient_errors", "f4[]", 55),
                   Col("rp_coefficients", "f8[]", 55), Col("rp_coefficient_errors", "f4[]", 55), Col("load_id", "i4")],
                  {"source_id": sid, "bp_coefficients": bp, "bp_coefficient_errors": bp_err,
                   "rp_coefficients": rp, "rp_coefficient_errors": err, "load_id": lid})
        conn.commit()
    return {"source_id": sid, "ra": ra, "dec": dec, "g": g, "bp": bp, "rp": rp}


def expected(bp, rp, g, source_id):
    """What ColourPredictor returns, computed independently of the batch plumbing."""
    feh = (bp[:, 1] - rp[:, 1]) / 10.0
    missing = np.isnan(bp).all(1) | np.isnan(rp).all(1)
    return {"feh": feh, "teff": 4000.0 + (source_id % 1000), "recommended": ~missing & (g < 17),
            "quality_flags": np.where(missing, 4, 0)}


class ColourPredictor:
    """A deterministic model double: every output is a fixed function of the batch it is given."""

    model_id = None
    kind = "estimator"
    needs = ["source_id", "bp_coefficients", "bp_coefficient_errors", "rp_coefficients",
             "rp_coefficient_errors", "phot_g_mean_mag", "phot_g_mean_flux", "bp_rp", "parallax"]

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.calls = 0

    def predict(self, b: dict) -> dict:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        n = len(b["source_id"])
        assert b["bp_coefficients"].shape == (n, 55) and b["rp_coefficient_errors"].shape == (n, 55)
        e = expected(b["bp_coefficients"], b["rp_coefficients"], b["phot_g_mean_mag"], b["source_id"])
        nan = np.full(n, np.nan, np.float32)
        return {"teff": e["teff"], "teff_err": np.full(n, 50.0), "logg": np.full(n, 4.0), "logg_err": nan,
                "feh": e["feh"], "feh_err": np.full(n, 0.1), "alpha_fe": nan, "alpha_fe_err": nan,
                "fit_stat": b["bp_rp"], "quality_flags": e["quality_flags"].astype(np.int32),
                "recommended": e["recommended"]}
