"""Column lists derived from the table models: binary COPY layouts and numpy dtypes, in one place.

    copy_columns(predictions)                    # every column, in table order, as pgcopy.Col
    copy_columns(gaia_source, exclude={"load_id"})
    fixed_width_columns(["source_id", "bp_coefficients", "phot_g_mean_mag"])   # for COPY ... TO
"""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, DOUBLE_PRECISION, REAL

from xpmet.io.pgcopy import Col

_SCALAR = [(sa.Boolean, "bool"), (sa.SmallInteger, "i2"), (sa.BigInteger, "i8"), (sa.Integer, "i4"),
           (DOUBLE_PRECISION, "f8"), (REAL, "f4"), (sa.Text, "text")]


def type_code(column: sa.Column) -> str:
    """The pgcopy type code of a model column (i2 i4 i8 f4 f8 bool text, arrays as f8[] ...)."""
    t = column.type
    if isinstance(t, ARRAY):
        return _scalar(t.item_type, column) + "[]"
    return _scalar(t, column)


def _scalar(t, column) -> str:
    for cls, code in _SCALAR:  # SmallInteger and BigInteger before their base class Integer
        if isinstance(t, cls):
            return code
    raise TypeError(f"{column.table.name}.{column.name}: no COPY type for {t!r}")


def copy_columns(table: sa.Table, names=None, exclude=(), lengths: dict | None = None) -> list[Col]:
    """pgcopy columns of ``table`` (all, or ``names`` in that order), minus ``exclude``."""
    cols = [table.c[n] for n in names] if names is not None else list(table.columns)
    lengths = lengths or {}
    return [Col(c.name, type_code(c), lengths.get(c.name, 0)) for c in cols if c.name not in exclude]


def numpy_dtype(column: sa.Column) -> str:
    """The numpy dtype string of a scalar model column."""
    code = type_code(column)
    return {"bool": "bool", "text": "object"}.get(code, code)


#: the alias fixed_width_columns gives xpmet.external_photometry (its callers join it under this name)
EXTERNAL_ALIAS = "e"
_SQL_FLOAT = {"f8": "float8", "f4": "real"}


def fixed_width_columns(names) -> list[tuple[str, Col]]:
    """(SQL expression, Col) per column of xp_continuous (alias x), gaia_source (alias g) or the view
    external_photometry (alias e, :data:`EXTERNAL_ALIAS`), in a form every row has the same width in:
    NULL scalars become NaN, a NULL array a row of NaN. What :func:`xpmet.io.copyout.select_arrays`
    decodes."""
    from xpmet.db.models.core import N_COEF, N_CORR, gaia_source, xp_continuous
    from xpmet.db.models.photometry import EXTERNAL_PHOT
    from xpmet.errors import XpmetError
    out = []
    for name in dict.fromkeys(names):
        if name in ("source_id", "load_id"):
            out.append((f"x.{name}", Col(name, type_code(xp_continuous.c[name]))))
        elif name.endswith(("_coefficients", "_coefficient_errors", "_coefficient_correlations")):
            typ = type_code(xp_continuous.c[name])
            n = N_CORR if name.endswith("correlations") else N_COEF
            out.append((f"coalesce(x.{name}, array_fill('NaN'::{_SQL_FLOAT[typ[:-2]]}, ARRAY[{n}]))", Col(name, typ, n)))
        elif name in EXTERNAL_PHOT:
            out.append((f"coalesce({EXTERNAL_ALIAS}.{name}::float8, 'NaN')", Col(name, "f8")))
        else:
            table = "x" if name in xp_continuous.c else "g" if name in gaia_source.c else None
            if table is None:
                raise XpmetError(f"column {name!r}, which is in none of xp_continuous, gaia_source and "
                                 "external_photometry")
            col = (xp_continuous if table == "x" else gaia_source).c[name]
            typ = type_code(col)
            if typ not in _SQL_FLOAT:
                raise XpmetError(f"column {name!r}, which is not a float column (type {typ})")
            out.append((f"coalesce({table}.{name}::{_SQL_FLOAT[typ]}, 'NaN')", Col(name, typ)))
    return out
