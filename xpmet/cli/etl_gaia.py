"""``xpmet etl gaia-source`` and ``xpmet etl xp``: argument parsing; the work is in xpmet.etl.gaia / xpmet.etl.xp_loader."""
import click

from xpmet.distributed import CLUSTER_HELP
from xpmet.errors import XpmetError
from xpmet.etl.runner import LoadFailed

_common = [
    click.argument("paths", nargs=-1, required=True),
    click.option("--workers", "-j", type=click.IntRange(1), default=1, show_default=True,
                 help="Processes loading files in parallel (one file per process)."),
    click.option("--replace", is_flag=True,
                 help="Reload files loaded before, and let this file win when a source_id is already loaded "
                      "from another file."),
    click.option("--errors-to", type=click.Path(dir_okay=False),
                 help="Append bad rows (file, row, column, reason) to this file and load the rest."),
    click.option("--no-progress", is_flag=True, help="No progress bar."),
    click.option("--cluster", metavar="ADDRESS", help=CLUSTER_HELP + " One task per file."),
]


def _with_common(f):
    for deco in reversed(_common):
        f = deco(f)
    return f


def _finish(summary_or_error):
    if isinstance(summary_or_error, LoadFailed):
        s = summary_or_error.summary
        click.echo(str(s), err=True)
        # the last line as every command ends a failure (etl survey's words)
        raise XpmetError(f"{len(s.failed)} of {len(s.files)} file(s) failed (listed above); the others loaded. "
                         "Fix the failed files and run again: loaded files are skipped.")
    click.echo(str(summary_or_error))


@click.command("gaia-source")
@_with_common
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
    _finish(s)


@click.command("xp")
@_with_common
@click.option("--no-correlations", is_flag=True,
              help="Do not store the 2 x 1485 correlation values per source (12x less storage).")
def xp(paths, workers, replace, errors_to, no_progress, cluster, no_correlations):
    """Load Gaia DR3 XP continuous spectra: FILE, DIR or GLOB.

    Formats (detected by content): bulk XpContinuousMeanSpectrum_*.csv.gz (ECSV), archive CSV and
    ECSV, FITS, VOTable (BINARY2/TABLEDATA), DataLink products and zips of them, flattened
    bp_coeff_0..54 layouts. A missing band is stored as NULL. Full covariance matrices:
    xpmet.xp_coefficients.covariance_matrix(errors, correlations, standard_deviation).
    """
    from xpmet.etl.xp_loader import load_xp
    try:
        s = load_xp(paths, workers=workers, correlations=not no_correlations, replace=replace,
                    errors_to=errors_to, progress=not no_progress, cluster=cluster)
    except LoadFailed as e:
        s = e
    _finish(s)
