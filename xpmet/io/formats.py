"""Format detection by content (magic bytes and the first text line), never by file name alone.

Formats: ``ecsv`` (Gaia bulk files are ECSV, usually gzipped), ``csv`` (archive query results),
``fits``, ``votable`` (BINARY, BINARY2 or TABLEDATA), ``zip`` (a DataLink download bundling several
products). ``gzip`` wraps any text format. Unknown content raises :class:`BadInput`.
"""
from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

from xpmet.errors import BadInput

#: Extensions taken from a directory argument (explicit FILE arguments are detected by content).
DATA_SUFFIXES = (".csv", ".csv.gz", ".ecsv", ".ecsv.gz", ".fits", ".fit", ".fits.gz", ".fit.gz",
                 ".xml", ".xml.gz", ".vot", ".vot.gz", ".votable", ".zip")


@dataclass(frozen=True)
class Format:
    kind: str             # ecsv | csv | fits | votable | zip
    gzip: bool = False

    def __str__(self):
        return self.kind + ("+gzip" if self.gzip else "")


def _kind_of(head: bytes) -> str | None:
    if head.startswith(b"SIMPLE  ="):
        return "fits"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"# %ECSV"):
        return "ecsv"
    if text.startswith(b"<?xml") or text.startswith(b"<VOTABLE"):
        return "votable" if b"<VOTABLE" in head else None
    first = text.split(b"\n", 1)[0]
    if b"," in first and all(32 <= c < 127 or c in (9, 13) for c in first):
        return "csv"
    return None


def detect(path) -> Format:
    """The format of ``path`` from its first bytes (decompressing the start of gzip files)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(65536)
    if not head:
        raise BadInput(path, "the file is empty")
    if head[:2] == b"\x1f\x8b":
        try:
            inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 65536)
        except zlib.error as e:
            raise BadInput(path, f"corrupt gzip data ({e}); download the file again") from None
        kind = _kind_of(inner)
        if kind in ("ecsv", "csv", "votable", "fits"):
            return Format(kind, gzip=True)
    else:
        kind = _kind_of(head)
        if kind:
            return Format(kind)
    raise BadInput(path, "unknown format: expected Gaia ECSV or CSV (optionally gzipped), FITS, VOTable "
                   "or a DataLink zip; check that the file is a table and was fully downloaded")


def open_binary(path, fmt: Format):
    """A binary file object of the (decompressed) content."""
    return gzip.open(path, "rb") if fmt.gzip else open(path, "rb")
