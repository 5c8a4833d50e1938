"""Survey descriptors: parse and validate the declarative TOML files of etl/surveys/ (or a user's own).

A descriptor says how one catalogue's columns become xpmet.survey_star rows: which column holds
each field (case-insensitive alternatives, first present wins), the position epoch (a constant
or a column), the declared Gaia id and its release, sentinel values and valid ranges, the rules
that turn the survey's own flags into xpmet quality bits, per-label error floors, and the
metadata (title, release, citation, metallicity-scale notes) stored in xpmet.survey.

    d = load_descriptor("apogee")            # etl/surveys/apogee.toml
    d = load_descriptor(Path("my.toml"))     # any other catalogue
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from xpmet import resources
from xpmet.errors import XpmetError
from xpmet.etl.metallicity import METALLICITY_KINDS
from xpmet.flags import SURVEY_QUALITY_BITS

LABELS = ("teff", "logg", "feh", "alpha_fe")
#: Fields of survey_star a descriptor can fill from a column.
FIELDS = ("object_id", "teff", "teff_err", "logg", "logg_err", "feh", "feh_err", "alpha_fe",
          "alpha_fe_err", "snr", "survey_flags")
UNITS = {"teff": {"K"}, "logg": {"dex"}, "feh": {"dex"}, "alpha_fe": {"dex"}}
GAIA_RELEASES = ("DR2", "EDR3", "DR3")
EPOCH_FORMATS = ("jyear", "date", "mjd", "jd")
#: Physically possible ranges; values outside are treated like sentinels (never reach a label).
DEFAULT_VALID = {"teff": (2000.0, 60000.0), "logg": (-1.5, 6.5), "feh": (-6.0, 1.5), "alpha_fe": (-1.5, 2.0)}
DEFAULT_ERROR_FLOOR = {"teff": 50.0, "logg": 0.1, "feh": 0.05, "alpha_fe": 0.05}
RULE_CONDITIONS = ("bits", "nonzero", "below", "above", "equals")

_TOP_KEYS = {"name", "title", "release", "citation", "reference", "metallicity_scale", "notes",
             "hdu", "required", "position", "gaia", "columns", "units", "sentinels", "valid",
             "flags", "error_floor", "xmatch", "keep", "labels"}


@dataclass(frozen=True)
class FlagRule:
    """One quality rule: if the condition holds on a column (or a mapped field), set an xpmet bit."""
    sets: str
    columns: tuple[str, ...] = ()      # source column alternatives
    field: str | None = None           # or a mapped field (e.g. snr)
    bits: tuple[int, ...] = ()         # any of these bits set
    nonzero: bool = False
    below: float | None = None
    above: float | None = None
    equals: tuple = ()
    optional: bool = True              # the column may be absent from a file (rule skipped, reported)


@dataclass(frozen=True)
class Descriptor:
    name: str
    path: Path
    title: str = ""
    release: str = ""
    citation: str = ""
    reference: bool = False
    metallicity_scale: str = ""
    metallicity: str = "feh"                           # what the feh column holds: feh or m_h ([labels])
    training: bool = True                              # False: never a label source ([labels] training)
    notes: str = ""
    hdu: int | None = None
    ra: tuple[str, ...] = ()
    dec: tuple[str, ...] = ()
    epoch: float | None = None
    epoch_column: tuple[str, ...] = ()
    epoch_format: str = "jyear"
    gaia_column: tuple[str, ...] = ()
    gaia_release: str | None = None
    gaia_missing: tuple[int, ...] = (0, -1)
    columns: dict = field(default_factory=dict)        # field -> tuple of alternatives
    units: dict = field(default_factory=dict)
    sentinels: tuple[float, ...] = (-9999.0, -999.0, 9999.0, -99.0)
    valid: dict = field(default_factory=dict)          # label -> (lo, hi)
    flags: tuple[FlagRule, ...] = ()
    error_floor: dict = field(default_factory=dict)    # label -> floor (same unit as the label)
    xmatch: dict = field(default_factory=dict)         # per-survey crossmatch defaults (radius, ...)
    required: tuple[str, ...] = ("ra", "dec")
    keep: tuple[str, ...] = ()                         # other columns stored in survey_star.extra
    raw: dict = field(default_factory=dict, compare=False)

    def as_json(self) -> dict:
        """The descriptor as stored in xpmet.survey.descriptor (the views read error_floor from it)."""
        d = dict(self.raw)
        d["error_floor"] = self.error_floor
        d["valid"] = {k: list(v) for k, v in self.valid.items()}
        d["labels"] = {"metallicity": self.metallicity, "training": self.training}
        return d


def _err(path, msg):
    return XpmetError(f"descriptor {path}: {msg}")


def _alts(path, key, v) -> tuple[str, ...]:
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
        return tuple(v)
    raise _err(path, f"{key} must be a column name or a list of alternative names, not {v!r}")


def _number(path, key, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _err(path, f"{key} must be a number, not {v!r}")
    return float(v)


def _check_keys(path, where, got: dict, allowed):
    unknown = set(got) - set(allowed)
    if unknown:
        raise _err(path, f"unknown key(s) {sorted(unknown)} in {where}; allowed: {sorted(allowed)}")


def _rule(path, i, r: dict) -> FlagRule:
    where = f"[[flags]] #{i + 1}"
    _check_keys(path, where, r, {"column", "field", "sets", "optional", *RULE_CONDITIONS})
    if r.get("sets") not in SURVEY_QUALITY_BITS:
        raise _err(path, f"{where}: sets = {r.get('sets')!r} is not one of {sorted(SURVEY_QUALITY_BITS)}")
    if ("column" in r) == ("field" in r):
        raise _err(path, f"{where}: give exactly one of column = ... or field = ...")
    if "field" in r and r["field"] not in FIELDS:
        raise _err(path, f"{where}: field {r['field']!r} is not one of {FIELDS}")
    conds = [c for c in RULE_CONDITIONS if c in r]
    if len(conds) != 1:
        raise _err(path, f"{where}: give exactly one condition of {RULE_CONDITIONS}")
    bits = tuple(r.get("bits", ()))
    if any(not isinstance(b, int) or not 0 <= b < 64 for b in bits):
        raise _err(path, f"{where}: bits must be integers 0..63")
    return FlagRule(sets=r["sets"], columns=_alts(path, where + " column", r["column"]) if "column" in r else (),
                    field=r.get("field"), bits=bits, nonzero=bool(r.get("nonzero", False)),
                    below=_number(path, where + " below", r["below"]) if "below" in r else None,
                    above=_number(path, where + " above", r["above"]) if "above" in r else None,
                    equals=tuple(r.get("equals", ())), optional=bool(r.get("optional", True)))


def parse_descriptor(raw: dict, path: Path) -> Descriptor:
    """Validate a parsed TOML document; raises XpmetError naming the file and the key."""
    _check_keys(path, "the top level", raw, _TOP_KEYS)
    name = raw.get("name")
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise _err(path, f"name must be a lower-case identifier (e.g. 'apogee'), not {name!r}")
    pos = raw.get("position", {})
    _check_keys(path, "[position]", pos, {"ra", "dec", "epoch", "epoch_column", "epoch_format", "notes"})
    if "ra" not in pos or "dec" not in pos:
        raise _err(path, "[position] needs ra and dec column names")
    if ("epoch" in pos) == ("epoch_column" in pos):
        raise _err(path, "[position] needs exactly one of epoch = <Julian year> or epoch_column = <column>")
    fmt = pos.get("epoch_format", "jyear")
    if fmt not in EPOCH_FORMATS:
        raise _err(path, f"[position] epoch_format must be one of {EPOCH_FORMATS}, not {fmt!r}")
    epoch = _number(path, "[position] epoch", pos["epoch"]) if "epoch" in pos else None
    if epoch is not None and not 1850 <= epoch <= 2100:
        raise _err(path, f"[position] epoch {epoch} is not a Julian year")
    gaia = raw.get("gaia", {})
    _check_keys(path, "[gaia]", gaia, {"column", "release", "missing", "notes"})
    if gaia and gaia.get("release") not in GAIA_RELEASES:
        raise _err(path, f"[gaia] release must be one of {GAIA_RELEASES}, not {gaia.get('release')!r}")
    if gaia and "column" not in gaia:
        raise _err(path, "[gaia] needs column = <name of the Gaia source_id column>")
    cols = raw.get("columns", {})
    _check_keys(path, "[columns]", cols, FIELDS)
    columns = {k: _alts(path, f"[columns] {k}", v) for k, v in cols.items()}
    if not any(lab in columns for lab in LABELS):
        raise _err(path, f"[columns] maps none of the labels {LABELS}")
    units = raw.get("units", {})
    _check_keys(path, "[units]", units, UNITS)
    for k, u in units.items():
        if u not in UNITS[k]:
            raise _err(path, f"[units] {k} = {u!r}: xpmet stores {k} in {sorted(UNITS[k])}; "
                             "convert in a copy of the file or ask for a conversion")
    sent = raw.get("sentinels", {})
    _check_keys(path, "[sentinels]", sent, {"values"})
    valid = dict(DEFAULT_VALID)
    _check_keys(path, "[valid]", raw.get("valid", {}), LABELS)
    for k, v in raw.get("valid", {}).items():
        if not (isinstance(v, list) and len(v) == 2):
            raise _err(path, f"[valid] {k} must be [low, high]")
        valid[k] = (_number(path, f"[valid] {k}", v[0]), _number(path, f"[valid] {k}", v[1]))
    floor = dict(DEFAULT_ERROR_FLOOR)
    _check_keys(path, "[error_floor]", raw.get("error_floor", {}), LABELS)
    for k, v in raw.get("error_floor", {}).items():
        floor[k] = _number(path, f"[error_floor] {k}", v)
    xm = raw.get("xmatch", {})
    _check_keys(path, "[xmatch]", xm, {"radius", "nopm_radius", "id_radius", "notes"})
    for k in ("radius", "nopm_radius", "id_radius"):
        if k in xm and _number(path, f"[xmatch] {k}", xm[k]) <= 0:
            raise _err(path, f"[xmatch] {k} must be positive (arcsec)")
    required = tuple(raw.get("required", ("ra", "dec")))
    for r in required:
        if r not in FIELDS + ("ra", "dec", "gaia"):
            raise _err(path, f"required: {r!r} is not a field")
    rules = tuple(_rule(path, i, r) for i, r in enumerate(raw.get("flags", [])))
    lab = raw.get("labels", {})
    _check_keys(path, "[labels]", lab, {"metallicity", "training", "notes"})
    if lab.get("metallicity", "feh") not in METALLICITY_KINDS:
        raise _err(path, f"[labels] metallicity must be one of {METALLICITY_KINDS} (what the feh column holds), "
                         f"not {lab.get('metallicity')!r}")
    if lab.get("metallicity") == "m_h" and "alpha_fe" not in columns:
        raise _err(path, "[labels] metallicity = 'm_h' needs an alpha_fe column to convert [M/H] to [Fe/H]")
    if not isinstance(lab.get("training", True), bool):
        raise _err(path, "[labels] training must be true or false")
    return Descriptor(
        name=name, path=path, title=raw.get("title", ""), release=str(raw.get("release", "")),
        citation=raw.get("citation", ""), reference=bool(raw.get("reference", False)),
        metallicity_scale=raw.get("metallicity_scale", ""), notes=raw.get("notes", ""),
        hdu=raw.get("hdu"), ra=_alts(path, "[position] ra", pos["ra"]), dec=_alts(path, "[position] dec", pos["dec"]),
        epoch=epoch, epoch_column=_alts(path, "[position] epoch_column", pos["epoch_column"]) if "epoch_column" in pos else (),
        epoch_format=fmt,
        gaia_column=_alts(path, "[gaia] column", gaia["column"]) if gaia else (),
        gaia_release=gaia.get("release"), gaia_missing=tuple(int(x) for x in gaia.get("missing", (0, -1))),
        columns=columns, units=units,
        sentinels=tuple(_number(path, "[sentinels] values", v) for v in sent.get("values", (-9999, -999, 9999, -99))),
        valid=valid, flags=rules, error_floor=floor, xmatch=dict(xm), required=required,
        keep=tuple(raw.get("keep", ())), metallicity=lab.get("metallicity", "feh"),
        training=lab.get("training", True), raw=raw)


def load_descriptor(name_or_path) -> Descriptor:
    """A shipped descriptor by survey name (etl/surveys/<name>.toml) or any TOML file by path."""
    p = Path(name_or_path)
    if not p.suffix and not p.exists():
        shipped_file = resources.survey_descriptor(str(name_or_path))
        if not shipped_file.is_file():
            raise XpmetError(f"no descriptor for survey {name_or_path!r}; shipped: {', '.join(shipped())}. "
                             "Write one (copy a shipped one: `xpmet etl survey --show apogee > my.toml`) "
                             "and pass --descriptor my.toml")
        p = Path(str(shipped_file))
        text = shipped_file.read_text()
    else:
        text = None
    try:
        raw = tomllib.loads(text if text is not None else p.read_text())
    except FileNotFoundError:
        raise XpmetError(f"descriptor {p} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise _err(p, f"not valid TOML: {e}") from None
    return parse_descriptor(raw, p)


def shipped() -> list[str]:
    return resources.survey_descriptor_names()
