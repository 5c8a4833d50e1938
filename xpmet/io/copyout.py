"""Decode binary ``COPY ... TO STDOUT`` streams of fixed-width rows into numpy arrays, block by block.

The SELECT feeding the COPY makes every row the same width (NULL scalars as NaN, a NULL array
as an array of NaN), so a block of rows is one structured numpy array: no per-row Python.
Columns are described with the same ``Col`` as the writer in xpmet.io.pgcopy.

    cols = [Col("source_id", "i8"), Col("bp_coefficients", "f8[]", 55)]
    reader = RowReader(cols)
    with cur.copy("COPY (SELECT ...) TO STDOUT (FORMAT binary)") as cp:
        for block in cp:
            for rows in reader.feed(block):     # dict name -> native-endian array
                ...
    for rows in reader.finish():                # the rest; raises if the stream was cut short
        ...
"""
from __future__ import annotations

import struct

import numpy as np

from xpmet.errors import XpmetError
from xpmet.io.pgcopy import HEADER, TRAILER, Col, tuple_fields

SIGNATURE = HEADER[:11]


def row_dtype(cols: list[Col]) -> np.dtype:
    """The structured dtype of one tuple in which no column is NULL."""
    fields = [("nfields", ">i2")]
    for c in cols:
        fields += tuple_fields(c)  # the writer's layout: what COPY TO sends is what COPY FROM takes
    return np.dtype(fields)


class RowReader:
    """Incremental decoder: feed it the COPY stream's blocks, get dicts of column arrays back."""

    def __init__(self, cols: list[Col], max_rows: int = 65536):
        self.cols = cols
        self.dtype = row_dtype(cols)
        self.max_rows = max_rows
        # libpq hands over one row per block: keep the blocks (no copy) and join them once per
        # batch, which numpy then reads in place.
        self.parts: list = []
        self.size = 0
        self.header_done = False
        self.n_rows = 0

    def feed(self, block) -> list[dict]:
        """Append a block; return complete rows once max_rows of them are buffered (then in
        pieces of max_rows)."""
        self.parts.append(block)
        self.size += len(block)
        if self.size < self.max_rows * self.dtype.itemsize + (0 if self.header_done else len(HEADER)):
            return []
        return self._decode(final=False)

    def _decode(self, final: bool) -> list[dict]:
        data = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        pos, out, width = 0, [], self.dtype.itemsize
        if not self.header_done:
            if len(data) < 19:
                return out
            if bytes(memoryview(data)[:11]) != SIGNATURE:
                raise XpmetError("the server's COPY output is not in PostgreSQL binary format")
            pos = 19 + struct.unpack(">i", memoryview(data)[15:19])[0]
            if len(data) < pos:
                return out
            self.header_done = True
        while True:
            n = min((len(data) - pos) // width, self.max_rows)
            if n == 0 or (not final and n < self.max_rows):
                break
            rec = np.frombuffer(data, dtype=self.dtype, count=n, offset=pos)
            self._check(rec)
            out.append(self._columns(rec))  # copies: nothing returned refers to the joined bytes
            pos += n * width
            self.n_rows += n
        rest = memoryview(data)[pos:]
        self.parts, self.size = ([rest] if len(rest) else []), len(rest)
        return out

    def _check(self, rec):
        bad = rec["nfields"] != len(self.cols)
        for c in self.cols:
            dt, oid = c.base
            size = np.dtype(dt).itemsize
            if c.is_array:
                bad |= rec[f"{c.name}__len"] != 20 + c.length * (4 + size)
                bad |= (rec[f"{c.name}__hdr"] != np.array([1, 0, oid, c.length, 1])).any(axis=1)
            else:
                bad |= rec[f"{c.name}__len"] != size
        if bad.any():
            i = int(np.argmax(bad))
            first = self.cols[0]
            key = rec[first.name][i] if not first.is_array else "?"
            raise XpmetError(f"row {self.n_rows + i} ({first.name} {key}) of the COPY stream is not fixed-width: "
                             "a NULL inside an array, or an array of unexpected length. Check that row in the "
                             "database (arrays must have no NULL elements).")

    def _columns(self, rec) -> dict:
        out = {}
        for c in self.cols:
            v = rec[c.name]["v"] if c.is_array else rec[c.name]
            out[c.name] = v.astype(v.dtype.newbyteorder("="))
        return out

    def finish(self) -> list[dict]:
        """The rows still buffered, after checking that the stream ended with the trailer (a cut
        stream must not pass as complete)."""
        out = self._decode(final=True)
        rest = b"".join(self.parts)
        if not self.header_done or rest != TRAILER:
            raise XpmetError(f"the COPY stream ended early ({len(rest)} stray bytes after "
                             f"{self.n_rows} rows); nothing of it was used")
        return out


def select_arrays(conn, select_sql: str, params, cols: list[Col], max_rows: int = 65536):
    """The rows of ``select_sql`` as dicts of numpy arrays, block by block, through one binary COPY:
    xpmet's one path from the database to numpy (predict, evaluation, exports). Every row must have
    one width (xpmet.db.models.columns.fixed_width_columns makes the SELECT list so)."""
    import psycopg
    query = psycopg.ClientCursor(conn).mogrify(select_sql, params) if params else select_sql
    reader = RowReader(cols, max_rows=max_rows)
    with conn.cursor() as cur, cur.copy(f"COPY ({query}) TO STDOUT (FORMAT binary)") as cp:
        for block in cp:
            yield from reader.feed(block)
    yield from reader.finish()
