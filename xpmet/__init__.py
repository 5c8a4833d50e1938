"""xpmet: stellar metallicities from Gaia DR3 XP spectra, in PostgreSQL with q3c."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("xpmet")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"


def connect(url: str | None = None):
    """SQLAlchemy engine for the configured database: XPMET_DATABASE_URL, or the embedded cluster."""
    from xpmet.db.engine import connect as _connect
    return _connect(url)
