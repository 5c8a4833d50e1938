"""``xpmet demo``: the end-to-end demonstration (xpmet.demo.run_demo)."""
from __future__ import annotations

import click


@click.command()
@click.option("--out", default="xpmet-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the simulated sky, the demo's own database, model, plots and report "
                   "(an earlier demo's folder is replaced).")
@click.option("--n-stars", default=20000, show_default=True, type=click.IntRange(min=500),
              help="Simulated stars with XP spectra.")
@click.option("--seed", default=1, show_default=True, help="Random seed of the simulation and training.")
@click.option("--epochs", default=60, show_default=True, type=click.IntRange(min=1),
              help="Maximum training epochs (early stopping usually ends sooner).")
def demo(out, n_stars, seed, epochs):
    """Run xpmet end to end on a SIMULATED sky: simulate, load Gaia/XP/four surveys, crossmatch,
    homogenise labels, export, train, evaluate, predict, cone query; print a report and write
    plots. Uses its own embedded database under OUT/home, never yours. A few minutes on 2 cores.
    """
    from xpmet.demo import run_demo
    report = run_demo(out, n_stars=n_stars, seed=seed, epochs=epochs, say=lambda m: click.echo(m, err=True))
    click.echo(report.text())
    click.echo(f"\nExplore the demo's database:  XPMET_HOME={report.out / 'home'} xpmet query cone RA DEC 2")
