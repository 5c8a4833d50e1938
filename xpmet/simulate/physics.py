"""Per-star physics for one batch: distance, extinction, kinematics, true XP coefficients and G/BP/RP.

The distance is solved so that the star's apparent G (absolute G from its own SED, plus the
extinction along the line of sight, which itself grows with distance) matches the drawn target;
then the final SED (with dust) is projected onto the XP bases and phot_g_mean_mag is GaiaXPy's
synthetic G of those noise-free coefficients.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xpmet.simulate import galaxy, nonstellar, sed, xp_model

_PC_M = 3.0857e16
_RSUN_M = 6.957e8


@dataclass
class Physics:
    distance_pc: np.ndarray
    a0: np.ndarray
    ag: np.ndarray  # extinction in G (synthetic G with dust minus without)
    ebpminrp: np.ndarray
    pm_l: np.ndarray
    pm_b: np.ndarray
    radial_velocity: np.ndarray
    bp_true: np.ndarray  # (n, 55)
    rp_true: np.ndarray
    mags: np.ndarray  # (n, 3) true synthetic G, BP, RP (with dust)


def _sed(stars: galaxy.Stars, ratio, a0) -> np.ndarray:
    """Stellar SEDs, with a white dwarf's atmosphere where the source is one."""
    out = sed.sed(stars.teff, stars.logg, stars.feh, stars.alpha_fe, ratio, a0)
    wd = stars.kind == nonstellar.WHITE_DWARF
    if wd.any():
        dust = 10.0 ** (-0.4 * np.asarray(a0, float)[wd, None] * sed._EXTINCTION[None, :])
        out[wd] = (sed.planck(stars.teff[wd]) * (np.pi * np.asarray(ratio, float)[wd, None] ** 2)
                   * nonstellar.white_dwarf_absorption(stars.teff[wd], stars.logg[wd]) * dust)
    return out


def compute(rng, stars: galaxy.Stars) -> Physics:
    n = len(stars)
    qso = stars.kind == nonstellar.QUASAR
    if qso.any():  # stellar physics on placeholders, replaced below (quasars have no Teff or radius)
        stars = stars.take(np.arange(n))
        stars.teff[qso], stars.logg[qso], stars.feh[qso], stars.alpha_fe[qso] = 5000.0, 4.5, 0.0, 0.0
        stars.radius[qso] = 1.0
    r10 = stars.radius * _RSUN_M / (10.0 * _PC_M)
    zero = np.zeros(n)
    bp0, rp0 = xp_model.project(_sed(stars, r10, zero))
    abs_mags = xp_model.synthetic_mags(bp0, rp0)
    m_g = abs_mags[:, 0]
    a0 = zero.copy()
    for _ in range(6):  # fixed point: distance <-> extinction (A_G ~ 0.85 A0 for the guess)
        dist = 10.0 ** ((stars.g_target - m_g - 0.85 * a0 + 5.0) / 5.0)
        dist = np.clip(dist, 5.0, 150_000.0)
        a0 = galaxy.extinction_a0(stars.b, dist)
    ratio = (stars.radius * _RSUN_M) / (dist * _PC_M)
    bp, rp = xp_model.project(_sed(stars, ratio, a0))
    mags = xp_model.synthetic_mags(bp, rp)
    unred = abs_mags + 5.0 * np.log10(dist / 10.0)[:, None]
    if qso.any():
        _quasars(rng, stars, qso, dist, a0, bp, rp, mags, unred)
    ext = mags - unred
    pm_l, pm_b, rv = galaxy.kinematics(rng, stars.population, stars.l, stars.b, dist)
    rv[qso] = np.nan
    return Physics(distance_pc=dist, a0=a0, ag=ext[:, 0], ebpminrp=ext[:, 1] - ext[:, 2], pm_l=pm_l, pm_b=pm_b,
                   radial_velocity=rv, bp_true=bp, rp_true=rp, mags=mags)


def _quasars(rng, stars, qso, dist, a0, bp, rp, mags, unred):
    """Quasar rows, in place: redshifted SED behind the whole dust column, scaled to the target G."""
    z = stars.redshift[qso]
    dist[qso] = nonstellar.quasar_distance_pc(z)
    a0[qso] = galaxy.extinction_a0(stars.b[qso], dist[qso])
    intrinsic = nonstellar.quasar_sed(rng, z)
    dust = 10.0 ** (-0.4 * a0[qso, None] * sed._EXTINCTION[None, :])
    b_int, r_int = xp_model.project(intrinsic)
    b_obs, r_obs = xp_model.project(intrinsic * dust)
    scale = 10.0 ** (-0.4 * (stars.g_target[qso] - xp_model.synthetic_mags(b_obs, r_obs)[:, 0]))[:, None]
    bp[qso], rp[qso] = b_obs * scale, r_obs * scale
    mags[qso] = xp_model.synthetic_mags(bp[qso], rp[qso])
    unred[qso] = xp_model.synthetic_mags(b_int * scale, r_int * scale)
