"""Vectorised parsing of Gaia's array strings ("[v1,v2,...]" in ECSV, "(v1, v2, ...)" in archive CSV).

A column of array strings arrives as one Arrow binary array: an offsets buffer and one contiguous
data buffer. Instead of splitting per row, the positions of the separators (brackets and commas,
found with numpy in one pass) become the offsets of a second Arrow string array laid over the
same data buffer: element 2k is the k-th number, element 2k+1 the separator after it, marked
NULL. Arrow's cast to float64 then parses every number in C++ (correctly rounded, like Python's
``float``) without copying or rewriting the text. Measured here on XP correlations: ~19 ns per
value, 1.8x the earlier ``bytes.translate`` + CSV-reader path. Blanks after commas (archive CSV)
are deleted first. Per-row value counts come from comma positions, so a row of the wrong length
is caught and named even when the total happens to match.

Values are parsed to float64 and then cast, as astropy does for ECSV ``float32[null]`` columns,
so float32 results are bit-identical to astropy's reading.
"""
from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_BLANKS = b" \t"
_OPEN = np.frombuffer(b"[(", np.uint8)
_CLOSE = np.frombuffer(b"])", np.uint8)


class ArrayParseError(ValueError):
    """Rows of an array column that are not valid arrays; ``rows`` are 0-based within the column."""

    def __init__(self, rows: np.ndarray, reason: str):
        self.rows = np.asarray(rows)
        self.reason = reason
        super().__init__(f"{reason} (rows {self.rows[:5].tolist()})")


def _single(col) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return pa.concat_arrays(col.chunks) if col.num_chunks != 1 else col.chunk(0)
    return col


def _bits(buf: pa.Buffer, offset: int, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(buf, np.uint8), count=offset + n, bitorder="little")[offset:].view(bool)


def null_mask(col) -> np.ndarray:
    """True where an Arrow array is NULL."""
    col = _single(col)
    validity = col.buffers()[0]
    if not col.null_count or validity is None:
        return np.zeros(len(col), bool)
    return ~_bits(validity, col.offset, len(col))


def to_numpy(col, fill=None) -> np.ndarray:
    """A numeric or boolean Arrow array as numpy, its NULLs set to ``fill`` (left undefined without one).

    Read from the array's buffers: pyarrow's own ``to_numpy`` imports pandas, a second of start-up
    in every loading process.
    """
    col = _single(col)
    if pa.types.is_boolean(col.type):
        values = _bits(col.buffers()[1], col.offset, len(col))
    else:
        dt = np.dtype(col.type.to_pandas_dtype())
        values = np.frombuffer(col.buffers()[1], dt, len(col), col.offset * dt.itemsize)
    if fill is not None and col.null_count:
        values = np.where(null_mask(col), fill, values)
    return values


def _buffers(col: pa.Array):
    """(offsets int64[n+1], data uint8, valid bool[n]) of an Arrow string/binary array (no copy of the data)."""
    col = _single(col)
    if pa.types.is_string(col.type):
        col = col.cast(pa.binary())
    if pa.types.is_large_binary(col.type) or pa.types.is_large_string(col.type):
        off_dtype = np.int64
    else:
        off_dtype = np.int32
    n = len(col)
    bufs = col.buffers()
    offsets = np.frombuffer(bufs[1], off_dtype, n + 1, col.offset * np.dtype(off_dtype).itemsize).astype(np.int64)
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    valid = ~null_mask(col)
    return offsets, data, valid


def parse_array_column(col: pa.Array, length: int, dtype=np.float64) -> np.ndarray:
    """Parse an Arrow column of array strings into an (n, length) array; NULL/empty rows become all-NaN.

    Raises :class:`ArrayParseError` naming the bad rows (missing brackets, wrong length, text that is
    not a number). ``dtype`` float32 rounds from float64, as astropy does.
    """
    offsets, data, valid = _buffers(col)
    out = _parse(data, offsets, valid, length, dtype)
    if out is None and _has_blanks(data, offsets):  # archive CSV: "(1.0, 2.0)"
        data, offsets = _without_blanks(data, offsets)
        out = _parse(data, offsets, valid, length, dtype)
    if out is None:
        raise ArrayParseError(_first_unparsable(data, offsets, _rows(offsets, valid)),
                              "array holds a value that is not a number")
    return out


def _rows(offsets, valid):
    """Rows holding an array: not NULL, not empty, not "[]" / "()" (how some writers spell a missing band)."""
    lens = np.diff(offsets)
    return np.flatnonzero(valid & (lens > 0) & (lens != 2))


def _parse(data, offsets, valid, length, dtype):
    """The (n, length) array, or None when some value is not a number; raises for bad brackets or counts."""
    n = len(offsets) - 1
    rows = _rows(offsets, valid)
    if rows.size == 0:
        return np.full((n, length), np.nan, dtype=dtype)
    starts, ends = offsets[rows], offsets[rows + 1]
    bad = ~np.isin(data[starts], _OPEN) | ~np.isin(data[ends - 1], _CLOSE)
    if bad.any():
        raise ArrayParseError(rows[bad], "array value must be enclosed in [...] or (...)")
    lo, hi = int(offsets[0]), int(offsets[-1])
    commas = np.flatnonzero(data[lo:hi] == 44) + lo
    if rows.size < n and (ends - starts).sum() < hi - lo:  # bytes behind NULL entries: drop their commas
        holder = np.zeros(n, bool)
        holder[rows] = True
        commas = commas[holder[np.searchsorted(offsets, commas, side="right") - 1]]
    counts = np.searchsorted(commas, ends) - np.searchsorted(commas, starts) + 1
    wrong = counts != length
    if wrong.any():
        raise ArrayParseError(rows[wrong], f"array has {counts[wrong][0]} values, expected {length}")
    values = _parse_numbers(data, starts, commas, ends, length)
    if values is None:
        return None
    if rows.size == n:
        return values.astype(dtype)
    out = np.full((n, length), np.nan, dtype=dtype)
    out[rows] = values
    return out


def _has_blanks(data, offsets) -> bool:
    seg = data[int(offsets[0]):int(offsets[-1])]
    return bool(((seg == 32) | (seg == 9)).any())


def _without_blanks(data: np.ndarray, offsets: np.ndarray):
    """(data, offsets) with blanks and tabs deleted."""
    blank = (data == 32) | (data == 9)
    before = np.concatenate([[0], np.cumsum(blank, dtype=np.int64)])
    return data[~blank], offsets - before[offsets]


def _parse_numbers(data, starts, commas, ends, length):
    """(rows, length) float64 from the text between the separators, or None when any is not a number."""
    # element 2k: number k (after its separator up to the next one); element 2k+1: the separator, NULL
    bounds = np.empty((starts.size, length, 2), np.int64 if data.size >= 2 ** 31 else np.int32)
    inner = commas.reshape(starts.size, length - 1)
    bounds[:, 0, 0] = starts + 1
    bounds[:, 1:, 0] = inner + 1
    bounds[:, :-1, 1] = inner
    bounds[:, -1, 1] = ends - 1
    m = bounds.size - 1
    validity = np.full((m + 7) // 8, 0x55, np.uint8)
    kind = pa.large_binary() if bounds.dtype == np.int64 else pa.binary()
    text = pa.Array.from_buffers(kind, m, [pa.py_buffer(validity), pa.py_buffer(bounds), pa.py_buffer(data)])
    try:
        parsed = pc.cast(text, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    return np.frombuffer(parsed.buffers()[1], np.float64, m)[0::2].reshape(starts.size, length)


_NUMBER = re.compile(rb"^[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|nan|NaN|inf|Infinity|-?inf)$")


def _first_unparsable(data, offsets, rows):
    """Error path only: the rows whose text does not parse (per-row Python is fine here)."""
    starts, ends = offsets[rows], offsets[rows + 1]
    bad = []
    for s, e, r in zip(starts.tolist(), ends.tolist(), rows.tolist()):
        body = data[s + 1:e - 1].tobytes().replace(b" ", b"")
        if not all(_NUMBER.match(t) for t in body.split(b",")):
            bad.append(r)
    return np.array(bad or rows[:1])


def parse_array_strings(strings, length: int, dtype=np.float64) -> np.ndarray:
    """Convenience for Python lists / numpy string arrays (tests, small inputs): same rules as above."""
    arr = pa.array([None if s is None or (isinstance(s, float) and np.isnan(s)) else
                    (s.encode() if isinstance(s, str) else bytes(s)) for s in strings], pa.binary())
    return parse_array_column(arr, length, dtype)
