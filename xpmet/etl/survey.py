"""Load a survey catalogue file into xpmet.survey_star as its descriptor says (one transaction per file).

Every row is kept. Sentinels (-9999 ...), NaN and values outside the label's physical range
become NULL and set an ``<label>_invalid`` bit, so no sentinel can reach a label; the survey's
own flags become xpmet bits through the descriptor's rules; ``quality_ok`` is false when a
whole-row bit (xpmet.flags.SURVEY_ROW_BITS) is set. Per-label bits (``feh_flagged``, ...) keep the other
labels of the row usable.

    from xpmet.etl.survey import load_survey_file
    load_survey_file("apogee", "allStar-dr17-synspec_rev1.fits")
"""
from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xpmet.errors import BadInput, XpmetError
from xpmet.etl.metallicity import feh_from_mh
from xpmet.flags import SURVEY_QUALITY_BITS, SURVEY_ROW_BITS
from xpmet.etl.descriptor import LABELS, Descriptor, load_descriptor
from xpmet.etl.provenance import Skipped, file_load
from xpmet.io.pgcopy import Col, copy_rows


#: astropy's reader for each format xpmet.io.formats detects by content
ASTROPY_FORMATS = {"fits": "fits", "csv": "ascii.csv", "ecsv": "ascii.ecsv", "votable": "votable"}
#: whitespace-separated text has no signature to detect: these names are read by astropy's guesser
PLAIN_TEXT_SUFFIXES = (".txt", ".dat", ".tsv")


@dataclass
class SurveyLoad:
    path: Path
    survey: str
    n_rows: int = 0
    n_ok: int = 0
    skipped: bool = False
    absent: list = field(default_factory=list)        # descriptor fields/rules whose column is absent
    bit_counts: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)         # values made NULL that the user should know about
    error: str | None = None                          # one line, when the file failed (load_survey)


def survey_format(path: Path) -> str:
    """The astropy format of a survey file, from its content (xpmet.io.formats), not its name."""
    from xpmet.io.formats import detect
    try:
        kind = detect(path).kind
    except BadInput:
        if any(s.lower() in PLAIN_TEXT_SUFFIXES for s in path.suffixes):
            return "ascii"
        raise
    if kind not in ASTROPY_FORMATS:
        raise BadInput(path, f"a {kind} file is not a survey catalogue; xpmet reads FITS, CSV, ECSV and VOTable "
                             "(optionally gzipped)")
    return ASTROPY_FORMATS[kind]


def read_survey_table(path: Path, d: Descriptor):
    """The file as an astropy Table; a clear error when it is truncated or not what it claims."""
    from astropy.table import Table
    import warnings
    if not path.exists():
        raise BadInput(path, "file does not exist")
    fmt = survey_format(path)
    kw = {"hdu": d.hdu} if fmt == "fits" and d.hdu is not None else {}
    if fmt == "ascii.csv":
        kw["fill_values"] = [("", "0"), ("null", "0"), ("NaN", "0")]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Table.read(path, format=fmt, **kw)
    except FileNotFoundError:
        raise BadInput(path, "file does not exist") from None
    except Exception as e:
        raise BadInput(path, f"cannot read as {fmt} ({type(e).__name__}: {e}); "
                             "is the file truncated or in another format?") from None


class Columns:
    """Case-insensitive column lookup over a table, taking the first alternative present.

    An alternative may be a sum of columns, "ALPHA_M + M_H - FE_H", usable when all of them exist.
    """

    def __init__(self, table):
        self.t = table
        self.by_lower = {c.lower(): c for c in table.colnames}

    def terms(self, alt: str):
        """[(sign, column)] of an expression alternative, or None if a column is missing."""
        toks = alt.replace("+", " + ").replace("-", " - ").split()
        if not toks or toks[0] not in "+-":
            toks = ["+"] + toks
        if len(toks) % 2:
            return None
        out = []
        for sign, name in zip(toks[::2], toks[1::2]):
            if sign not in "+-" or name.lower() not in self.by_lower:
                return None
            out.append((1.0 if sign == "+" else -1.0, self.by_lower[name.lower()]))
        return out

    def find(self, alts):
        for a in alts:
            if a.lower() in self.by_lower:
                return self.by_lower[a.lower()]
            if any(op in a for op in " +-") and self.terms(a):
                return a
        return None


#: float64 holds every integer up to 2**53 exactly; above it a float id may be a neighbour's id
FLOAT_EXACT_INT = 2 ** 53
_INT_TEXT = re.compile(r"\s*([-+]?\d+)(\.0*)?\s*")


def _text_ids(path, s: np.ndarray, col) -> np.ndarray:
    """Integer ids from their text, exactly ("4295806720123456789.0" too); float-only forms
    ("1.2e18") only when float64 holds them exactly."""
    out = np.zeros(len(s), np.int64)
    for i, v in enumerate(s):  # only for id columns astropy could not read as integers
        m = _INT_TEXT.fullmatch(v)
        if m:
            out[i] = int(m.group(1))
            continue
        try:
            f = float(v)
        except ValueError:
            raise BadInput(path, f"value {v!r} is not a number", row=i, column=col) from None
        if not np.isfinite(f) or f != round(f):
            raise BadInput(path, f"value {v!r} is not an integer id", row=i, column=col)
        if abs(f) >= FLOAT_EXACT_INT:
            raise BadInput(path, f"value {v!r} is written as a floating-point number whose last digits are "
                           "lost above 2**53; write the id as an integer", row=i, column=col)
        out[i] = int(f)
    return out


def _numeric(path, t, col, dtype=float) -> np.ndarray:
    """Column as float (NaN where masked/empty) or int (masked array); names the first bad row."""
    c = t[col]
    mask = np.ma.getmaskarray(c) if hasattr(c, "mask") else np.zeros(len(c), bool)
    data = np.ma.getdata(c)
    if data.dtype.kind in "US":
        s = np.char.strip(np.asarray(data).astype(str))
        mask = mask | np.isin(np.char.lower(s), ["", "null", "nan", "none"])
        s = np.where(mask, "0", s)
        try:
            data = s.astype(dtype)
        except ValueError:
            if dtype is not float:
                return np.ma.masked_array(_text_ids(path, s, col), mask=mask)
            bad = [i for i, v in enumerate(s) if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", v)]
            row = bad[0] if bad else None
            raise BadInput(path, f"value {s[row]!r} is not a number" if row is not None else
                           "values are not numbers", row=row, column=col) from None
    elif data.dtype.kind == "b":
        data = data.astype(dtype)
    elif data.dtype.kind not in "iuf":
        raise BadInput(path, f"column has type {data.dtype}, expected numbers", column=col)
    if dtype is float:
        out = np.asarray(data, dtype=float)
        out[mask] = np.nan
        return out
    if data.dtype.kind == "f":
        bad = ~mask & ~np.isfinite(data)
        frac = ~mask & np.isfinite(data) & (data != np.round(data))
        if frac.any():
            row = int(np.flatnonzero(frac)[0])
            raise BadInput(path, f"value {data[row]!r} is not an integer id", row=row, column=col)
        big = ~mask & np.isfinite(data) & (np.abs(data) >= FLOAT_EXACT_INT)
        if big.any():
            row = int(np.flatnonzero(big)[0])
            raise BadInput(path, f"value {data[row]:.17g} is stored as a floating-point number, which cannot "
                           "hold integers above 2**53 exactly (a Gaia id may have lost its last digits); "
                           "write the column as a 64-bit integer", row=row, column=col)
        mask = mask | bad
        data = np.where(mask, 0, data)
    return np.ma.masked_array(np.asarray(data, dtype=np.int64), mask=mask)


def _ids_as_text(path, table, col):
    """The table, or for a CSV whose id column astropy parsed as float (one "123.0" is enough)
    that column re-read as text, so that ids above 2**53 keep every digit."""
    if np.ma.getdata(table[col]).dtype.kind != "f" or survey_format(Path(path)) != "ascii.csv":
        return table
    from astropy.io import ascii
    from astropy.table import Table
    return Table.read(path, format="ascii.csv", include_names=[col], converters={col: [ascii.convert_numpy(str)]})


def _epochs(path, t, col, fmt) -> np.ndarray:
    from astropy.time import Time
    if fmt == "date":
        s = np.char.strip(np.asarray(np.ma.getdata(t[col])).astype(str))
        missing = np.isin(np.char.lower(s), ["", "null", "nan", "none", "--"])
        s = np.where(missing, "2000-01-01", s)
        try:
            days = s.astype("datetime64[D]")
        except ValueError:
            for i, v in enumerate(s):  # error path only: find the row to name
                try:
                    np.datetime64(v, "D")
                except ValueError:
                    raise BadInput(path, f"date {v!r} is not YYYY-MM-DD", row=i, column=col) from None
            raise
        jy = Time(days.astype("datetime64[s]").astype(float) / 86400.0 + 40587.0, format="mjd").jyear
        return np.where(missing, np.nan, jy)
    v = _numeric(path, t, col)
    if fmt == "jyear":
        return v
    finite = np.isfinite(v)
    out = np.full(len(v), np.nan)
    out[finite] = Time(v[finite], format=fmt).jyear
    return out


def _rule_mask(path, rule, values: np.ndarray) -> np.ndarray:
    if rule.bits:
        ints = np.where(np.isfinite(values), values, 0).astype(np.int64)
        return (ints & np.int64(sum(1 << b for b in rule.bits))) != 0
    if rule.nonzero:
        return np.isfinite(values) & (values != 0)
    if rule.below is not None:
        return ~(values >= rule.below)  # NaN counts as below: an unknown SNR does not pass a cut
    if rule.above is not None:
        return values > rule.above
    return np.isin(values, np.asarray(rule.equals, dtype=float))


def _convert_mh(path, out: dict, setbit, notes):
    """The feh column holds [M/H]: [Fe/H] from it and the row's [alpha/Fe] (xpmet.etl.metallicity)."""
    mh = out["feh"]
    alpha = out.get("alpha_fe", np.full(mh.shape, np.nan))
    feh, err = feh_from_mh(mh, out.get("feh_err"), alpha, out.get("alpha_fe_err"))
    lost = np.isfinite(mh) & ~np.isfinite(feh)
    setbit("mh_without_alpha", lost)
    if lost.any() and notes is not None:
        notes.append(f"{path}, row {int(np.flatnonzero(lost)[0])}: {int(lost.sum())} [M/H] value(s) without "
                     "[alpha/Fe] give no [Fe/H] (stored NULL, flagged mh_without_alpha)")
    out["feh"] = feh
    if "feh_err" in out:
        out["feh_err"] = np.where(np.isfinite(out["feh_err"]), err, np.nan)


def normalise(path: Path, table, d: Descriptor, notes: list | None = None) -> tuple[dict, list]:
    """Descriptor-mapped survey_star columns (numpy) for every row, and the absent fields/rules;
    ``notes`` receives one line per kind of value made NULL that the user should hear about."""
    path = Path(path)
    cols = Columns(table)
    n = len(table)
    absent = []
    out: dict = {}
    flags = np.zeros(n, np.int32)

    def setbit(name, mask):
        nonlocal flags
        flags |= np.where(mask, np.int32(1 << SURVEY_QUALITY_BITS[name]), np.int32(0))

    for key, alts in (("ra", d.ra), ("dec", d.dec)):
        c = cols.find(alts)
        if c is None:
            if key in d.required or not d.gaia_column:
                raise BadInput(path, f"no {key} column (tried {', '.join(alts)})", column=alts[0])
            absent.append(key)
            out[key] = np.full(n, np.nan)
        else:
            v = _numeric(path, table, c)
            inf = np.isinf(v)
            if inf.any():  # like a sentinel: NULL and no_position, never an infinite q3c key
                rows = np.flatnonzero(inf)
                if notes is not None:
                    notes.append(f"{path}, row {rows[0]}, column {c}: {rows.size} infinite {key} value(s) "
                                 "stored as NULL (flagged no_position)")
                v = np.where(inf, np.nan, v)
            out[key] = v
    ra, dec = out["ra"], out["dec"]
    for key, v, lo, hi in (("ra", ra, 0.0, 360.0), ("dec", dec, -90.0, 90.0)):
        bad = np.isfinite(v) & ((v < lo) | (v > hi))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise BadInput(path, f"{key} = {v[row]} is outside [{lo}, {hi}] degrees (wrong unit or column?)",
                           row=row, column=cols.find(d.ra if key == "ra" else d.dec))
    out["ra"] = np.where(ra == 360.0, 0.0, ra)
    setbit("no_position", ~(np.isfinite(ra) & np.isfinite(dec)))

    if d.epoch is not None:
        out["epoch"] = np.full(n, d.epoch)
    else:
        c = cols.find(d.epoch_column)
        if c is None:
            raise BadInput(path, f"no epoch column (tried {', '.join(d.epoch_column)})", column=d.epoch_column[0])
        out["epoch"] = _epochs(path, table, c, d.epoch_format)

    gid = np.ma.masked_all(n, dtype=np.int64)
    if d.gaia_column:
        c = cols.find(d.gaia_column)
        if c is None:
            if "gaia" in d.required:
                raise BadInput(path, f"no Gaia id column (tried {', '.join(d.gaia_column)})", column=d.gaia_column[0])
            absent.append("gaia")
        else:
            gid = _numeric(path, _ids_as_text(path, table, c), c, dtype=np.int64)
            gid = np.ma.masked_where(np.ma.getmaskarray(gid) | np.isin(np.ma.getdata(gid), d.gaia_missing)
                                     | (np.ma.getdata(gid) <= 0), gid)
    out["gaia_source_id"] = gid
    out["gaia_release"] = [d.gaia_release if not m else None for m in np.ma.getmaskarray(gid)]

    sentinels = np.asarray(d.sentinels, dtype=float)
    for f, alts in d.columns.items():
        c = cols.find(alts)
        if c is None:
            if f in d.required:
                raise BadInput(path, f"no column for {f} (tried {', '.join(alts)})", column=alts[0])
            absent.append(f)
            continue
        if f == "object_id":
            v = np.asarray(np.ma.getdata(table[c])).astype(str)
            out[f] = [s.strip() or None for s in v]
            continue
        if f == "survey_flags":
            out[f] = _numeric(path, table, c, dtype=np.int64)
            continue
        if c not in table.colnames:  # an expression: a sentinel or NaN in any term makes the sum NaN
            total = np.zeros(n)
            for sign, col in cols.terms(c):
                v = _numeric(path, table, col)
                total += sign * np.where(np.isin(v, sentinels), np.nan, v)
            out[f] = total
            continue
        out[f] = _numeric(path, table, c)
    for lab in LABELS:
        v = out.get(lab)
        if v is None:
            continue
        lo, hi = d.valid[lab]
        invalid = ~np.isfinite(v) | np.isin(v, sentinels) | (v < lo) | (v > hi)
        # a column that exists but is empty for a row is "invalid" too: the label is unknown there
        setbit(f"{lab}_invalid", invalid)
        out[lab] = np.where(invalid, np.nan, v)
        e = out.get(f"{lab}_err")
        if e is not None:
            bad_e = ~invalid & (~np.isfinite(e) | np.isin(e, sentinels) | (e <= 0))
            setbit("error_invalid", bad_e)
            out[f"{lab}_err"] = np.where(invalid | bad_e, np.nan, e)
    if "snr" in out:
        out["snr"] = np.where(np.isin(out["snr"], sentinels), np.nan, out["snr"])
    if d.metallicity == "m_h" and "feh" in out:
        _convert_mh(path, out, setbit, notes)
    if not d.training:
        setbit("not_a_label_source", np.ones(n, bool))

    for rule in d.flags:
        if rule.field:
            values = out.get(rule.field)
            if values is None:
                absent.append(f"rule {rule.sets} ({rule.field})")
                continue
            values = np.asarray(np.ma.filled(values, 0) if np.ma.isMaskedArray(values) else values, float)
        else:
            c = cols.find(rule.columns)
            if c is None:
                if not rule.optional:
                    raise BadInput(path, f"no column for flag rule {rule.sets} (tried {', '.join(rule.columns)})",
                                   column=rule.columns[0])
                absent.append(f"rule {rule.sets} ({'/'.join(rule.columns)})")
                continue
            values = _numeric(path, table, c)
        setbit(rule.sets, _rule_mask(path, rule, values))
    out["quality_flags"] = flags
    row_mask = np.int32(sum(1 << SURVEY_QUALITY_BITS[b] for b in SURVEY_ROW_BITS))
    out["quality_ok"] = (flags & row_mask) == 0
    if d.keep:
        kept = {}
        for k in d.keep:
            c = cols.find((k,))
            if c is None:
                absent.append(f"keep {k}")
            else:
                col = table[c]
                kept[k] = (np.asarray(np.ma.getdata(col)).astype(str) if col.dtype.kind in "US"
                           else np.ma.filled(np.ma.masked_invalid(np.asarray(col, float)), np.nan))
        if kept:
            out["extra"] = [b"\x01" + json.dumps({k: (None if isinstance(v[i], float) and np.isnan(v[i])
                                                    else v[i].item() if hasattr(v[i], "item") else v[i])
                                                  for k, v in kept.items()}).encode()
                            for i in range(n)]
    return out, absent


_NUM_COLS = [Col("survey_id", "i2"), Col("load_id", "i4"), Col("file_row", "i4"), Col("ra", "f8"),
             Col("dec", "f8"), Col("epoch", "f8"), Col("gaia_source_id", "i8"),
             *[Col(f, "f4") for lab in LABELS for f in (lab, f"{lab}_err")], Col("snr", "f4"),
             Col("survey_flags", "i8"), Col("quality_flags", "i4"), Col("quality_ok", "bool")]


def register_survey(conn, d: Descriptor) -> int:
    """Insert or update the xpmet.survey row of a descriptor; returns its survey_id.

    New ids come from the column's sequence (two first loads at once get different ids); an
    existing survey is updated without drawing one. survey.descriptor is the latest load's; each
    load keeps its own in etl_load.descriptor.
    """
    values = (d.title, d.release, d.reference, d.citation, json.dumps(d.as_json(), default=str), d.name)
    row = conn.execute("UPDATE xpmet.survey SET title = %s, release = %s, is_reference = %s, citation = %s, "
                       "descriptor = %s WHERE name = %s RETURNING survey_id", values).fetchone()
    if row:
        return row[0]
    return conn.execute(
        "INSERT INTO xpmet.survey (title, release, is_reference, citation, descriptor, name) "
        "VALUES (%s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (name) DO UPDATE SET title = excluded.title, release = excluded.release, "
        "is_reference = excluded.is_reference, citation = excluded.citation, descriptor = excluded.descriptor "
        "RETURNING survey_id", values).fetchone()[0]


def load_survey_file(descriptor, path, replace: bool = False, url: str | None = None) -> SurveyLoad:
    """Load one catalogue file as survey ``descriptor`` (a name, a TOML path or a Descriptor)."""
    d = descriptor if isinstance(descriptor, Descriptor) else load_descriptor(descriptor)
    path = Path(path)
    if not path.exists():
        raise BadInput(path, "file does not exist")
    res = SurveyLoad(path, d.name)
    table = read_survey_table(path, d)
    data, res.absent = normalise(path, table, d, res.notes)
    n = len(table)
    with file_load(path, f"survey:{d.name}", ("xpmet.survey_star",),
                   options={"descriptor": str(d.path), "absent": res.absent}, replace=replace, url=url) as ld:
        if isinstance(ld, Skipped):
            res.skipped, res.n_rows = True, ld.n_rows or 0
            return res
        sid = register_survey(ld.conn, d)
        ld.descriptor = d.as_json()
        data.update(survey_id=np.full(n, sid, np.int16), load_id=np.full(n, ld.load_id, np.int32),
                    file_row=np.arange(n, dtype=np.int32))
        cols = [c for c in _NUM_COLS if c.name in data]
        text = [Col(c, "text") for c in ("object_id", "gaia_release", "extra") if data.get(c) is not None]
        with ld.conn.cursor() as cur:
            if n:
                copy_rows(cur, "xpmet.survey_star", cols + text, data)
        ld.n_rows = res.n_rows = n
    res.n_ok = int(data["quality_ok"].sum())
    res.bit_counts = {b: int(((data["quality_flags"] >> i) & 1).sum()) for b, i in SURVEY_QUALITY_BITS.items()}
    return res


def load_survey(descriptor, paths, replace: bool = False, progress: bool = True,
                check: bool = True, cluster: str | None = None, url: str | None = None) -> list[SurveyLoad]:
    """Load several files of one survey, each in its own transaction.

    A file that fails (bad input, database error, anything) fails alone: its result carries a
    one-line ``error`` and the other files still load. Then ``check`` raises one XpmetError naming
    the failed files; ``check=False`` returns every result instead. ``cluster``: a Dask scheduler
    address or ``local:N`` (xpmet.distributed), one task per file. ``url``: the database (default:
    the configured one).
    """
    from xpmet.progress import progress_bar
    from xpmet.etl.runner import error_line
    d = descriptor if isinstance(descriptor, Descriptor) else load_descriptor(descriptor)
    if not paths:
        raise XpmetError("give at least one file to load")
    paths = list(paths)
    results: list = [None] * len(paths)
    stack = contextlib.ExitStack()
    if cluster:  # connected before the bar is drawn: an unreachable scheduler is the one line printed
        from xpmet.distributed import open_session
        session = stack.enter_context(open_session(cluster))
    bar = progress_bar(total=len(paths), desc=f"survey {d.name}", unit="file", enabled=progress)
    try:
        if cluster:
            # absolute paths and the URL resolved here: workers may run elsewhere
            items = [(i, Path(p).resolve()) for i, p in enumerate(paths)]
            for (i, p), res, err in session.map(survey_task, items, name=f"etl-survey-{d.name}",
                                                args=(d, replace, session.db_url(url))):
                results[i] = res[1] if err is None else SurveyLoad(p, d.name, error=error_line(p, err))
                bar.update(1)
        else:
            for i, p in enumerate(paths):
                results[i] = survey_task(d, replace, url, (i, p))[1]
                bar.update(1)
    finally:
        bar.close()
        stack.close()
    failed = [r.error for r in results if r.error]
    if check and failed:
        raise XpmetError(f"{len(failed)} of {len(results)} file(s) failed: {'; '.join(failed)}")
    return results


def survey_task(d: Descriptor, replace: bool, url, item, topic=None) -> tuple[int, SurveyLoad]:
    """One file, its failure as a result: the task of the serial and the --cluster path."""
    from xpmet.etl.runner import error_line
    i, path = item
    try:
        return i, load_survey_file(d, path, replace=replace, url=url)
    except Exception as e:  # database errors (psycopg.Error) included; KeyboardInterrupt still stops
        return i, SurveyLoad(Path(path), d.name, error=error_line(path, e))
