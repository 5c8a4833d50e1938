"""Reading the training HDF5 file (layout documented in :mod:`xpmet.ml.export`) into arrays.

The file is read block by block and only the requested split is kept, so reading the test
split of a large file does not hold the training rows. Models see flux-normalised arrays
(:func:`xpmet.ml.normalise.normalise_xp`); raw arrays stay available for photometry.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from xpmet.errors import XpmetError
from xpmet.ml.normalise import EXTRA_SOURCES, LABELS, g_flux, normalise_xp
from xpmet.xp_coefficients import N_COEF, N_CORR

SPLITS = {"train": 0, "valid": 1, "test": 2}
LAYOUT_VERSION = 1
BLOCK = 65536


@dataclass
class XPArrays:
    """One split of a training file (or a batch from the database), as model-ready arrays."""
    source_id: np.ndarray
    x: np.ndarray          # (n,110) coefficients / G flux, NaN where a band is missing
    e: np.ndarray          # (n,110) their errors / G flux
    missing: np.ndarray    # (n,2) bool: BP, RP missing
    flux: np.ndarray       # (n,) G flux e-/s
    g_mag: np.ndarray
    bp_rp: np.ndarray
    ag: np.ndarray         # ag_gspphot, NaN where unknown
    labels: np.ndarray     # (n,4) teff logg feh alpha_fe, NaN where unknown
    label_err: np.ndarray  # (n,4)
    corr: np.ndarray | None = None   # (n,2,1485) correlations when exported
    std_dev: np.ndarray | None = None  # (n,2) bp/rp standard deviation
    ruwe: np.ndarray | None = None     # gaia_source ruwe and phot_bp_rp_excess_factor, when supplied
    excess: np.ndarray | None = None
    #: estimator inputs beyond the coefficients (xpmet.ml.normalise.EXTRA_SOURCES), when supplied:
    #: (n, k) columns named by ``extra_names`` (parallax, its error, BP and RP magnitudes, 2MASS/WISE)
    extra: np.ndarray | None = None
    extra_names: tuple = ()
    #: (n,2,1540) float16 packed Cholesky factors of the correlations (read(noise_factors=True)):
    #: what the estimator's degradation draws from (xpmet.ml.models.packed_cholesky)
    chol: np.ndarray | None = None

    def __len__(self):
        return len(self.source_id)

    def raw(self):
        """(bp, bp_err, rp, rp_err) in the archive's units (flux-normalisation undone)."""
        f = self.flux[:, None]
        return self.x[:, :55] * f, self.e[:, :55] * f, self.x[:, 55:] * f, self.e[:, 55:] * f

    def subset(self, idx):
        kw = {k: (v if v is None or k == "extra_names" else v[idx]) for k, v in self.__dict__.items()}
        return XPArrays(**kw)


def from_batch(batch: dict) -> XPArrays:
    """Model arrays from a predict batch (CONTRACTS.md section 3) or any dict with the same keys."""
    n = len(batch["source_id"])
    nan = np.full(n, np.nan)

    def get(k):
        v = batch.get(k)
        return nan if v is None else np.asarray(v, np.float64)

    flux = g_flux(get("phot_g_mean_flux"), get("phot_g_mean_mag"))
    x, e, missing = normalise_xp(batch["bp_coefficients"], batch["bp_coefficient_errors"],
                                 batch["rp_coefficients"], batch["rp_coefficient_errors"], flux)
    labels = np.column_stack([get(k) for k in LABELS])
    errs = np.column_stack([get(k + "_err") for k in LABELS])
    corr = None
    if batch.get("bp_coefficient_correlations") is not None:
        corr = np.stack([np.asarray(batch["bp_coefficient_correlations"], np.float32),
                         np.asarray(batch["rp_coefficient_correlations"], np.float32)], axis=1)
    sd = None
    if batch.get("bp_standard_deviation") is not None:
        sd = np.column_stack([get("bp_standard_deviation"), get("rp_standard_deviation")])
    opt = {k: (None if batch.get(src) is None else get(src))
           for k, src in (("ruwe", "ruwe"), ("excess", "phot_bp_rp_excess_factor"))}
    names = tuple(k for k in EXTRA_SOURCES if batch.get(k) is not None)
    extra = np.column_stack([get(k) for k in names]) if names else None
    return XPArrays(np.asarray(batch["source_id"], np.int64), x, e, missing, flux, get("phot_g_mean_mag"),
                    get("bp_rp"), get("ag_gspphot"), labels, errs, corr, sd, **opt, extra=extra, extra_names=names)


def open_training(path, need: tuple = ("source_id",)) -> h5py.File:
    """Open a training file (``xpmet export``) for reading, or raise XpmetError saying how to make one.
    ``need``: datasets it must hold."""
    path = Path(path)
    if not path.exists():
        raise XpmetError(f"{path}: no such file; create it with `xpmet export {path}`.")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise XpmetError(f"{path}: not a readable HDF5 file ({e}); re-run `xpmet export`.") from None
    lacking = "'layout' attribute" if f.attrs.get("layout") != "xpmet-training" else \
        next(("/" + k for k in need if k not in f), None)
    if lacking:
        f.close()
        raise XpmetError(f"{path}: not an xpmet training file (no {lacking}); create it with `xpmet export`.")
    return f


def read(path, split: str | None = None, correlations: bool = False, limit: int | None = None,
         rows: np.ndarray | None = None, cleaned: bool = True, noise_factors: bool = False) -> XPArrays:
    """Read one split ('train', 'valid', 'test') or all rows of a training file.

    ``noise_factors``: the correlations' packed Cholesky factors (``chol``), made block by block so
    the correlations themselves (twice the size) are never held for the whole split; None when the
    file has no correlations or no star a usable matrix.

    ``rows``: sorted file row numbers to read instead of a split (one rank's shard); blocks
    without any of them are not read. ``cleaned``: leave out the train/valid rows that
    ``xpmet clean`` dropped (/cleaning/keep, :mod:`xpmet.ml.cleaning`); False reads them too.
    """
    with open_training(path) as f:
        has_corr = "xp/bp_coefficient_correlations" in f
        want_corr, want_chol, any_chol = correlations and has_corr, noise_factors and has_corr, False
        if want_chol:  # torch only when asked for
            from xpmet.ml.models import packed_cholesky
        n = f["source_id"].shape[0]
        parts = []
        for start in range(0, n, BLOCK):
            sl = slice(start, min(n, start + BLOCK))
            keep = np.ones(sl.stop - start, bool)
            if rows is not None:
                lo, hi = np.searchsorted(rows, [start, sl.stop])
                if lo == hi:
                    continue
                keep[:] = False
                keep[rows[lo:hi] - start] = True
            elif split is not None:
                keep = _in_split(f, split, sl, cleaned)
            if not keep.any():
                continue
            b = {"source_id": f["source_id"][sl][keep]}
            for k in ("bp_coefficients", "bp_coefficient_errors", "rp_coefficients", "rp_coefficient_errors"):
                b[k] = f["xp/" + k][sl][keep]
            for k in ("bp_standard_deviation", "rp_standard_deviation"):
                if "xp/" + k in f:
                    b[k] = f["xp/" + k][sl][keep]
            if want_corr or want_chol:
                b["bp_coefficient_correlations"] = f["xp/bp_coefficient_correlations"][sl][keep]
                b["rp_coefficient_correlations"] = f["xp/rp_coefficient_correlations"][sl][keep]
            for k in ("phot_g_mean_flux", "phot_g_mean_mag", "bp_rp", "ag_gspphot") + EXTRA_SOURCES:
                if k in ("phot_g_mean_flux", "phot_g_mean_mag", "bp_rp", "ag_gspphot") or "phot/" + k in f:
                    b[k] = f["phot/" + k][sl][keep]
            for k in LABELS:
                b[k] = f["labels/" + k][sl][keep]
                b[k + "_err"] = f["labels/" + k + "_err"][sl][keep]
            part = from_batch(b)
            if want_chol:
                part.chol, ok = packed_cholesky(part.corr)
                any_chol |= bool(ok.any())
                if not want_corr:
                    part.corr = None
            parts.append(part)
            if limit and sum(len(p) for p in parts) >= limit:
                break
    if not parts:
        raise XpmetError(f"{path}: the {split or 'any'} split is empty; export more stars or change --split.")
    out = _concat(parts)
    if not any_chol:
        out.chol = None
    return out.subset(slice(0, limit)) if limit else out


def split_rows(path, split: str, cleaned: bool = True) -> np.ndarray:
    """File row numbers of one split, in file order (the order :func:`read` returns them)."""
    with h5py.File(path, "r") as f:
        return np.flatnonzero(_in_split(f, split, slice(None), cleaned))


def _in_split(f, split: str, sl: slice, cleaned: bool) -> np.ndarray:
    """Rows f[sl] of the split, less the train/valid rows `xpmet clean` dropped (when cleaned)."""
    sel = f["split"][sl] == SPLITS[split]
    if cleaned and split != "test" and "cleaning/keep" in f:
        sel &= f["cleaning/keep"][sl]
    return sel


def attributes(path) -> dict:
    """The file's attributes (cuts, reference scale, crossmatch version, ...) as plain Python."""
    with h5py.File(path, "r") as f:
        out = {}
        for k, v in f.attrs.items():
            v = v.decode() if isinstance(v, bytes) else v
            if isinstance(v, str) and v[:1] in "{[":
                try:
                    v = json.loads(v)
                except ValueError:
                    pass
            out[k] = v.item() if hasattr(v, "item") else v
        return out


def noise_sample(path):
    """(raw errors (n,110), G flux (n,), G mag (n,)) of the file's noise-model sample (all XP stars)."""
    with h5py.File(path, "r") as f:
        if "noise" not in f:
            return None
        g = f["noise"]
        return (np.concatenate([g["bp_coefficient_errors"][:], g["rp_coefficient_errors"][:]], axis=1),
                g["phot_g_mean_flux"][:], g["phot_g_mean_mag"][:])


def fingerprint(path) -> str:
    """sha256 of the file's bytes: identifies exactly which data a model was trained on."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


#: what read_db reads of each source (fixed-width forms: xpmet.db.models.columns.fixed_width_columns)
DB_COLUMNS = ("source_id", "bp_coefficients", "bp_coefficient_errors", "rp_coefficients", "rp_coefficient_errors",
              "bp_standard_deviation", "rp_standard_deviation", "phot_g_mean_flux", "phot_g_mean_mag", "bp_rp",
              "ag_gspphot", "ruwe", "phot_bp_rp_excess_factor", "parallax", "parallax_error", "phot_bp_mean_mag",
              "phot_rp_mean_mag")


def float64_batch(batch: dict) -> dict:
    """source_id as int64, every other column as float64 (the arrays the models are fed)."""
    return {k: np.asarray(v, np.int64 if k == "source_id" else np.float64) for k, v in batch.items()}


def _rows_to_batch(rows, names) -> dict:
    """Rows of (possibly NULL) scalars and arrays -> dict of numpy arrays; NULL band -> NaN row."""
    cols = list(zip(*rows)) if rows else [[] for _ in names]
    out = {}
    for name, col in zip(names, cols):
        if name.startswith("_"):  # columns the caller handles itself
            continue
        if name.endswith(("coefficients", "coefficient_errors", "coefficient_correlations")):
            width = N_CORR if name.endswith("correlations") else N_COEF
            a = np.full((len(col), width), np.nan)
            have = [i for i, v in enumerate(col) if v is not None]
            if have:
                a[have] = np.asarray([col[i] for i in have], np.float64)
            out[name] = a
        elif name == "source_id":
            out[name] = np.asarray(col, np.int64)
        else:
            out[name] = np.asarray([np.nan if v is None else v for v in col], np.float64)
    return out


def read_db(source_ids, correlations: bool = False, chunk: int = 20000, url: str | None = None) -> XPArrays:
    """XP spectra + Gaia photometry of the given sources straight from the database (no labels),
    through the one database-to-numpy path (binary COPY, xpmet.io.copyout.select_arrays)."""
    from xpmet.db.engine import raw_connect
    from xpmet.db.models.columns import fixed_width_columns
    from xpmet.io.copyout import select_arrays
    names = DB_COLUMNS + (("bp_coefficient_correlations", "rp_coefficient_correlations") if correlations else ())
    cols = fixed_width_columns(names)
    ids = np.unique(np.asarray(source_ids, np.int64))
    parts = []
    with raw_connect(url) as conn:
        for i in range(0, len(ids), chunk):
            sql = (f"SELECT {', '.join(e for e, _ in cols)} FROM xpmet.xp_continuous x "
                   "JOIN xpmet.gaia_source g USING (source_id) WHERE x.source_id = ANY(%s) ORDER BY x.source_id")
            for batch in select_arrays(conn, sql, (ids[i:i + chunk].tolist(),), [c for _, c in cols], max_rows=chunk):
                parts.append(from_batch(float64_batch(batch)))
    if not parts:
        raise XpmetError("none of the requested sources has an XP spectrum in the database; "
                         "load them with `xpmet etl xp`.")
    return _concat(parts)


def _concat(parts: list[XPArrays]) -> XPArrays:
    """Row-wise concatenation of blocks read the same way (optional fields absent in all or none)."""
    return XPArrays(**{k: (getattr(parts[0], k) if getattr(parts[0], k) is None or k == "extra_names"
                           else np.concatenate([getattr(p, k) for p in parts])) for k in parts[0].__dict__})
