"""The simulated Galaxy: who the stars are and where they sit on the sky (cheap, all stars at once).

Modelling choices (documented in ``xpmet simulate --help`` too):
- three populations with magnitude-limited mixing fractions: thin disc (solar [Fe/H], scale height
  seen as sin|b| ~ Laplace(0.2)), thick disc ([Fe/H] ~ -0.6, alpha-rich, sin|b| ~ Laplace(0.4)),
  halo ([Fe/H] ~ -1.5 with a metal-poor tail down to -4, isotropic on the sky, fast);
- evolutionary states: main sequence and subgiants, red giant branch (hotter when metal-poor), red
  clump (metal-rich giants only), blue horizontal branch (halo); masses from simple relations, radius
  from logg and mass;
- apparent G drawn from counts rising as 10^(0.3 G); XP stars have G <= 17.65, fainter sources
  (17.65-20.8, no XP) come on top; the distance follows from the SED's absolute G and the extinction;
- a fraction of faint sources are moved 1-2 arcsec from an XP star (optical pairs), so crossmatching
  meets realistic confusion.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

G_XP_LIMIT = 17.65
POPULATIONS = np.array(["thin", "thick", "halo"])
_G_NEWTON_CGS = 6.674e-8
_MSUN_G = 1.989e33
_RSUN_CM = 6.957e10


@dataclass
class Stars:
    """Column arrays of intrinsic properties; every array has the same length."""

    population: np.ndarray  # int index into POPULATIONS
    teff: np.ndarray
    logg: np.ndarray
    feh: np.ndarray
    alpha_fe: np.ndarray
    mass: np.ndarray  # solar masses
    radius: np.ndarray  # solar radii
    l: np.ndarray  # noqa: E741  Galactic longitude, degrees
    b: np.ndarray
    g_target: np.ndarray  # apparent G the distance is solved for
    has_xp: np.ndarray
    kind: np.ndarray  # nonstellar.STAR, QUASAR or WHITE_DWARF
    redshift: np.ndarray  # quasars only (NaN otherwise)

    def __len__(self) -> int:
        return self.teff.size

    def take(self, idx) -> "Stars":
        return Stars(**{k: v[idx] for k, v in self.__dict__.items()})


def _draw_metallicity(rng, pop):
    n = pop.size
    feh = np.empty(n)
    alpha = np.empty(n)
    thin, thick, halo = (pop == 0), (pop == 1), (pop == 2)
    feh[thin] = rng.normal(-0.05, 0.22, thin.sum())
    feh[thick] = rng.normal(-0.60, 0.28, thick.sum())
    nh = halo.sum()
    tail = rng.random(nh) < 0.12  # metal-poor tail: exponential below -2.3
    feh[halo] = np.where(tail, -2.3 - rng.exponential(0.45, nh), rng.normal(-1.45, 0.45, nh))
    # Reflect rather than clip at the grid edges (-4, +0.6): no pile-up of stars at the limits.
    feh = np.where(feh < -4.0, -8.0 - feh, feh)
    feh = np.clip(np.where(feh > 0.6, 1.2 - feh, feh), -4.0, 0.6)
    alpha[thin] = np.clip(-0.25 * feh[thin], -0.05, 0.2) + rng.normal(0, 0.03, thin.sum())
    alpha[thick] = 0.28 - 0.1 * np.clip(feh[thick] + 0.5, 0, 1) + rng.normal(0, 0.04, thick.sum())
    alpha[halo] = np.where(feh[halo] > -1.2, 0.15, 0.32) + rng.normal(0, 0.06, nh)
    return feh, alpha


def _draw_evolution(rng, pop, feh, faint):
    """Teff, logg, mass for each star: main sequence/subgiant, RGB, red clump, BHB."""
    n = pop.size
    giant_prob = np.where(faint, 0.2, np.array([0.32, 0.4, 0.55])[pop])
    state = np.where(rng.random(n) < giant_prob, 1, 0)  # 0 dwarf/subgiant, 1 giant
    u = rng.random(n)
    state[(state == 1) & (u < 0.3) & (feh > -1.0)] = 2  # red clump
    state[(state == 1) & (pop == 2) & (u > 0.9)] = 3  # blue horizontal branch
    teff = np.empty(n)
    logg = np.empty(n)
    mass = np.empty(n)
    d = state == 0
    old = d & (pop > 0)  # old populations: no stars hotter than the turn-off
    teff[d] = np.clip(rng.normal(5750, 750, d.sum()), 3500, 7600)
    teff[old] = np.clip(rng.normal(5650, 450, old.sum()), 3800, 6500)
    mass[d] = (teff[d] / 5772.0) ** 1.6
    logg[d] = 4.438 - 0.8 * np.log10(mass[d]) + rng.normal(0, 0.05, d.sum())
    sub = d & (rng.random(n) < 0.15) & (teff > 5000) & (teff < 6600)
    logg[sub] = rng.uniform(3.5, 4.1, sub.sum())
    rgb = state == 1
    logg[rgb] = rng.uniform(0.8, 3.6, rgb.sum())
    teff[rgb] = np.clip(4550 + 330 * (logg[rgb] - 2.5) - 250 * feh[rgb] + rng.normal(0, 70, rgb.sum()), 3600, 5600)
    rc = state == 2
    logg[rc] = rng.normal(2.45, 0.1, rc.sum())
    teff[rc] = 4750 - 150 * feh[rc] + rng.normal(0, 80, rc.sum())
    bhb = state == 3
    teff[bhb] = rng.uniform(7500, 9500, bhb.sum())
    logg[bhb] = rng.uniform(3.0, 3.5, bhb.sum())
    mass[~d] = np.array([1.2, 1.0, 0.8])[pop[~d]]
    mass[bhb] = 0.6
    radius = np.sqrt(_G_NEWTON_CGS * mass * _MSUN_G / 10.0**logg) / _RSUN_CM
    return teff, logg, mass, radius


def _draw_g(rng, n, lo, hi, slope=0.3):
    """Apparent magnitudes with counts ~ 10^(slope G) between lo and hi (inverse CDF)."""
    a, b = 10 ** (slope * lo), 10 ** (slope * hi)
    return np.log10(a + rng.random(n) * (b - a)) / slope


def draw_stars(rng: np.random.Generator, n_xp: int, n_faint: int) -> Stars:
    """n_xp stars with XP (G <= 17.65) followed by n_faint fainter sources without XP."""
    n = n_xp + n_faint
    faint = np.arange(n) >= n_xp
    pop = np.where(faint, rng.choice(3, n, p=[0.6, 0.27, 0.13]), rng.choice(3, n, p=[0.72, 0.2, 0.08]))
    feh, alpha = _draw_metallicity(rng, pop)
    teff, logg, mass, radius = _draw_evolution(rng, pop, feh, faint)
    scale = np.array([0.2, 0.4, 10.0])[pop]
    sinb = np.where(pop == 2, rng.uniform(-1, 1, n), rng.laplace(0, 1, n) * scale)
    sinb = np.where(np.abs(sinb) > 1, rng.uniform(-1, 1, n), sinb)
    b = np.degrees(np.arcsin(sinb))
    l = rng.uniform(0, 360, n)  # noqa: E741
    g = np.where(faint, _draw_g(rng, n, G_XP_LIMIT, 20.8), _draw_g(rng, n, 6.0, G_XP_LIMIT))
    return Stars(population=pop, teff=teff, logg=logg, feh=feh, alpha_fe=alpha, mass=mass, radius=radius,
                 l=l, b=b, g_target=g, has_xp=~faint, kind=np.zeros(n, np.int8), redshift=np.full(n, np.nan))


def extinction_a0(b_deg: np.ndarray, distance_pc: np.ndarray) -> np.ndarray:
    """A0 from a plane-parallel dust layer: 0.12 mag per unit airmass, scale height 120 pc, capped at 6."""
    sinb = np.maximum(np.abs(np.sin(np.radians(b_deg))), 0.02)
    a_inf = np.minimum(0.12 / sinb, 6.0)
    return a_inf * (1.0 - np.exp(-distance_pc * sinb / 120.0))


# Heliocentric mean velocity and dispersion (U, V, W) per population, km/s.
_V_MEAN = np.array([[0.0, -12.0, 0.0], [0.0, -50.0, 0.0], [0.0, -225.0, 0.0]])
_V_SIGMA = np.array([[35.0, 25.0, 18.0], [65.0, 45.0, 40.0], [150.0, 100.0, 95.0]])
_K = 4.740470446  # km/s per (mas/yr * kpc)


def kinematics(rng, population, l, b, distance_pc):  # noqa: E741
    """Proper motions in Galactic coordinates (mas/yr) and radial velocity (km/s) from (U, V, W) draws."""
    v = _V_MEAN[population] + rng.normal(size=(population.size, 3)) * _V_SIGMA[population]
    lr, br = np.radians(l), np.radians(b)
    e_l = np.stack([-np.sin(lr), np.cos(lr), np.zeros_like(lr)], 1)
    e_b = np.stack([-np.sin(br) * np.cos(lr), -np.sin(br) * np.sin(lr), np.cos(br)], 1)
    e_r = np.stack([np.cos(br) * np.cos(lr), np.cos(br) * np.sin(lr), np.sin(br)], 1)
    d_kpc = distance_pc / 1000.0
    pm_l = (v * e_l).sum(1) / (_K * d_kpc)
    pm_b = (v * e_b).sum(1) / (_K * d_kpc)
    return pm_l, pm_b, (v * e_r).sum(1)


def galactic_to_icrs(l, b, pm_l_cosb, pm_b):  # noqa: E741
    """(ra, dec, pmra, pmdec) from Galactic positions and proper motions, via astropy."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    c = SkyCoord(l=l * u.deg, b=b * u.deg, pm_l_cosb=pm_l_cosb * u.mas / u.yr, pm_b=pm_b * u.mas / u.yr,
                 frame="galactic").icrs
    return c.ra.deg, c.dec.deg, c.pm_ra_cosdec.to_value(u.mas / u.yr), c.pm_dec.to_value(u.mas / u.yr)


def icrs_to_galactic(ra, dec):
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    c = SkyCoord(ra=ra * u.deg, dec=dec * u.deg, frame="icrs").galactic
    return c.l.deg, c.b.deg


def propagate(ra, dec, pmra, pmdec, dt_years):
    """Linear epoch propagation on the tangent plane (pmra includes cos dec); fine for |dt| <= 20 yr."""
    dec2 = dec + pmdec * dt_years / 3.6e6
    ra2 = (ra + pmra * dt_years / 3.6e6 / np.cos(np.radians(dec))) % 360.0
    return ra2, np.clip(dec2, -90.0, 90.0)


def offset_position(rng, ra, dec, sep_arcsec):
    """Positions sep_arcsec away from (ra, dec) at a random position angle."""
    pa = rng.uniform(0, 2 * np.pi, ra.size)
    dra = sep_arcsec * np.sin(pa) / 3600.0 / np.cos(np.radians(dec))
    ddec = sep_arcsec * np.cos(pa) / 3600.0
    return (ra + dra) % 360.0, np.clip(dec + ddec, -90.0, 90.0)
