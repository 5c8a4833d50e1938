"""``xpmet clean``: drop training stars whose labels their XP synthetic photometry contradicts."""
from __future__ import annotations

import click

from xpmet.ml.cleaning import CleanOptions


@click.command("clean")
@click.argument("data", type=click.Path(dir_okay=False))
@click.option("--emulator", type=click.Path(), metavar="MODEL",
              help="An emulator model directory (`xpmet train --kind emulator`), used as it is. "
                   "Without it an emulator is trained on the kept rows in every iteration.")
@click.option("--k", type=float, default=CleanOptions.k, show_default=True,
              help="Drop beyond median +/- k * 1.4826 MAD of the normalised residuals.")
@click.option("--max-iter", type=int, default=CleanOptions.max_iter, show_default=True, help="Iterations at most (stops when none drop).")
@click.option("--seed", type=int, default=CleanOptions.seed, show_default=True, help="Seed of the emulators trained here.")
@click.option("--bands", default=",".join(CleanOptions.bands), show_default=True,
              help="GaiaXPy synthetic bands compared (CaHK, g_sdss, G, BP, RP).")
@click.option("--epochs", type=int, default=CleanOptions.epochs, show_default=True,
              help="Epochs at most of each emulator trained here (early stopping as `xpmet train`).")
@click.option("--threads", type=int, default=CleanOptions.threads, help="torch CPU threads (0: torch's default).")
@click.option("--no-plot", is_flag=True, help="Do not write DATA's .cleaning.png histogram.")
def clean_cmd(data, emulator, k, max_iter, seed, bands, epochs, threads, no_plot):
    """Drop train/valid stars of DATA whose emulated synthetic photometry disagrees with the observed.

    The emulator predicts each star's XP coefficients from its labels; GaiaXPy computes the
    bands from observed and emulated coefficients; a star whose residual (over its photometric
    error and the emulator's scatter) lies beyond the robust cut is dropped; repeat. The result
    is recorded in DATA (group /cleaning, layout in xpmet.ml.cleaning), which `xpmet train`
    then honours; the test split is never dropped. Re-running replaces the record.

    \b
    xpmet clean train.h5                         # emulator trained here, k=4, 3 iterations
    xpmet clean train.h5 --emulator models/emu --k 5 --bands CaHK
    """
    from xpmet.ml.cleaning import clean
    opt = CleanOptions(k=k, max_iter=max_iter, seed=seed, bands=tuple(b.strip() for b in bands.split(",") if b.strip()),
                       emulator=emulator, epochs=epochs, threads=threads)
    s = clean(data, opt, plot=not no_plot)
    per = ", ".join(f"{n:,}" for n in s["n_dropped"])
    click.echo(f"{data}: kept {s['n_kept']:,} of {s['n_judged']:,} judged train/valid rows; "
               f"dropped per iteration: {per} ({s['iterations']} iteration(s), k={s['k']:g}, {','.join(s['bands'])})")
    if s.get("plot"):
        click.echo(f"plot: {s['plot']}")
