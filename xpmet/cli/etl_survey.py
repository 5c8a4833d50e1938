"""``xpmet etl survey``: load survey catalogue files with a shipped or user descriptor."""
from __future__ import annotations

import click

from xpmet.cli.etl_options import descriptor_and_files, report_files
from xpmet.distributed import CLUSTER_HELP


@click.command("survey")
@click.argument("name", required=False)
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--descriptor", "descriptor_path", type=click.Path(exists=True, dir_okay=False),
              help="A TOML descriptor for a catalogue xpmet does not ship (then NAME may be omitted).")
@click.option("--replace", is_flag=True, help="Reload files loaded before (their rows are replaced).")
@click.option("--list", "list_", is_flag=True, help="List the shipped survey descriptors and exit.")
@click.option("--cluster", metavar="ADDRESS", help=CLUSTER_HELP.replace(" Instead of --workers.", "")
              + " One task per file.")
def survey(name, files, descriptor_path, replace, list_, cluster):
    """Load survey FILES (FITS, CSV, ECSV, VOTable) as survey NAME (etl/surveys/NAME.toml).

    Every row is kept; sentinels and flagged fits are marked in survey_star.quality_flags
    (xpmet.flags.SURVEY_QUALITY_BITS). Then run `xpmet xmatch` and `xpmet labels`.

    \b
    xpmet etl survey apogee allStar-dr17-synspec_rev1.fits
    xpmet etl survey --descriptor my_survey.toml my_survey.fits
    """
    from xpmet.etl.descriptor import load_descriptor, shipped
    from xpmet.etl.survey import load_survey
    if list_:
        for n in shipped():
            d = load_descriptor(n)
            click.echo(f"{n:10s} {d.title} ({d.release})")
        return
    d, files = descriptor_and_files(name, files, descriptor_path, load_descriptor, "survey NAME")

    def describe(r):
        flagged = ", ".join(f"{k} {v}" for k, v in r.bit_counts.items() if v)
        click.echo(f"{r.path}: {r.n_rows} rows of {r.survey}, {r.n_ok} quality_ok"
                   + (f"; flagged: {flagged}" if flagged else ""))
        if r.absent:
            click.echo(f"  not in this file (left NULL / rule skipped): {', '.join(r.absent)}")
        for note in r.notes:
            click.echo(f"  WARNING {note}")
    report_files(load_survey(d, files, replace=replace, check=False, cluster=cluster), describe)
