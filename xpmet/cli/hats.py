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
              help="Local Dask worker processes for hats-import; default: per cores and memory.")
@click.option("--cluster", metavar="ADDRESS",
              help=CLUSTER_HELP + " Remote workers must see OUT's file system.")
@click.option("--pixel-threshold", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="At most this many rows per HEALPix partition.")
def export_hats_cmd(out, model_id, overwrite, workers, cluster, pixel_threshold):
    """The predicted metallicities of one model (view xpmet.metallicity) as a HATS catalogue in OUT,
    partitioned by HEALPix with hats-import, for LSDB:  lsdb.open_catalog(OUT).cone_search(ra, dec, arcsec).

    OUT is written whole or not at all (built next to it, renamed at the end).
    """
    from xpmet.hats import export_hats
    r = export_hats(out, model_id, overwrite=overwrite, workers=workers, cluster=cluster,
                    pixel_threshold=pixel_threshold)
    click.echo(f"{r.n_rows} stars of model {r.model_id} in {r.n_partitions} HEALPix partitions "
               f"({r.seconds:.1f} s): HATS catalogue {r.catalog_name} in {r.path}", err=True)
