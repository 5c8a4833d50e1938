"""Brightness-free XP inputs and the scalers fitted on the training split.

Raw XP coefficients scale with the star's apparent flux, which no label can predict (the
original research's emulator failed on exactly this). Every model therefore sees coefficients
divided by the G-band flux (e-/s), and their errors divided the same way. The per-feature
scalers and the noise model are fitted on the TRAINING split only and saved with the model,
so a model never re-fits anything on the data it is applied to.

The noise model describes how a raw coefficient error grows as a star gets fainter,
``sigma_i^2(F) = a_i + b_i F`` (background + photon noise, per coefficient, F = G flux), and
is what the augmentation uses to degrade bright training spectra to fainter magnitudes.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xpmet.xp_coefficients import N_COEF

#: Gaia DR3 G-band zero point (Vega mag): flux = 10**(-0.4 (G - ZP)) e-/s (Riello et al. 2021).
G_ZERO_POINT = 25.6874
LABELS = ("teff", "logg", "feh", "alpha_fe")
#: Emulator inputs: the labels plus the G-band extinction.
EMULATOR_PARAMS = LABELS + ("ag",)
#: Export columns the estimator's inputs beyond the coefficients are made from: Gaia's, and 2MASS
#: and WISE magnitudes with their errors when the user loaded them (NaN where not)
IR_BANDS = ("tmass_j", "tmass_h", "tmass_ks", "w1", "w2")
GAIA_SOURCES = ("parallax", "parallax_error", "phot_bp_mean_mag", "phot_rp_mean_mag")
EXTRA_SOURCES = GAIA_SOURCES + IR_BANDS + tuple(b + "_err" for b in IR_BANDS)
#: The extra inputs. All are distance-free (parallax times 10^(0.2 (G - 15)), colours), so a training
#: star degraded to a fainter G keeps their values and only their errors grow (see extra_columns).
GAIA_EXTRAS = ("parallax_g15", "bp_g", "g_rp")
IR_EXTRAS = ("g_j", "j_h", "h_ks", "ks_w1", "w1_w2")
#: (mag / relative flux error)^2
_MAG2 = (2.5 / np.log(10)) ** 2


def g_flux(phot_g_mean_flux, phot_g_mean_mag) -> np.ndarray:
    """G flux in e-/s; where the flux is missing or non-positive, derived from the magnitude."""
    f = np.asarray(phot_g_mean_flux, dtype=np.float64).copy()
    g = np.asarray(phot_g_mean_mag, dtype=np.float64)
    bad = ~(f > 0)
    f[bad] = 10 ** (-0.4 * (g[bad] - G_ZERO_POINT))
    return f


def normalise_xp(bp, bp_err, rp, rp_err, flux):
    """(n,55) x4 raw coefficients/errors + (n,) G flux -> x (n,110), e (n,110), missing (n,2) bool.

    A missing band (all-NaN row) keeps NaN in x and e and sets its ``missing`` column.
    """
    flux = np.asarray(flux, dtype=np.float64)[:, None]
    x = np.concatenate([np.asarray(bp, np.float64), np.asarray(rp, np.float64)], axis=1) / flux
    e = np.concatenate([np.asarray(bp_err, np.float64), np.asarray(rp_err, np.float64)], axis=1) / flux
    bad = ~np.isfinite(x) | ~np.isfinite(e) | ~(e > 0)
    missing = np.stack([bad[:, :N_COEF].all(1), bad[:, N_COEF:].all(1)], axis=1)
    x[bad] = np.nan
    e[bad] = np.nan
    return x, e, missing


@dataclass
class Scaler:
    """Per-column standardisation that ignores NaN: z = (v - mean) / std."""
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, v: np.ndarray) -> "Scaler":
        v = np.asarray(v, dtype=np.float64)
        mean = np.nanmedian(v, axis=0)
        # robust scale (1.4826 MAD) so a few outliers do not squash everyone else
        std = 1.4826 * np.nanmedian(np.abs(v - mean), axis=0)
        fallback = np.nanstd(v, axis=0)
        std = np.where(std > 0, std, np.where(fallback > 0, fallback, 1.0))
        return cls(np.nan_to_num(mean), np.nan_to_num(std, nan=1.0))

    def transform(self, v):
        return (v - self.mean) / self.std

    def inverse(self, z):
        return z * self.std + self.mean

    def to_dict(self):
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d):
        return cls(np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64))


@dataclass
class NoiseModel:
    """Raw coefficient variance vs G flux, ``a + b F`` per coefficient, plus the target G distribution.

    ``target_g`` holds G magnitudes of the stars models will be applied to (all XP sources of
    the database, labelled or not); augmentation draws fainter magnitudes from it.
    """
    a: np.ndarray
    b: np.ndarray
    target_g: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def fit(cls, raw_err: np.ndarray, flux: np.ndarray, target_g=None) -> "NoiseModel":
        """Weighted least squares of err^2 on [1, F], per coefficient (vectorised; NaN rows ignored)."""
        s2 = np.asarray(raw_err, np.float64) ** 2
        f = np.asarray(flux, np.float64)[:, None] * np.ones_like(s2)
        ok = np.isfinite(s2) & np.isfinite(f) & (s2 > 0)
        a = np.nanmedian(np.where(ok, s2, np.nan), axis=0) * 0.1
        b = np.zeros(s2.shape[1])
        for _ in range(3):  # iteratively reweighted: relative (not absolute) residuals matter
            model = np.maximum(a + b * f, 1e-30)
            w = np.where(ok, 1.0 / model ** 2, 0.0)
            sw, swf, swff = w.sum(0), (w * f).sum(0), (w * f * f).sum(0)
            sws = (w * np.where(ok, s2, 0)).sum(0)
            swfs = (w * f * np.where(ok, s2, 0)).sum(0)
            det = sw * swff - swf ** 2
            det = np.where(det > 0, det, np.inf)
            a = np.maximum((swff * sws - swf * swfs) / det, 0.0)
            b = np.maximum((sw * swfs - swf * sws) / det, 0.0)
        tg = np.asarray(target_g if target_g is not None else [], np.float64)
        return cls(np.nan_to_num(a), np.nan_to_num(b), tg[np.isfinite(tg)])

    def raw_sigma(self, flux: np.ndarray) -> np.ndarray:
        """Model raw coefficient errors (n,110) at G fluxes (n,)."""
        return np.sqrt(self.a + self.b * np.asarray(flux, np.float64)[:, None])

    def to_dict(self):
        # the target distribution is stored as quantiles: small and enough to sample from
        q = np.quantile(self.target_g, np.linspace(0, 1, 201)).tolist() if self.target_g.size else []
        return {"a": self.a.tolist(), "b": self.b.tolist(), "target_g_quantiles": q}

    @classmethod
    def from_dict(cls, d):
        return cls(np.asarray(d["a"]), np.asarray(d["b"]), np.asarray(d.get("target_g_quantiles", [])))


@dataclass
class ExtraInputs:
    """The estimator's inputs beyond the coefficients: names, scaler, and the parallax error model
    ``parallax_error^2 = c0 + c1 10^(0.4 (G - 15))`` (mas^2) fitted on the training split."""
    names: tuple
    scaler: Scaler
    plx_err: tuple = (0.0, 0.0)

    def to_dict(self):
        return {"names": list(self.names), "scaler": self.scaler.to_dict(), "plx_err": list(self.plx_err)}

    @classmethod
    def from_dict(cls, d):
        return cls(tuple(d["names"]), Scaler.from_dict(d["scaler"]), tuple(d["plx_err"]))


@dataclass
class Normaliser:
    """Everything a model needs to turn a batch into network inputs, fitted on the training split."""
    x: Scaler             # flux-normalised coefficients (110)
    labels: Scaler        # teff, logg, feh, alpha_fe
    params: Scaler        # emulator inputs (labels + ag)
    noise: NoiseModel
    label_lo: np.ndarray  # training range (3rd smallest, 3rd largest value) for out-of-range flags
    label_hi: np.ndarray
    g_range: tuple = (0.0, 99.0)
    ag_fill: float = 0.0  # extinction used where ag_gspphot is missing
    alpha_relation: list = field(default_factory=list)  # [feh grid, alpha median] to impute [a/Fe]
    extra: ExtraInputs | None = None  # estimator inputs beyond the coefficients (None: coefficients only)

    def save(self, path: Path):
        d = {"x": self.x.to_dict(), "labels": self.labels.to_dict(), "params": self.params.to_dict(),
             "noise": self.noise.to_dict(), "label_lo": self.label_lo.tolist(),
             "label_hi": self.label_hi.tolist(), "g_range": list(self.g_range), "ag_fill": self.ag_fill,
             "alpha_relation": self.alpha_relation, "labels_order": list(LABELS),
             "params_order": list(EMULATOR_PARAMS)}
        if self.extra is not None:
            d["extra"] = self.extra.to_dict()
        Path(path).write_text(json.dumps(d))

    @classmethod
    def load(cls, path: Path) -> "Normaliser":
        d = json.loads(Path(path).read_text())
        return cls(Scaler.from_dict(d["x"]), Scaler.from_dict(d["labels"]), Scaler.from_dict(d["params"]),
                   NoiseModel.from_dict(d["noise"]), np.asarray(d["label_lo"]), np.asarray(d["label_hi"]),
                   tuple(d["g_range"]), d["ag_fill"], d["alpha_relation"],
                   ExtraInputs.from_dict(d["extra"]) if d.get("extra") else None)

    def impute_alpha(self, feh, alpha):
        """[alpha/Fe] where missing, from the training stars' median relation with [Fe/H]."""
        alpha = np.asarray(alpha, np.float64).copy()
        miss = ~np.isfinite(alpha)
        if miss.any() and self.alpha_relation:
            grid, med = self.alpha_relation
            alpha[miss] = np.interp(np.nan_to_num(np.asarray(feh)[miss]), grid, med)
        return np.where(np.isfinite(alpha), alpha, 0.0)


def fit_normaliser(x, labels, ag, g_mag, raw_err, flux, target_g=None) -> Normaliser:
    """Fit every scaler on training-split arrays: x (n,110), labels (n,4) NaN=unknown, ag (n,)."""
    feh, alpha = labels[:, 2], labels[:, 3]
    grid = np.linspace(-3.0, 0.6, 19)
    med = []
    ok = np.isfinite(feh) & np.isfinite(alpha)
    for lo, hi in zip(grid - 0.2, grid + 0.2):
        sel = ok & (feh >= lo) & (feh < hi)
        med.append(float(np.median(alpha[sel])) if sel.sum() >= 5 else np.nan)
    med = np.asarray(med)
    relation = []
    if np.isfinite(med).sum() >= 2:
        good = np.isfinite(med)
        relation = [grid[good].tolist(), med[good].tolist()]
    ag = np.asarray(ag, np.float64)
    ag_fill = float(np.nanmedian(ag)) if np.isfinite(ag).any() else 0.0
    lo, hi = label_range(labels)
    norm = Normaliser(Scaler.fit(x), Scaler.fit(labels), None, NoiseModel.fit(raw_err, flux, target_g), lo, hi,
                      (float(np.nanmin(g_mag)), float(np.nanmax(g_mag))), ag_fill, relation)
    params = emulator_params(norm, labels, ag)
    norm.params = Scaler.fit(params)
    return norm


def label_range(labels, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Per label the k-th smallest and k-th largest training value: the range the labels really span.

    Not percentiles: a percentile cut would call the rarest genuine stars (the most metal-poor)
    out of range; the k-th extreme only discards a stray label or two.
    """
    labels = np.asarray(labels, np.float64)
    lo, hi = np.full(labels.shape[1], np.nan), np.full(labels.shape[1], np.nan)
    for j in range(labels.shape[1]):
        v = np.sort(labels[np.isfinite(labels[:, j]), j])
        if v.size:
            i = min(k, v.size) - 1
            lo[j], hi[j] = v[i], v[-1 - i]
    return lo, hi


def emulator_params(norm: Normaliser, labels, ag) -> np.ndarray:
    """(n,5) emulator inputs: labels with [alpha/Fe] imputed where missing, ag filled where missing."""
    labels = np.asarray(labels, np.float64)
    alpha = norm.impute_alpha(labels[:, 2], labels[:, 3])
    ag = np.asarray(ag, np.float64)
    ag = np.where(np.isfinite(ag), ag, norm.ag_fill)
    return np.column_stack([labels[:, :3], alpha, ag])


def _extra_physical(arr, names, noise: NoiseModel, plx_err):
    """(values, errors, ka, kb) (n,k) of the extra inputs in physical units; NaN = missing.

    A star degraded to G flux F has error^2 = ka / F^2 + kb / F (the coefficients' form): the parallax
    error follows the fitted parallax_error(G); a Gaia colour's, the XP noise model of its band's
    first coefficient (the same photons); 2MASS/WISE errors, background-limited (error x flux fixed).
    """
    n = len(arr)
    cols = dict(zip(arr.extra_names, arr.extra.T)) if arr.extra is not None else {}
    nan = np.full(n, np.nan)
    get = lambda k: np.asarray(cols.get(k, nan), np.float64)  # noqa: E731
    g, u = np.asarray(arr.g_mag, np.float64), 1.0 / np.asarray(arr.flux, np.float64)
    val, err, ka, kb = (np.full((n, len(names)), np.nan) for _ in range(4))
    k15 = 10 ** (0.4 * (G_ZERO_POINT - 15.0))  # 10^(0.4 (G - 15)) = k15 / F
    for j, name in enumerate(names):
        if name == "parallax_g15":
            s = 10 ** (0.2 * (g - 15.0))
            val[:, j], err[:, j] = get("parallax") * s, get("parallax_error") * s
            c0, c1 = plx_err
            model = c0 + c1 * s ** 2
            r2 = np.where(model > 0, get("parallax_error") ** 2 / np.where(model > 0, model, 1), np.nan)
            ka[:, j], kb[:, j] = r2 * c1 * k15 ** 2, r2 * c0 * k15
        elif name in ("bp_g", "g_rp"):
            band = 0 if name == "bp_g" else N_COEF
            mag = get("phot_bp_mean_mag" if name == "bp_g" else "phot_rp_mean_mag")
            val[:, j] = mag - g if name == "bp_g" else g - mag
            x0 = np.asarray(arr.x[:, band], np.float64)
            x0 = np.where(x0 > 0, x0, np.nan)  # no usable band flux: no error model, so missing
            ka[:, j], kb[:, j] = _MAG2 * noise.a[band] / x0 ** 2, _MAG2 * noise.b[band] / x0 ** 2
            err[:, j] = np.sqrt(ka[:, j] * u ** 2 + kb[:, j] * u)
        else:
            a, b = {"g_j": ("", "tmass_j"), "j_h": ("tmass_j", "tmass_h"), "h_ks": ("tmass_h", "tmass_ks"),
                    "ks_w1": ("tmass_ks", "w1"), "w1_w2": ("w1", "w2")}[name]
            ma, mb = (g if not a else get(a)), get(b)
            ea = 0.0 if not a else get(a + "_err")
            val[:, j], err[:, j] = ma - mb, np.sqrt(ea ** 2 + get(b + "_err") ** 2)
            ka[:, j], kb[:, j] = (err[:, j] / u) ** 2, 0.0
    bad = ~np.isfinite(val) | ~(err > 0) | ~np.isfinite(ka) | ~np.isfinite(kb)
    val[bad], err[bad], ka[bad], kb[bad] = np.nan, np.nan, 0.0, 0.0
    return val, err, ka, kb


def fit_extra(arr, noise: NoiseModel) -> ExtraInputs:
    """Extra inputs for a training split: Gaia's always, 2MASS/WISE colours when the file has them."""
    names = GAIA_EXTRAS
    cols = set(arr.extra_names)
    if arr.extra is not None and all(b in cols for b in IR_BANDS):
        have = np.isfinite(arr.extra[:, [arr.extra_names.index(b) for b in IR_BANDS]]).any(0)
        names = names + tuple(c for c, ok in zip(IR_EXTRAS, np.r_[have[0], have[:-1] & have[1:]]) if ok)
    plx = dict(zip(arr.extra_names, arr.extra.T)).get("parallax_error") if arr.extra is not None else None
    c = (0.0, 0.0)
    if plx is not None and np.isfinite(plx).sum() >= 10:
        ok = np.isfinite(plx) & np.isfinite(arr.g_mag)
        q, s2 = 10 ** (0.4 * (arr.g_mag[ok] - 15.0)), plx[ok] ** 2
        A = np.column_stack([np.ones_like(q), q])
        w = 1 / s2  # relative residuals: the bright stars' floor matters as much as the faint slope
        c = np.linalg.lstsq(A * w[:, None], s2 * w, rcond=None)[0]
        c = (float(max(c[0], 0.0)), float(max(c[1], 1e-12)))
    val = _extra_physical(arr, names, noise, c)[0]
    with warnings.catch_warnings():  # an input nobody has (a file without parallaxes): scale 1, always missing
        warnings.simplefilter("ignore", RuntimeWarning)
        return ExtraInputs(tuple(names), Scaler.fit(val), c)


def network_columns(norm: Normaliser, arr):
    """The estimator's noisy input columns, standardised: coefficients, then the extra inputs.

    Returns x (n,V) (NaN = missing), e (n,V) errors, and ka, kb (n,V): a star degraded to G flux F
    has standardised error^2 = ka / F^2 + kb / F (from the noise model, times the star's own error
    factor); 0 where missing, so never degraded. The one place training and prediction build them.
    """
    std = norm.x.std
    x, e = norm.x.transform(arr.x), arr.e / std
    model = norm.noise.raw_sigma(arr.flux)
    raw = arr.e * arr.flux[:, None]
    ratio2 = np.where(np.isfinite(raw) & (model > 0), raw / np.where(model > 0, model, 1), 1.0) ** 2
    ka, kb = ratio2 * norm.noise.a / std ** 2, ratio2 * norm.noise.b / std ** 2
    if norm.extra is not None:
        v, ve, vka, vkb = _extra_physical(arr, norm.extra.names, norm.noise, norm.extra.plx_err)
        s = norm.extra.scaler
        x, e = np.hstack([x, s.transform(v)]), np.hstack([e, ve / s.std])
        ka, kb = np.hstack([ka, vka / s.std ** 2]), np.hstack([kb, vkb / s.std ** 2])
    return x, e, ka, kb
