"""``xpmet query``: cone, box and polygon searches on the metallicity catalogue (xpmet.query)."""
from __future__ import annotations

import click

# Negative declinations such as -30.5 must reach the arguments, not the option parser.
NUMBERS = {"ignore_unknown_options": True}


def _common(f):
    """Filters and output options shared by the three region commands."""
    opts = [
        click.option("--feh-max", type=float, help="Keep stars with [Fe/H] <= this."),
        click.option("--g-max", type=float, help="Keep stars with G <= this (mag)."),
        click.option("--recommended", is_flag=True, help="Keep only stars that pass the model's quality cut."),
        click.option("--model", "model_id", type=int,
                     help="Model id (xpmet.models); default: the newest model with predictions."),
        click.option("--limit", type=int, help="At most this many rows (lowest source_id first)."),
        click.option("-o", "--output", type=click.Path(dir_okay=False),
                     help="Write the table to this file instead of the terminal (.csv .ecsv .fits .xml/.vot .parquet)."),
        click.option("--format", "fmt", type=click.Choice(["csv", "ecsv", "fits", "votable", "parquet"]),
                     help="Output format when the extension does not say it."),
        click.option("--overwrite", is_flag=True, help="Replace an existing output file."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _emit(table, output, fmt, overwrite):
    from xpmet.table_files import write_table
    meta = table.meta
    summary = f"{len(table)} stars; model {meta.get('model_id')}; {meta.get('query')}"
    if meta.get("note"):
        summary += f"\nnote: {meta['note']}"
    if output:
        path = write_table(table, output, fmt, overwrite)
        click.echo(f"{summary}\nwritten to {path}", err=True)
        return
    click.echo(summary, err=True)
    if len(table):
        lines = table.pformat(max_lines=60, max_width=-1)
        click.echo("\n".join(lines))
        if len(table) > 55:
            click.echo("(use -o FILE to get every row)", err=True)


@click.group()
def query():
    """Find stars with metallicities by sky region (view xpmet.metallicity).

    Angles in degrees. Output goes to the terminal, or with -o to CSV, ECSV, FITS, VOTable or
    Parquet. Queries run read-only with bound parameters; from Python use xpmet.query.cone/box/polygon.
    """


@query.command(context_settings=NUMBERS)
@click.argument("ra", type=float)
@click.argument("dec", type=float)
@click.argument("radius", type=float)
@_common
def cone(ra, dec, radius, output, fmt, overwrite, **filters):
    """Stars within RADIUS degrees of (RA, DEC).  Example: xpmet query cone 10.68 41.27 0.5 --feh-max -1"""
    from xpmet import query as q
    _emit(q.cone(ra, dec, radius, **filters), output, fmt, overwrite)


@query.command(context_settings=NUMBERS)
@click.argument("ra1", type=float)
@click.argument("dec1", type=float)
@click.argument("ra2", type=float)
@click.argument("dec2", type=float)
@_common
def box(ra1, dec1, ra2, dec2, output, fmt, overwrite, **filters):
    """Stars with RA1 <= RA <= RA2 and DEC1 <= Dec <= DEC2; RA1 > RA2 crosses RA = 0 (e.g. 350 -5 10 5)."""
    from xpmet import query as q
    _emit(q.box(ra1, dec1, ra2, dec2, **filters), output, fmt, overwrite)


@query.command(context_settings=NUMBERS)
@click.argument("coords", nargs=-1, type=float, required=True)
@_common
def polygon(coords, output, fmt, overwrite, **filters):
    """Stars inside the polygon RA DEC RA DEC ... (at least 3 vertices, great-circle edges, < ~23 deg across)."""
    from xpmet import query as q
    _emit(q.polygon(list(coords), **filters), output, fmt, overwrite)
