"""``simulate()``: a mock Gaia sky with XP spectra and spectroscopic surveys, in the real file formats.

THE DATA WRITTEN HERE ARE SIMULATED. Every output directory carries SIMULATED.txt saying so.

Pipeline (each stage in its own module):
  galaxy   populations, stellar parameters, sky positions and apparent G targets (all stars at once)
  sky      ICRS positions, close pairs, Gaia-like source_ids, HEALPix level-8 file ranges
  physics  per file: distance/extinction solve, kinematics, SED (sed) -> XP coefficients (xp_model)
  xp_noise coefficient errors, correlations (templates) and correlated noise, fitted on real DR3 data
  gaia_source / xp_file / writers   the two Gaia bulk file types, streamed file by file
  surveys  APOGEE, GALAH, LAMOST, GBS views in native layouts; truth.fits; survey_truth.json
  photometry  2MASS PSC and AllWISE files with the Gaia DR3 best-neighbour files that join them
  plots    Kiel diagram, [Fe/H] histogram, sky map
Memory is bounded by the largest file (``rows_per_file`` sources), not by n_stars.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from xpmet.errors import XpmetError

__all__ = ["simulate", "survey_files", "DEFAULT_SURVEYS"]

from xpmet.simulate.surveys import DEFAULT_SURVEYS, survey_files  # noqa: E402

_OUTPUTS = ("SIMULATED.txt", "gaia_source", "xp_continuous", "surveys", "photometry", "truth.fits",
            "survey_truth.json", "plots")


def simulate(outdir, n_stars: int = 2000, seed: int = 1, surveys=DEFAULT_SURVEYS, *,
             faint_ratio: float = 1.0, pair_fraction: float = 0.03, missing_band_fraction: float = 0.005,
             nonstellar_fraction: float = 0.017,
             rows_per_file: int = 20000, batch_size: int = 2000, n_templates: int = 64, correlations: bool = True,
             null_token: str = "", gzip_level: int = 2, plots: bool = False, overwrite: bool = False,
             progress: bool = True) -> Path:
    """Write a simulated sky to ``outdir`` and return its path.

    n_stars: Gaia sources WITH XP spectra (G <= 17.65); ``faint_ratio * n_stars`` fainter sources
    without XP come on top; ``nonstellar_fraction`` of the XP sources are quasars and white dwarfs
    (truth.fits ``source_class``; no survey observes them). Deterministic for (seed, all arguments).
    See the module docstrings of galaxy, nonstellar, sed, xp_model, xp_noise, gaia_source and surveys
    for every modelling choice.
    """
    from xpmet.progress import progress_bar

    from xpmet.simulate import gaia_source, galaxy, nonstellar, sky, surveys as sv, xp_file, xp_noise
    from xpmet.simulate.writers import GzipEcsvWriter

    outdir = Path(outdir)
    if tuple(surveys) == ("all",):
        surveys = sv.ALL_SURVEYS
    if n_stars < 1:
        raise XpmetError("--n-stars must be at least 1")
    if not 0 <= nonstellar_fraction < 1:
        raise XpmetError("--nonstellar-fraction must be in [0, 1)")
    unknown = [s for s in surveys if s not in sv.SURVEYS]
    if unknown:
        raise XpmetError(f"unknown survey(s) {unknown}; choose from {sorted(sv.SURVEYS)}")
    _prepare(outdir, overwrite)

    root = np.random.SeedSequence(seed)
    # a seventh child for the non-stellar sources: the first six (and so every star) stay as they were
    s_stars, s_layout, s_files, s_templates, s_surveys, s_missing, s_nonstellar = root.spawn(7)
    n_faint = int(round(faint_ratio * n_stars))
    stars = galaxy.draw_stars(np.random.default_rng(s_stars), n_stars, n_faint)
    nonstellar.assign(np.random.default_rng(s_nonstellar), stars, nonstellar_fraction)
    ra, dec, source_id, pair_of = sky.layout(np.random.default_rng(s_layout), stars, pair_fraction)
    n = len(stars)
    rng_m = np.random.default_rng(s_missing)
    # Missing bands: BP fails more often for faint red sources in real DR3; here a flat small rate.
    missing_bp = stars.has_xp & (rng_m.random(n) < missing_band_fraction * 0.6)
    missing_rp = stars.has_xp & ~missing_bp & (rng_m.random(n) < missing_band_fraction * 0.4)
    templates = xp_noise.make_templates(np.random.default_rng(s_templates), n_templates, uncorrelated=not correlations)
    corr_text = xp_file.CorrelationText(templates.flat)

    truth = {k: np.full(n, np.nan) for k in ("pmra", "pmdec", "parallax", "distance_pc", "a0", "ag", "ebpminrp",
                                              "radial_velocity", "phot_g_mean_mag", "phot_bp_mean_mag",
                                              "phot_rp_mean_mag")}
    level8 = source_id // sky.ID_SHIFT // sky.LEVEL12_PER_LEVEL8
    ranges = sky.file_ranges(source_id, rows_per_file)
    file_seeds = s_files.spawn(len(ranges))
    (outdir / "gaia_source").mkdir(parents=True)
    (outdir / "xp_continuous").mkdir(parents=True)
    bar = progress_bar(total=n, unit="src", desc="simulate", enabled=progress)
    for (a, b), fseed in zip(ranges, file_seeds):
        in_file = np.flatnonzero((level8 >= a) & (level8 <= b))
        if in_file.size == 0:
            continue
        in_file = in_file[np.argsort(source_id[in_file])]
        rng = np.random.default_rng(fseed)
        stem = sky.file_stem(a, b)
        with GzipEcsvWriter(outdir / "gaia_source" / f"GaiaSource_{stem}.csv.gz", gaia_source.COLUMNS,
                            level=gzip_level) as gw, \
                GzipEcsvWriter(outdir / "xp_continuous" / f"XpContinuousMeanSpectrum_{stem}.csv.gz",
                               xp_file.COLUMNS, level=gzip_level) as xw:
            for start in range(0, in_file.size, batch_size):
                idx = in_file[start:start + batch_size]
                _write_batch(rng, idx, stars, ra, dec, source_id, pair_of, missing_bp, missing_rp, templates,
                             corr_text, truth, gw, xw, null_token)
                bar.update(idx.size)
    bar.close()

    truth_cols = _truth_columns(stars, ra, dec, source_id, truth)
    survey_rng = np.random.default_rng(s_surveys)
    benchmarks = sv.benchmark_stars(truth_cols, n_stars)
    observed_by = np.zeros(n, np.int32)  # bit k set: the k-th requested survey observed the star
    survey_truth = {}
    (outdir / "surveys").mkdir()
    for bit, name in enumerate(surveys):
        spec = sv.SURVEYS[name]
        chosen = sv.select(survey_rng, spec, truth_cols, benchmarks)
        obs = sv.observe(survey_rng, spec, truth_cols, chosen)
        filename, make_table = sv.WRITERS[name]
        table = make_table(survey_rng, obs, truth_cols)
        _write_table(table, outdir / "surveys" / filename)
        survey_truth[name] = sv.describe(spec, obs, filename)
        observed_by[obs.star] |= 1 << bit
    truth_cols["surveys"] = _survey_lists(observed_by, list(surveys))
    from xpmet.simulate.photometry import write_photometry  # an eighth seed child: the first seven stay as they were
    write_photometry(np.random.default_rng(root.spawn(1)[0]), truth_cols, outdir / "photometry")
    _write_truth(truth_cols, outdir / "truth.fits")
    (outdir / "survey_truth.json").write_text(json.dumps(survey_truth, indent=2, default=_json_default) + "\n")
    params = dict(n_stars=n_stars, seed=seed, surveys=list(surveys), faint_ratio=faint_ratio,
                  pair_fraction=pair_fraction, missing_band_fraction=missing_band_fraction,
                  nonstellar_fraction=nonstellar_fraction,
                  rows_per_file=rows_per_file, n_templates=n_templates, correlations=correlations,
                  null_token=null_token)
    _write_notice(outdir, params, n, int(stars.has_xp.sum()), len(ranges))
    if plots:
        from xpmet.simulate import plots as pl
        pl.write_all(truth_cols, outdir / "plots")
    return outdir


def _write_batch(rng, idx, stars, ra, dec, source_id, pair_of, missing_bp, missing_rp, templates, corr_text,
                 truth, gw, xw, null_token):
    from xpmet.simulate import galaxy, gaia_source, physics, xp_file, xp_noise

    batch = stars.take(idx)
    ph = physics.compute(rng, batch)
    _, _, pmra, pmdec = galaxy.galactic_to_icrs(batch.l, batch.b, ph.pm_l, ph.pm_b)
    parallax = 1000.0 / ph.distance_pc
    paired = (pair_of[idx] >= 0) | np.isin(idx, pair_of)
    cols = gaia_source.observe(
        rng, source_id=source_id[idx], ra=ra[idx], dec=dec[idx], parallax=parallax, pmra=pmra, pmdec=pmdec,
        mags=ph.mags, teff=batch.teff, logg=batch.logg, feh=batch.feh, ag=ph.ag, ebpminrp=ph.ebpminrp,
        radial_velocity=ph.radial_velocity, has_xp=batch.has_xp, l=batch.l, b=batch.b, paired=paired)
    gw.write(cols, null_token)
    for k, v in (("pmra", pmra), ("pmdec", pmdec), ("parallax", parallax), ("distance_pc", ph.distance_pc),
                 ("a0", ph.a0), ("ag", ph.ag), ("ebpminrp", ph.ebpminrp), ("radial_velocity", ph.radial_velocity),
                 ("phot_g_mean_mag", ph.mags[:, 0]), ("phot_bp_mean_mag", ph.mags[:, 1]),
                 ("phot_rp_mean_mag", ph.mags[:, 2])):
        truth[k][idx] = v
    xp = batch.has_xp
    if not xp.any():
        return
    g = ph.mags[xp, 0]
    obs = {"bp": xp_noise.observe(rng, ph.bp_true[xp], g, "bp", templates),
           "rp": xp_noise.observe(rng, ph.rp_true[xp], g, "rp", templates)}
    missing = {"bp": missing_bp[idx][xp], "rp": missing_rp[idx][xp]}
    xw.write(xp_file.values(source_id[idx][xp], obs, missing, corr_text), "")


def _truth_columns(stars, ra, dec, source_id, truth) -> dict[str, np.ndarray]:
    from xpmet.simulate.galaxy import POPULATIONS
    from xpmet.simulate.nonstellar import CLASSES, QUASAR

    population = np.where(stars.kind == QUASAR, "extragalactic", POPULATIONS[stars.population])
    return {
        "source_id": source_id, "ra": ra, "dec": dec, "l": stars.l, "b": stars.b,
        "pmra": truth["pmra"], "pmdec": truth["pmdec"], "parallax": truth["parallax"],
        "distance_pc": truth["distance_pc"], "radial_velocity": truth["radial_velocity"],
        "teff": stars.teff, "logg": stars.logg, "feh": stars.feh, "alpha_fe": stars.alpha_fe,
        "mass": stars.mass, "radius": stars.radius,
        "ebv": truth["a0"] / 3.1, "a0": truth["a0"], "ag": truth["ag"],
        "phot_g_mean_mag": truth["phot_g_mean_mag"], "phot_bp_mean_mag": truth["phot_bp_mean_mag"],
        "phot_rp_mean_mag": truth["phot_rp_mean_mag"],
        "has_xp": stars.has_xp, "population": population,
        "source_class": CLASSES[stars.kind], "redshift": stars.redshift,
    }


_TRUTH_UNITS = {"ra": "deg", "dec": "deg", "l": "deg", "b": "deg", "pmra": "mas / yr", "pmdec": "mas / yr",
                "parallax": "mas", "distance_pc": "pc", "radial_velocity": "km / s", "teff": "K",
                "mass": "solMass", "radius": "solRad",
                "ebv": "mag", "a0": "mag", "ag": "mag", "phot_g_mean_mag": "mag", "phot_bp_mean_mag": "mag",
                "phot_rp_mean_mag": "mag"}


def _survey_lists(bits: np.ndarray, names: list[str]) -> np.ndarray:
    """Comma-separated survey names per star from a bitmask, formatted once per distinct combination."""
    combos, inverse = np.unique(bits, return_inverse=True)
    text = np.array([",".join(nm for k, nm in enumerate(names) if c >> k & 1) for c in combos], dtype="S")
    return text[inverse]


def _write_truth(cols: dict[str, np.ndarray], path: Path, chunk: int = 200_000) -> None:
    """truth.fits in source_id order, streamed in row chunks: astropy builds the header from one row
    and the rows are written as FITS stores them (big-endian, logicals as T/F), so memory stays at
    one chunk instead of several copies of a multi-GB table."""
    from astropy.io import fits

    order = np.argsort(cols["source_id"])
    cols = {k: (v.astype("S") if v.dtype.kind == "U" else v) for k, v in cols.items()}
    mem = np.dtype([(k, v.dtype if v.dtype.kind in "bS" else np.dtype(np.int64) if v.dtype.kind == "i"
                     else np.dtype(np.float64)) for k, v in cols.items()])
    first = np.empty(1, dtype=mem)
    for k, v in cols.items():
        first[k] = v[order[:1]]
    hdu = fits.BinTableHDU(first, name="TRUTH")
    for i, name in enumerate(mem.names, start=1):
        if name in _TRUTH_UNITS:
            hdu.header[f"TUNIT{i}"] = _TRUTH_UNITS[name]
    hdu.header["SIMULAT"] = (True, "SIMULATED DATA, not real observations")
    hdu.header["EPOCH"] = (2016.0, "epoch of ra, dec")
    hdu.header["NAXIS2"] = order.size
    disk = np.dtype([(k, "S1" if mem[k].kind == "b" else mem[k].newbyteorder(">") if mem[k].kind != "S" else mem[k])
                     for k in mem.names])
    if hdu.header["NAXIS1"] != disk.itemsize:
        raise RuntimeError(f"truth row layout mismatch: FITS {hdu.header['NAXIS1']} bytes, ours {disk.itemsize}")
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        fh.write(fits.PrimaryHDU().header.tostring().encode("ascii"))
        fh.write(hdu.header.tostring().encode("ascii"))
        for start in range(0, order.size, chunk):
            rows = order[start:start + chunk]
            block = np.empty(rows.size, dtype=disk)
            for k, v in cols.items():
                block[k] = np.where(v[rows], b"T", b"F") if v.dtype.kind == "b" else v[rows]
            fh.write(block.tobytes())
        fh.write(b"\0" * (-(order.size * disk.itemsize) % 2880))
    tmp.replace(path)


def _write_table(table, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    if path.suffix == ".csv":
        # pyarrow's C++ CSV writer: astropy's ascii writer formats row by row in Python.
        import pyarrow as pa
        import pyarrow.csv as pacsv

        arrow = pa.table({name: np.asarray(table[name]) for name in table.colnames})
        with open(tmp, "wb") as fh:  # plain header line and unquoted values, as the surveys' CSVs
            fh.write((",".join(table.colnames) + "\n").encode())
            pacsv.write_csv(arrow, fh, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    else:
        table.meta.setdefault("SIMULAT", (True, "SIMULATED DATA, not real observations"))
        table.write(tmp, format="fits", overwrite=True)
    tmp.replace(path)


def _write_notice(outdir: Path, params: dict, n_sources: int, n_xp: int, n_files: int) -> None:
    from xpmet import __version__

    text = (
        "THESE DATA ARE SIMULATED. They are NOT Gaia, APOGEE, GALAH, LAMOST or Gaia FGK benchmark data.\n"
        "They imitate the real file formats so that xpmet (and its users) can test loading, crossmatching,\n"
        "label homogenisation, training and prediction against a sky whose truth is known.\n\n"
        f"generator: xpmet {__version__} xpmet.simulate.simulate\n"
        f"sources: {n_sources} ({n_xp} with XP spectra) in {n_files} HEALPix level-8 file ranges\n"
        + "".join(f"{k}: {v}\n" for k, v in params.items())
        + "truth: truth.fits (one row per Gaia source), survey_truth.json (injected survey offsets/trends/noise)\n"
        + "modelling choices: `xpmet simulate --help` and the docstrings of xpmet/simulate/*.py\n"
    )
    (outdir / "SIMULATED.txt").write_text(text)


def _prepare(outdir: Path, overwrite: bool) -> None:
    if outdir.exists() and any(outdir.iterdir()):
        ours = [p for p in outdir.iterdir() if p.name in _OUTPUTS]
        others = [p.name for p in outdir.iterdir() if p.name not in _OUTPUTS]
        if others or not overwrite:
            raise XpmetError(f"{outdir} is not empty ({', '.join(sorted(p.name for p in outdir.iterdir())[:5])}"
                             f"); choose a new directory" + ("" if others else " or pass --overwrite"))
        for p in ours:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    outdir.mkdir(parents=True, exist_ok=True)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o))
