"""The gaia_source view of a batch: observed astrometry and photometry with Gaia DR3-like errors.

Error models (simple functions of G, chosen to match the DR3 documentation's typical values):
parallax_error = sqrt(0.016^2 + (0.04 * 10^(0.2 (G - 15)))^2) mas (0.02 at G<13, 0.1 at 17, 0.4 at 20);
proper-motion errors the same in mas/yr, position errors 0.8x in mas; G flux relative error
0.0003-0.01, BP/RP 0.001-0.05; the BP/RP excess factor follows the colour relation and G-dependent
scatter of Riello et al. (2021), plus 0.15 for sources with a close neighbour. Radial velocities
for G < 14.5 and 3100 < Teff < 7000 K.
GSP-Phot parameters (XP stars only): Teff +-3 %, logg +-0.2, a metallicity biased by -0.2 dex with
0.35 dex scatter (GSP-Phot's known weakness), A_G +-0.1 mag.
"""
from __future__ import annotations

import numpy as np

from xpmet.ml.ood import excess_factor_expected, excess_factor_sigma
from xpmet.simulate.writers import Column

REF_EPOCH = 2016.0
G_ZP, BP_ZP, RP_ZP = 25.6873668671, 25.3385422158, 24.7478955012  # Gaia DR3 Vega zero points (e-/s)

COLUMNS = [
    Column("source_id", "int64", None, "Unique source identifier (unique within a particular Data Release)"),
    Column("ref_epoch", "float64", "yr", "Reference epoch"),
    Column("ra", "float64", "deg", "Right ascension"),
    Column("ra_error", "float32", "mas", "Standard error of right ascension"),
    Column("dec", "float64", "deg", "Declination"),
    Column("dec_error", "float32", "mas", "Standard error of declination"),
    Column("parallax", "float64", "mas", "Parallax"),
    Column("parallax_error", "float32", "mas", "Standard error of parallax"),
    Column("pmra", "float64", "mas / yr", "Proper motion in right ascension direction"),
    Column("pmra_error", "float32", "mas / yr", "Standard error of proper motion in right ascension direction"),
    Column("pmdec", "float64", "mas / yr", "Proper motion in declination direction"),
    Column("pmdec_error", "float32", "mas / yr", "Standard error of proper motion in declination direction"),
    Column("ruwe", "float32", None, "Renormalised unit weight error"),
    Column("phot_g_mean_flux", "float64", "electron / s", "G-band mean flux"),
    Column("phot_g_mean_flux_error", "float32", "electron / s", "Error on G-band mean flux"),
    Column("phot_g_mean_mag", "float32", "mag", "G-band mean magnitude"),
    Column("phot_bp_mean_flux", "float64", "electron / s", "Integrated BP mean flux"),
    Column("phot_bp_mean_flux_error", "float32", "electron / s", "Error on the integrated BP mean flux"),
    Column("phot_bp_mean_mag", "float32", "mag", "Integrated BP mean magnitude"),
    Column("phot_rp_mean_flux", "float64", "electron / s", "Integrated RP mean flux"),
    Column("phot_rp_mean_flux_error", "float32", "electron / s", "Error on the integrated RP mean flux"),
    Column("phot_rp_mean_mag", "float32", "mag", "Integrated RP mean magnitude"),
    Column("phot_bp_rp_excess_factor", "float32", None, "BP/RP excess factor"),
    Column("bp_rp", "float32", "mag", "BP - RP colour"),
    Column("radial_velocity", "float32", "km / s", "Radial velocity"),
    Column("radial_velocity_error", "float32", "km / s", "Radial velocity error"),
    Column("has_xp_continuous", "bool", None, "Flag indicating the availability of mean BP/RP spectrum in continuous representation for this source"),
    Column("l", "float64", "deg", "Galactic longitude"),
    Column("b", "float64", "deg", "Galactic latitude"),
    Column("teff_gspphot", "float32", "K", "Effective temperature from GSP-Phot Aeneas best library using BP/RP spectra"),
    Column("logg_gspphot", "float32", "log(cm.s**-2)", "Surface gravity from GSP-Phot Aeneas best library using BP/RP spectra"),
    Column("mh_gspphot", "float32", "dex", "Iron abundance from GSP-Phot Aeneas best library using BP/RP spectra"),
    Column("ag_gspphot", "float32", "mag", "Extinction in G band from GSP-Phot Aeneas best library using BP/RP spectra"),
    Column("ebpminrp_gspphot", "float32", "mag", "Reddening E(G_BP - G_RP) from GSP-Phot Aeneas best library using BP/RP spectra"),
]


def parallax_error(g: np.ndarray) -> np.ndarray:
    return np.sqrt(0.016**2 + (0.04 * 10.0 ** (0.2 * (g - 15.0))) ** 2)


def observe(rng, *, source_id, ra, dec, parallax, pmra, pmdec, mags, teff, logg, feh, ag, ebpminrp,
            radial_velocity, has_xp, l, b, paired):  # noqa: E741
    """Column dict of gaia_source values for one batch (true values in, observed values out)."""
    n = source_id.size
    g, bp, rp = mags[:, 0], mags[:, 1], mags[:, 2]
    plx_e = parallax_error(g)
    pos_e = 0.8 * plx_e
    norm = rng.normal(size=(n, 12))
    mas = 1.0 / 3.6e6
    g_rel = np.sqrt(0.0003**2 + (0.001 * 10 ** (0.4 * (g - 17.0))) ** 2)
    xp_rel = np.sqrt(0.001**2 + (0.004 * 10 ** (0.4 * (g - 17.0))) ** 2)
    g_flux = 10 ** (-0.4 * (g - G_ZP)) * (1 + g_rel * norm[:, 0])
    bp_flux = 10 ** (-0.4 * (bp - BP_ZP)) * (1 + xp_rel * norm[:, 1])
    rp_flux = 10 ** (-0.4 * (rp - RP_ZP)) * (1 + xp_rel * norm[:, 2])
    g_obs = G_ZP - 2.5 * np.log10(g_flux)
    bp_obs = BP_ZP - 2.5 * np.log10(bp_flux)
    rp_obs = RP_ZP - 2.5 * np.log10(rp_flux)
    # the colour relation of clean isolated sources and its scatter (Riello et al. 2021); pairs blend
    excess = (excess_factor_expected(bp_obs - rp_obs) + excess_factor_sigma(g) * norm[:, 3]
              + np.where(paired, 0.15, 0.0))
    has_rv = (g < 14.5) & (teff > 3100) & (teff < 7000)
    rv_e = np.where(has_rv, 0.3 + 4.0 * 10 ** (0.4 * (g - 14.5)), np.nan)
    gsp = has_xp & (g < 19)
    ruwe = 1.0 + np.abs(0.04 * norm[:, 4]) + np.where(rng.random(n) < 0.05, rng.exponential(0.6, n), 0.0)
    ruwe = np.where(paired, ruwe + 0.5, ruwe)

    def masked(v, ok):
        return np.where(ok, v, np.nan)

    return {
        "source_id": source_id,
        "ref_epoch": np.full(n, REF_EPOCH),
        "ra": (ra + pos_e * norm[:, 5] * mas / np.cos(np.radians(dec))) % 360.0,
        "ra_error": pos_e.astype(np.float32),
        "dec": dec + pos_e * norm[:, 6] * mas,
        "dec_error": pos_e.astype(np.float32),
        "parallax": parallax + plx_e * norm[:, 7],
        "parallax_error": plx_e.astype(np.float32),
        "pmra": pmra + plx_e * norm[:, 8],
        "pmra_error": plx_e.astype(np.float32),
        "pmdec": pmdec + plx_e * norm[:, 9],
        "pmdec_error": plx_e.astype(np.float32),
        "ruwe": ruwe.astype(np.float32),
        "phot_g_mean_flux": g_flux,
        "phot_g_mean_flux_error": (g_flux * g_rel).astype(np.float32),
        "phot_g_mean_mag": g_obs.astype(np.float32),
        "phot_bp_mean_flux": bp_flux,
        "phot_bp_mean_flux_error": (bp_flux * xp_rel).astype(np.float32),
        "phot_bp_mean_mag": bp_obs.astype(np.float32),
        "phot_rp_mean_flux": rp_flux,
        "phot_rp_mean_flux_error": (rp_flux * xp_rel).astype(np.float32),
        "phot_rp_mean_mag": rp_obs.astype(np.float32),
        "phot_bp_rp_excess_factor": excess.astype(np.float32),
        "bp_rp": (bp_obs - rp_obs).astype(np.float32),
        "radial_velocity": masked(radial_velocity + np.nan_to_num(rv_e) * norm[:, 10], has_rv).astype(np.float32),
        "radial_velocity_error": rv_e.astype(np.float32),
        "has_xp_continuous": has_xp.astype(bool),
        "l": l,
        "b": b,
        "teff_gspphot": masked(teff * (1 + 0.03 * norm[:, 11]), gsp).astype(np.float32),
        "logg_gspphot": masked(logg + 0.2 * rng.normal(size=n), gsp).astype(np.float32),
        "mh_gspphot": masked(feh - 0.2 + 0.35 * rng.normal(size=n), gsp).astype(np.float32),
        "ag_gspphot": masked(np.maximum(ag + 0.1 * rng.normal(size=n), 0), gsp).astype(np.float32),
        "ebpminrp_gspphot": masked(np.maximum(ebpminrp + 0.05 * rng.normal(size=n), 0), gsp).astype(np.float32),
    }
