"""``xpmet etl gaia-source``: argument parsing; the work is in xpmet.etl.gaia."""
import click

from xpmet.cli.etl_options import finish, with_common
from xpmet.etl.runner import LoadFailed


@click.command("gaia-source")
@with_common
def gaia_source(paths, workers, replace, errors_to, no_progress, cluster):
    """Load Gaia DR3 gaia_source files: FILE, DIR or GLOB (GaiaSource_*.csv.gz, archive CSV/ECSV/FITS/VOTable).

    Each file loads in one transaction; a second run skips loaded files. Bad files are reported
    (file, row, column) and the run continues with the others; the exit status is 1 if any failed.
    """
    from xpmet.etl.gaia import load_gaia_source
    try:
        s = load_gaia_source(paths, workers=workers, replace=replace, errors_to=errors_to, progress=not no_progress,
                             cluster=cluster)
    except LoadFailed as e:
        s = e
    finish(s)
