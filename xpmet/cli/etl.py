"""``xpmet etl``: the group; its commands live in etl_gaia.py (gaia-source, xp) and etl_survey.py (survey)."""
import click


@click.group()
def etl():
    """Load files into the database: Gaia sources, XP spectra, survey catalogues.

    Every file loads in one transaction with provenance in xpmet.etl_load; a second run skips
    files already loaded (--replace reloads them).
    """
