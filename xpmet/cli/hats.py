"""``xpmet export-hats``: the metallicity catalogue as a HATS catalogue for LSDB (xpmet.hats)."""
from __future__ import annotations

import click

from xpmet.distributed import CLUSTER_HELP


@click.command("export-hats")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--model", "model_id", type=int,
              help="Model id (xpmet.models); default: the newest model with predictions.")
@click.option("--overwrite", is_flag=True, help="Replace a HATS catalogue already in OUT.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Local Dask workers for hats-import (processes; threads in this process for a small "
                   "export); default: per cores and memory.")
@click.option("--cluster", metavar="ADDRESS",
              help=CLUSTER_HELP + " Remote workers must see OUT's file system.")
@click.option("--pixel-threshold", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="At most this many rows per HEALPix partition.")
@click.option("--margin-arcsec", type=click.FloatRange(0, 3600), default=10.0, show_default=True,
              help="Width of the margin catalogue LSDB uses to crossmatch across partition edges; 0: none.")
def export_hats_cmd(out, model_id, overwrite, workers, cluster, pixel_threshold, margin_arcsec):
    """The predicted metallicities of one model (view xpmet.metallicity) as a HATS collection in OUT
    (the catalogue, partitioned by HEALPix with hats-import, and its margin), for LSDB:
    lsdb.open_catalog(OUT).cone_search(ra, dec, radius_arcsec).

    OUT is written whole or not at all (built next to it, renamed at the end).
    """
    from xpmet.hats import export_hats
    r = export_hats(out, model_id, overwrite=overwrite, workers=workers, cluster=cluster,
                    pixel_threshold=pixel_threshold, margin_arcsec=margin_arcsec)
    click.echo(f"{r.n_rows} stars of model {r.model_id} in {r.n_partitions} HEALPix partitions "
               f"({r.seconds:.1f} s): HATS catalogue {r.catalog_name} in {r.path}", err=True)
