"""Sky queries on the ``xpmet.metallicity`` view: a region (xpmet.regions) in, an astropy Table out.

Columns, units, UCDs and descriptions come from the table models (gaia_source, predictions);
every value reaches the server as a bound parameter; queries run in read-only transactions.
Writing files is xpmet.table_files' job (``write_table`` is re-exported here for convenience).

    >>> from xpmet import query
    >>> from xpmet.regions import Cone
    >>> t = query.search(Cone(10.68, 41.27, 0.5), feh_max=-1.0, recommended=True)
    >>> t = query.cone(10.68, 41.27, 0.5)          # the same, shorter
    >>> query.write_table(t, "m31_poor.fits")
"""
from __future__ import annotations

import numpy as np
import psycopg
from astropy.table import Column, MaskedColumn, Table

from xpmet.db.models.columns import numpy_dtype
from xpmet.db.models.core import gaia_source, predictions
from xpmet.errors import XpmetError
from xpmet.regions import Box, Cone, Polygon, Region, finite
from xpmet.table_files import output_format, utc_now, write_table  # noqa: F401  (re-exported)

#: The columns of xpmet.metallicity a query returns, in order: predictions' identity, Gaia's
#: position and photometry, then the predicted labels (db/sql/metallicity.sql has the same list).
METALLICITY_COLUMNS = [
    predictions.c.source_id, predictions.c.model_id,
    *(gaia_source.c[n] for n in ("ra", "dec", "l", "b", "parallax", "parallax_error", "pmra", "pmdec", "ruwe",
                                 "phot_g_mean_mag", "phot_bp_mean_mag", "phot_rp_mean_mag", "bp_rp",
                                 "ag_gspphot")),
    *(predictions.c[n] for n in ("teff", "teff_err", "logg", "logg_err", "feh", "feh_err", "alpha_fe",
                                 "alpha_fe_err", "fit_stat", "quality_flags", "recommended")),
]


def _filters(feh_max, g_max, recommended):
    sql, params = [], {}
    if feh_max is not None:
        sql.append("feh <= %(feh_max)s")
        params["feh_max"] = finite("--feh-max", feh_max)
    if g_max is not None:
        sql.append("phot_g_mean_mag <= %(g_max)s")
        params["g_max"] = finite("--g-max", g_max)
    if recommended:
        sql.append("recommended")
    return sql, params


def _to_table(rows, meta: dict) -> Table:
    values = list(zip(*rows)) if rows else [()] * len(METALLICITY_COLUMNS)
    cols = []
    for c, v in zip(METALLICITY_COLUMNS, values):
        dtype = numpy_dtype(c)
        arr = np.array(v, dtype=dtype)  # None -> NaN for the float columns (the others are NOT NULL)
        mask = np.isnan(arr) if arr.dtype.kind == "f" else None
        kw = dict(name=c.name, unit=c.info.get("unit"), description=c.info.get("description"), copy=False,
                  meta={"ucd": c.info["ucd"]} if c.info.get("ucd") else None)
        if mask is not None and mask.any():  # masked columns cost ~1 ms each to build: only where needed
            cols.append(MaskedColumn(arr, mask=mask, **kw))
        else:
            cols.append(Column(arr, **kw))
    return Table(cols, meta=meta, copy=False)


def _engine(url):
    """The pooled engine; the embedded cluster is only started (a ~50 ms check) when not reachable."""
    from xpmet.db.engine import connect, libpq_url
    if url:
        return connect(url)
    try:
        return connect(libpq_url(start=False))
    except XpmetError:
        return connect(libpq_url())


def search(region: Region, *, feh_max=None, g_max=None, recommended=False, model_id=None, limit=None,
           url=None) -> Table:
    """Rows of xpmet.metallicity inside ``region`` (a Cone, Box or Polygon), as an astropy Table."""
    from xpmet import __version__
    region_sql, params = region.where("ra", "dec")
    where, fparams = _filters(feh_max, g_max, recommended)
    params = {**params, **fparams}
    sql = (f"SELECT {', '.join(c.name for c in METALLICITY_COLUMNS)} FROM xpmet.metallicity "
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
    meta = {"query": region.describe(), "model_id": chosen, "n_rows": len(rows), "version": __version__,
            "date": utc_now()}
    if chosen is None:
        meta["note"] = "no predictions in the database yet: run `xpmet predict`"
    return _to_table(rows, meta)


def cone(ra, dec, radius, **options) -> Table:
    """Stars within ``radius`` degrees of (ra, dec). Options: feh_max, g_max, recommended, model_id, limit, url."""
    return search(Cone(ra, dec, radius), **options)


def box(ra1, dec1, ra2, dec2, **options) -> Table:
    """Stars with ra1 <= RA <= ra2 and dec1 <= Dec <= dec2 (ra1 > ra2: the box crosses RA 0)."""
    return search(Box(ra1, dec1, ra2, dec2), **options)


def polygon(coords, **options) -> Table:
    """Stars inside a spherical polygon (great-circle edges) given as RA, DEC pairs in degrees."""
    return search(Polygon(coords), **options)
