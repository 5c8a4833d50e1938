"""Helpers of the survey/crossmatch/label tests: Gaia rows and survey files built in the test.

Gaia rows are inserted with the project's binary COPY inside a file_load (as xpmet etl would).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from astropy.table import Table

from xpmet.etl.provenance import file_load
from xpmet.io.pgcopy import Col, copy_rows

SURVEYS = Path(__file__).parent / "data" / "surveys"
APOGEE = SURVEYS / "Apogee_data_filtered_1612.fits"
GALAH = SURVEYS / "Galah_data_filtered_1061.fits"
GBS = SURVEYS / "gbs_v3_excerpt30_lite.fits"
GAIA_COLS = ("source_id", "ra", "dec", "pmra", "pmdec", "parallax", "parallax_error", "phot_g_mean_mag",
             "phot_bp_mean_mag", "phot_rp_mean_mag", "bp_rp", "phot_g_mean_flux", "ag_gspphot")


def read(path) -> Table:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Table.read(path)


def insert_gaia(tmp_path, rows: dict, tag: str = "gaia") -> int:
    """Insert gaia_source rows (source_id, ra, dec required; other GAIA_COLS optional, NaN = NULL)."""
    n = len(rows["source_id"])
    path = Path(tmp_path) / f"{tag}-{np.random.default_rng().integers(1 << 62)}.npz"
    np.savez(path, **{k: np.asarray(v) for k, v in rows.items()})
    cols = [Col("source_id", "i8"), Col("ref_epoch", "f8"), Col("load_id", "i4")]
    cols += [Col(c, "f4" if c in ("parallax_error", "phot_g_mean_mag", "phot_bp_mean_mag", "phot_rp_mean_mag",
                                  "bp_rp", "ag_gspphot") else "f8")
             for c in GAIA_COLS[1:] if c in rows]
    with file_load(path, "test:gaia_source", ("xpmet.gaia_source",)) as ld:
        data = {k: np.asarray(v) for k, v in rows.items()}
        data.update(ref_epoch=np.full(n, 2016.0), load_id=np.full(n, ld.load_id, np.int32))
        with ld.conn.cursor() as cur:
            copy_rows(cur, "xpmet.gaia_source", cols, data)
        ld.n_rows = n
    return n


def gaia_from_real_samples() -> dict:
    """Gaia rows for the real samples, SYNTHESISED from their own columns (documented in PROVENANCE.md).

    GBS: the excerpt carries the full Gaia DR3 row (ra, dec, pm at 2016.0) - used as is.
    GALAH: dr3_source_id at ra_dr2/dec_dr2 (epoch 2015.5; no proper motion in the sample -> NULL).
    APOGEE: dr3_source_id at its ra/dec (J2000 2MASS positions), for ids GALAH does not provide.
    """
    ap, ga, gb = read(APOGEE), read(GALAH), read(GBS)
    f = lambda c: np.asarray(c, dtype=float)  # noqa: E731
    ids = np.concatenate([np.asarray(gb["source_id_gaiadr3"]), np.asarray(ga["dr3_source_id"]),
                          np.asarray(ap["dr3_source_id"])]).astype(np.int64)
    ra = np.concatenate([f(gb["ra"]), f(ga["ra_dr2"]), f(ap["ra"])])
    dec = np.concatenate([f(gb["dec"]), f(ga["dec_dr2"]), f(ap["dec"])])
    nan = np.full(len(ga) + len(ap), np.nan)
    pmra = np.concatenate([f(gb["pmra"]), nan])
    pmdec = np.concatenate([f(gb["pmdec"]), nan])
    g = np.concatenate([f(gb["phot_g_mean_mag"]), np.full(len(ga), np.nan), np.full(len(ap), np.nan)])
    _, first = np.unique(ids, return_index=True)  # first occurrence: GBS, then GALAH, then APOGEE
    return {"source_id": ids[first], "ra": ra[first], "dec": dec[first], "pmra": pmra[first],
            "pmdec": pmdec[first], "phot_g_mean_mag": g[first]}


def write_table(path, columns: dict) -> Path:
    Table(columns).write(path, overwrite=True)
    return Path(path)
