"""Sky layout: ICRS positions, close pairs, Gaia-like source_ids and the HEALPix level-8 file partition.

A Gaia DR3 source_id carries its HEALPix level-12 nested index in its top bits
(``source_id // 2**35``); bulk files cover contiguous ranges of level-8 pixels
(``level12 // 4**4``). We rank the sources inside each level-12 pixel and add random low bits,
so ids are unique, look like Gaia's, and decode to the pixel of their 2016.0 position.
"""
from __future__ import annotations

import numpy as np

from xpmet.simulate import galaxy

ID_SHIFT = 2**35  # source_id // ID_SHIFT = HEALPix level-12 nested index
LEVEL12_PER_LEVEL8 = 4**4
N_LEVEL8 = 12 * 4**8


def healpix_level12(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    import astropy.units as u
    from astropy_healpix import HEALPix

    return HEALPix(nside=2**12, order="nested").lonlat_to_healpix(ra * u.deg, dec * u.deg).astype(np.int64)


def make_source_ids(rng, ra, dec) -> np.ndarray:
    hp = healpix_level12(ra, dec)
    order = np.argsort(hp, kind="stable")
    hp_sorted = hp[order]
    first = np.searchsorted(hp_sorted, hp_sorted, side="left")
    rank = np.arange(hp.size) - first
    low = rank.astype(np.int64) * 2**22 + rng.integers(1, 2**22, hp.size)
    ids = np.empty(hp.size, np.int64)
    ids[order] = hp_sorted * ID_SHIFT + low
    return ids


def file_ranges(source_ids: np.ndarray, rows_per_file: int) -> list[tuple[int, int]]:
    """Contiguous level-8 ranges [a, b] holding about rows_per_file sources each, covering the sphere."""
    lvl8 = np.sort(source_ids // ID_SHIFT // LEVEL12_PER_LEVEL8)
    n_files = max(1, int(np.ceil(lvl8.size / rows_per_file)))
    cuts = [int(lvl8[min(lvl8.size - 1, (k * lvl8.size) // n_files)]) for k in range(1, n_files)]
    bounds = sorted(set(c for c in cuts if c > 0))
    starts = [0] + bounds
    ends = [b - 1 for b in bounds] + [N_LEVEL8 - 1]
    return list(zip(starts, ends))


def file_stem(a: int, b: int) -> str:
    return f"{a:06d}-{b:06d}"


def layout(rng, stars: galaxy.Stars, pair_fraction: float):
    """ICRS (ra, dec) at 2016.0 for every star; a share of faint sources moved next to XP stars.

    Returns ra, dec, source_id, pair_of (index of the XP star a pair member sits next to, -1 if none).
    """
    n = len(stars)
    ra = np.empty(n)
    dec = np.empty(n)
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    c = SkyCoord(l=stars.l * u.deg, b=stars.b * u.deg, frame="galactic").icrs
    ra[:], dec[:] = c.ra.deg, c.dec.deg
    xp_idx = np.flatnonzero(stars.has_xp)
    faint_idx = np.flatnonzero(~stars.has_xp)
    n_pairs = min(faint_idx.size, int(round(pair_fraction * xp_idx.size)))
    pair_of = np.full(n, -1, np.int64)
    if n_pairs:
        movers = rng.choice(faint_idx, n_pairs, replace=False)
        anchors = rng.choice(xp_idx, n_pairs, replace=False)
        sep = rng.uniform(1.0, 2.0, n_pairs)
        ra[movers], dec[movers] = galaxy.offset_position(rng, ra[anchors], dec[anchors], sep)
        # The companion shares the anchor's sky neighbourhood: keep Galactic coordinates consistent.
        stars.l[movers], stars.b[movers] = galaxy.icrs_to_galactic(ra[movers], dec[movers])
        pair_of[movers] = anchors
    return ra, dec, make_source_ids(rng, ra, dec), pair_of
