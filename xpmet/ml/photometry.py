"""Synthetic photometry of XP coefficients with GaiaXPy (``gaiaxpy.generate``).

Used to validate the emulator: the same passbands computed from a star's observed coefficients
and from the emulator's prediction, with GaiaXPy's propagated flux errors as the photometric
noise. Bands: Pristine CaHK, SDSS g, Gaia DR3 G/BP/RP (Vega); GaiaXPy 2.1 names the systems
``PhotometricSystem.Pristine``, ``.SDSS`` and ``.Gaia_DR3_Vega``.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd

from xpmet.xp_coefficients import N_COEF, N_CORR

#: our band name -> (GaiaXPy system name, GaiaXPy band suffix)
BANDS = {
    "CaHK": ("Pristine", "Pristine_{}_CaHK"),
    "g_sdss": ("SDSS", "Sdss_{}_g"),
    "G": ("Gaia_DR3_Vega", "GaiaDr3Vega_{}_G"),
    "BP": ("Gaia_DR3_Vega", "GaiaDr3Vega_{}_BP"),
    "RP": ("Gaia_DR3_Vega", "GaiaDr3Vega_{}_RP"),
}
_MAG_PER_FLUX = 2.5 / np.log(10)


@contextlib.contextmanager
def _quiet():
    """GaiaXPy's progress bars off xpmet's output: some write to the ``sys.stdout`` their module
    imported (``from sys import stdout``), which ``redirect_stdout`` cannot reach."""
    from gaiaxpy.generator import multi_synthetic_photometry_generator as gen
    sink, old = io.StringIO(), getattr(gen, "stdout", None)
    gen.stdout = sink
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        gen.stdout = old


def synthetic_photometry(bp, bp_err, rp, rp_err, bp_corr=None, rp_corr=None, bp_sd=None, rp_sd=None,
                         bands=tuple(BANDS)) -> dict:
    """Magnitudes and their 1-sigma errors for raw coefficient arrays (n,55).

    Correlations (n,1485) default to zero (diagonal covariance); standard deviations (n,) to 1
    where absent or not positive. They do not change the result: GaiaXPy divides the errors by
    them to build the covariance and multiplies the propagated flux errors back, so its errors
    treat the published coefficient errors as already including the standard deviation.
    Rows with a missing band give NaN.
    Returns {band: mag (n,), band + "_err": mag error (n,)}.
    """
    from gaiaxpy import PhotometricSystem, generate
    n = len(bp)
    bp, rp = np.asarray(bp, np.float64), np.asarray(rp, np.float64)
    ok = np.isfinite(bp).all(1) & np.isfinite(rp).all(1) & np.isfinite(bp_err).all(1) & np.isfinite(rp_err).all(1)
    out = {b: np.full(n, np.nan) for b in bands} | {b + "_err": np.full(n, np.nan) for b in bands}
    if not ok.any():
        return out
    idx = np.flatnonzero(ok)

    def pick(a, fill, tail=()):
        """Rows idx of a, or a constant (only as many rows as are sent to GaiaXPy) when a is None."""
        return list(np.full((len(idx), *tail), fill) if a is None else np.asarray(a, np.float64)[idx])

    def sd(a):
        """A missing (NaN) or non-positive standard deviation would make GaiaXPy drop the band."""
        return pick(None if a is None else np.where(np.asarray(a, np.float64) > 0, a, 1.0), 1.0)

    df = pd.DataFrame({
        "source_id": np.arange(len(idx), dtype=np.int64),
        "bp_coefficients": list(bp[idx]), "bp_coefficient_errors": list(np.asarray(bp_err, np.float64)[idx]),
        "rp_coefficients": list(rp[idx]), "rp_coefficient_errors": list(np.asarray(rp_err, np.float64)[idx]),
        "bp_coefficient_correlations": pick(bp_corr, 0.0, (N_CORR,)),
        "rp_coefficient_correlations": pick(rp_corr, 0.0, (N_CORR,)),
        "bp_n_parameters": N_COEF, "rp_n_parameters": N_COEF,
        "bp_standard_deviation": sd(bp_sd), "rp_standard_deviation": sd(rp_sd),
    })
    systems = sorted({BANDS[b][0] for b in bands})
    with _quiet():
        res = generate(df, photometric_system=[getattr(PhotometricSystem, s) for s in systems],
                       save_file=False, error_correction=False)
    res = res.sort_values("source_id")
    for b in bands:
        pattern = BANDS[b][1]
        mag = res[pattern.format("mag")].to_numpy(np.float64)
        flux = res[pattern.format("flux")].to_numpy(np.float64)
        ferr = res[pattern.format("flux_error")].to_numpy(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[b][idx] = mag
            out[b + "_err"][idx] = _MAG_PER_FLUX * ferr / np.abs(flux)
    return out
