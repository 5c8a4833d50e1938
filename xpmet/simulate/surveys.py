"""Spectroscopic surveys as noisy, biased, partial views of the true labels, in their native layouts.

Each survey (see ``SURVEYS``) has: a selection on sky and magnitude (plus a random completeness),
a zero-point offset per label and linear trends (``observed = true + offset + sum slope*(x - pivot)``,
x a true label), for some a non-linear compression of the metal-poor scale (LAMOST: true [Fe/H]
below -1.5 pulled toward -1.5, ``+ (factor - 1) * (true - below)``), noise growing with magnitude
(``sigma = sigma0 * (1 + 10^(0.4 (G - g_ref)))``) with reported errors honest to +-20 % or, for some
surveys (GALAH), too small by ``error_understatement``,
failures (-9999 sentinels and a flag), outliers (a wide error in [Fe/H] and Teff) and duplicate
observations (repeat rows). Positions are written at the survey's epoch: the true 2016.0 position
propagated with the true proper motion (APOGEE J2000.0, GALAH 2015.5, LAMOST the observation date,
GBS J2000.0). GBS is the reference scale: no offsets, small noise, the brightest well-behaved stars
and a fifth of them metal-poor ([Fe/H] < -1.5, as the real GBS v3 has), and most other surveys
observe them (as real surveys target benchmarks for calibration).
Everything injected is written to survey_truth.json so tests can recover it.

Optional surveys (``surveys=("all",)``): Gaia-ESO DR5 (FITS, faint, close to the reference scale),
RAVE DR6 (CSV, DR2 ids, MADERA [M/H] with a -0.15 dex offset and a metallicity trend), SEGUE SSPP
(FITS, faint high-latitude stars, no Gaia id), Gaia DR3 GSP-Spec (FITS, *_error plus *_lower/*_upper,
the known logg and [M/H] biases) and Pristine (CSV, photometric [Fe/H] only).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from xpmet.simulate import galaxy

if TYPE_CHECKING:  # annotations only: the writers import astropy when they run
    from astropy.table import Table

SENTINEL = -9999.0
LABELS = ("teff", "logg", "feh", "alpha_fe")


@dataclass
class SurveySpec:
    name: str
    g_range: tuple[float, float]
    dec_range: tuple[float, float]
    completeness: float
    offset: dict[str, float]
    trend: dict[str, dict[str, float]]  # label -> {"x": true label, "slope": .., "pivot": ..}
    sigma0: dict[str, float]
    g_ref: float
    failure_rate: float = 0.03
    outlier_rate: float = 0.01
    duplicate_rate: float = 0.05
    teff_range: tuple[float, float] = (3500.0, 7500.0)
    benchmark_recall: float = 0.7
    epoch: str = ""
    extra: dict = field(default_factory=dict)
    #: label -> {"below": b, "factor": f}: true values below b observed at b + f * (true - b)
    compress: dict = field(default_factory=dict)
    #: reported errors = true noise / error_understatement (x U(0.8, 1.2))
    error_understatement: float = 1.0


SURVEYS = {
    "apogee": SurveySpec(
        "apogee", (7.0, 15.5), (-90, 90), 0.30,
        offset={"teff": 25.0, "logg": 0.04, "feh": -0.04, "alpha_fe": 0.02},
        trend={"feh": {"x": "teff", "slope": -3.0e-5, "pivot": 4800.0}},
        sigma0={"teff": 30.0, "logg": 0.04, "feh": 0.02, "alpha_fe": 0.02}, g_ref=15.0,
        epoch="J2000.0", teff_range=(3500.0, 7000.0)),
    "galah": SurveySpec(
        "galah", (9.0, 14.5), (-90, 10), 0.35,
        offset={"teff": -30.0, "logg": -0.05, "feh": 0.05, "alpha_fe": -0.02},
        trend={"logg": {"x": "teff", "slope": 4.0e-5, "pivot": 5500.0}},
        sigma0={"teff": 60.0, "logg": 0.12, "feh": 0.06, "alpha_fe": 0.04}, g_ref=14.0,
        epoch="2015.5", error_understatement=1.5),
    "lamost": SurveySpec(
        "lamost", (9.0, 17.5), (-10, 90), 0.35,
        offset={"teff": 50.0, "logg": -0.08, "feh": -0.10, "alpha_fe": 0.0},
        trend={"feh": {"x": "feh", "slope": -0.08, "pivot": -0.3}},
        sigma0={"teff": 80.0, "logg": 0.12, "feh": 0.08, "alpha_fe": 0.0}, g_ref=16.0,
        failure_rate=0.05, outlier_rate=0.02, duplicate_rate=0.08, epoch="observation date",
        teff_range=(3800.0, 8000.0), compress={"feh": {"below": -1.5, "factor": 0.7}}),
    "gbs": SurveySpec(
        "gbs", (0.0, 13.0), (-90, 90), 1.0,
        offset={"teff": 0.0, "logg": 0.0, "feh": 0.0, "alpha_fe": 0.0}, trend={},
        sigma0={"teff": 45.0, "logg": 0.04, "feh": 0.05, "alpha_fe": 0.0}, g_ref=30.0,
        failure_rate=0.0, outlier_rate=0.0, duplicate_rate=0.0, epoch="J2000.0", teff_range=(4000.0, 7000.0)),
}
# Optional surveys (``--surveys all`` or by name), written through one generic layout each.
SURVEYS.update({
    "gaia_eso": SurveySpec(
        "gaia_eso", (9.0, 17.5), (-90, 20), 0.04,
        offset={"teff": 10.0, "logg": 0.02, "feh": 0.01, "alpha_fe": 0.0}, trend={},
        sigma0={"teff": 50.0, "logg": 0.08, "feh": 0.05, "alpha_fe": 0.04}, g_ref=16.5,
        failure_rate=0.05, epoch="J2000.0", benchmark_recall=0.9),
    "rave": SurveySpec(
        "rave", (8.5, 12.5), (-90, 5), 0.4,
        offset={"teff": 40.0, "logg": 0.10, "feh": -0.15, "alpha_fe": 0.0},
        trend={"feh": {"x": "feh", "slope": 0.1, "pivot": -0.5}},
        sigma0={"teff": 100.0, "logg": 0.2, "feh": 0.1, "alpha_fe": 0.1}, g_ref=12.0,
        failure_rate=0.04, outlier_rate=0.02, duplicate_rate=0.06, epoch="J2000.0"),
    "segue": SurveySpec(
        "segue", (14.0, 19.5), (-10, 90), 0.08,
        offset={"teff": -40.0, "logg": 0.1, "feh": -0.05, "alpha_fe": 0.03},
        trend={"feh": {"x": "feh", "slope": 0.08, "pivot": -1.0}},
        sigma0={"teff": 100.0, "logg": 0.2, "feh": 0.12, "alpha_fe": 0.08}, g_ref=18.0,
        failure_rate=0.05, outlier_rate=0.02, duplicate_rate=0.03, epoch="J2000.0",
        teff_range=(4000.0, 8000.0), benchmark_recall=0.0),
    "gspspec": SurveySpec(
        "gspspec", (6.0, 13.0), (-90, 90), 0.6,
        offset={"teff": 0.0, "logg": -0.3, "feh": -0.1, "alpha_fe": 0.05},
        trend={"logg": {"x": "logg", "slope": 0.1, "pivot": 2.5}},
        sigma0={"teff": 80.0, "logg": 0.15, "feh": 0.08, "alpha_fe": 0.05}, g_ref=12.0,
        failure_rate=0.03, duplicate_rate=0.0, epoch="2016.0", teff_range=(3500.0, 7000.0), benchmark_recall=0.8),
    "pristine": SurveySpec(
        "pristine", (12.0, 18.5), (0, 90), 0.25,
        offset={"teff": 0.0, "logg": 0.0, "feh": 0.1, "alpha_fe": 0.0},
        trend={"feh": {"x": "feh", "slope": -0.1, "pivot": -2.0}},
        sigma0={"teff": 0.0, "logg": 0.0, "feh": 0.15, "alpha_fe": 0.0}, g_ref=18.0,
        failure_rate=0.0, outlier_rate=0.03, duplicate_rate=0.0, epoch="2016.0",
        teff_range=(4000.0, 7000.0), benchmark_recall=0.0),
})
DEFAULT_SURVEYS = ("apogee", "galah", "lamost", "gbs")
ALL_SURVEYS = DEFAULT_SURVEYS + ("gaia_eso", "rave", "segue", "gspspec", "pristine")


@dataclass
class Observation:
    """Rows of one survey: index into the truth arrays plus observed labels and errors."""

    star: np.ndarray
    values: dict[str, np.ndarray]
    errors: dict[str, np.ndarray]
    failed: np.ndarray
    outlier: np.ndarray
    duplicate: np.ndarray  # True for a repeat row (not the primary observation)
    snr: np.ndarray


def benchmark_stars(truth: dict[str, np.ndarray], n_xp: int) -> np.ndarray:
    """Indices of the benchmark (GBS) stars: the brightest FGK XP stars with a well-behaved astrometry,
    a fifth of them the brightest metal-poor ones ([Fe/H] < -1.5)."""
    spec = SURVEYS["gbs"]
    ok = (truth["has_xp"] & _stellar(truth) & (truth["teff"] > spec.teff_range[0])
          & (truth["teff"] < spec.teff_range[1]) & (truth["phot_g_mean_mag"] < spec.g_range[1]))
    n = int(np.clip(0.01 * n_xp, 20, 200))
    by_g = lambda m: np.flatnonzero(m)[np.argsort(truth["phot_g_mean_mag"][m])]  # noqa: E731
    poor = by_g(ok & (truth["feh"] < -1.5))[:n // 5]
    rest = by_g(ok & ~np.isin(np.arange(ok.size), poor))[:n - poor.size]
    return np.sort(np.concatenate([poor, rest]))


def _stellar(truth) -> np.ndarray:
    """Stars only: no survey observes the quasars and white dwarfs (they exist to test the flags)."""
    cls = truth.get("source_class")
    return np.ones(truth["teff"].size, bool) if cls is None else np.asarray(cls).astype(str) == "star"


def select(rng, spec: SurveySpec, truth: dict[str, np.ndarray], benchmarks: np.ndarray) -> np.ndarray:
    if spec.name == "gbs":
        return benchmarks
    g, dec, teff = truth["phot_g_mean_mag"], truth["dec"], truth["teff"]
    ok = ((g >= spec.g_range[0]) & (g <= spec.g_range[1]) & (dec >= spec.dec_range[0]) & (dec <= spec.dec_range[1])
          & (teff >= spec.teff_range[0]) & (teff <= spec.teff_range[1]) & _stellar(truth))
    chosen = ok & (rng.random(g.size) < spec.completeness)
    bench = np.zeros(g.size, bool)
    bench[benchmarks] = rng.random(benchmarks.size) < spec.benchmark_recall
    return np.flatnonzero(chosen | bench)


def systematic(spec: SurveySpec, label: str, truth_rows: dict[str, np.ndarray]) -> np.ndarray:
    """offset + trend of one label for the given true labels (what survey_truth.json describes)."""
    out = np.full(truth_rows["teff"].size, spec.offset.get(label, 0.0))
    t = spec.trend.get(label)
    if t:
        out = out + t["slope"] * (truth_rows[t["x"]] - t["pivot"])
    c = spec.compress.get(label)
    if c:
        x = truth_rows[label]
        out = out + np.where(x < c["below"], (c["factor"] - 1) * (x - c["below"]), 0.0)
    return out


def observe(rng, spec: SurveySpec, truth: dict[str, np.ndarray], stars: np.ndarray) -> Observation:
    n_dup = int(round(spec.duplicate_rate * stars.size))
    dup_src = rng.choice(stars, n_dup, replace=False) if n_dup else np.empty(0, np.int64)
    star = np.concatenate([stars, dup_src])
    duplicate = np.concatenate([np.zeros(stars.size, bool), np.ones(n_dup, bool)])
    rows = {k: truth[k][star] for k in LABELS}
    g = truth["phot_g_mean_mag"][star]
    growth = 1.0 + 10 ** (0.4 * (g - spec.g_ref))
    values, errors = {}, {}
    for label in LABELS:
        sigma = spec.sigma0[label] * growth
        values[label] = rows[label] + systematic(spec, label, rows) + sigma * rng.normal(size=star.size)
        # Reported errors are honest to +-20 %, as pipelines roughly are (or too small, where set).
        errors[label] = sigma / spec.error_understatement * rng.uniform(0.8, 1.2, star.size)
    outlier = rng.random(star.size) < spec.outlier_rate
    values["feh"][outlier] += rng.choice([-1, 1], outlier.sum()) * rng.uniform(0.4, 1.0, outlier.sum())
    values["teff"][outlier] += rng.normal(0, 400, outlier.sum())
    failed = rng.random(star.size) < spec.failure_rate
    snr = 300.0 / growth * rng.uniform(0.7, 1.3, star.size)
    return Observation(star, values, errors, failed, outlier, duplicate, snr)


def positions_at(truth, star, epoch_year):
    return galaxy.propagate(truth["ra"][star], truth["dec"][star], truth["pmra"][star], truth["pmdec"][star],
                            epoch_year - 2016.0)


def _sentinel(v, failed):
    return np.where(failed, SENTINEL, v)


def _sexagesimal_ids(ra, dec, prefix: str, ra_decimals: int, dec_decimals: int, sep: str = "",
                     dot: bool = False) -> np.ndarray:
    """2MASS-style designations 'hhmmss.ss+ddmmss.s' built with vectorised string operations."""
    h = ra / 15.0
    hh = np.floor(h)
    mm = np.floor((h - hh) * 60)
    ss = ((h - hh) * 60 - mm) * 60
    sign = np.where(dec < 0, "-", "+")
    d = np.abs(dec)
    dd = np.floor(d)
    dm = np.floor((d - dd) * 60)
    ds = ((d - dd) * 60 - dm) * 60
    scale_r, scale_d = 10**ra_decimals, 10**dec_decimals
    ss_i = np.minimum(np.floor(ss * scale_r), 60 * scale_r - 1).astype(np.int64)
    ds_i = np.minimum(np.floor(ds * scale_d), 60 * scale_d - 1).astype(np.int64)
    ch = np.char

    def z(v, w):
        return ch.zfill(v.astype(np.int64).astype(str), w)

    def seconds(v, decimals):
        s = z(v, 2 + decimals)
        if not dot:  # 2MASS style: digits only
            return s
        return ch.add(ch.add(s.astype("U2"), "."), _tail(s, 2))

    ra_s = ch.add(ch.add(z(hh, 2), z(mm, 2)), seconds(ss_i, ra_decimals))
    dec_s = ch.add(ch.add(z(dd, 2), z(dm, 2)), seconds(ds_i, dec_decimals))
    return ch.add(ch.add(ch.add(prefix, ra_s), ch.add(sep, sign)), dec_s)


def _tail(strings: np.ndarray, start: int) -> np.ndarray:
    """strings[start:] for every element, vectorised through a fixed-width character view."""
    width = strings.dtype.itemsize // 4
    chars = strings.astype(f"U{width}").view("U1").reshape(strings.size, width)[:, start:]
    return np.ascontiguousarray(chars).view(f"U{width - start}").reshape(strings.size)


def apogee_table(rng, obs: Observation, truth) -> "Table":
    from astropy.table import Table

    s = obs.star
    ra, dec = positions_at(truth, s, 2000.0)
    has_id = rng.random(s.size) < 0.97
    telescope = np.where(obs.duplicate, np.where(truth["dec"][s] < -20, "lco25m", "apo1m"),
                         np.where(truth["dec"][s] < -20, "lco25m", "apo25m"))
    field_no = (truth["l"][s] // 10).astype(int)
    fieldname = np.char.add(np.char.add("F", field_no.astype(str)), np.char.add("_", np.where(truth["b"][s] < 0, "S", "N")))
    star_bad = np.int64(1) << 23
    aspcapflag = np.where(obs.failed, star_bad, 0) | np.where(obs.outlier, np.int64(1) << 19, 0)  # bit 19: CHI2_WARN
    v, e, f = obs.values, obs.errors, obs.failed
    m_h = v["feh"] + 0.3 * v["alpha_fe"]  # [M/H] counts alpha elements; [alpha/M] = [alpha/Fe] + [Fe/H] - [M/H]
    return Table({
        "APOGEE_ID": _sexagesimal_ids(ra, dec, "2M", 2, 1),
        "TELESCOPE": telescope,
        "FIELD": fieldname,
        "RA": ra, "DEC": dec,
        "GAIAEDR3_SOURCE_ID": np.where(has_id, truth["source_id"][s], 0).astype(np.int64),
        "SNR": obs.snr.astype(np.float32),
        "TEFF": _sentinel(v["teff"], f).astype(np.float32), "TEFF_ERR": _sentinel(e["teff"], f).astype(np.float32),
        "LOGG": _sentinel(v["logg"], f).astype(np.float32), "LOGG_ERR": _sentinel(e["logg"], f).astype(np.float32),
        "M_H": _sentinel(m_h, f).astype(np.float32), "M_H_ERR": _sentinel(e["feh"], f).astype(np.float32),
        "ALPHA_M": _sentinel(v["alpha_fe"] + v["feh"] - m_h, f).astype(np.float32),
        "ALPHA_M_ERR": _sentinel(e["alpha_fe"], f).astype(np.float32),
        "FE_H": _sentinel(v["feh"], f).astype(np.float32), "FE_H_ERR": _sentinel(e["feh"], f).astype(np.float32),
        "ASPCAPFLAG": aspcapflag.astype(np.int64),
        "STARFLAG": np.where(obs.snr < 30, np.int64(1) << 4, 0).astype(np.int64),  # bit 4: LOW_SNR
        "EXTRATARG": np.where(obs.duplicate, 16, 0).astype(np.int64),
    })


def galah_table(rng, obs: Observation, truth) -> "Table":
    from astropy.table import Table

    s = obs.star
    ra, dec = positions_at(truth, s, 2015.5)
    date = rng.integers(131116, 190225, s.size)
    sobject = date.astype(np.int64) * 10**9 + rng.integers(1, 10**9, s.size)
    v, e, f = obs.values, obs.errors, obs.failed
    flag_sp = np.where(f, 1 << 6, 0) | np.where(obs.outlier, 1 << 4, 0)
    flag_fe = np.where(f, 3, np.where(obs.outlier, 1, 0))
    # DR2 ids differ from DR3 ones for a small fraction of sources (Gaia's DR2->DR3 neighbourhood table).
    dr2 = np.where(rng.random(s.size) < 0.02, truth["source_id"][s] + 1, truth["source_id"][s])
    return Table({
        "sobject_id": sobject, "star_id": _sexagesimal_ids(ra, dec, "", 2, 1, ""),
        "ra_dr2": ra, "dec_dr2": dec,
        "dr2_source_id": dr2.astype(np.int64), "dr3_source_id": truth["source_id"][s].astype(np.int64),
        "teff": np.where(f, np.nan, v["teff"]).astype(np.float32), "e_teff": e["teff"],
        "logg": np.where(f, np.nan, v["logg"]).astype(np.float32), "e_logg": e["logg"],
        "fe_h": np.where(f, np.nan, v["feh"]).astype(np.float32), "e_fe_h": e["feh"],
        "alpha_fe": np.where(f, np.nan, v["alpha_fe"]), "e_alpha_fe": e["alpha_fe"],
        "flag_sp": flag_sp.astype(np.int64), "flag_fe_h": flag_fe.astype(np.int64),
        "flag_alpha_fe": flag_fe.astype(np.int64),
        "snr_c2_iraf": obs.snr.astype(np.float32),
        "flag_repeat": obs.duplicate.astype(np.int64),
    })


def lamost_table(rng, obs: Observation, truth) -> "Table":
    from astropy.table import Table
    from astropy.time import Time

    s = obs.star
    jd = rng.uniform(Time("2011-10-24").jd, Time("2019-06-01").jd, s.size)
    t = Time(jd, format="jd")
    ra, dec = positions_at(truth, s, t.jyear)
    obsdate = np.asarray(t.isot).astype("U10")  # YYYY-MM-DD
    v, e, f = obs.values, obs.errors, obs.failed
    obsid = (100_000_000 + np.cumsum(rng.integers(1, 5000, s.size)))[rng.permutation(s.size)]  # unique
    return Table({
        "obsid": obsid.astype(np.int64), "designation": _sexagesimal_ids(ra, dec, "J", 2, 1, dot=True),
        # Rounded as the LAMOST catalogue prints them.
        "obsdate": obsdate, "ra": np.round(ra, 6), "dec": np.round(dec, 6),
        "teff": np.round(_sentinel(v["teff"], f), 2), "teff_err": np.round(_sentinel(e["teff"], f), 2),
        "logg": np.round(_sentinel(v["logg"], f), 3), "logg_err": np.round(_sentinel(e["logg"], f), 3),
        "feh": np.round(_sentinel(v["feh"], f), 3), "feh_err": np.round(_sentinel(e["feh"], f), 3),
        "snrg": np.round(obs.snr, 2), "rv": np.round(truth["radial_velocity"][s] + rng.normal(0, 5, s.size), 2),
    })


def gbs_table(rng, obs: Observation, truth) -> "Table":
    from astropy.table import Table

    s = obs.star
    ra, dec = positions_at(truth, s, 2000.0)
    hip = rng.choice(np.arange(1000, 120000), s.size, replace=False)
    hd = rng.choice(np.arange(100, 240000), s.size, replace=False)
    v, e = obs.values, obs.errors
    return Table({
        "hip": np.char.add("HIP", hip.astype(str)), "hip_int": hip.astype(np.int64),
        "hd": np.char.add("HD", hd.astype(str)),
        "ra_j2000": ra, "dec_j2000": dec,
        "teff": np.round(v["teff"]).astype(np.int16), "e_teff": np.round(e["teff"]).astype(np.int16),
        "logg": v["logg"].astype(np.float32), "e_logg": e["logg"].astype(np.float32),
        "fe_h": v["feh"].astype(np.float32), "e_fe_h": e["feh"].astype(np.float32),
        "source_id_gaiadr3": truth["source_id"][s].astype(np.int64),
    })


def _generic(name: str):
    """Table builder for a survey whose layout is data: see ``_LAYOUTS``."""
    lay = _LAYOUTS[name]

    def build(rng, obs: Observation, truth) -> "Table":
        from astropy.table import Table

        s = obs.star
        ra, dec = positions_at(truth, s, lay["epoch"])
        f = obs.failed
        cols = {}

        def out_type(v):  # FITS catalogues store float32; CSV catalogues print a few decimals
            return np.round(v, 4) if lay.get("csv") else v.astype(np.float32)

        if lay.get("object_id"):
            cols[lay["object_id"][0]] = lay["object_id"][1](rng, obs, ra, dec)
        cols[lay["ra"]], cols[lay["dec"]] = ra, dec
        if lay.get("gaia"):
            ids = truth["source_id"][s].astype(np.int64)
            if lay.get("gaia_dr2"):  # a few DR2 ids differ from the DR3 ones
                ids = np.where(rng.random(s.size) < 0.02, ids + 1, ids)
            cols[lay["gaia"]] = ids
        for label, (vcol, ecol) in lay["labels"].items():
            bad = f if lay["failure"] == "sentinel" else np.zeros(s.size, bool)
            v = obs.values[label]
            e = obs.errors[label]
            if lay["failure"] == "nan":
                v = np.where(f, np.nan, v)
            cols[vcol] = out_type(_sentinel(v, bad))
            if ecol:
                cols[ecol] = out_type(_sentinel(e, bad))
            for suffix, sign in lay.get("bounds", {}).items():  # GSP-Spec ships lower/upper confidence values
                cols[vcol.replace("_gspspec", "_gspspec_" + suffix)] = np.where(f, np.nan, v + sign * e).astype(np.float32)
        if lay.get("snr"):
            cols[lay["snr"]] = out_type(obs.snr)
        return Table(cols)

    return build


def _ges_cname(rng, obs, ra, dec):
    return _sexagesimal_ids(ra, dec, "", 2, 1, "")


def _rave_id(rng, obs, ra, dec):
    n = obs.star.size
    night = (rng.integers(2003, 2013, n) * 10000 + rng.integers(1, 13, n) * 100 + rng.integers(1, 29, n)).astype(str)
    fibre = np.char.zfill(rng.integers(1, 150, obs.star.size).astype(str), 3)
    return np.char.add(np.char.add(night, "_"), np.char.add(np.char.add(_tail(_sexagesimal_ids(ra, dec, "", 0, 0), 0).astype("U4"), "m50_"), fibre))


def _segue_id(rng, obs, ra, dec):
    return (np.int64(3) * 10**17 + np.cumsum(rng.integers(1, 10**9, obs.star.size))).astype(str)


_LAYOUTS = {
    "gaia_eso": {"epoch": 2000.0, "ra": "RA", "dec": "DEC", "gaia": "GAIAEDR3_SOURCE_ID", "failure": "nan",
                 "object_id": ("CNAME", _ges_cname), "snr": "SNR",
                 "labels": {"teff": ("TEFF", "E_TEFF"), "logg": ("LOGG", "E_LOGG"), "feh": ("FEH", "E_FEH"),
                            "alpha_fe": ("ALPHA_FE", "E_ALPHA_FE")}},
    "rave": {"epoch": 2000.0, "csv": True, "ra": "RA_INPUT", "dec": "DEC_INPUT", "gaia": "gaiadr2_source_id", "gaia_dr2": True,
             "failure": "sentinel", "object_id": ("RAVE_OBS_ID", _rave_id), "snr": "snr_med_sparv",
             "labels": {"teff": ("teff_cal_madera", "teff_error_madera"),
                        "logg": ("logg_cal_madera", "logg_error_madera"),
                        "feh": ("m_h_cal_madera", "m_h_error_madera")}},
    "segue": {"epoch": 2000.0, "ra": "RA", "dec": "DEC", "failure": "sentinel",
              "object_id": ("SPECOBJID", _segue_id), "snr": "SNR",
              "labels": {"teff": ("TEFFADOP", "TEFFADOPUNC"), "logg": ("LOGGADOP", "LOGGADOPUNC"),
                         "feh": ("FEHADOP", "FEHADOPUNC"), "alpha_fe": ("AFE", "AFEUNC")}},
    "gspspec": {"epoch": 2016.0, "ra": "ra", "dec": "dec", "gaia": "source_id", "failure": "nan",
                "bounds": {"lower": -1.0, "upper": 1.0},
                "labels": {"teff": ("teff_gspspec", "teff_gspspec_error"), "logg": ("logg_gspspec", "logg_gspspec_error"),
                           "feh": ("mh_gspspec", "mh_gspspec_error"), "alpha_fe": ("alphafe_gspspec", "alphafe_gspspec_error")}},
    "pristine": {"epoch": 2016.0, "csv": True, "ra": "RA", "dec": "Dec", "gaia": "source_id", "failure": "nan",
                 "labels": {"feh": ("FeH", "FeH_err")}},
}


WRITERS = {
    "apogee": ("apogee_dr17_allstar.fits", apogee_table),
    "galah": ("galah_dr3.fits", galah_table),
    "lamost": ("lamost_dr8_lrs.csv", lamost_table),
    "gbs": ("gbs_v3.fits", gbs_table),
    "gaia_eso": ("gaia_eso_dr5.fits", _generic("gaia_eso")),
    "rave": ("rave_dr6.csv", _generic("rave")),
    "segue": ("segue_sspp.fits", _generic("segue")),
    "gspspec": ("gspspec.fits", _generic("gspspec")),
    "pristine": ("pristine.csv", _generic("pristine")),
}


def survey_files(outdir, names=DEFAULT_SURVEYS) -> dict:
    """Where ``simulate(outdir, ...)`` writes each survey: name -> OUTDIR/surveys/<native file name>."""
    from pathlib import Path
    return {n: Path(outdir) / "surveys" / WRITERS[n][0] for n in names}


def describe(spec: SurveySpec, obs: Observation, filename: str) -> dict:
    return {
        "file": f"surveys/{filename}",
        "offset": spec.offset,
        "trend": spec.trend,
        "trend_form": "observed = true + offset[label] + slope * (true[x] - pivot)",
        "compress": spec.compress,
        "compress_form": "observed += (factor - 1) * (true[label] - below) where true[label] < below",
        "noise": {"sigma0": spec.sigma0, "g_ref": spec.g_ref, "error_understatement": spec.error_understatement,
                  "form": "sigma = sigma0 * (1 + 10**(0.4 * (G - g_ref))); "
                          "reported errors = sigma / error_understatement within +-20 %"},
        "selection": {"g_range": spec.g_range, "dec_range": spec.dec_range, "teff_range": spec.teff_range,
                      "completeness": spec.completeness, "benchmark_recall": spec.benchmark_recall},
        "failure_rate": spec.failure_rate, "outlier_rate": spec.outlier_rate,
        "duplicate_rate": spec.duplicate_rate, "position_epoch": spec.epoch,
        "sentinel": SENTINEL if spec.name in ("apogee", "lamost", "rave", "segue") else None,
        "n_rows": int(obs.star.size), "n_stars": int(np.unique(obs.star).size),
        "n_failed": int(obs.failed.sum()), "n_outliers": int(obs.outlier.sum()),
    }
