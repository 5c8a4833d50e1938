"""``xpmet etl xp``: argument parsing; the work is in xpmet.etl.xp_loader."""
import click

from xpmet.cli.etl_options import finish, with_common
from xpmet.etl.runner import LoadFailed


@click.command("xp")
@with_common
@click.option("--no-correlations", is_flag=True,
              help="Do not store the 2 x 1485 correlation values per source (12x less storage).")
def xp(paths, workers, replace, errors_to, no_progress, cluster, no_correlations):
    """Load Gaia DR3 XP continuous spectra: FILE, DIR or GLOB.

    Formats (detected by content): bulk XpContinuousMeanSpectrum_*.csv.gz (ECSV), archive CSV and
    ECSV, FITS, VOTable (BINARY2/TABLEDATA), DataLink products and zips of them, flattened
    bp_coeff_0..54 layouts. A missing band is stored as NULL. Full covariance matrices:
    xpmet.xp_coefficients.covariance_matrix(errors, correlations).
    """
    from xpmet.etl.xp_loader import load_xp
    try:
        s = load_xp(paths, workers=workers, correlations=not no_correlations, replace=replace,
                    errors_to=errors_to, progress=not no_progress, cluster=cluster)
    except LoadFailed as e:
        s = e
    finish(s)
