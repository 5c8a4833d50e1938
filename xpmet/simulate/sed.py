"""A physically motivated stellar SED: Planck continuum, metal line blanketing, gravity features, dust.

Simple but honest, and vectorised over stars (arrays of shape (n,) in, (n, n_wavelength) out):
- continuum: Planck function at Teff, scaled by pi (R/d)^2 (flux at the observer, W m^-2 nm^-1);
- metal line blanketing: optical depth ``tau = k(Teff) Z^0.6 (400 nm / lambda)^4`` with Z = 10^[M/H],
  [M/H] = [Fe/H] + 0.6 [alpha/Fe]; strongest in the blue and in cool stars (what XP metallicities
  mostly measure), plus the Ca II H&K pair whose depth saturates with metallicity;
- gravity features: the Balmer jump (a drop blueward of 364.6 nm, deeper at low logg and near 8-9 kK),
  Balmer lines (deepest near 9 kK), Mg b (517 nm; stronger in dwarfs and alpha-rich stars) and the
  Ca II triplet (850-866 nm; stronger in giants, growing with metallicity); TiO bands below 4000 K;
- extinction: Cardiff-Clayton-Mathis (1989) law with R_V = 3.1, A_V = A0 (Gaia's A0 is the extinction
  at 541.4 nm, within a few per cent of A_V).
Features are Gaussians a few nm wide: XP's resolution (R ~ 30-100) smooths them anyway; what matters
is that their integrated strengths depend on Teff, logg, [Fe/H] and [alpha/Fe] in the right direction.
"""
from __future__ import annotations

import numpy as np

from xpmet.simulate.xp_model import WAVELENGTH

_H, _C, _K = 6.62607015e-34, 2.99792458e8, 1.380649e-23
_WL_M = WAVELENGTH * 1e-9


def planck(teff: np.ndarray) -> np.ndarray:
    """B_lambda(T) in W m^-2 nm^-1 sr^-1, shape (n, n_wavelength)."""
    x = _H * _C / (_WL_M[None, :] * _K * np.asarray(teff, float)[:, None])
    return 2 * _H * _C**2 / _WL_M[None, :] ** 5 / np.expm1(x) * 1e-9


def _gauss(center: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((WAVELENGTH - center) / width) ** 2)[None, :]


def ccm89_alambda_over_av(wavelength_nm: np.ndarray = WAVELENGTH, r_v: float = 3.1) -> np.ndarray:
    """A_lambda / A_V of Cardelli, Clayton & Mathis (1989), infrared and optical branches."""
    x = 1000.0 / np.asarray(wavelength_nm, float)  # inverse microns
    a = np.empty_like(x)
    b = np.empty_like(x)
    ir = x < 1.1
    a[ir], b[ir] = 0.574 * x[ir] ** 1.61, -0.527 * x[ir] ** 1.61
    y = x[~ir] - 1.82
    a[~ir] = (1 + 0.17699 * y - 0.50447 * y**2 - 0.02427 * y**3 + 0.72085 * y**4 + 0.01979 * y**5
              - 0.77530 * y**6 + 0.32999 * y**7)
    b[~ir] = (1.41338 * y + 2.28305 * y**2 + 1.07233 * y**3 - 5.38434 * y**4 - 0.62251 * y**5
              + 5.30260 * y**6 - 2.09002 * y**7)
    return a + b / r_v


_EXTINCTION = ccm89_alambda_over_av()


def absorption(teff, logg, feh, alpha_fe) -> np.ndarray:
    """Transmission factor (n, n_wavelength) in (0, 1] from lines, bands and the Balmer jump."""
    teff = np.asarray(teff, float)[:, None]
    logg = np.asarray(logg, float)[:, None]
    feh = np.asarray(feh, float)[:, None]
    alpha = np.asarray(alpha_fe, float)[:, None]
    wl = WAVELENGTH[None, :]
    mh = feh + 0.6 * alpha
    z = 10.0 ** np.clip(mh, -4.0, 1.0)
    cool = np.clip((7500.0 - teff) / 2500.0, 0.0, 2.2)  # blanketing fades in hot stars
    tau = 0.55 * cool * z**0.6 * (400.0 / wl) ** 4
    # Ca II H&K: curve of growth saturates, so depth ~ z^0.3; still present in metal-poor stars.
    tau += 1.6 * cool * z**0.3 * (_gauss(393.4, 2.5) + _gauss(396.8, 2.5))
    # Mg b triplet, stronger at high gravity and with alpha enhancement.
    tau += 0.35 * cool * (10.0 ** (feh + alpha)) ** 0.5 * np.clip((logg - 1.0) / 3.5, 0.2, 1.2) * _gauss(517.0, 2.5)
    # Ca II triplet, stronger at low gravity (giants) and with metallicity.
    cat = _gauss(849.8, 1.5) + _gauss(854.2, 1.8) + _gauss(866.2, 1.8)
    tau += 0.5 * (10.0 ** (feh + alpha)) ** 0.4 * np.clip(1.3 - logg / 5.0, 0.3, 1.3) * cat
    # Balmer lines: strongest near 9000 K.
    hot = np.exp(-0.5 * ((teff - 9000.0) / 2500.0) ** 2)
    for center, depth in ((656.3, 0.9), (486.1, 0.8), (434.0, 0.7), (410.2, 0.6)):
        tau += depth * (0.15 + hot) * _gauss(center, 3.0)
    # Balmer jump: opacity step blueward of 364.6 nm, deeper at low gravity and near 8-9 kK.
    jump = (0.25 + 0.9 * hot) * np.clip(1.4 - logg / 6.0, 0.5, 1.4)
    tau += jump * (wl < 364.6) * (1.0 - np.exp(-(364.6 - np.minimum(wl, 364.6)) / 6.0))
    # TiO bands in M dwarfs and giants (metal-sensitive).
    tio = np.clip((4000.0 - teff) / 800.0, 0.0, 1.5) * z**0.5
    for center, width in ((476.0, 8.0), (517.0, 6.0), (622.0, 10.0), (705.0, 12.0), (770.0, 15.0), (845.0, 12.0)):
        tau += 0.8 * tio * _gauss(center, width)
    return np.exp(-tau)


def sed(teff, logg, feh, alpha_fe, radius_over_distance, a0) -> np.ndarray:
    """Observed SED (n, n_wavelength) in W m^-2 nm^-1: pi B_lambda (R/d)^2 x absorption x 10^(-0.4 A_lambda)."""
    scale = np.pi * np.asarray(radius_over_distance, float) ** 2
    dust = 10.0 ** (-0.4 * np.asarray(a0, float)[:, None] * _EXTINCTION[None, :])
    return planck(teff) * scale[:, None] * absorption(teff, logg, feh, alpha_fe) * dust
