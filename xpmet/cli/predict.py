"""``xpmet predict``: write a trained model's labels for every XP star into xpmet.predictions."""
from __future__ import annotations

import click

from xpmet.distributed import CLUSTER_HELP


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False),
              help="Model directory written by `xpmet train`.")
@click.option("--where", help="SQL condition on x (xpmet.xp_continuous) and g (xpmet.gaia_source), "
                              "e.g. \"g.phot_g_mean_mag < 17\".")
@click.option("--batch", default=4096, show_default=True, help="Stars per model call.")
@click.option("--workers", default=1, show_default=True,
              help="Processes, each with its own model copy and database connections.")
@click.option("--chunk", "chunk_rows", default=20000, show_default=True,
              help="Stars per committed chunk (a source_id = HEALPix range).")
@click.option("--cluster", metavar="ADDRESS", help=CLUSTER_HELP + " One task per chunk.")
def predict(model_dir, where, batch, workers, chunk_rows, cluster):
    """Predict Teff, logg, [Fe/H], [alpha/Fe] with uncertainties and quality flags for every star
    with XP spectra, and write them into xpmet.predictions.

    Resumable: each chunk commits on its own, so a stopped run continues where it stopped, and
    stars already predicted by this model are never written again. Queries can run meanwhile.
    """
    from xpmet.predict import predict as run
    r = run(model_dir, where=where, batch=batch, workers=workers, chunk_rows=chunk_rows, cluster=cluster)
    click.echo(f"model {r.model_id}: wrote {r.written} predictions in {r.chunks} chunks "
               f"({r.seconds:.1f} s, {r.rows_per_second:.0f} stars/s); {r.already} were already there")
