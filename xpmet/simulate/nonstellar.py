"""Non-stellar XP sources: quasars and DA white dwarfs, so that quality flags can be measured.

A share of the XP sources (``nonstellar_fraction``, half quasars, half white dwarfs) is replaced by
sources that no metallicity model should trust; no survey observes them and truth.fits names their
class (``source_class``). They go through the same instrument model (GaiaXPy projection), XP noise
and gaia_source error models as the stars, so only their spectra differ.

- Quasars: power-law continuum ``f_nu ~ nu^alpha`` (alpha ~ N(-0.5, 0.3)) with the broad emission lines
  of the SDSS composite (Vanden Berk et al. 2001: Ly-alpha, Si IV, C IV, C III], Mg II, H-gamma,
  H-beta, [O III], H-alpha; rest equivalent widths scattered by 0.25 dex, FWHM 2,500-6,000 km/s),
  redshifted by z ~ U(0.1, 3.5); the Ly-alpha forest (tau_eff = 0.0018 (1+z)^3.92) and the Lyman
  limit blueward. Galactic dust only (the full column, A0 = 0.12 / sin|b|); parallax and proper
  motion zero (plus Gaia's noise), no radial velocity. Fainter than stars: G from counts ~10^(0.6 G),
  14 < G < 17.65.
- White dwarfs (DA): Planck continuum at Teff log-uniform in 8,000-40,000 K, log g ~ N(8.0, 0.2),
  0.6 Msun; pressure-broadened Balmer lines H-alpha to H8 (widths ~ 3-6 nm, growing with log g,
  strongest near 12,500 K) and a weak Balmer jump; thin-disc kinematics, distance from the SED as
  for stars (so they are nearby). G from counts ~10^(0.45 G), 11 < G < 17.65.
"""
from __future__ import annotations

import numpy as np

from xpmet.simulate.xp_model import WAVELENGTH

STAR, QUASAR, WHITE_DWARF = 0, 1, 2
CLASSES = np.array(["star", "quasar", "white_dwarf"])
#: rest wavelength (nm), rest equivalent width (nm), of the strongest quasar lines
QSO_LINES = ((121.6, 9.2), (139.8, 0.8), (154.9, 2.4), (190.9, 2.1), (279.8, 3.2), (434.0, 0.4),
             (486.1, 4.6), (500.7, 1.3), (656.3, 19.5))
_C_KMS = 299792.458
_HUBBLE_PC = _C_KMS / 70.0 * 1e6  # c / H0 in pc: a distance that makes the parallax vanish


def assign(rng, stars, fraction: float) -> None:
    """Turn ``fraction`` of the XP sources into quasars and white dwarfs, in place (half each)."""
    from xpmet.simulate import galaxy

    xp = np.flatnonzero(stars.has_xp)
    n = int(round(fraction * xp.size))
    if n == 0:
        return
    pick = rng.choice(xp, n, replace=False)
    qso, wd = pick[: n // 2], pick[n // 2:]
    stars.kind[qso], stars.kind[wd] = QUASAR, WHITE_DWARF
    z = rng.uniform(0.1, 3.5, qso.size)
    stars.redshift[qso] = z
    for k in ("teff", "logg", "feh", "alpha_fe", "mass", "radius"):
        getattr(stars, k)[qso] = np.nan
    stars.g_target[qso] = galaxy._draw_g(rng, qso.size, 14.0, galaxy.G_XP_LIMIT, slope=0.6)
    stars.teff[wd] = np.exp(rng.uniform(np.log(8000.0), np.log(40000.0), wd.size))
    stars.logg[wd] = rng.normal(8.0, 0.2, wd.size)
    stars.feh[wd], stars.alpha_fe[wd] = np.nan, np.nan
    stars.mass[wd] = 0.6
    stars.radius[wd] = np.sqrt(galaxy._G_NEWTON_CGS * 0.6 * galaxy._MSUN_G / 10.0 ** stars.logg[wd]) / galaxy._RSUN_CM
    stars.population[wd] = 0  # nearby: thin-disc kinematics
    stars.g_target[wd] = galaxy._draw_g(rng, wd.size, 11.0, galaxy.G_XP_LIMIT, slope=0.45)


def _gauss(center, sigma):
    return np.exp(-0.5 * ((WAVELENGTH[None, :] - center) / sigma) ** 2)


def white_dwarf_absorption(teff, logg) -> np.ndarray:
    """Transmission (n, n_wavelength) of a DA atmosphere: broad Balmer lines and a weak jump."""
    teff = np.asarray(teff, float)[:, None]
    logg = np.asarray(logg, float)[:, None]
    strength = np.exp(-0.5 * ((np.log10(teff) - np.log10(12500.0)) / 0.17) ** 2)
    broad = 10.0 ** (0.25 * (logg - 8.0))  # Stark broadening grows with density
    tau = np.zeros((teff.shape[0], WAVELENGTH.size))
    for center, depth, width in ((656.3, 0.9, 3.0), (486.1, 1.1, 4.0), (434.0, 1.0, 4.5), (410.2, 0.9, 5.0),
                                 (397.0, 0.7, 5.0), (388.9, 0.5, 5.0)):
        tau += depth * strength * _gauss(center, width * broad)
    wl = WAVELENGTH[None, :]
    tau += 0.3 * strength * (wl < 364.6)
    return np.exp(-tau)


def quasar_sed(rng, z) -> np.ndarray:
    """Observed-frame quasar SEDs (n, n_wavelength), arbitrary normalisation (no Galactic dust)."""
    z = np.asarray(z, float)[:, None]
    n = z.shape[0]
    alpha_nu = rng.normal(-0.5, 0.3, (n, 1))
    wl = WAVELENGTH[None, :]
    rest = wl / (1.0 + z)
    cont = (rest / 300.0) ** (-2.0 - alpha_nu)  # f_lambda ~ lambda^(-2-alpha_nu)
    lines = np.zeros((n, WAVELENGTH.size))
    fwhm = rng.uniform(2500.0, 6000.0, (n, 1))
    for center, ew in QSO_LINES:
        obs = center * (1.0 + z)
        sigma = obs * fwhm / _C_KMS / 2.3548
        ew_obs = ew * (1.0 + z) * 10.0 ** rng.normal(0.0, 0.25, (n, 1))
        cont_at = (center / 300.0) ** (-2.0 - alpha_nu)
        lines += ew_obs * cont_at * np.exp(-0.5 * ((wl - obs) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    spec = cont + lines
    z_abs = wl / 121.567 - 1.0  # Ly-alpha forest: absorbers between us and the quasar
    forest = (rest < 121.567) & (z_abs > 0)
    spec = np.where(forest, spec * np.exp(-0.0018 * np.clip(1.0 + z_abs, 1.0, None) ** 3.92), spec)
    return np.where(rest < 91.2, 0.0, spec)


def quasar_distance_pc(z) -> np.ndarray:
    """cz/H0 (pc): only there so that parallax and proper motion come out as zero."""
    return np.asarray(z, float) * _HUBBLE_PC
