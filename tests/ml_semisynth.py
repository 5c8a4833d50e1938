"""Semi-synthetic XP training files for the ML unit tests, built from REAL Gaia XP spectra.

The real spectra (tests/data/ml/xp_chunk0_first400.fits) give the principal directions of
flux-normalised XP coefficients and realistic per-star error vectors. A known, nonlinear map
from four "labels" to coefficients is built from those directions, spectra are drawn from it
with the real errors scaled to each star's magnitude, so the tests know the truth exactly.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from xpmet.ml.export import Writer, assign_split, write_noise_group
from xpmet.ml.normalise import G_ZERO_POINT

DATA = Path(__file__).parent / "data" / "ml" / "xp_chunk0_first400.fits"
LABEL_CENTRE = np.array([5200.0, 3.6, -0.8, 0.15])
LABEL_SCALE = np.array([600.0, 0.7, 0.6, 0.1])
LABEL_ERR = np.array([40.0, 0.08, 0.05, 0.03])


def real_xp():
    """(bp, bp_err, rp, rp_err, G flux) of the real sample; G flux from GaiaXPy synthetic G."""
    from astropy.table import Table
    from xpmet.ml.photometry import synthetic_photometry
    t = Table.read(DATA)
    col = lambda p: np.stack([np.asarray(t[f"{p}_{i}"], np.float64) for i in range(55)], 1)  # noqa: E731
    bp, bpe, rp, rpe = col("bp_coeff"), col("e_bp_coeff"), col("rp_coeff"), col("e_rp_coeff")
    g = synthetic_photometry(bp, bpe, rp, rpe, bands=("G",))["G"]
    ok = np.isfinite(g)
    return bp[ok], bpe[ok], rp[ok], rpe[ok], 10 ** (-0.4 * (g[ok] - G_ZERO_POINT))


class Generator:
    """Known nonlinear labels -> flux-normalised coefficients map from the real spectra's PCA."""

    def __init__(self):
        bp, bpe, rp, rpe, flux = real_xp()
        x = np.concatenate([bp, rp], 1) / flux[:, None]
        self.err_raw = np.concatenate([bpe, rpe], 1)
        self.flux = flux
        self.mean = np.median(x, 0)
        self.scale = np.std(x, 0)
        z = (x - self.mean) / self.scale
        _, _, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
        self.v = vt[:6]

    def spectra(self, s):
        """s (n,4) standardised labels -> flux-normalised coefficients (n,110)."""
        z = (s[:, 0:1] * self.v[0] + 0.7 * s[:, 1:2] * self.v[1] + 0.5 * s[:, 2:3] * self.v[2]
             + 0.3 * s[:, 3:4] * self.v[3] + 0.3 * (s[:, 0:1] ** 2 - 1) * self.v[4]
             + 0.2 * s[:, 1:2] * s[:, 2:3] * self.v[5])
        return self.mean + self.scale * z * 0.5

    def draw(self, n, rng, g_range=(12.0, 16.5)):
        """n stars: true standardised labels, raw coefficients + errors, G mag and flux."""
        s = rng.standard_normal((n, 4)).clip(-2.5, 2.5)
        g = rng.uniform(*g_range, n)
        flux = 10 ** (-0.4 * (g - G_ZERO_POINT))
        pick = rng.integers(0, len(self.flux), n)
        # the real star's errors, moved to the new flux with sigma^2 = a + b F (background + photons)
        ref = self.err_raw[pick] / np.sqrt(self.flux[pick])[:, None]
        err = ref * np.sqrt(flux)[:, None] * np.sqrt(1 + 3e4 / flux)[:, None]
        raw = self.spectra(s) * flux[:, None] + rng.standard_normal((n, 110)) * err
        return s, raw, err, g, flux


def write_file(path, n=3000, seed=1, n_faint=1500, label_noise=True):
    """A training file in the export layout + its never-surveyed faint stars (returned with truth)."""
    rng = np.random.default_rng(seed)
    gen = Generator()
    s, raw, err, g, flux = gen.draw(n, rng)
    labels = LABEL_CENTRE + LABEL_SCALE * s
    lerr = np.broadcast_to(LABEL_ERR, labels.shape)
    obs = labels + (rng.standard_normal(labels.shape) * lerr if label_noise else 0)
    sid = rng.choice(2**40, n, replace=False).astype(np.int64) + 4295806720
    b = {"source_id": sid, "bp_coefficients": raw[:, :55], "bp_coefficient_errors": err[:, :55],
         "rp_coefficients": raw[:, 55:], "rp_coefficient_errors": err[:, 55:],
         "phot_g_mean_mag": g, "phot_g_mean_flux": flux, "ag_gspphot": np.zeros(n), "n_surveys": np.ones(n)}
    for j, k in enumerate(("teff", "logg", "feh", "alpha_fe")):
        b[k], b[k + "_err"] = obs[:, j], lerr[:, j]
    fs, fraw, ferr, fg, fflux = gen.draw(n_faint, rng, g_range=(16.0, 18.5))
    with h5py.File(path, "w") as f:
        w = Writer(f, correlations=False)
        w.append(b, assign_split(sid, {"train": 0.8, "valid": 0.1, "test": 0.1}, 0))
        write_noise_group(f, {"source_id": np.r_[sid, sid[:n_faint] + 1],
                              "bp_coefficient_errors": np.r_[err[:, :55], ferr[:, :55]],
                              "rp_coefficient_errors": np.r_[err[:, 55:], ferr[:, 55:]],
                              "phot_g_mean_flux": np.r_[flux, fflux], "phot_g_mean_mag": np.r_[g, fg]})
        w.finish({"reference": "semi-synthetic", "xmatch_version": "none", "seed": 0})
    faint = {"source_id": sid[:n_faint] + 1, "bp_coefficients": fraw[:, :55], "bp_coefficient_errors": ferr[:, :55],
             "rp_coefficients": fraw[:, 55:], "rp_coefficient_errors": ferr[:, 55:],
             "phot_g_mean_mag": fg, "phot_g_mean_flux": fflux}
    return faint, LABEL_CENTRE + LABEL_SCALE * fs
