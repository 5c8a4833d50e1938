"""``xpmet xmatch`` (refresh the crossmatch) and ``xpmet labels`` (choose the scale, refresh label views)."""
from __future__ import annotations

import click

from xpmet.errors import XpmetError


def _overrides(values) -> dict:
    out: dict = {}
    for v in values:
        try:
            survey, rest = v.split(":", 1)
            key, num = rest.split("=", 1)
            out.setdefault(survey, {})[key] = float(num)
        except ValueError:
            raise XpmetError(f"--override {v!r}: write SURVEY:PARAM=ARCSEC, e.g. lamost:radius=3") from None
    return out


@click.command("xmatch")
@click.option("--radius", type=float,
              help="Matching radius (arcsec) at the survey epoch, for every survey (beats the descriptors' "
                   "own radius) [descriptor, else 1.0].")
@click.option("--nopm-radius", type=float, help="Radius for Gaia sources without proper motion [2 x radius].")
@click.option("--id-radius", type=float,
              help="Largest separation (arcsec) at which a declared Gaia id is accepted [descriptor, else 3.0].")
@click.option("--epoch", type=click.Choice(["propagate", "gaia"]), default="propagate", show_default=True,
              help="propagate: move Gaia positions to each row's epoch; gaia: compare at Gaia positions.")
@click.option("--override", multiple=True, metavar="SURVEY:PARAM=VALUE",
              help="Per-survey parameter, e.g. lamost:radius=3 (repeatable).")
@click.option("--version", "version", help="Name of this crossmatch version [xm-<run id>].")
@click.option("--keep", type=int, help="Keep only the newest KEEP runs (and any run an export or model cites).")
@click.option("--no-labels", is_flag=True, help="Do not refresh the label views (by default they are refreshed "
                                             "in the crossmatch's transaction).")
def xmatch(radius, nopm_radius, id_radius, epoch, override, version, keep, no_labels):
    """Crossmatch every survey row to Gaia DR3 (a new, current crossmatch version).

    Declared Gaia ids first (validated by position), then positions with Gaia proper motions
    propagated to each row's epoch; one best neighbour per row with separation, candidate count,
    second-best separation and flags (xpmet.flags.XMATCH_BITS). Then refreshes the labels.
    """
    from xpmet.xmatch import XmatchParams, run_xmatch
    p = XmatchParams(radius=radius, nopm_radius=nopm_radius, id_radius=id_radius, epoch=epoch,
                     overrides=_overrides(override), version=version)
    r = run_xmatch(p, keep=keep, progress=True, labels=not no_labels)
    click.echo(f"crossmatch {r.version}: {r.n_rows} survey rows, {r.n_matched} matched "
               f"({', '.join(f'{k} {v}' for k, v in sorted(r.by_method.items()))}) in {r.seconds:.1f} s")
    for note in r.notes:
        click.echo(note)
    if r.labels is not None:  # refreshed in the crossmatch's transaction: they committed together
        click.echo(f"labels: {r.labels['n_labels']} sources on the {r.labels['reference']} scale")
    else:
        click.echo("labels not refreshed: they are still built from the previous crossmatch "
                   "(xpmet.label_status); run `xpmet labels` to rebuild them")


@click.command("labels")
@click.option("--reference", help="Survey whose scale the labels use (default gbs, the benchmark stars).")
@click.option("--fallback", help="Survey whose scale anchors a label the reference does not measure ('' for none).")
@click.option("--min-overlap", type=int, help="Stars a survey must share with the network to be calibrated [3].")
@click.option("--min-trend-overlap", type=int,
              help="Shared stars a survey needs for a shape (knots, Teff and log g terms) beyond one offset [50].")
@click.option("--clip", type=float, help="|z| that drops a measurement from the fit and rejects it in labels [4].")
@click.option("--max-chi2-dof", type=float, help="chi2/dof that flags a label discordant [9].")
@click.option("--max-feh-err", type=float, help="training_set cut on feh_err [0.2].")
@click.option("--min-xp-snr", type=float, help="training_set cut on the XP S/N [30].")
@click.option("--show/--no-show", default=True, help="Print the zero points.")
def labels(reference, fallback, min_overlap, min_trend_overlap, clip, max_chi2_dof, max_feh_err, min_xp_snr, show):
    """Choose the label scale, fit every survey's calibration jointly over the overlap network
    (xpmet.survey_calibration, shown by survey_zero_point) and recompute labels (training_set follows)."""
    from xpmet.labels import refresh, zero_points
    s = refresh(reference, fallback=fallback, min_overlap=min_overlap, min_trend_overlap=min_trend_overlap,
                clip=clip, max_chi2_dof=max_chi2_dof, max_feh_err=max_feh_err, min_xp_snr=min_xp_snr)
    click.echo(f"labels: {s['n_labels']} sources on the {s['reference']} scale")
    if "warning" in s["zero_points"]:
        click.secho(s["zero_points"]["warning"], fg="yellow", err=True)
    if show:
        click.echo(f"{'survey':10s} {'label':9s} {'status':13s} {'zero_point':>11s} {'error':>9s} {'slope':>8s} "
                   f"{'N':>6s} {'err_scale':>9s} {'floor':>7s}")
        for z in zero_points():
            f = lambda v, p: "" if v is None else f"{v:.{p}f}"  # noqa: E731
            click.echo(f"{z['survey']:10s} {z['label']:9s} {z['status']:13s} {f(z['zero_point'], 3):>11s} "
                       f"{f(z['zero_point_err'], 3):>9s} {f(z['slope'], 4):>8s} {z['n_stars']:>6d} "
                       f"{f(z['err_scale'], 2):>9s} {f(z['error_floor_fitted'], 3):>7s}")
