"""Sky regions as small objects that check themselves and write their own SQL condition.

A region is valid once built (a bad one raises XpmetError saying what to change), and works on
any table or view with RA/Dec columns in degrees:

    >>> from xpmet.regions import Cone, Box, Polygon
    >>> sql, params = Cone(10.68, 41.27, 0.5).where()              # on columns ra, dec
    >>> sql, params = Box(350, -5, 10, 5).where("g.ra", "g.dec")   # crosses RA = 0
    >>> Polygon([120, -5, 135, -8, 138, 6, 124, 9]).where()

Conditions use q3c (``q3c_radial_query``, ``q3c_poly_query``) so the planner can use a
``q3c_ang2ipix(ra, dec)`` index; every value is a bound parameter, never text in the SQL.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xpmet.errors import XpmetError

#: q3c_poly_query refuses polygons wider than about this (its own message says ">~23 degrees").
MAX_POLYGON_DIAMETER = 23.0
#: q3c_radial_query returns wrong answers beyond 180 degrees (measured), so refuse them.
MAX_RADIUS = 180.0


def finite(name, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise XpmetError(f"{name} must be a number, not {value!r}") from None
    if not np.isfinite(v):
        raise XpmetError(f"{name} must be finite, not {value!r}")
    return v


def _ra(name, value) -> float:
    v = finite(name, value)
    if not -360.0 <= v <= 720.0:
        raise XpmetError(f"{name} = {v} is not a right ascension in degrees (expected 0..360)")
    return v % 360.0


def _dec(name, value) -> float:
    v = finite(name, value)
    if not -90.0 <= v <= 90.0:
        raise XpmetError(f"{name} = {v} is outside -90..90 degrees")
    return v


def _unit_vectors(ra, dec) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def separation(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle separation in degrees (vectorised; stable at small and large angles)."""
    a, b = _unit_vectors(ra1, dec1), _unit_vectors(ra2, dec2)
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1)))


class Region:
    """A sky region: ``where(ra, dec)`` gives (SQL condition with %(name)s placeholders, parameters)."""

    def where(self, ra: str = "ra", dec: str = "dec") -> tuple[str, dict]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Cone(Region):
    """Stars within ``radius`` degrees of (ra, dec)."""
    ra: float
    dec: float
    radius: float

    def __post_init__(self):
        object.__setattr__(self, "ra", _ra("RA", self.ra))
        object.__setattr__(self, "dec", _dec("DEC", self.dec))
        r = finite("RADIUS", self.radius)
        if not 0 < r <= MAX_RADIUS:
            raise XpmetError(f"RADIUS = {r}: a cone radius must be in (0, {MAX_RADIUS:g}] degrees")
        object.__setattr__(self, "radius", r)

    def where(self, ra="ra", dec="dec"):
        return (f"q3c_radial_query({ra}, {dec}, %(cone_ra)s, %(cone_dec)s, %(cone_radius)s)",
                dict(cone_ra=self.ra, cone_dec=self.dec, cone_radius=self.radius))

    def describe(self):
        return f"cone ra={self.ra} dec={self.dec} radius={self.radius}"


@dataclass(frozen=True)
class Box(Region):
    """ra1 <= RA <= ra2 and dec1 <= Dec <= dec2, in degrees; ra1 > ra2 means the box crosses RA = 0."""
    ra1: float
    dec1: float
    ra2: float
    dec2: float
    #: the q3c cone around the box that lets the index do the work: (ra, dec, radius)
    cone: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        ra1, ra2 = _ra("RA1", self.ra1), _ra("RA2", self.ra2)
        dec1, dec2 = _dec("DEC1", self.dec1), _dec("DEC2", self.dec2)
        if dec1 >= dec2:
            raise XpmetError(f"DEC1 ({dec1}) must be below DEC2 ({dec2})")
        if ra1 == ra2:
            raise XpmetError("RA1 and RA2 are equal: the box has no width")
        for k, v in dict(ra1=ra1, ra2=ra2, dec1=dec1, dec2=dec2).items():
            object.__setattr__(self, k, v)
        width = (ra2 - ra1) % 360.0
        ra_c, dec_c = (ra1 + width / 2) % 360.0, (dec1 + dec2) / 2
        # The farthest point of a region from an inner point lies on its boundary: sample the edges
        # densely and pad by one sample step, so the cone surely contains the box.
        n = 256
        t = np.linspace(0.0, 1.0, n)
        edge_ra = np.concatenate([ra1 + width * t, ra1 + width * t, np.full(n, ra1), np.full(n, ra1 + width)])
        edge_dec = np.concatenate([np.full(n, dec1), np.full(n, dec2), dec1 + (dec2 - dec1) * t,
                                   dec1 + (dec2 - dec1) * t])
        step = max(width, dec2 - dec1) / (n - 1)
        radius = min(float(separation(ra_c, dec_c, edge_ra, edge_dec).max()) + step + 1e-6, MAX_RADIUS)
        object.__setattr__(self, "cone", (ra_c, dec_c, radius))

    def where(self, ra="ra", dec="dec"):
        ra_clause = (f"{ra} BETWEEN %(box_ra1)s AND %(box_ra2)s" if self.ra1 < self.ra2
                     else f"({ra} >= %(box_ra1)s OR {ra} <= %(box_ra2)s)")
        sql = (f"q3c_radial_query({ra}, {dec}, %(box_cra)s, %(box_cdec)s, %(box_crad)s) "
               f"AND {dec} BETWEEN %(box_dec1)s AND %(box_dec2)s AND {ra_clause}")
        cra, cdec, crad = self.cone
        return sql, dict(box_cra=cra, box_cdec=cdec, box_crad=crad, box_ra1=self.ra1, box_ra2=self.ra2,
                         box_dec1=self.dec1, box_dec2=self.dec2)

    def describe(self):
        return f"box ra {self.ra1}..{self.ra2} dec {self.dec1}..{self.dec2}"


@dataclass(frozen=True)
class Polygon(Region):
    """A spherical polygon (great-circle edges): [ra1, dec1, ra2, dec2, ...] or [(ra, dec), ...]."""
    vertices: tuple

    def __post_init__(self):
        coords = self.vertices
        flat = np.asarray(coords, dtype=float).reshape(-1) if len(coords) else np.zeros(0)
        if flat.size % 2:
            raise XpmetError(f"a polygon needs RA DEC pairs; got {flat.size} numbers (an odd count)")
        if flat.size < 6:
            raise XpmetError(f"a polygon needs at least 3 vertices; got {flat.size // 2}")
        if not np.isfinite(flat).all():
            raise XpmetError("polygon coordinates must be finite numbers")
        ra, dec = flat[0::2] % 360.0, flat[1::2]
        if (np.abs(dec) > 90).any():
            raise XpmetError(f"polygon vertex {int(np.argmax(np.abs(dec) > 90)) + 1} has |Dec| > 90 degrees")
        sep = separation(ra[:, None], dec[:, None], ra[None, :], dec[None, :])
        if sep.max() > MAX_POLYGON_DIAMETER:
            i, j = np.unravel_index(np.argmax(sep), sep.shape)
            raise XpmetError(f"the polygon is {sep.max():.1f} degrees across (vertices {i + 1} and {j + 1}); q3c "
                             f"supports polygons up to ~{MAX_POLYGON_DIAMETER:.0f} degrees. Split it into smaller "
                             "polygons, or use a cone or box query.")
        object.__setattr__(self, "vertices", tuple(np.stack([ra, dec], axis=1).reshape(-1).tolist()))

    def where(self, ra="ra", dec="dec"):
        return (f"q3c_poly_query({ra}, {dec}, %(poly)s::double precision[])", dict(poly=list(self.vertices)))

    def describe(self):
        return f"polygon {list(self.vertices)}"


def polygon_vertices(coords) -> list[float]:
    """Check a polygon against q3c's limits; its vertices as a flat [ra1, dec1, ...] list."""
    return list(Polygon(coords).vertices)
