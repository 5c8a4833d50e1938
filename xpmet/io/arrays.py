"""Vectorised parsing of Gaia's array strings ("[v1,v2,...]" in ECSV, "(v1, v2, ...)" in archive CSV).

A column of array strings arrives as one Arrow binary array: an offsets buffer and one contiguous
data buffer. Instead of splitting per row, the whole data buffer is rewritten with
``bytes.translate`` (separators and closing brackets -> newline, opening brackets and blanks
deleted) into a one-number-per-line text that Arrow's CSV reader converts to float64 in C++
(correctly rounded, like Python's ``float``). Measured here on XP correlations: ~200 MB/s of text,
4.5x ``np.fromstring(sep=' ')``. Per-row value counts come from comma positions in the original
buffer, so a row of the wrong length is caught and named even when the total happens to match.

Values are parsed to float64 and then cast, as astropy does for ECSV ``float32[null]`` columns,
so float32 results are bit-identical to astropy's reading.
"""
from __future__ import annotations

import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

_TO_LINES = bytes.maketrans(b",])", b"\n\n\n")
_DELETE = b"[( \t"
_OPEN = np.frombuffer(b"[(", np.uint8)
_CLOSE = np.frombuffer(b"])", np.uint8)


class ArrayParseError(ValueError):
    """Rows of an array column that are not valid arrays; ``rows`` are 0-based within the column."""

    def __init__(self, rows: np.ndarray, reason: str):
        self.rows = np.asarray(rows)
        self.reason = reason
        super().__init__(f"{reason} (rows {self.rows[:5].tolist()})")


def _buffers(col: pa.Array):
    """(offsets int64[n+1], data uint8, valid bool[n]) of an Arrow string/binary array (no copy of the data)."""
    if isinstance(col, pa.ChunkedArray):
        col = pa.concat_arrays(col.chunks) if col.num_chunks != 1 else col.chunk(0)
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
    valid = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return offsets, data, valid


def parse_array_column(col: pa.Array, length: int, dtype=np.float64) -> np.ndarray:
    """Parse an Arrow column of array strings into an (n, length) array; NULL/empty rows become all-NaN.

    Raises :class:`ArrayParseError` naming the bad rows (missing brackets, wrong length, text that is
    not a number). ``dtype`` float32 rounds from float64, as astropy does.
    """
    offsets, data, valid = _buffers(col)
    n = len(offsets) - 1
    out = np.full((n, length), np.nan, dtype=dtype)
    lens = np.diff(offsets)
    valid &= lens > 0
    # "[]" / "()" is how some writers spell a missing band
    valid &= lens != 2
    rows = np.flatnonzero(valid)
    if rows.size == 0:
        return out
    starts, ends = offsets[rows], offsets[rows + 1]
    bad = ~np.isin(data[starts], _OPEN) | ~np.isin(data[ends - 1], _CLOSE)
    if bad.any():
        raise ArrayParseError(rows[bad], "array value must be enclosed in [...] or (...)")
    lo, hi = int(offsets[0]), int(offsets[-1])
    seg = data[lo:hi]
    commas = np.flatnonzero(seg == 44) + lo
    counts = np.searchsorted(commas, ends) - np.searchsorted(commas, starts) + 1
    wrong = counts != length
    if wrong.any():
        raise ArrayParseError(rows[wrong], f"array has {counts[wrong][0]} values, expected {length}")
    # invalid rows (NULL or "[]") may still hold bytes; parse only the valid rows' bytes
    if rows.size == n:
        text = seg.tobytes()
    else:
        text = b"".join(data[s:e].tobytes() for s, e in _runs(starts, ends))
    values = _parse_lines(text.translate(_TO_LINES, _DELETE), rows.size * length)
    if values is None:
        raise ArrayParseError(_first_unparsable(data, starts, ends, rows), "array holds a value that is not a number")
    out[rows] = values.reshape(rows.size, length).astype(dtype, copy=False)
    return out


def _runs(starts, ends):
    """Merge adjacent [start, end) byte ranges so the join touches few pieces (missing bands are rare)."""
    brk = np.flatnonzero(starts[1:] != ends[:-1]) + 1
    first = np.concatenate([[0], brk])
    last = np.concatenate([brk - 1, [len(starts) - 1]])
    return zip(starts[first].tolist(), ends[last].tolist())


def _parse_lines(text: bytes, expected: int):
    """float64 values of a one-number-per-line text, or None when any line is empty or not a number."""
    try:
        tab = pacsv.read_csv(
            io.BytesIO(text),
            read_options=pacsv.ReadOptions(column_names=["v"], use_threads=False, block_size=1 << 26),
            parse_options=pacsv.ParseOptions(ignore_empty_lines=False, quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types={"v": pa.float64()}, null_values=[""],
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    col = tab.column(0)
    if len(col) != expected or col.null_count:
        return None
    return col.to_numpy()


_NUMBER = re.compile(rb"^[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|nan|NaN|inf|Infinity|-?inf)$")


def _first_unparsable(data, starts, ends, rows):
    """Error path only: the rows whose text does not parse (per-row Python is fine here)."""
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
