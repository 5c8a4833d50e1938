"""Load Gaia DR3 XP continuous spectra into ``xpmet.xp_continuous`` (``xpmet etl xp``).

    >>> from xpmet.etl.xp_loader import load_xp
    >>> summary = load_xp(["xp_continuous/"], workers=2, correlations=False)
    >>> print(summary); summary.rows, summary.rows_per_s, [f.error for f in summary.failed]

Every file loads in one transaction (recorded in ``xpmet.etl_load``); files already loaded are
skipped, ``replace=True`` reloads them. A bad file fails alone: the others still load, and
``load_xp`` raises :class:`~xpmet.etl.runner.LoadFailed` at the end (``check=False`` returns the
summary instead). Correlations can be expanded into covariance matrices with
:func:`xpmet.xp_coefficients.covariance_matrix`.
"""
from __future__ import annotations

from functools import partial

from xpmet.etl import bulk
from xpmet.etl.runner import LoadSummary, run
from xpmet.io.pgcopy import Col
from xpmet.io.xp_reader import CORRELATION_COLUMNS, XP_COLUMNS, XP_SPEC, read_xp
from xpmet.xp_coefficients import N_COEF, N_CORR

TABLE = "xpmet.xp_continuous"
KIND = "xp"


def copy_columns(correlations: bool = True) -> list[Col]:
    """The binary-COPY column list of xp_continuous (correlations left out when not wanted)."""
    cols = []
    for name in XP_COLUMNS:
        if name in XP_SPEC.arrays:
            if not correlations and name in CORRELATION_COLUMNS:
                continue
            length, dt = XP_SPEC.arrays[name]
            cols.append(Col(name, f"{dt}[]", length))
        else:
            cols.append(Col(name, XP_SPEC.scalars[name]))
    return cols + [Col("load_id", "i4")]


def load_xp_file(path, report=lambda rows, nbytes: None, *, correlations: bool = True, replace: bool = False,
                 errors_to=None, url: str | None = None, chunk_rows: int = 20000):
    """Load one XP file (any supported format) in one transaction; returns a FileResult."""
    reader = partial(read_xp, correlations=correlations, chunk_rows=chunk_rows)
    return bulk.load_file(path, report, kind=KIND, table=TABLE, cols=copy_columns(correlations), reader=reader,
                          replace=replace, errors_to=errors_to, url=url,
                          options={"correlations": correlations, "replace": replace})


def load_xp(paths, workers: int = 1, correlations: bool = True, replace: bool = False, errors_to=None,
            progress: bool = True, check: bool = True, url: str | None = None, analyze: bool = True,
            cluster: str | None = None) -> LoadSummary:
    """Load XP spectra from FILE, DIR or GLOB ``paths`` with ``workers`` processes; returns a LoadSummary.

    ``correlations=False`` leaves the 2 x 1485 correlation arrays NULL (12x less storage).
    ``errors_to``: a file that receives bad rows (file, row, column, reason) while the good rows load.
    """
    summary = run(KIND, paths, load_xp_file,
                  dict(correlations=correlations, replace=replace, errors_to=errors_to, url=url),
                  workers=workers, progress=progress, cluster=cluster,
                  after=(lambda s: bulk.analyze(TABLE, url)) if analyze else None)
    if check:
        summary.raise_for_failures()
    return summary


__all__ = ["load_xp", "load_xp_file", "copy_columns", "N_COEF", "N_CORR"]
