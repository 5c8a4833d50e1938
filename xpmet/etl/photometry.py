"""Load external photometry (2MASS PSC, AllWISE) and the Gaia DR3 best-neighbour files that join it to Gaia.

Files: CSV, ECSV, FITS, VOTable (xpmet.etl.survey's reader) or IRSA's IPAC tables (.tbl), gzipped
too. Each kind of file has a descriptor in etl/photometry/ (or a user's own TOML): the table it fills
(xpmet.db.models.photometry), its key, and per table column the file's column names
(case-insensitive alternatives, first present wins). Sentinels, NaN and values outside a column's
valid range are stored as NULL; designations are normalised (trimmed, upper case, "2MASS J" / "J"
prefix dropped) in both kinds of file so that they always join. One transaction per file with
provenance (xpmet.etl.provenance): a file already loaded is skipped, ``replace`` reloads it. A key
loaded from another file is an error naming that file (``replace``: this file's row wins).

    load_photometry("tmass", ["psc.csv"], best_neighbour=["tmassBestNeighbour0001.csv.gz"])
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg

from xpmet import resources
from xpmet.errors import BadInput, XpmetError

_TOP_KEYS = {"name", "title", "release", "citation", "notes", "table", "key", "best_neighbour", "hdu",
             "required", "columns", "identifiers", "sentinels", "valid"}


@dataclass(frozen=True)
class Catalogue:
    """A parsed photometry descriptor."""
    name: str
    path: Path
    table: str                          # table name in schema xpmet (a model of xpmet.db.models.photometry)
    key: str                            # unique per row: duplicates are errors
    columns: dict                       # table column -> tuple of file column alternatives
    title: str = ""
    release: str = ""
    citation: str = ""
    notes: str = ""
    best_neighbour: str | None = None   # descriptor of the best-neighbour files that join this catalogue
    hdu: int | None = None
    required: tuple = ()
    id_columns: tuple = ()              # text ids normalised so that catalogue and best neighbour agree
    drop_prefix: tuple = ()
    id_pattern: str | None = None      # a normalised id must match it (catches a file given as the wrong catalogue)
    id_example: str = ""
    sentinels: tuple = (-9999.0, -999.0, 9999.0)
    valid: dict = field(default_factory=dict)

    @property
    def model(self):
        from xpmet.db.models import photometry
        return getattr(photometry, self.table)


def _err(path, msg):
    return XpmetError(f"descriptor {path}: {msg}")


def parse_catalogue(raw: dict, path: Path) -> Catalogue:
    """Validate a parsed TOML document against the table models; errors name the file and the key."""
    from xpmet.db.models import photometry
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise _err(path, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise _err(path, f"name must be a lower-case identifier, not {name!r}")
    tables = ["photometry_tmass", "photometry_allwise", "tmass_best_neighbour", "allwise_best_neighbour"]
    if raw.get("table") not in tables:
        raise _err(path, f"table must be one of {tables}, not {raw.get('table')!r}")
    model = getattr(photometry, raw["table"])
    cols = raw.get("columns", {})
    bad = set(cols) - {c.name for c in model.columns if c.name != "load_id"}
    if bad:
        raise _err(path, f"[columns] {sorted(bad)} are not columns of xpmet.{raw['table']}")
    columns = {}
    for k, v in cols.items():
        alts = (v,) if isinstance(v, str) else tuple(v) if isinstance(v, list) and v and all(
            isinstance(x, str) for x in v) else None
        if alts is None:
            raise _err(path, f"[columns] {k} must be a column name or a list of alternatives, not {v!r}")
        columns[k] = alts
    key = raw.get("key")
    if key not in columns:
        raise _err(path, f"key {key!r} must be one of the [columns]")
    must = [c.name for c in model.columns if not c.nullable and c.name != "load_id"]
    required = tuple(dict.fromkeys([*raw.get("required", ()), *must, key]))
    for r in required:
        if r not in columns:
            raise _err(path, f"required column {r!r} is not mapped in [columns]")
    ids = raw.get("identifiers", {})
    if set(ids) - {"columns", "drop_prefix", "pattern", "example"}:
        raise _err(path, "[identifiers] takes columns, drop_prefix, pattern and example")
    try:
        pattern = re.compile(ids["pattern"]) if "pattern" in ids else None
    except re.error as e:
        raise _err(path, f"[identifiers] pattern is not a regular expression ({e})") from None
    for c in ids.get("columns", ()):
        if c not in columns or model.c[c].type.python_type is not str:
            raise _err(path, f"[identifiers] {c!r} is not a mapped text column")
    valid = {}
    for k, v in raw.get("valid", {}).items():
        if k not in columns or not (isinstance(v, list) and len(v) == 2 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            raise _err(path, f"[valid] {k} must be a mapped column = [low, high]")
        valid[k] = (float(v[0]), float(v[1]))
    sentinels = raw.get("sentinels", {}).get("values", [-9999, -999, 9999])
    return Catalogue(name=name, path=path, table=raw["table"], key=key, columns=columns,
                     title=raw.get("title", ""), release=str(raw.get("release", "")),
                     citation=raw.get("citation", ""), notes=raw.get("notes", ""),
                     best_neighbour=raw.get("best_neighbour"), hdu=raw.get("hdu"), required=required,
                     id_columns=tuple(ids.get("columns", ())), id_pattern=pattern and pattern.pattern,
                     id_example=ids.get("example", ""),
                     drop_prefix=tuple(sorted((p.upper() for p in ids.get("drop_prefix", ())), key=len, reverse=True)),
                     sentinels=tuple(float(s) for s in sentinels), valid=valid)


def load_catalogue(name_or_path) -> Catalogue:
    """A shipped descriptor by name (etl/photometry/<name>.toml) or any TOML file by path."""
    p = Path(name_or_path)
    if not p.suffix and not p.exists():
        shipped_file = resources.photometry_descriptor(str(name_or_path))
        if not shipped_file.is_file():
            raise XpmetError(f"no photometry descriptor {name_or_path!r}; shipped: {', '.join(shipped())}")
        p, text = Path(str(shipped_file)), shipped_file.read_text()
    else:
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise XpmetError(f"descriptor {p} does not exist") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _err(p, f"not valid TOML: {e}") from None
    return parse_catalogue(raw, p)


def shipped() -> list[str]:
    return resources.photometry_descriptor_names()


def normalise_ids(values, prefixes) -> np.ndarray:
    """Designations as both kinds of file must spell them: trimmed, upper case, known prefix dropped."""
    out = np.char.upper(np.char.strip(np.asarray(values).astype(str)))
    for p in prefixes:  # longest first: "2MASS J" before "J"
        has = np.char.startswith(out, p)
        if has.any():
            out = np.where(has, np.char.lstrip(np.char.replace(out, p, "", count=1)), out)
    return out


@dataclass
class PhotLoad:
    path: Path
    catalogue: str
    n_rows: int = 0
    skipped: bool = False
    absent: list = field(default_factory=list)    # optional columns the file lacks (stored NULL)
    nulled: dict = field(default_factory=dict)    # column -> values made NULL (sentinel, NaN, out of range)
    error: str | None = None


def normalise(path: Path, table, d: Catalogue) -> tuple[dict, list, dict]:
    """Table columns (numpy; text as object arrays with None) for every row, the absent columns, and
    per column how many values were made NULL. Bad input raises BadInput naming file, row and column."""
    from xpmet.db.models.columns import type_code
    from xpmet.etl.survey import Columns, _ids_as_text, _numeric
    cols = Columns(table)
    out, absent, nulled = {}, [], {}
    sentinels = np.asarray(d.sentinels, float)
    for name, alts in d.columns.items():
        c = cols.find(alts)
        if c is None or c not in table.colnames:
            if name in d.required:
                raise BadInput(path, f"no {name} column (tried {', '.join(alts)})", column=alts[0])
            absent.append(name)
            continue
        code = type_code(d.model.c[name])
        if code == "text":
            raw = np.ma.getdata(table[c])
            if raw.dtype.kind not in "US":
                raw = raw.astype(str)
            mask = np.ma.getmaskarray(table[c])
            v = normalise_ids(raw, d.drop_prefix) if name in d.id_columns else np.char.strip(raw.astype(str))
            empty = mask | np.isin(np.char.lower(v), ["", "null", "nan", "none", "--"])
            if name in d.id_columns and d.id_pattern:
                _check_ids(path, v, empty, d, name, c)
            out[name] = np.where(empty, None, v.astype(object))
        elif code in ("f4", "f8"):
            v = _numeric(path, table, c)
            bad = ~np.isfinite(v) | np.isin(v, sentinels)
            if name in d.valid:
                lo, hi = d.valid[name]
                bad |= (v < lo) | (v > hi)
            made = int((bad & ~np.isnan(v)).sum())
            if made:
                nulled[name] = made
            out[name] = np.where(bad, np.nan, v)
        else:
            v = _numeric(path, _ids_as_text(path, table, c) if name == "source_id" else table, c, dtype=np.int64)
            limit = {"i2": 2 ** 15, "i4": 2 ** 31}.get(code)
            data = np.ma.getdata(v)
            if limit and (np.abs(data[~np.ma.getmaskarray(v)]) >= limit).any():
                row = int(np.flatnonzero(~np.ma.getmaskarray(v) & (np.abs(data) >= limit))[0])
                raise BadInput(path, f"value {data[row]} does not fit the column ({code})", row=row, column=c)
            out[name] = v
        missing = _missing(out[name])
        if name in d.required and missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise BadInput(path, f"{name} is empty or invalid", row=row, column=c)
    for key, lo, hi in (("ra", 0.0, 360.0), ("dec", -90.0, 90.0)):
        if key in out:
            v = out[key]
            bad = (v < lo) | (v > hi)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise BadInput(path, f"{key} = {v[row]} is outside [{lo}, {hi}] degrees", row=row, column=key)
    keys = out[d.key]
    kv = np.ma.getdata(keys).astype(str) if keys.dtype == object else np.ma.getdata(keys)
    order = np.argsort(kv, kind="stable")
    dup = np.flatnonzero(kv[order][1:] == kv[order][:-1])
    if dup.size:
        a, b = sorted(order[[dup[0], dup[0] + 1]])
        raise BadInput(path, f"{d.key} {kv[a]} appears twice (rows {a} and {b})", row=int(b), column=d.key)
    # in key order: the primary-key B-tree is filled page after page instead of split all over
    return {k: v[order] for k, v in out.items()}, absent, nulled


def _check_ids(path, v, empty, d: Catalogue, name: str, column: str):
    """Ids look like the catalogue's: a 2MASS file loaded as AllWISE (or the other catalogue's
    best-neighbour file) would otherwise load and never join. A catalogue's own designations must all
    match the pattern; in a best-neighbour file some must (2MASS neighbours may be XSC sources)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    ok = pc.match_substring_regex(pa.array(v[~empty]), f"^(?:{d.id_pattern})$").to_numpy(zero_copy_only=False)
    if ok.all() or (name != d.key and ok.any()):
        return
    row = int(np.flatnonzero(~empty)[np.flatnonzero(~ok)[0]])
    raise BadInput(path, f"{v[row]!s} does not look like a {d.name} designation (e.g. {d.id_example}); "
                         "is this file another catalogue's?", row=row, column=column)


def _missing(v) -> np.ndarray:
    if np.ma.isMaskedArray(v):
        return np.ma.getmaskarray(v)
    if v.dtype == object:
        return np.asarray([x is None for x in v], bool)
    return np.isnan(v)


def load_file(d: Catalogue, path, replace: bool = False, url: str | None = None) -> PhotLoad:
    """Load one file of catalogue ``d`` in one transaction (skipped when already loaded)."""
    from xpmet.etl.provenance import Skipped, file_load
    path = Path(path)
    if not path.exists():
        raise BadInput(path, "file does not exist")
    res = PhotLoad(path, d.name)
    data, res.absent, res.nulled = normalise(path, read_table(path, d), d)
    target = f"xpmet.{d.table}"
    with file_load(path, f"photometry:{d.name}", (target,), options={"descriptor": str(d.path),
                                                                     "absent": res.absent},
                   replace=replace, url=url) as ld:
        if isinstance(ld, Skipped):
            res.skipped, res.n_rows = True, ld.n_rows or 0
            return res
        n = len(data[d.key])
        data["load_id"] = np.full(n, ld.load_id, np.int32)
        names = [c.name for c in d.model.columns if c.name in data]
        with ld.conn.cursor() as cur:
            if replace:  # this file wins over rows of the same keys loaded from other files
                cur.execute(f"DELETE FROM {target} WHERE {d.key} = ANY(%s) AND load_id <> %s",
                            (np.ma.getdata(data[d.key]).tolist(), ld.load_id))
            cur.execute("SAVEPOINT copy")
            try:
                if n:
                    _copy_csv(cur, target, names, data)
            except psycopg.errors.UniqueViolation:
                cur.execute("ROLLBACK TO SAVEPOINT copy")
                raise _duplicate(cur, path, target, d.key, np.ma.getdata(data[d.key]).tolist()) from None
        ld.n_rows = res.n_rows = n
    return res


def _copy_csv(cur, target: str, names: list, data: dict, rows: int = 100_000):
    """COPY the rows as CSV written by pyarrow (C++), ``rows`` at a time: NaN, masked and None go as
    NULL. Faster here than xpmet.io.pgcopy's binary COPY, whose text columns are encoded row by row in
    Python; the text of one slice at a time is in memory."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    def arrow(v):
        if np.ma.isMaskedArray(v):
            return pa.array(np.ma.getdata(v), mask=np.ma.getmaskarray(v))
        return pa.array(v, from_pandas=True)  # NaN -> null; None -> null in text columns
    table = pa.table([arrow(data[n]) for n in names], names=names)
    with cur.copy(f"COPY {target} ({', '.join(names)}) FROM STDIN (FORMAT csv)") as cp:
        for start in range(0, table.num_rows, rows):
            buf = pa.BufferOutputStream()
            pacsv.write_csv(table.slice(start, rows), buf, pacsv.WriteOptions(include_header=False))
            cp.write(memoryview(buf.getvalue()))


def read_table(path: Path, d: Catalogue):
    """The file as an astropy Table: CSV and ECSV through pyarrow's reader (4-9x faster than astropy's;
    the Gaia bulk best-neighbour files are ECSV), IPAC tables, FITS and VOTable through astropy."""
    from xpmet.etl.survey import read_survey_table, survey_format
    if ".tbl" in path.suffixes:
        return _read_ipac(path)
    if survey_format(path) in ("ascii.csv", "ascii.ecsv"):
        return _read_csv(path, d)
    return read_survey_table(path, d)


_NULLS = ["", "null", "NULL", "NaN", "nan", "--"]


def _read_csv(path: Path, d: Catalogue):
    """A CSV (ECSV: its '#' header lines skipped) read by pyarrow; the descriptor's text columns stay
    text ("000" is a flag, not a number); nulls come masked."""
    import gzip
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from astropy.table import Table
    from xpmet.db.models.columns import type_code
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rt") if gz else open(path, encoding="utf-8", errors="replace")) as fh:
            skip, header = 0, ""
            for header in fh:
                if not header.startswith("#"):
                    break
                skip += 1
        names = [h.strip().strip('"') for h in header.rstrip("\r\n").split(",")]
        by_lower = {n.lower(): n for n in names}
        text = {by_lower[a.lower()]: pa.string() for f, alts in d.columns.items()
                if type_code(d.model.c[f]) == "text" for a in alts if a.lower() in by_lower}
        arrow = pacsv.read_csv(pa.input_stream(str(path), compression="gzip" if gz else None),
                               read_options=pacsv.ReadOptions(skip_rows=skip),
                               convert_options=pacsv.ConvertOptions(column_types=text, null_values=_NULLS,
                                                                    strings_can_be_null=True))
    except (OSError, EOFError, pa.ArrowInvalid) as e:
        raise BadInput(path, f"cannot read as CSV ({type(e).__name__}: {e}); is the file truncated or in "
                             "another format?") from None
    cols = {}
    for name, col in zip(arrow.column_names, arrow.columns):
        col = col.combine_chunks()
        mask = col.is_null().to_numpy(zero_copy_only=False)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            values = np.asarray(col.fill_null("").to_numpy(zero_copy_only=False)).astype(str)
        elif pa.types.is_null(col.type):  # an all-empty column
            values = np.full(len(col), np.nan)
        else:
            values = col.fill_null(0).to_numpy(zero_copy_only=False) if mask.any() else col.to_numpy(zero_copy_only=False)
        cols[name] = np.ma.masked_array(values, mask=mask)
    return Table(cols, masked=True)


def _read_ipac(path: Path):
    """IRSA's default download format, the IPAC table (.tbl, gzipped too): null values come masked."""
    import warnings
    from astropy.table import Table
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Table.read(path, format="ascii.ipac")
    except Exception as e:
        raise BadInput(path, f"cannot read as an IPAC table ({type(e).__name__}: {e})") from None


def _duplicate(cur, path, target, key, keys) -> BadInput:
    """A BadInput naming a key of this file already loaded from another file, and that file."""
    row = cur.execute(f"SELECT t.{key}, l.path FROM {target} t JOIN xpmet.etl_load l USING (load_id) "
                      f"WHERE t.{key} = ANY(%s) LIMIT 1", (keys,)).fetchone()
    what = f"{key} {row[0]} is already loaded from {row[1]}" if row else f"a {key} is already loaded"
    return BadInput(path, f"{what}; a row must come from one file only (--replace lets this file's rows win)",
                    column=key)


def load_photometry(catalogue, paths=(), best_neighbour=(), replace: bool = False,
                    url: str | None = None) -> list[PhotLoad]:
    """Load catalogue files and the best-neighbour files that join them to Gaia; each file in its own
    transaction, a failed file failing alone (its result carries a one-line ``error``)."""
    from xpmet.etl.bulk import analyze
    from xpmet.etl.runner import error_line
    d = catalogue if isinstance(catalogue, Catalogue) else load_catalogue(catalogue)
    if not paths and not best_neighbour:
        raise XpmetError("give at least one file to load")
    jobs = [(d, p) for p in paths]
    if best_neighbour:
        if not d.best_neighbour:
            raise XpmetError(f"descriptor {d.path} names no best_neighbour descriptor")
        bn = load_catalogue(d.best_neighbour)
        jobs += [(bn, p) for p in best_neighbour]
    results, touched = [], set()
    for cat, p in jobs:
        try:
            r = load_file(cat, p, replace=replace, url=url)
            if not r.skipped:
                touched.add(cat.table)
        except Exception as e:  # database errors included; KeyboardInterrupt still stops
            r = PhotLoad(Path(p), cat.name, error=error_line(p, e))
        results.append(r)
    for t in sorted(touched):  # fresh statistics: the first join after a load plans like the re-run
        analyze(f"xpmet.{t}", url)
    return results
