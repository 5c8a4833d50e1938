"""``xpmet simulate``: argument parsing only; the work is xpmet.simulate.simulate()."""
from __future__ import annotations

import click

HELP = """Write a SIMULATED Gaia sky with XP spectra and survey catalogues into OUTDIR.

\b
THE OUTPUT IS SIMULATED DATA (OUTDIR/SIMULATED.txt says so), in the real file formats:
  gaia_source/GaiaSource_<a>-<b>.csv.gz              Gaia bulk ECSV.gz, a-b = HEALPix level-8 range
  xp_continuous/XpContinuousMeanSpectrum_<a>-<b>.csv.gz  the 26 XP columns, arrays "[...]"
  surveys/apogee_dr17_allstar.fits, galah_dr3.fits, lamost_dr8_lrs.csv, gbs_v3.fits
  photometry/tmass_psc.csv, allwise.csv and their Gaia DR3 best-neighbour files (IRSA / archive layouts)
  truth.fits (true labels of every source), survey_truth.json (injected offsets/trends/noise)
  plots/*.png with --plots (Kiel diagram, [Fe/H] histogram, sky map)
Deterministic for a given --seed and options (including --rows-per-file: noise is drawn per file).
Memory: the XP data are streamed file by file (bounded by --rows-per-file); the per-source truth
catalogue stays in memory (a few hundred bytes per source) to draw the surveys from.

\b
Modelling choices:
 * Stars: thin disc ([Fe/H]~N(-0.05,0.22)), thick disc (N(-0.6,0.28), alpha-rich), halo
   (N(-1.45,0.45) plus a metal-poor tail to -4); dwarfs/subgiants, RGB (hotter when metal-poor),
   red clump, BHB; radius from logg and mass. Apparent G with counts ~10^(0.3G); N_STARS sources
   with XP (G<=17.65) plus FAINT_RATIO*N_STARS fainter sources without XP; PAIR_FRACTION of them
   placed 1-2" from an XP star (optical pairs).
 * Distances follow from the SED's absolute G and a plane-parallel dust layer (A0 = 0.12 mag per
   airmass, 120 pc scale height); kinematics from (U,V,W) Gaussians per population (halo lags by
   225 km/s, so nearby halo stars have large proper motions).
 * SED: Planck continuum; metal line blanketing tau ~ Z^0.6 (400nm/lambda)^4, strongest in the blue
   and in cool stars; Ca H&K, Mg b, Ca triplet, Balmer lines and jump, TiO; CCM89 extinction with
   R_V=3.1. Projected onto the XP bases with GaiaXPy's own external instrument model (v375wi/v142r,
   photon-weighted least squares); phot_g/bp/rp_mean_mag are GaiaXPy's Gaia_DR3_Vega synthetic
   magnitudes of the noise-free coefficients (plus Gaia-like photometric noise).
 * XP errors: log10(error) per coefficient as a quadratic in G fitted on 2,000 real DR3 spectra,
   with per-star and per-coefficient scatter. Correlations: templates that are convex combinations
   of real DR3 correlation matrices, formatted once (cheap to write); the noise is drawn from the
   covariance each row publishes. --no-correlations writes identity correlations (zeros) and draws
   independent noise instead: still the real schema, smaller and faster files. A fraction of XP
   stars miss their BP or RP band (empty fields).
 * Non-stellar sources (--nonstellar-fraction of the XP sources, half each): quasars (power law +
   redshifted broad emission lines, Ly-alpha forest; no parallax or proper motion) and DA white
   dwarfs (8-40 kK, log g ~8, pressure-broadened Balmer lines); truth.fits source_class, redshift.
 * Gaia astrometry/photometry errors grow with G as in DR3; RVs for G<14.5; GSP-Phot labels with a
   -0.2 dex metallicity bias. Positions at 2016.0; source_id // 2^35 is the HEALPix level-12 index.
 * Surveys: each with its own selection (sky, G, Teff, completeness), zero-point offsets and trends,
   noise growing with G, failures (-9999 sentinels / flags), outliers and duplicate rows; positions
   at the survey epoch (APOGEE J2000, GALAH 2015.5, LAMOST observation date); GBS is the reference
   scale (no offsets) and is observed by most surveys. All injected values: survey_truth.json.
"""


@click.command("simulate", help=HELP)
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--n-stars", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Gaia sources WITH XP spectra.")
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed (same seed, same files).")
@click.option("--surveys", default="apogee,galah,lamost,gbs", show_default=True,
              help="Comma-separated surveys to simulate, or 'all' (adds gaia_eso, rave, segue, gspspec, pristine).")
@click.option("--faint-ratio", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Fainter sources without XP, per XP source.")
@click.option("--pair-fraction", type=click.FloatRange(0, 1), default=0.03, show_default=True,
              help="Share of XP stars given a faint neighbour 1-2 arcsec away.")
@click.option("--nonstellar-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.017, show_default=True,
              help="Share of XP sources that are quasars and white dwarfs (half each; truth.fits source_class; "
                   "no survey observes them): what the quality flags are measured on.")
@click.option("--rows-per-file", type=click.IntRange(min=1), default=20000, show_default=True,
              help="Sources per HEALPix-range file (bounds memory).")
@click.option("--no-correlations", is_flag=True, help="Identity XP correlations and independent noise.")
@click.option("--null-token", default="", show_default=True,
              help="How gaia_source writes missing values ('' reads in astropy; Gaia's bulk files use 'null').")
@click.option("--plots", is_flag=True, help="Write PNG plots into OUTDIR/plots/.")
@click.option("--overwrite", is_flag=True, help="Replace a previous simulation in OUTDIR.")
def simulate(outdir, n_stars, seed, surveys, faint_ratio, pair_fraction, nonstellar_fraction, rows_per_file,
             no_correlations, null_token, plots, overwrite):
    from xpmet.simulate import simulate as run

    names = tuple(s.strip() for s in surveys.split(",") if s.strip())
    path = run(outdir, n_stars=n_stars, seed=seed, surveys=names, faint_ratio=faint_ratio,
               pair_fraction=pair_fraction, nonstellar_fraction=nonstellar_fraction, rows_per_file=rows_per_file, correlations=not no_correlations,
               null_token=null_token, plots=plots, overwrite=overwrite)
    click.echo(f"wrote SIMULATED sky to {path}")
