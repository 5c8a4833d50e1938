"""``xpmet export``, ``xpmet train``, ``xpmet evaluate``: training data, models and their validation."""
from __future__ import annotations

import json

import click

from xpmet.distributed import CLUSTER_HELP
from xpmet.ml.config import AUGMENT_NOISE, HIDDEN, INPUTS, KINDS, TrainConfig
from xpmet.ml.normalise import LABELS


@click.command("export")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--g-max", type=float, help="Keep stars with phot_g_mean_mag <= G_MAX.")
@click.option("--g-min", type=float, help="Keep stars with phot_g_mean_mag >= G_MIN.")
@click.option("--max-coef-error", type=float,
              help="Keep stars whose median coefficient error / G flux is at most this (e.g. 0.01).")
@click.option("--min-surveys", type=int, default=1, show_default=True, help="Surveys that measured the star.")
@click.option("--require", default="feh", show_default=True,
              help=f"Comma-separated labels that must be known ({', '.join(LABELS)}; '' for none).")
@click.option("--split", "split_", default="train=0.8,valid=0.1,test=0.1", show_default=True,
              help="Split fractions; a star's split depends only on its source_id and --seed.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--correlations/--no-correlations", default=None,
              help="Export the 2x1485 coefficient correlations (12x larger; the estimator then degrades spectra "
                   "with each star's own covariance). [default: when the stars carry them in the database]")
@click.option("--noise-sample", type=int, default=20000, show_default=True,
              help="Unlabelled XP sources sampled for the noise model and the target magnitudes (0: none).")
@click.option("--limit", type=int, help="At most this many stars (for quick experiments).")
@click.option("--cluster", metavar="ADDRESS",
              help=CLUSTER_HELP.replace(" Instead of --workers.", "") + " Workers read source_id ranges; "
                   "this process writes the file.")
def export_cmd(out, g_max, g_min, max_coef_error, min_surveys, require, split_, seed, correlations, noise_sample,
               limit, cluster):
    """Export the training_set view to a chunked, compressed HDF5 file OUT.

    The layout, splits and attributes are documented in xpmet.ml.export.

    \b
    xpmet export train.h5 --g-max 17 --split train=0.8,valid=0.1,test=0.1 --seed 1
    """
    from xpmet.ml.export import ExportOptions, export, parse_split
    opt = ExportOptions(g_max=g_max, g_min=g_min, max_coef_error=max_coef_error, min_surveys=min_surveys,
                        require=tuple(r.strip() for r in require.split(",") if r.strip()),
                        split=parse_split(split_), seed=seed, correlations=correlations,
                        noise_sample=noise_sample, limit=limit)
    res = export(out, opt, cluster=cluster)
    click.echo(f"wrote {res['path']}: " + ", ".join(f"{k} {v:,}" for k, v in res["n_by_split"].items())
               + (f"; {res['rows_cut_by_coef_error']:,} cut by --max-coef-error" if max_coef_error else ""))
    if res.get("labels_stale"):
        click.secho(f"warning: stale labels exported: {res['labels_stale']}", fg="yellow", err=True)


@click.command("train")
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Model directory.")
@click.option("--kind", type=click.Choice(KINDS), default=TrainConfig.kind, show_default=True)
@click.option("--hidden", default=None, help="Hidden layer widths, e.g. 256,256 [" + "; ".join(
    f"{k} {','.join(map(str, v))}" for k, v in HIDDEN.items()) + "].")
@click.option("--epochs", type=int, default=TrainConfig.epochs, show_default=True)
@click.option("--batch-size", type=int, default=TrainConfig.batch_size, show_default=True)
@click.option("--lr", type=float, default=TrainConfig.lr, show_default=True)
@click.option("--patience", type=int, default=TrainConfig.patience, show_default=True, help="Early stopping on the validation loss.")
@click.option("--ensemble", type=int, default=TrainConfig.ensemble, show_default=True, help="Estimator members (different seeds).")
@click.option("--augment", type=float, default=TrainConfig.augment, show_default=True,
              help="Share of training spectra degraded to fainter magnitudes (estimator).")
@click.option("--inputs", type=click.Choice(INPUTS), default=TrainConfig.inputs, show_default=True,
              help="Estimator inputs: the coefficients alone, or also parallax and Gaia colours (and 2MASS/WISE "
                   "colours when the file has them), each with its error and a missing indicator.")
@click.option("--valid-copies", type=int, default=TrainConfig.valid_copies, show_default=True,
              help="Estimator: early stopping on the validation stars degraded this many times to the magnitudes "
                   "of the stars to be predicted (fixed seed); 0: on the validation stars as observed.")
@click.option("--prior-weight/--no-prior-weight", default=TrainConfig.prior_weight, show_default=True,
              help="Estimator: weight training stars by the target over the labelled G density.")
@click.option("--augment-noise", type=click.Choice(AUGMENT_NOISE), default=TrainConfig.augment_noise, show_default=True,
              help="Estimator: degrade with each star's own covariance when DATA has correlations "
                   "(`xpmet export` writes them when the database has them), else diagonal; or diagonal always.")
@click.option("--correlations", is_flag=True, help="Emulator: chi-squared with the full XP covariance.")
@click.option("--seed", type=int, default=TrainConfig.seed, show_default=True)
@click.option("--device", default=TrainConfig.device, show_default=True, help="auto (CUDA when present), cpu or cuda.")
@click.option("--threads", type=int, default=0,
              help="CPU threads for torch (0: torch's default; 1 is fastest on a busy small machine).")
@click.option("--name", help="Name in the models table [the directory name].")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUT/checkpoint.pt.")
@click.option("--no-register", is_flag=True, help="Do not insert the model into xpmet.models.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel processes on this machine (torch.distributed DDP: one GPU each with nccl, "
                   "else CPU with gloo); --batch-size is their total. Under torchrun leave it at 1.")
@click.option("--dist-timeout", type=float, default=1800, show_default=True,
              help="Seconds a process waits for the others (start-up, each collective) before failing.")
def train_cmd(data, out_dir, kind, hidden, epochs, batch_size, lr, patience, ensemble, augment, inputs, valid_copies,
              prior_weight, augment_noise, correlations, seed, device, threads, name, resume, no_register, nproc,
              dist_timeout):
    """Train a model on DATA (an `xpmet export` file) into --out.

    \b
    estimator: XP -> Teff, logg, [Fe/H], [alpha/Fe] with per-star uncertainties
    emulator:  labels + A_G -> XP coefficients; inference fits the labels per star
    xpmet train train.h5 --out models/est --kind estimator --ensemble 3
    xpmet train train.h5 --out models/est --nproc 4        # 4 processes (DDP)
    torchrun --nproc_per_node 4 -m xpmet.ml.train train.h5 --out models/est   # same, any launcher
    """
    import os
    from xpmet.ml.train import train
    try:
        widths = None if hidden is None else tuple(int(h) for h in hidden.split(","))
    except ValueError:
        raise click.BadParameter(f"{hidden!r}: expected comma-separated integers", param_hint="--hidden")
    cfg = TrainConfig(kind=kind, hidden=widths, epochs=epochs, batch_size=batch_size, lr=lr, patience=patience,
                      seed=seed, device=device, ensemble=ensemble, augment=augment, correlations=correlations,
                      name=name, inputs=inputs, valid_copies=valid_copies, prior_weight=prior_weight,
                      augment_noise=augment_noise)
    out = train(data, out_dir, cfg, resume=resume, register=not no_register, nproc=nproc,
                dist_timeout=dist_timeout, threads=threads)
    if os.environ.get("RANK", "0") != "0":  # a torchrun worker: rank 0 reports
        return
    m = json.loads((out / "metrics.json").read_text())["valid"]["overall"]
    click.echo(f"model in {out}; validation [Fe/H] scatter {m['feh']['scatter']:.3f} dex, "
               f"bias {m['feh']['bias']:+.3f}, calibration {m['feh']['calibration']:.2f}")


@click.command("evaluate")
@click.argument("model", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("--truth", type=click.Path(exists=True, dir_okay=False),
              help="truth.fits of `xpmet simulate`: also score never-surveyed stars (read from the database).")
@click.option("--emulator", type=click.Path(exists=True, file_okay=False),
              help="An emulator model for the synthetic-photometry check of an estimator.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Where to write [MODEL/evaluation].")
@click.option("--max-truth", type=int, default=20000, show_default=True, help="Never-surveyed stars to score.")
def evaluate_cmd(model, data, truth, emulator, out_dir, max_truth):
    """Metrics and plots of MODEL on the test split of DATA (and with --truth on never-surveyed stars).

    \b
    xpmet evaluate models/est train.h5 --truth sim/truth.fits
    """
    from xpmet.ml.evaluate import evaluate
    res = evaluate(model, data, truth, out_dir, emulator, max_truth)
    for name in ("test", "test_vs_truth", "never_surveyed"):
        if name in res:
            m = res[name]["overall"]["feh"]
            click.echo(f"{name:15s} n={m.get('n', 0):6d}  [Fe/H] bias {m.get('bias', float('nan')):+.3f}  "
                       f"scatter {m.get('scatter', float('nan')):.3f}  calibration {m.get('calibration', float('nan')):.2f}"
                       + (f"  median fit_stat {res[name]['median_fit_stat']:.2f}" if "median_fit_stat" in res[name] else ""))
    if "photometry" in res and "CaHK" in res["photometry"]:
        p = res["photometry"]["CaHK"]
        click.echo(f"CaHK emulated-observed width {p['residual_width']:.3f} mag vs noise {p['photometric_noise']:.3f}")
    click.echo(f"plots and evaluation.json in {res.get('plots', [''])[0].rsplit('/', 1)[0] if res.get('plots') else out_dir}")
