"""Reader of Gaia DR3 ``gaia_source`` files (bulk GaiaSource_*.csv.gz, archive CSV/ECSV/FITS/VOTable).

Only the columns xpmet stores are read (the bulk files have 152); absent optional columns load
as NULL. Missing values ("", "null", NaN) become NULL.
"""
from __future__ import annotations

import numpy as np

from xpmet.io.reader import Problem, TableSpec, read_table, source_id_problems

_F8 = ("ref_epoch", "ra", "dec", "parallax", "pmra", "pmdec", "phot_g_mean_flux", "phot_bp_mean_flux",
       "phot_rp_mean_flux", "l", "b")
_F4 = ("ra_error", "dec_error", "parallax_error", "pmra_error", "pmdec_error", "ruwe", "phot_g_mean_flux_error",
       "phot_g_mean_mag", "phot_bp_mean_flux_error", "phot_bp_mean_mag", "phot_rp_mean_flux_error",
       "phot_rp_mean_mag", "phot_bp_rp_excess_factor", "bp_rp", "radial_velocity", "radial_velocity_error",
       "teff_gspphot", "logg_gspphot", "mh_gspphot", "ag_gspphot", "ebpminrp_gspphot")

#: the gaia_source columns xpmet stores, in table order
GAIA_COLUMNS = ["source_id", "ref_epoch", "ra", "ra_error", "dec", "dec_error", "parallax", "parallax_error",
                "pmra", "pmra_error", "pmdec", "pmdec_error", "ruwe", "phot_g_mean_flux",
                "phot_g_mean_flux_error", "phot_g_mean_mag", "phot_bp_mean_flux", "phot_bp_mean_flux_error",
                "phot_bp_mean_mag", "phot_rp_mean_flux", "phot_rp_mean_flux_error", "phot_rp_mean_mag",
                "phot_bp_rp_excess_factor", "bp_rp", "radial_velocity", "radial_velocity_error",
                "has_xp_continuous", "l", "b", "teff_gspphot", "logg_gspphot", "mh_gspphot", "ag_gspphot",
                "ebpminrp_gspphot"]

_TYPES = {c: "f8" for c in _F8} | {c: "f4" for c in _F4} | {"source_id": "i8", "has_xp_continuous": "bool"}


def check_gaia(data: dict) -> list[Problem]:
    """Rows that cannot be Gaia sources: no source_id, no finite position, position out of range, inf values."""
    problems = source_id_problems(data["source_id"])
    ra, dec = data["ra"], data["dec"]
    bad = ~np.isfinite(ra) | (ra < 0) | (ra >= 360)
    if bad.any():
        problems.append(Problem(np.flatnonzero(bad), "ra", "ra missing, infinite or outside [0, 360)"))
    bad = ~np.isfinite(dec) | (np.abs(dec) > 90)
    if bad.any():
        problems.append(Problem(np.flatnonzero(bad), "dec", "dec missing, infinite or outside [-90, 90]"))
    for c, v in data.items():
        if c not in ("ra", "dec") and np.asarray(v).dtype.kind == "f":
            inf = np.isinf(v)
            if inf.any():
                problems.append(Problem(np.flatnonzero(inf), c, "infinite value"))
    return problems


GAIA_SPEC = TableSpec(
    name="gaia_source",
    scalars={c: _TYPES[c] for c in GAIA_COLUMNS},
    required=("source_id", "ra", "dec"),
    aliases={"source_id_gaiadr3": "source_id", "dr3_source_id": "source_id"},
    check=check_gaia,
)


def read_gaia_source(path, chunk_rows: int = 50000, on_bad=None, block_bytes: int = 1 << 24):
    """Chunks of gaia_source rows from ``path`` (any supported format)."""
    return read_table(path, GAIA_SPEC, chunk_rows=chunk_rows, on_bad=on_bad, block_bytes=block_bytes)
