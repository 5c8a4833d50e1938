"""Writing result tables in the formats astronomers use: CSV, ECSV, FITS, VOTable, Parquet.

Units, UCDs and descriptions travel with the columns (FITS TUNITn/TTYPEn comments, VOTable
unit/ucd/DESCRIPTION, ECSV header); files appear whole (written to a temporary name, then
renamed) and FITS headers follow the standard (DATE as YYYY-MM-DDThh:mm:ss, UTC).
"""
from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from astropy.table import Table

from xpmet.errors import XpmetError

FORMATS = {"csv": "ascii.csv", "ecsv": "ascii.ecsv", "fits": "fits", "votable": "votable",
           "parquet": "parquet"}
EXTENSIONS = {".csv": "csv", ".ecsv": "ecsv", ".fits": "fits", ".fit": "fits", ".fts": "fits",
              ".vot": "votable", ".xml": "votable", ".votable": "votable", ".parquet": "parquet",
              ".pq": "parquet"}


def utc_now() -> str:
    """The time now as FITS DATE wants it: UTC, no time-zone suffix."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def output_format(path, fmt: str | None = None) -> str:
    """The astropy format name for a file, from ``fmt`` (csv ecsv fits votable parquet) or its extension."""
    if fmt:
        if fmt.lower() not in FORMATS:
            raise XpmetError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return FORMATS[fmt.lower()]
    name = str(path).lower()
    for ext, key in EXTENSIONS.items():
        if name.endswith(ext) or name.endswith(ext + ".gz") and key != "parquet":
            return FORMATS[key]
    raise XpmetError(f"cannot tell the format of {path} from its extension; use one of "
                     f"{', '.join(EXTENSIONS)} or pass --format")


def _for_format(table: Table, astropy_fmt: str) -> Table:
    out = table.copy(copy_data=False)
    if astropy_fmt in ("fits", "parquet"):
        # FITS headers and Parquet metadata take plain scalars only; FITS keywords are upper case
        # and at most 8 characters (longer ones become HIERARCH cards, which fitsverify accepts).
        out.meta = {k: ("" if v is None else v) for k, v in out.meta.items()}
    return out


def write_table(table: Table, path, fmt: str | None = None, overwrite: bool = False) -> Path:
    """Write ``table`` with astropy; a temporary file renamed at the end, so nothing is half-written."""
    path = Path(path)
    astropy_fmt = output_format(path, fmt)
    if path.exists() and not overwrite:
        raise XpmetError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        _for_format(table, astropy_fmt).write(tmp, format=astropy_fmt, overwrite=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
