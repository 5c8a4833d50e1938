"""PostgreSQL binary COPY streams built with numpy (no per-row Python for numeric tables).

Rows that share a NULL pattern have a fixed width in the binary format, so each such group
becomes one structured numpy array whose bytes are the COPY tuples. Typical XP chunks have
one to three patterns (both bands, no BP, no RP). Measured here: ~35x faster than psycopg's
``write_row`` for 2 x real[55] columns. Text columns (small survey tables only) are joined
per row after the numeric part is encoded.

    cols = [Col("source_id", "i8"), Col("bp_coefficients", "f8[]", 55)]
    with conn.cursor() as cur, cur.copy(copy_sql("xpmet.xp_continuous", cols)) as cp:
        cp.write(encode(cols, {"source_id": ids, "bp_coefficients": bp}))
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)

# type code -> (numpy big-endian dtype, PostgreSQL element oid)
SCALARS = {
    "bool": (">u1", 16), "i2": (">i2", 21), "i4": (">i4", 23), "i8": (">i8", 20),
    "f4": (">f4", 700), "f8": (">f8", 701),
}


@dataclass(frozen=True)
class Col:
    """One column of a COPY stream: name, type code (i2 i4 i8 f4 f8 bool text, or f4[] f8[] i8[]...), array length."""
    name: str
    type: str
    length: int = 0

    @property
    def is_array(self) -> bool:
        return self.type.endswith("[]")

    @property
    def base(self):
        return SCALARS[self.type[:-2] if self.is_array else self.type]


def copy_sql(table: str, cols: list[Col]) -> str:
    names = ", ".join(f'"{c.name}"' for c in cols)
    return f"COPY {table} ({names}) FROM STDIN WITH (FORMAT binary)"


def _null_mask(col: Col, values) -> np.ndarray:
    """True where the value is NULL: masked or NaN scalars, all-NaN (or masked) array rows."""
    if col.type == "text":
        return np.array([v is None for v in values], dtype=bool)
    if isinstance(values, np.ma.MaskedArray):
        m = np.ma.getmaskarray(values)
        return m.all(axis=1) if col.is_array else m
    values = np.asarray(values)
    if col.is_array:
        return np.isnan(values).all(axis=1) if values.dtype.kind == "f" else np.zeros(len(values), bool)
    return np.isnan(values) if values.dtype.kind == "f" else np.zeros(len(values), bool)


def tuple_fields(col: Col, null: bool = False):
    """Structured-dtype fields for one column in a row where it is (not) NULL."""
    if null:
        return [(f"{col.name}__len", ">i4")]
    dt, oid = col.base
    if not col.is_array:
        return [(f"{col.name}__len", ">i4"), (col.name, dt)]
    n = col.length
    return [(f"{col.name}__len", ">i4"), (f"{col.name}__hdr", ">i4", (5,)),
            (col.name, [("l", ">i4"), ("v", dt)], (n,))]


def _fill(rec, col: Col, null: bool, values):
    if null:
        rec[f"{col.name}__len"] = -1
        return
    dt, oid = col.base
    size = np.dtype(dt).itemsize
    if not col.is_array:
        rec[f"{col.name}__len"] = size
        rec[col.name] = values
        return
    n = col.length
    if values.shape[1] != n:
        raise ValueError(f"column {col.name}: arrays of length {values.shape[1]}, expected {n}")
    rec[f"{col.name}__len"] = 20 + n * (4 + size)
    rec[f"{col.name}__hdr"] = (1, 0, oid, n, 1)  # ndim, has-null, element oid, dim, lower bound
    rec[col.name]["l"] = size
    rec[col.name]["v"] = values


def _null_patterns(nulls: np.ndarray):
    """The distinct rows of the (rows x columns) NULL matrix and each row's pattern number (None when
    all rows share one pattern, the usual case). Rows are packed into bytes first: np.unique(axis=0)
    on the bool matrix is ~50x slower."""
    if len(nulls) == 0 or (nulls == nulls[0]).all():
        return nulls[:1], None
    width = (nulls.shape[1] + 7) // 8
    packed = np.packbits(nulls, axis=1).view(np.dtype((np.void, width))).ravel()
    codes, inverse = np.unique(packed, return_inverse=True)
    patterns = np.unpackbits(codes.view(np.uint8).reshape(-1, width), axis=1, count=nulls.shape[1]).astype(bool)
    return patterns, inverse.reshape(-1)


def encode(cols: list[Col], data: dict, header: bool = True, trailer: bool = True) -> bytes:
    """Binary COPY bytes for the rows in ``data`` (column name -> array or list).

    NULL is a masked or NaN scalar, or an array row that is all NaN (a missing XP band).
    """
    n = len(data[cols[0].name])
    nulls = np.stack([_null_mask(c, data[c.name]) for c in cols], axis=1) if n else np.zeros((0, len(cols)), bool)
    patterns, inverse = _null_patterns(nulls)
    numeric = [i for i, c in enumerate(cols) if c.type != "text"]
    text = [i for i, c in enumerate(cols) if c.type == "text"]
    parts = [HEADER] if header else []
    for p, pattern in enumerate(patterns):
        rows = np.arange(n) if inverse is None else np.flatnonzero(inverse == p)
        fields = [("nfields", ">i2")]
        for i in numeric:
            fields += tuple_fields(cols[i], bool(pattern[i]))
        rec = np.empty(len(rows), dtype=np.dtype(fields))
        rec["nfields"] = len(cols)
        for i in numeric:
            c = cols[i]
            vals = None if pattern[i] else np.asarray(np.ma.getdata(data[c.name]))
            if vals is not None and inverse is not None:  # one pattern: every row, no gather
                vals = vals[rows]
            _fill(rec, c, bool(pattern[i]), vals)
        if not text:
            parts.append(rec.tobytes())
            continue
        # Text columns go last in the tuple order of ``cols``: callers list them after numeric ones.
        if text != list(range(len(cols) - len(text), len(cols))):
            raise ValueError("text columns must come after all numeric columns")
        raw = rec.view(np.uint8).reshape(len(rows), -1) if len(rows) else []
        for k, r in enumerate(rows):
            seg = [raw[k].tobytes()]
            for i in text:
                v = data[cols[i].name][r]
                if v is None:
                    seg.append(b"\xff\xff\xff\xff")
                else:
                    b = v.encode() if isinstance(v, str) else bytes(v)
                    seg.append(struct.pack(">i", len(b)) + b)
            parts.append(b"".join(seg))
    if trailer:
        parts.append(TRAILER)
    return b"".join(parts)


def copy_rows(cur, table: str, cols: list[Col], data: dict) -> int:
    """COPY the rows of ``data`` into ``table`` on an open psycopg cursor; returns the row count."""
    with cur.copy(copy_sql(table, cols)) as cp:
        cp.write(encode(cols, data))
    return len(data[cols[0].name])
