"""``xpmet etl photometry``: 2MASS / AllWISE catalogue files and the Gaia best-neighbour files that join them."""
from __future__ import annotations

import click

from xpmet.cli.etl_options import descriptor_and_files, report_files


@click.command("photometry")
@click.argument("catalogue", required=False)
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--best-neighbour", "-b", "best_neighbour", multiple=True, type=click.Path(dir_okay=False),
              help="A Gaia DR3 best-neighbour file for CATALOGUE (gaiadr3.tmass_psc_xsc_best_neighbour or "
                   "allwise_best_neighbour: archive query results or the bulk cross_match files). Repeatable.")
@click.option("--descriptor", "descriptor_path", type=click.Path(exists=True, dir_okay=False),
              help="A TOML descriptor for another layout of the catalogue (copy one of etl/photometry/).")
@click.option("--replace", is_flag=True,
              help="Reload files loaded before; rows of the same designation (source_id) from other files "
                   "give way to this file's.")
@click.option("--list", "list_", is_flag=True, help="List the shipped photometry descriptors and exit.")
def photometry(catalogue, files, best_neighbour, descriptor_path, replace, list_):
    """Load external photometry FILES of CATALOGUE (tmass, allwise) and its Gaia best-neighbour files.

    FILES: CSV, ECSV, FITS, VOTable or IPAC tables (.tbl; gzipped too), e.g. IRSA's 2MASS PSC (fp_psc) or AllWISE
    (allwise_p3as_psd) query results. Sentinels and NaN are stored as NULL. The view
    xpmet.external_photometry then gives J, H, Ks, W1, W2 per Gaia source, and `xpmet export`
    writes them as /phot/tmass_j ... /phot/w2_err.

    \b
    xpmet etl photometry tmass psc.csv --best-neighbour tmasspscxscBestNeighbour0001.csv.gz
    xpmet etl photometry allwise allwise.xml -b allwiseBestNeighbour0001.csv.gz
    """
    from xpmet.etl.photometry import load_catalogue, load_photometry, shipped
    if list_:
        for n in shipped():
            d = load_catalogue(n)
            click.echo(f"{n:24s} {d.title} -> xpmet.{d.table}")
        return
    d, files = descriptor_and_files(catalogue, files, descriptor_path, load_catalogue, "CATALOGUE")

    def describe(r):
        nulled = ", ".join(f"{k} {v}" for k, v in r.nulled.items())
        click.echo(f"{r.path}: {r.n_rows} rows of {r.catalogue}"
                   + (f"; sentinels or out-of-range values stored as NULL: {nulled}" if nulled else ""))
        if r.absent:
            click.echo(f"  not in this file (left NULL): {', '.join(r.absent)}")
    report_files(load_photometry(d, files, best_neighbour=best_neighbour, replace=replace), describe)
