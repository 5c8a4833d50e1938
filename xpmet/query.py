"""Sky queries on the ``xpmet.metallicity`` view: cone, box and polygon, returning astropy Tables.

Every value reaches the server as a bound parameter; regions are checked against q3c's limits
first so that a bad region fails with a message that says what to change. Queries run in
read-only transactions.

    >>> from xpmet import query
    >>> t = query.cone(10.68, 41.27, 0.5, feh_max=-1.0, recommended=True)
    >>> query.write_table(t, "m31_poor.fits")
"""
from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psycopg
from astropy.table import Column, MaskedColumn, Table

from xpmet.errors import XpmetError

#: q3c_poly_query refuses polygons wider than about this (its own message says ">~23 degrees").
MAX_POLYGON_DIAMETER = 23.0
#: q3c_radial_query returns wrong answers beyond 180 degrees (measured), so refuse them.
MAX_RADIUS = 180.0

# (column, numpy dtype, unit, description), in the order of the returned table. Abundances and
# logg carry no unit: 'dex' is not a FITS or VOTable unit; the descriptions say dex.
COLUMNS = [
    ("source_id", "i8", None, "Gaia DR3 source_id"),
    ("model_id", "i4", None, "xpmet.models.model_id of the predicting model"),
    ("ra", "f8", "deg", "right ascension (ICRS, epoch 2016.0)"),
    ("dec", "f8", "deg", "declination (ICRS, epoch 2016.0)"),
    ("l", "f8", "deg", "Galactic longitude"),
    ("b", "f8", "deg", "Galactic latitude"),
    ("parallax", "f8", "mas", "parallax"),
    ("parallax_error", "f4", "mas", "parallax uncertainty"),
    ("pmra", "f8", "mas / yr", "proper motion in RA (times cos dec)"),
    ("pmdec", "f8", "mas / yr", "proper motion in Dec"),
    ("ruwe", "f4", None, "renormalised unit weight error"),
    ("phot_g_mean_mag", "f4", "mag", "Gaia G"),
    ("phot_bp_mean_mag", "f4", "mag", "Gaia BP"),
    ("phot_rp_mean_mag", "f4", "mag", "Gaia RP"),
    ("bp_rp", "f4", "mag", "BP - RP colour"),
    ("ag_gspphot", "f4", "mag", "G-band extinction from GSP-Phot"),
    ("teff", "f4", "K", "predicted effective temperature"),
    ("teff_err", "f4", "K", "uncertainty of teff"),
    ("logg", "f4", None, "predicted log10 surface gravity (cgs, dex)"),
    ("logg_err", "f4", None, "uncertainty of logg (dex)"),
    ("feh", "f4", None, "predicted [Fe/H] (dex)"),
    ("feh_err", "f4", None, "uncertainty of feh (dex)"),
    ("alpha_fe", "f4", None, "predicted [alpha/Fe] (dex)"),
    ("alpha_fe_err", "f4", None, "uncertainty of alpha_fe (dex)"),
    ("fit_stat", "f4", None, "fit quality statistic of the model"),
    ("quality_flags", "i4", None, "quality bitmask (xpmet.flags.PREDICTION_BITS)"),
    ("recommended", "bool", None, "passes the model's documented quality cut"),
]

FORMATS = {"csv": "ascii.csv", "ecsv": "ascii.ecsv", "fits": "fits", "votable": "votable",
           "parquet": "parquet"}
EXTENSIONS = {".csv": "csv", ".ecsv": "ecsv", ".fits": "fits", ".fit": "fits", ".fts": "fits",
              ".vot": "votable", ".xml": "votable", ".votable": "votable", ".parquet": "parquet",
              ".pq": "parquet"}


# -- region checks -----------------------------------------------------------------------------
def _finite(name, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise XpmetError(f"{name} must be a number, not {value!r}") from None
    if not np.isfinite(v):
        raise XpmetError(f"{name} must be finite, not {value!r}")
    return v


def _ra(name, value) -> float:
    v = _finite(name, value)
    if not -360.0 <= v <= 720.0:
        raise XpmetError(f"{name} = {v} is not a right ascension in degrees (expected 0..360)")
    return v % 360.0


def _dec(name, value) -> float:
    v = _finite(name, value)
    if not -90.0 <= v <= 90.0:
        raise XpmetError(f"{name} = {v} is outside -90..90 degrees")
    return v


def _unit_vectors(ra, dec) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _separation(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle separation in degrees (vectorised; stable at small and large angles)."""
    a, b = _unit_vectors(ra1, dec1), _unit_vectors(ra2, dec2)
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1)))


def polygon_vertices(coords) -> list[float]:
    """Check a polygon (flat [ra1, dec1, ra2, dec2, ...] or [(ra, dec), ...]) against q3c's limits."""
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
    sep = _separation(ra[:, None], dec[:, None], ra[None, :], dec[None, :])
    if sep.max() > MAX_POLYGON_DIAMETER:
        i, j = np.unravel_index(np.argmax(sep), sep.shape)
        raise XpmetError(f"the polygon is {sep.max():.1f} degrees across (vertices {i + 1} and {j + 1}); q3c "
                         f"supports polygons up to ~{MAX_POLYGON_DIAMETER:.0f} degrees. Split it into smaller "
                         "polygons, or use a cone or box query.")
    return np.stack([ra, dec], axis=1).reshape(-1).tolist()


def _box_region(ra1, dec1, ra2, dec2):
    """SQL and parameters for an RA/Dec box: a q3c cone around it (index) and the exact limits.

    ra1 > ra2 means the box crosses RA = 0 (e.g. 350 .. 10).
    """
    ra1, ra2 = _ra("RA1", ra1), _ra("RA2", ra2)
    dec1, dec2 = _dec("DEC1", dec1), _dec("DEC2", dec2)
    if dec1 >= dec2:
        raise XpmetError(f"DEC1 ({dec1}) must be below DEC2 ({dec2})")
    if ra1 == ra2:
        raise XpmetError("RA1 and RA2 are equal: the box has no width")
    width = (ra2 - ra1) % 360.0
    ra_c = (ra1 + width / 2) % 360.0
    dec_c = (dec1 + dec2) / 2
    # The farthest point of a region from an inner point lies on its boundary: sample the edges
    # densely and pad by one sample step, so the cone surely contains the box.
    n = 256
    t = np.linspace(0.0, 1.0, n)
    edge_ra = np.concatenate([ra1 + width * t, ra1 + width * t, np.full(n, ra1), np.full(n, ra1 + width)])
    edge_dec = np.concatenate([np.full(n, dec1), np.full(n, dec2), dec1 + (dec2 - dec1) * t,
                               dec1 + (dec2 - dec1) * t])
    step = max(width, dec2 - dec1) / (n - 1)
    radius = min(float(_separation(ra_c, dec_c, edge_ra, edge_dec).max()) + step + 1e-6, MAX_RADIUS)
    ra_clause = "ra BETWEEN %(ra1)s AND %(ra2)s" if ra1 < ra2 else "(ra >= %(ra1)s OR ra <= %(ra2)s)"
    sql = (f"q3c_radial_query(ra, dec, %(cra)s, %(cdec)s, %(crad)s) "
           f"AND dec BETWEEN %(dec1)s AND %(dec2)s AND {ra_clause}")
    return sql, dict(cra=ra_c, cdec=dec_c, crad=radius, ra1=ra1, ra2=ra2, dec1=dec1, dec2=dec2)


# -- running a query ---------------------------------------------------------------------------
def _filters(feh_max, g_max, recommended):
    sql, params = [], {}
    if feh_max is not None:
        sql.append("feh <= %(feh_max)s")
        params["feh_max"] = _finite("--feh-max", feh_max)
    if g_max is not None:
        sql.append("phot_g_mean_mag <= %(g_max)s")
        params["g_max"] = _finite("--g-max", g_max)
    if recommended:
        sql.append("recommended")
    return sql, params


def _to_table(rows, description: dict) -> Table:
    values = list(zip(*rows)) if rows else [()] * len(COLUMNS)
    cols = []
    for (name, dtype, unit, desc), v in zip(COLUMNS, values):
        arr = np.array(v, dtype=dtype)  # None -> NaN for the float columns (the others are NOT NULL)
        mask = np.isnan(arr) if dtype.startswith("f") else None
        if mask is not None and mask.any():  # masked columns cost ~1 ms each to build: only where needed
            cols.append(MaskedColumn(arr, name=name, mask=mask, unit=unit, description=desc, copy=False))
        else:
            cols.append(Column(arr, name=name, unit=unit, description=desc, copy=False))
    return Table(cols, meta=description, copy=False)


def _engine(url):
    """The pooled engine; the embedded cluster is only started (a ~50 ms check) when not reachable."""
    from xpmet.db.engine import connect, libpq_url
    if url:
        return connect(url)
    try:
        return connect(libpq_url(start=False))
    except XpmetError:
        return connect(libpq_url())


def run_region(region_sql: str, params: dict, *, what: str, feh_max=None, g_max=None,
               recommended=False, model_id=None, limit=None, url=None) -> Table:
    """Rows of xpmet.metallicity inside a region (an SQL condition with bound parameters)."""
    from xpmet import __version__
    where, fparams = _filters(feh_max, g_max, recommended)
    params = {**params, **fparams}
    sql = (f"SELECT {', '.join(c[0] for c in COLUMNS)} FROM xpmet.metallicity "
           f"WHERE {' AND '.join([region_sql] + where)} ORDER BY source_id")
    if limit is not None:
        if int(limit) < 1:
            raise XpmetError("--limit must be at least 1")
        sql += " LIMIT %(limit)s"
        params["limit"] = int(limit)
    # A pooled connection (xpmet.connect() keeps them) saves a server process start per query;
    # the pool rolls the transaction back on release, which also drops the SET LOCAL below.
    with _engine(url).connect() as pooled:
        conn = pooled.connection.driver_connection
        try:
            conn.execute("SET TRANSACTION READ ONLY")
            if model_id is not None:
                conn.execute("SELECT set_config('xpmet.model_id', %s, true)", (str(int(model_id)),))
            chosen = conn.execute("SELECT xpmet.metallicity_model()").fetchone()[0]
            if model_id is not None and not conn.execute(
                    "SELECT 1 FROM xpmet.models WHERE model_id = %s", (int(model_id),)).fetchone():
                raise XpmetError(f"there is no model {model_id}; list them with: SELECT * FROM xpmet.models")
            rows = conn.execute(sql, params).fetchall()
        except psycopg.errors.UndefinedTable:
            raise XpmetError("the database has no xpmet.metallicity view: run `xpmet db migrate`") from None
        except psycopg.errors.RaiseException as e:  # q3c's own checks (e.g. polygon size)
            raise XpmetError(f"q3c refused the region: {e.diag.message_primary}") from None
    meta = {"query": what, "model_id": chosen, "n_rows": len(rows), "version": __version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if chosen is None:
        meta["note"] = "no predictions in the database yet: run `xpmet predict`"
    return _to_table(rows, meta)


def cone(ra, dec, radius, **options) -> Table:
    """Stars within ``radius`` degrees of (ra, dec). Options: feh_max, g_max, recommended, model_id, limit, url."""
    ra, dec = _ra("RA", ra), _dec("DEC", dec)
    r = _finite("RADIUS", radius)
    if not 0 < r <= MAX_RADIUS:
        raise XpmetError(f"RADIUS = {r}: a cone radius must be in (0, {MAX_RADIUS:g}] degrees")
    return run_region("q3c_radial_query(ra, dec, %(ra)s, %(dec)s, %(radius)s)",
                      dict(ra=ra, dec=dec, radius=r), what=f"cone ra={ra} dec={dec} radius={r}", **options)


def box(ra1, dec1, ra2, dec2, **options) -> Table:
    """Stars with ra1 <= RA <= ra2 and dec1 <= Dec <= dec2 (ra1 > ra2: the box crosses RA 0)."""
    sql, params = _box_region(ra1, dec1, ra2, dec2)
    return run_region(sql, params, what=f"box ra {params['ra1']}..{params['ra2']} "
                      f"dec {params['dec1']}..{params['dec2']}", **options)


def polygon(coords, **options) -> Table:
    """Stars inside a spherical polygon (great-circle edges) given as RA, DEC pairs in degrees."""
    verts = polygon_vertices(coords)
    return run_region("q3c_poly_query(ra, dec, %(poly)s::double precision[])", dict(poly=verts),
                      what=f"polygon {verts}", **options)


# -- output ------------------------------------------------------------------------------------
def output_format(path, fmt: str | None = None) -> str:
    """The astropy format name for a file, from ``fmt`` (csv ecsv fits votable parquet) or its extension."""
    if fmt:
        if fmt.lower() not in FORMATS:
            raise XpmetError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return FORMATS[fmt.lower()]
    name = str(path).lower()
    for ext, key in EXTENSIONS.items():
        if name.endswith(ext) or name.endswith(ext + ".gz") and key != "parquet":
            return FORMATS[key]
    raise XpmetError(f"cannot tell the format of {path} from its extension; use one of "
                     f"{', '.join(EXTENSIONS)} or pass --format")


def write_table(table: Table, path, fmt: str | None = None, overwrite: bool = False) -> Path:
    """Write ``table`` with astropy; a temporary file renamed at the end, so nothing is half-written."""
    path = Path(path)
    astropy_fmt = output_format(path, fmt)
    if path.exists() and not overwrite:
        raise XpmetError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        out = table.copy(copy_data=False)
        if astropy_fmt in ("fits", "parquet"):
            # FITS headers and Parquet metadata take plain scalars only.
            out.meta = {k: ("" if v is None else v) for k, v in out.meta.items()}
        out.write(tmp, format=astropy_fmt, overwrite=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
