"""GaiaXPy's own instrument model as two linear maps: SED -> XP coefficients, coefficients -> G/BP/RP.

Projection (SED -> coefficients): GaiaXPy's external calibration writes the absolute spectrum as
``f(lambda) = sum_i c_i D_i(lambda)`` with ``D_i = (inverse basis_i at pwl(lambda)) * hc/(A R(lambda) lambda)``
(``SampledBasisFunctions.from_external_instrument_model``; models bp v375wi, rp v142r, the defaults of
``gaiaxpy.calibrate``). We invert that per band by least squares weighted in photon space
(weight ``1/norm = A R(lambda) lambda / hc``), so the fit trusts the wavelengths where the instrument
collects light and ignores the band edges where the response vanishes; a tiny ridge term keeps the
55 coefficients finite. Then ``gaiaxpy.calibrate`` of our coefficients reproduces the (XP-resolution) SED.

Photometry (coefficients -> magnitudes): ``gaiaxpy.generate`` with ``PhotometricSystem.Gaia_DR3_Vega``
computes ``flux_k = c_bp . S_bp[:, k] + c_rp . S_rp[:, k]`` and ``mag_k = zp_k - 2.5 log10(flux_k)``
from the system's XpSampling tables; we read the same tables so phot_g_mean_mag of the simulation is
GaiaXPy's synthetic G of the noise-free coefficients.
"""
from __future__ import annotations

import contextlib
import functools
import io
import warnings

import numpy as np

from xpmet.xp_coefficients import N_COEF

# Wavelength grid (nm) on which SEDs are evaluated; covers both XP bands with margin.
WAVELENGTH = np.arange(320.0, 1062.0, 2.0)
_RIDGE = 1e-6  # relative ridge strength: keeps high-order coefficients finite where the data are flat
_BAND_RANGE = {"bp": (325.0, 690.0), "rp": (615.0, 1055.0)}


@functools.lru_cache(maxsize=1)
def projection_matrices() -> dict[str, np.ndarray]:
    """Per band, the (55, n_wavelength) matrix P with ``coefficients = P @ sed`` (sed in W m^-2 nm^-1)."""
    from gaiaxpy.calibrator import calibrator as gx_cal

    generate = getattr(gx_cal, "__generate_xp_matrices_and_merge")  # module-private, not name-mangled
    # GaiaXPy prints "Reading input file..." while parsing its model files: keep stdout clean.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        matrices, _ = generate("calibrator", WAVELENGTH, "v375wi", "v142r")
        weights = {band: _photon_weight(band) for band in _BAND_RANGE}
    out = {}
    for band, (lo, hi) in _BAND_RANGE.items():
        inside = (WAVELENGTH >= lo) & (WAVELENGTH <= hi)
        design = np.asarray(matrices[band].get_design_matrix(), dtype=np.float64)  # (55, n_wl)
        design = design * inside[None, :]
        weight = weights[band]
        usable = inside & np.isfinite(weight) & (weight > 0) & np.any(design != 0, axis=0)
        a = (design[:, usable] * weight[usable][None, :]).T  # (n_used, 55): photon-space design
        ata = a.T @ a
        ata += _RIDGE * np.trace(ata) / N_COEF * np.eye(N_COEF)
        p = np.zeros((N_COEF, WAVELENGTH.size))
        p[:, usable] = np.linalg.solve(ata, a.T * weight[usable][None, :])
        out[band] = p
    return out


def _photon_weight(band: str) -> np.ndarray:
    """A R(lambda) lambda / hc: converts W m^-2 nm^-1 to photo-electrons, the space of the XP fit."""
    from gaiaxpy.calibrator.calibrator import ExternalInstrumentModel
    from gaiaxpy.config.paths import config_path
    from gaiaxpy.core import nature, satellite

    model = {"bp": "bpC03_v375wi", "rp": "rpC03_v142r"}[band]
    eim = ExternalInstrumentModel.from_config_csv(
        f"{config_path}/{model}_dispersion.csv", f"{config_path}/{model}_response.csv",
        f"{config_path}/{model}_bases.csv")
    response = np.clip(eim.get_response(WAVELENGTH), 0.0, None)
    hc = 1.0e9 * nature.C * nature.PLANCK
    return satellite.TELESCOPE_PUPIL_AREA * response * WAVELENGTH / hc


def project(sed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SEDs (n, n_wavelength) in W m^-2 nm^-1 -> (bp, rp) coefficients, each (n, 55)."""
    p = projection_matrices()
    return sed @ p["bp"].T, sed @ p["rp"].T


@functools.lru_cache(maxsize=1)
def photometry_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaia_DR3_Vega XpSampling tables of GaiaXPy: S_bp (55, 3), S_rp (55, 3), zero points (3,) for G, BP, RP."""
    from gaiaxpy import PhotometricSystem

    system = PhotometricSystem.Gaia_DR3_Vega.value
    if list(system.get_bands()) != ["G", "BP", "RP"]:
        raise RuntimeError(f"unexpected Gaia_DR3_Vega bands in this GaiaXPy: {system.get_bands()}")
    sampling = system.load_xpsampling_from_xml()
    return (np.asarray(sampling["bp"], float), np.asarray(sampling["rp"], float),
            np.asarray(system.get_zero_points(), float))


def synthetic_fluxes(bp: np.ndarray, rp: np.ndarray) -> np.ndarray:
    """(n, 3) synthetic G, BP, RP fluxes (GaiaXPy units, e-/s) of coefficient arrays (n, 55) each."""
    s_bp, s_rp, _ = photometry_tables()
    return bp @ s_bp + rp @ s_rp


def synthetic_mags(bp: np.ndarray, rp: np.ndarray) -> np.ndarray:
    """(n, 3) Gaia_DR3_Vega synthetic G, BP, RP magnitudes, as ``gaiaxpy.generate`` computes them."""
    _, _, zp = photometry_tables()
    flux = synthetic_fluxes(bp, rp)
    with np.errstate(invalid="ignore", divide="ignore"):
        return zp[None, :] - 2.5 * np.log10(flux)
