"""Column lists derived from the table models: binary COPY layouts and numpy dtypes, in one place.

    copy_columns(predictions)                    # every column, in table order, as pgcopy.Col
    copy_columns(gaia_source, exclude={"load_id"})
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
