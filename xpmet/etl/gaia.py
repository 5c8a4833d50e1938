"""Load Gaia DR3 ``gaia_source`` rows into ``xpmet.gaia_source`` (``xpmet etl gaia-source``).

    >>> from xpmet.etl.gaia import load_gaia_source
    >>> print(load_gaia_source("gaia_source/GaiaSource_*.csv.gz", workers=2))

Same guarantees as :func:`xpmet.etl.xp_loader.load_xp`: one transaction per file, skip or ``replace`` on
re-runs, a source_id in two files is an error naming both, bad files fail alone.
"""
from __future__ import annotations

from functools import partial

from xpmet.etl import bulk
from xpmet.etl.runner import LoadSummary, run
from xpmet.db.models.columns import copy_columns as model_copy_columns
from xpmet.db.models.core import gaia_source
from xpmet.io.gaia_source import read_gaia_source
from xpmet.io.pgcopy import Col

TABLE = "xpmet.gaia_source"
KIND = "gaia_source"


def copy_columns() -> list[Col]:
    return model_copy_columns(gaia_source)  # every column of the table model, load_id included


def load_gaia_source_file(path, report=lambda rows, nbytes: None, *, replace: bool = False, errors_to=None,
                          url: str | None = None, chunk_rows: int = 50000):
    """Load one gaia_source file (any supported format) in one transaction; returns a FileResult."""
    reader = partial(read_gaia_source, chunk_rows=chunk_rows)
    return bulk.load_file(path, report, kind=KIND, table=TABLE, cols=copy_columns(), reader=reader,
                          replace=replace, errors_to=errors_to, url=url, options={"replace": replace})


def load_gaia_source(paths, workers: int = 1, replace: bool = False, errors_to=None, progress: bool = True,
                     check: bool = True, url: str | None = None, analyze: bool = True,
                     cluster: str | None = None) -> LoadSummary:
    """Load gaia_source rows from FILE, DIR or GLOB ``paths``; returns a LoadSummary (see load_xp)."""
    summary = run(KIND, paths, load_gaia_source_file, dict(replace=replace, errors_to=errors_to, url=url),
                  workers=workers, progress=progress, cluster=cluster,
                  after=(lambda s: bulk.analyze(TABLE, url)) if analyze else None)
    if check:
        summary.raise_for_failures()
    return summary
