"""One streaming table reader for every input format, yielding chunks of numpy arrays.

A :class:`TableSpec` names the columns a table kind wants (scalars with their type, fixed-length
arrays, flattened ``bp_coeff_0..54``-style alternatives) and the checks its rows must pass. The
reader picks a path by detected format:

- text (Gaia bulk ECSV.gz, archive CSV, ECSV): gzip inflated by ISA-L (``isal``, 2.5x zlib's speed
  measured on XP files) in a background thread, cut into line-aligned blocks that Arrow's CSV reader
  parses single-threaded (the process pool parallelises across files); array strings parsed by
  :mod:`xpmet.io.arrays`. Arrow only ever sees in-memory blocks: a Python file object handed to
  Arrow's own streaming reader aborted the interpreter at exit after a CSV parse error;
- FITS, VOTable: astropy, then vectorised conversion of variable-length array columns;
- zip (DataLink bundles): every member in turn, each by its own format.

Chunks are dicts ``column -> ndarray`` (arrays (n, length) with all-NaN rows for missing values,
integer scalars as masked arrays when they have missing values) plus the 1-based number of the
chunk's first data row, so errors can name file, row and column.
"""
from __future__ import annotations

import difflib
import re
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from isal import igzip_threaded, isal_zlib

from xpmet.errors import BadInput
from xpmet.io.arrays import ArrayParseError, null_mask, parse_array_column, to_numpy
from xpmet.io.formats import Format, detect, open_binary

NULL_STRINGS = ["", "null", "NULL", "None", "--"]
_ARROW = {"i8": pa.int64(), "i4": pa.int64(), "i2": pa.int64(), "f4": pa.float64(), "f8": pa.float64(),
          "bool": pa.bool_()}
_INT_RANGE = {"i2": (-2 ** 15, 2 ** 15 - 1), "i4": (-2 ** 31, 2 ** 31 - 1), "i8": None}


@dataclass
class Problem:
    """Rows of a chunk (0-based within the chunk) that fail one check."""
    rows: np.ndarray
    column: str
    reason: str


def source_id_problems(sid) -> list[Problem]:
    """Rows without a positive source_id (the key of every table kind)."""
    problems = []
    if isinstance(sid, np.ma.MaskedArray) and sid.mask.any():
        problems.append(Problem(np.flatnonzero(np.ma.getmaskarray(sid)), "source_id", "source_id is missing"))
    bad = np.ma.getdata(sid) <= 0
    if bad.any():
        problems.append(Problem(np.flatnonzero(bad), "source_id", "source_id must be positive"))
    return problems


@dataclass
class TableSpec:
    """What a table kind reads: scalar types, arrays (length, dtype), alternatives, checks."""
    name: str
    scalars: dict[str, str]
    arrays: dict[str, tuple[int, str]] = field(default_factory=dict)
    required: tuple[str, ...] = ("source_id",)
    #: at least one of these must be present (e.g. one XP band)
    one_of: tuple[str, ...] = ()
    #: array name -> format of flattened element columns, e.g. "bp_coeff_{}"
    flattened: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: other names users' files give a column: alias -> canonical name (case-insensitive match)
    aliases: dict[str, str] = field(default_factory=dict)
    check: Callable[[dict], list[Problem]] | None = None
    #: columns files of this kind carry that xpmet does not store (never reported as unknown);
    #: when given, any other unrecognised column is listed in one note per file
    known_other: frozenset[str] = frozenset()


@dataclass
class Chunk:
    data: dict
    first_row: int      # 1-based data row of data[...][0] in its file (or zip member)
    source: str         # file (or "zip!member") the rows come from
    n_bytes: int = 0    # input bytes this chunk accounts for (FITS, zip members; 0 for streamed text)

    @property
    def n(self) -> int:
        return len(self.data["source_id"])


#: on_bad(source, rows (1-based), column, reason): receives quarantined rows instead of an exception
OnBad = Callable[[str, np.ndarray, str, str], None]
#: on_warning(message): one line about a file that still loads (e.g. a column that looks misspelt)
OnWarning = Callable[[str], None]


def read_table(path, spec: TableSpec, chunk_rows: int = 20000, skip: tuple[str, ...] = (),
               block_bytes: int = 1 << 24, on_bad: OnBad | None = None,
               on_warning: OnWarning | None = None) -> Iterator[Chunk]:
    """Stream ``path`` as chunks of ``spec``'s columns (``skip`` leaves columns out, e.g. correlations).

    A bad row (malformed or wrong-length array, failed check) raises :class:`BadInput` naming file,
    row and column, or with ``on_bad`` is reported there and left out of the chunk. Columns that
    look like misspellings of absent spec columns are reported to ``on_warning``.
    """
    path = Path(path)
    fmt = detect(path)
    warn = on_warning or (lambda message: None)
    if fmt.kind == "zip":
        yield from _read_zip(path, spec, chunk_rows, skip, block_bytes, on_bad, warn)
    elif fmt.kind in ("csv", "ecsv"):
        yield from _read_text(path, fmt, spec, skip, block_bytes, str(path), on_bad, warn)
    else:
        yield from _read_astropy(path, fmt, spec, chunk_rows, skip, str(path), on_bad, warn)


def _arrays_or_bad(parse, one_row, n, length, dtype, column, source, first_row, on_bad, bad):
    """Parse one array column; on failure raise (strict) or mark every bad row in ``bad`` (quarantine)."""
    try:
        return parse()
    except ArrayParseError as e:
        if on_bad is None:
            raise BadInput(source, e.reason, row=first_row + int(e.rows[0]), column=column) from None
    out = np.full((n, length), np.nan, dtype=dtype)
    for i in range(n):  # error path only: find every bad row
        try:
            out[i] = one_row(i)[0]
        except ArrayParseError as e:
            bad.setdefault(i, (column, e.reason))
    return out


def _finish(data, spec, source, first_row, on_bad, bad):
    """Apply the spec's checks; raise on the first bad row or drop (and report) the bad rows."""
    for p in (spec.check(data) if spec.check else []):
        for r in np.asarray(p.rows).tolist():
            bad.setdefault(int(r), (p.column, p.reason))
    if not bad:
        return data
    rows = np.array(sorted(bad))
    if on_bad is None:
        column, reason = bad[int(rows[0])]
        raise BadInput(source, reason, row=first_row + int(rows[0]), column=column)
    by_problem = {}
    for r in rows.tolist():
        by_problem.setdefault(bad[r], []).append(r)
    for (column, reason), rs in by_problem.items():
        on_bad(source, np.asarray(rs) + first_row, column, reason)
    keep = np.ones(len(data["source_id"]), bool)
    keep[rows] = False
    return {k: v[keep] for k, v in data.items()}


# --------------------------------------------------------------------------- text (Arrow)

def _text_header(path, fmt: Format, source):
    """(number of '#' lines, column names, delimiter) of a CSV/ECSV file."""
    n_comment, delim = 0, ","
    try:
        with open_binary(path, fmt) as f:
            for line in f:
                if line.startswith(b"#"):
                    n_comment += 1
                    m = re.match(rb"#\s*delimiter:\s*'?(.)'?", line)
                    if m:
                        delim = m.group(1).decode()
                    continue
                names = [c.strip().strip('"') for c in line.decode("utf-8", "replace").rstrip("\r\n").split(delim)]
                return n_comment, names, delim
    except (EOFError, OSError, zlib.error) as e:  # gzip cut short before the column names
        raise BadInput(source, f"truncated or corrupt gzip stream inside the header ({e}); "
                       "download the file again") from None
    raise BadInput(source, "no header line with column names")


def _resolve(names: list[str], spec: TableSpec, skip) -> tuple[dict, dict, dict]:
    """Map file columns to spec columns: (scalars canon->file name, arrays canon->file name,
    flattened canon->[file names])."""
    lower = {n.lower(): n for n in names}
    alias = {a.lower(): c for a, c in spec.aliases.items()}
    for n in names:
        c = alias.get(n.lower())
        if c and c.lower() not in lower:
            lower[c.lower()] = n
    scal = {c: lower[c.lower()] for c in spec.scalars if c.lower() in lower and c not in skip}
    arrs, flat = {}, {}
    for c, (length, _) in spec.arrays.items():
        if c in skip:
            continue
        if c.lower() in lower:
            arrs[c] = lower[c.lower()]
            continue
        for pattern in spec.flattened.get(c, ()):
            cols = [lower.get(pattern.format(i).lower()) for i in range(length)]
            if all(cols):
                flat[c] = cols
                break
    return scal, arrs, flat


def _check_columns(path, spec, names, scal, arrs, flat, skip):
    have = set(scal) | set(arrs) | set(flat)
    missing = [c for c in spec.required if c not in have]
    if missing:
        raise BadInput(path, f"missing required column(s) {', '.join(missing)}; the file has: "
                       f"{', '.join(names[:12])}{' ...' if len(names) > 12 else ''}", column=missing[0])
    wanted = [c for c in spec.one_of if c not in skip]
    if wanted and not any(c in have for c in wanted):
        raise BadInput(path, f"none of the columns {', '.join(wanted)} (or their flattened "
                       "form such as bp_coeff_0..54) is present", column=wanted[0])


def unknown_columns(spec, names, scal, arrs, flat, skip) -> tuple[dict[str, str], list[str]]:
    """({file column: spec column it probably misspells}, other unrecognised columns).

    Only spec columns absent from the file are suggested: a file holding the real column loses
    nothing, and Gaia files carry many near-namesakes (phot_g_mean_flux_over_error ...).
    """
    used = {f.lower() for f in (*scal.values(), *arrs.values(), *(f for cols in flat.values() for f in cols))}
    have = set(scal) | set(arrs) | set(flat)
    absent = [c for c in (*spec.scalars, *spec.arrays) if c not in have and c not in skip]
    ignore = {c.lower() for c in (*spec.known_other, *spec.aliases, *skip)}
    misspelt, other = {}, []
    for n in names:
        low = n.lower()
        if low in used or low in ignore:
            continue
        close = difflib.get_close_matches(low, absent, n=1, cutoff=0.8)
        if close:
            misspelt[n] = close[0]
        else:
            other.append(n)
    return misspelt, other


def _report_unknown(source, spec, names, scal, arrs, flat, skip, warn):
    misspelt, other = unknown_columns(spec, names, scal, arrs, flat, skip)
    if misspelt:
        warn(f"{source}: unknown column(s) {', '.join(f'{n!r} (did you mean {c!r}?)' for n, c in misspelt.items())}"
             f" ignored, so {', '.join(dict.fromkeys(misspelt.values()))} load(s) as NULL; rename the column(s) "
             "and reload with --replace")
    if other and spec.known_other:
        warn(f"{source}: {len(other)} column(s) that {spec.name} files do not have are ignored: "
             f"{', '.join(other[:8])}{' ...' if len(other) > 8 else ''}")


def _text_blocks(path, fmt: Format, block_bytes: int) -> Iterator[memoryview]:
    """The file's text in blocks of about ``block_bytes`` that end at a line end."""
    opened = igzip_threaded.open(path, "rb", threads=1) if fmt.gzip else open(path, "rb")
    with opened as f:
        tail = b""
        while True:
            # a new buffer each time (Arrow never sees one that is rewritten), the last partial line first
            block = bytearray(len(tail) + block_bytes)
            block[:len(tail)] = tail
            n = f.readinto(memoryview(block)[len(tail):])
            if not n:
                break
            end = len(tail) + n
            cut = block.rfind(b"\n", 0, end) + 1
            if cut:
                yield memoryview(block)[:cut]
            tail = bytes(block[cut:end])
        if tail:
            yield memoryview(tail)


def _read_text(path, fmt, spec, skip, block_bytes, source, on_bad, warn) -> Iterator[Chunk]:
    n_comment, names, delim = _text_header(path, fmt, source)
    scal, arrs, flat = _resolve(names, spec, skip)
    _check_columns(source, spec, names, scal, arrs, flat, skip)
    _report_unknown(source, spec, names, scal, arrs, flat, skip, warn)
    types = {f: _ARROW[spec.scalars[c]] for c, f in scal.items()}
    types.update({f: pa.binary() for f in arrs.values()})
    for c, cols in flat.items():
        types.update({f: pa.float64() for f in cols})
    parse_options = pacsv.ParseOptions(delimiter=delim, newlines_in_values=False)
    convert_options = pacsv.ConvertOptions(column_types=types, include_columns=list(types),
                                           null_values=NULL_STRINGS, strings_can_be_null=True,
                                           quoted_strings_can_be_null=True,
                                           true_values=["True", "true", "TRUE", "1", "T", "t"],
                                           false_values=["False", "false", "FALSE", "0", "F", "f"])

    def locate(col, value):  # error path: the row holding a value Arrow could not convert
        return _locate(path, fmt, n_comment, delim, col, value)

    row = 1
    header_lines = n_comment + 1  # skipped in the first block
    blocks = _text_blocks(path, fmt, block_bytes)
    while True:
        try:
            block = next(blocks, None)
        except (OSError, EOFError, isal_zlib.error) as e:  # truncated or corrupt gzip data
            raise _gzip_error(source, e, row) from None
        if block is None:
            break
        try:
            table = pacsv.read_csv(
                pa.BufferReader(block),
                read_options=pacsv.ReadOptions(column_names=names, skip_rows=header_lines, use_threads=False,
                                               block_size=len(block) + 1),
                parse_options=parse_options, convert_options=convert_options)
        except (pa.ArrowInvalid, OSError) as e:
            raise _text_error(source, e, row, names, locate, row - 1 - header_lines) from None
        header_lines = 0
        for batch in table.to_batches():
            data, bad = {}, {}
            for c, f in scal.items():
                data[c] = _scalar(batch.column(f), spec.scalars[c], source, row, c)
            for c, f in arrs.items():
                length, dtype = spec.arrays[c]
                col = batch.column(f)
                data[c] = _arrays_or_bad(lambda: parse_array_column(col, length, np.dtype(dtype)),
                                         lambda i: parse_array_column(col.slice(i, 1), length, np.dtype(dtype)),
                                         len(col), length, dtype, c, source, row, on_bad, bad)
            for c, cols in flat.items():
                data[c] = _stack_flat([to_numpy(batch.column(f), fill=np.nan) for f in cols],
                                      spec.arrays[c][1])
            n_rows = batch.num_rows
            data = _finish(data, spec, source, row, on_bad, bad)
            yield Chunk(data, row, source)
            row += n_rows


def _gzip_error(path, e, row):
    return BadInput(path, f"truncated or corrupt gzip stream after data row ~{row} ({e}); download the file again")


def _text_error(path, e, row, names, locate=None, line_to_row=None):
    """A one-line BadInput for an Arrow error; ``line_to_row`` turns Arrow's 1-based line number in
    the parsed block into a data row (added to it)."""
    msg = str(e)
    line = re.search(r"Row #(\d+)", msg)
    at = int(line.group(1)) + line_to_row if line and line_to_row is not None else None
    m = re.search(r"In CSV column #(\d+): .*?conversion error to (\w+): invalid value '(.*)'", msg)
    if m:
        k = int(m.group(1))  # Arrow numbers the file's columns
        col = names[k] if k < len(names) else f"#{k}"
        bad_row = at or (locate(col, m.group(3)) if locate else None)
        return BadInput(path, f"value {m.group(3)[:40]!r} is not a valid {m.group(2)}", column=col,
                        row=bad_row if bad_row else None)
    m = re.search(r"Expected (\d+) columns, got (\d+)", msg)
    if m:
        where = f"row {at}" if at else f"a row after row {row}"
        return BadInput(path, f"{where} has {m.group(2)} fields, the header has {m.group(1)} "
                        "(truncated or malformed line)")
    return BadInput(path, f"cannot parse the file near row {row}: {msg[:300]}")


def _locate(path, fmt, n_comment, delim, column, value):
    """Error path: the 1-based data row where ``column`` holds ``value`` (re-reads that column as text)."""
    try:
        reader = pacsv.open_csv(
            pa.input_stream(str(path), compression="gzip" if fmt.gzip else None),
            read_options=pacsv.ReadOptions(skip_rows=n_comment, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=delim),
            convert_options=pacsv.ConvertOptions(column_types={column: pa.string()}, include_columns=[column]))
        row = 1
        for batch in reader:
            hits = np.flatnonzero(np.asarray(batch.column(0).to_numpy(zero_copy_only=False)) == value)
            if hits.size:
                return row + int(hits[0])
            row += batch.num_rows
    except (pa.ArrowInvalid, OSError):
        return None
    return None


def _scalar(col, code, path, row, name):
    """numpy values of an Arrow scalar column: NaN for missing floats, masked array for missing ints/bools."""
    if col.null_count == 0:
        a = to_numpy(col)
    elif code in ("i2", "i4", "i8", "bool"):
        mask = null_mask(col)  # once: to_numpy(fill=) would unpack the validity bits a second time
        a = np.ma.MaskedArray(np.where(mask, 0, to_numpy(col)), mask=mask)
    else:
        a = to_numpy(col, fill=np.nan)
    return _cast_scalar(a, code, path, row, name)


#: float64 holds every integer up to 2**53 exactly; above it a float id may be a neighbour's id
FLOAT_EXACT_INT = 2 ** 53


def _float_to_int(a, path, row, name):
    """An integer column that a FITS/VOTable file stores as floats: NaN -> missing; fractions,
    infinities and values too large to be exact are errors (a Gaia id would silently change)."""
    d = np.asarray(np.ma.getdata(a), dtype=np.float64)
    mask = np.ma.getmaskarray(a) | np.isnan(d)
    with np.errstate(invalid="ignore"):
        bad = ~mask & (np.isinf(d) | (d != np.round(d)))
        big = ~mask & ~bad & (np.abs(d) >= FLOAT_EXACT_INT)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise BadInput(path, f"value {d[i]!r} is not an integer", row=row + i, column=name)
    if big.any():
        i = int(np.flatnonzero(big)[0])
        raise BadInput(path, f"value {d[i]:.17g} is stored as a floating-point number, which cannot hold "
                       "integers above 2**53 exactly (the id may have lost its last digits); write the "
                       "column as a 64-bit integer", row=row + i, column=name)
    d = np.where(mask, 0, d)
    return np.ma.MaskedArray(d, mask=mask) if mask.any() else d


def _cast_scalar(a, code, path, row, name):
    if code in _INT_RANGE and np.asarray(np.ma.getdata(a)).dtype.kind == "f":
        a = _float_to_int(a, path, row, name)
    if code in _INT_RANGE and _INT_RANGE[code]:
        lo, hi = _INT_RANGE[code]
        d = np.ma.getdata(a)
        bad = (d < lo) | (d > hi)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise BadInput(path, f"value {d[i]} out of range for {code}", row=row + i, column=name)
    dt = {"i2": np.int16, "i4": np.int32, "i8": np.int64, "f4": np.float32, "f8": np.float64, "bool": np.bool_}[code]
    if isinstance(a, np.ma.MaskedArray):
        return np.ma.MaskedArray(np.ma.getdata(a).astype(dt), mask=np.ma.getmaskarray(a))
    return np.asarray(a).astype(dt, copy=False)


def _stack_flat(columns, dtype):
    out = np.column_stack([np.asarray(np.ma.filled(np.ma.asarray(c, dtype=np.float64), np.nan)) for c in columns])
    return out.astype(dtype, copy=False)


# --------------------------------------------------------------------------- FITS / VOTable (astropy)

def _read_astropy(path, fmt, spec, chunk_rows, skip, source, on_bad, warn) -> Iterator[Chunk]:
    import warnings
    from astropy.table import Table
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt.kind == "fits":
                table = Table.read(path, format="fits", memmap=not fmt.gzip, character_as_bytes=True)
            else:
                table = Table.read(path, format="votable")
    except Exception as e:
        raise BadInput(source, f"cannot read as {fmt}: {str(e)[:300]}") from None
    names = list(table.colnames)
    scal, arrs, flat = _resolve(names, spec, skip)
    _check_columns(source, spec, names, scal, arrs, flat, skip)
    _report_unknown(source, spec, names, scal, arrs, flat, skip, warn)
    n = len(table)
    size = Path(path).stat().st_size
    for start in range(0, max(n, 1), chunk_rows):
        part = table[start:start + chunk_rows]
        data, bad = {}, {}
        for c, f in scal.items():
            data[c] = _cast_scalar(_astropy_scalar(part[f]), spec.scalars[c], source, start + 1, c)
        for c, f in arrs.items():
            length, dtype = spec.arrays[c]
            col = part[f]
            data[c] = _arrays_or_bad(lambda: _astropy_array(col, length, np.dtype(dtype)),
                                     lambda i: _astropy_array(col[i:i + 1], length, np.dtype(dtype)),
                                     len(col), length, dtype, c, source, start + 1, on_bad, bad)
        for c, cols in flat.items():
            data[c] = _stack_flat([part[f] for f in cols], spec.arrays[c][1])
        data = _finish(data, spec, source, start + 1, on_bad, bad)
        yield Chunk(data, start + 1, source, size if start == 0 else 0)


def _astropy_scalar(col):
    a = np.ma.asarray(col)
    if a.dtype.kind == "f":
        return np.ma.filled(a.astype(np.float64) if a.dtype.itemsize > 4 else a, np.nan)
    if np.ma.getmaskarray(a).any():
        return np.ma.MaskedArray(np.ma.getdata(a), mask=np.ma.getmaskarray(a))
    return np.ma.getdata(a)


def _astropy_array(col, length, dtype):
    """(n, length) from a fixed-shape or variable-length array column; empty/masked rows -> NaN."""
    data = np.ma.getdata(col)
    if data.dtype != object:
        a = np.asarray(np.ma.filled(np.ma.asarray(col, dtype=np.float64), np.nan))
        if a.ndim != 2 or a.shape[1] != length:
            raise ArrayParseError(np.arange(len(a)), f"array column of shape {a.shape[1:]}, expected ({length},)")
        return a.astype(dtype)
    n = len(data)
    out = np.full((n, length), np.nan, dtype=dtype)
    row_mask = np.ma.getmaskarray(col) if isinstance(col, np.ma.MaskedArray) else np.zeros(n, bool)
    lens = np.fromiter((0 if m else np.size(x) for x, m in zip(data, row_mask)), np.int64, n)
    full = np.flatnonzero(lens == length)
    wrong = np.flatnonzero((lens != length) & (lens != 0))
    if wrong.size:
        raise ArrayParseError(wrong, f"array has {lens[wrong[0]]} values, expected {length}")
    if full.size:
        vals = np.stack([np.ma.filled(np.ma.asarray(data[i], dtype=np.float64), np.nan) for i in full])
        out[full] = vals.astype(dtype)
    return out


# --------------------------------------------------------------------------- zip (DataLink bundles)

def _read_zip(path, spec, chunk_rows, skip, block_bytes, on_bad, warn) -> Iterator[Chunk]:
    try:
        zf = zipfile.ZipFile(path)
        members = [m for m in zf.infolist() if not m.is_dir() and not Path(m.filename).name.startswith(".")]
    except zipfile.BadZipFile as e:
        raise BadInput(path, f"corrupt zip archive ({e})") from None
    if not members:
        raise BadInput(path, "the zip archive holds no files")
    with zf, tempfile.TemporaryDirectory(prefix="xpmet-zip-") as tmp:
        for m in members:
            target = Path(tmp) / Path(m.filename).name
            try:
                with zf.open(m) as src, open(target, "wb") as dst:
                    while b := src.read(1 << 22):
                        dst.write(b)
            except (zipfile.BadZipFile, EOFError, OSError) as e:
                raise BadInput(f"{path}!{m.filename}", f"cannot extract ({e})") from None
            source = f"{path}!{m.filename}"
            try:
                try:
                    fmt = detect(target)
                except BadInput as e:
                    raise BadInput(source, str(e).split(": ", 1)[-1]) from None
                if fmt.kind in ("csv", "ecsv"):
                    inner = _read_text(target, fmt, spec, skip, block_bytes, source, on_bad, warn)
                elif fmt.kind == "zip":
                    raise BadInput(source, "nested zip archives are not supported")
                else:
                    inner = _read_astropy(target, fmt, spec, chunk_rows, skip, source, on_bad, warn)
                for chunk in inner:
                    chunk.n_bytes = m.compress_size if chunk.first_row == 1 else 0
                    yield chunk
            finally:
                target.unlink(missing_ok=True)
