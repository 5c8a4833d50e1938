"""``xpmet etl``: the group; its commands live in etl_gaia_source.py, etl_xp.py and etl_survey.py."""
import click

from xpmet.cli import LazyGroup

COMMANDS = {
    "gaia-source": ("xpmet.cli.etl_gaia_source:gaia_source", "Gaia DR3 gaia_source files (bulk CSV.gz, archive CSV/FITS/VOTable)."),
    "photometry": ("xpmet.cli.etl_photometry:photometry", "2MASS and AllWISE photometry with the Gaia best-neighbour files that join it."),
    "survey": ("xpmet.cli.etl_survey:survey", "Survey catalogues (FITS, CSV, ECSV, VOTable) through a descriptor."),
    "xp": ("xpmet.cli.etl_xp:xp", "Gaia DR3 XP continuous spectra (bulk ECSV.gz, archive, DataLink)."),
}


@click.group(cls=LazyGroup, lazy=COMMANDS)
def etl():
    """Load files into the database: Gaia sources, XP spectra, survey catalogues.

    Every file loads in one transaction with provenance in xpmet.etl_load; a second run skips
    files already loaded (--replace reloads them).
    """
