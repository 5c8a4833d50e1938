"""Validation of a trained model: metrics overall and in bins of G and [Fe/H], and the plots.

Metrics per label (residual r = prediction - reference):
  bias = median(r); scatter = 1.4826 MAD(r) (robust); outlier_frac = |r| > OUTLIER[label];
  calibration = robust spread of r / sqrt(sigma_pred^2 + sigma_ref^2) (1 = calibrated);
  for [Fe/H] < -2: recall = found / true, purity = true among found.
With ``truth`` (the ``truth.fits`` of ``xpmet simulate``), the same metrics on the stars that no
survey observed (their spectra read from the database), against the simulator's true labels.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from xpmet.errors import XpmetError
from xpmet.ml import dataset as ds
from xpmet.ml.normalise import LABELS
from xpmet.xp_coefficients import N_COEF

OUTLIER = {"teff": 500.0, "logg": 0.5, "feh": 0.5, "alpha_fe": 0.25}
G_BINS = (-np.inf, 13.0, 15.0, 16.0, 17.0, 17.5, np.inf)
FEH_BINS = (-np.inf, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, np.inf)
VMP = -2.0
MIN_BIN = 5


def robust_scatter(r) -> float:
    r = np.asarray(r, np.float64)
    r = r[np.isfinite(r)]
    return float(1.4826 * np.median(np.abs(r - np.median(r)))) if r.size else float("nan")


def label_metrics(pred, err, ref, ref_err, label) -> dict:
    ok = np.isfinite(pred) & np.isfinite(ref)
    if ok.sum() == 0:
        return {"n": 0}
    r = pred[ok] - ref[ok]
    tot = np.sqrt(np.nan_to_num(err[ok]) ** 2 + np.nan_to_num(ref_err[ok]) ** 2)
    z = r / np.where(tot > 0, tot, np.nan)
    return {"n": int(ok.sum()), "bias": float(np.median(r)), "scatter": robust_scatter(r),
            "outlier_frac": float(np.mean(np.abs(r) > OUTLIER[label])), "calibration": robust_scatter(z),
            "median_err": float(np.nanmedian(err[ok]))}


def vmp_metrics(pred_feh, ref_feh) -> dict:
    ok = np.isfinite(pred_feh) & np.isfinite(ref_feh)
    p, t = pred_feh[ok] < VMP, ref_feh[ok] < VMP
    both = int((p & t).sum())
    return {"n_true": int(t.sum()), "n_pred": int(p.sum()),
            "recall": both / t.sum() if t.sum() else float("nan"),
            "purity": both / p.sum() if p.sum() else float("nan")}


def _binned(pred, ref, ref_err, key, edges):
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (key >= lo) & (key < hi)
        if sel.sum() < MIN_BIN:
            continue
        m = {k: label_metrics(pred[k][sel], pred[k + "_err"][sel], ref[:, j][sel], ref_err[:, j][sel], k)
             for j, k in enumerate(LABELS)}
        out.append({"lo": float(lo), "hi": float(hi), "n": int(sel.sum()), **m})
    return out


def compute_metrics(pred: dict, ref, ref_err, g_mag) -> dict:
    """Metrics dict for predictions against reference labels (n,4) with errors (n,4)."""
    ref_err = np.where(np.isfinite(ref_err), ref_err, 0.0)
    out = {"n": int(len(g_mag)),
           "overall": {k: label_metrics(pred[k], pred[k + "_err"], ref[:, j], ref_err[:, j], k)
                       for j, k in enumerate(LABELS)},
           "vmp": vmp_metrics(pred["feh"], ref[:, 2]),
           "recommended_frac": float(np.mean(pred["recommended"])) if len(g_mag) else float("nan"),
           "by_g": _binned(pred, ref, ref_err, np.asarray(g_mag), G_BINS),
           "by_feh": _binned(pred, ref, ref_err, ref[:, 2], FEH_BINS)}
    if "fit_stat" in pred and np.isfinite(pred["fit_stat"]).any():
        out["median_fit_stat"] = float(np.nanmedian(pred["fit_stat"]))
    return out


def metrics_for(predictor, arr: ds.XPArrays) -> dict:
    pred = predictor.predict_arrays(arr)
    return compute_metrics(pred, arr.labels, arr.label_err, arr.g_mag)


def read_truth(path):
    """truth.fits -> dict of numpy columns (source_id, labels, has_xp, surveys)."""
    from astropy.table import Table
    try:
        t = Table.read(path)
    except Exception as e:  # astropy raises many types for unreadable files
        raise XpmetError(f"{path}: cannot read the truth table ({e}); pass the truth.fits `xpmet simulate` wrote.")
    missing = [c for c in ("source_id", *LABELS, "has_xp", "surveys") if c not in t.colnames]
    if missing:
        raise XpmetError(f"{path}: truth table lacks column(s) {', '.join(missing)}")
    surveys = np.char.strip(np.asarray(t["surveys"]).astype(str))
    return {"source_id": np.asarray(t["source_id"], np.int64),
            "labels": np.column_stack([np.asarray(t[k], np.float64) for k in LABELS]),
            "has_xp": np.asarray(t["has_xp"], bool), "surveyed": surveys != ""}


def truth_labels(truth: dict, source_ids) -> np.ndarray:
    """True labels (n,4) aligned with source_ids (NaN where absent)."""
    order = np.argsort(truth["source_id"])
    sid = truth["source_id"][order]
    pos = np.clip(np.searchsorted(sid, source_ids), 0, len(sid) - 1)
    found = sid[pos] == source_ids
    out = np.full((len(source_ids), 4), np.nan)
    out[found] = truth["labels"][order][pos[found]]
    return out


def feh_bin_name(lo, hi) -> str:
    return f"< {hi}" if lo == -np.inf else f"> {lo}" if hi == np.inf else f"{lo}..{hi}"


def homogenised_vs_truth(truth: dict, url: str | None = None) -> dict:
    """The homogenised [Fe/H] of the label views (xpmet.labels) against a simulation's truth, per
    true-[Fe/H] bin (FEH_BINS): n, median offset, robust scatter and z-spread over feh_err (which
    carries the calibration's systematic)."""
    from xpmet.db.engine import raw_connect
    with raw_connect(url) as c:
        rows = c.execute("SELECT source_id, feh, feh_err FROM xpmet.labels WHERE feh IS NOT NULL").fetchall()
    sid = np.array([r[0] for r in rows], np.int64)
    feh, err = (np.array([r[k] for r in rows], np.float64) for k in (1, 2))
    true = truth_labels(truth, sid)[:, 2]
    out = {}
    for lo, hi in zip(FEH_BINS[:-1], FEH_BINS[1:]):
        m = (true >= lo) & (true < hi)
        lm = label_metrics(feh[m], err[m], true[m], np.zeros(int(m.sum())), "feh")
        out[feh_bin_name(lo, hi)] = {"n": lm["n"], "offset": lm.get("bias", float("nan")),
                                     "scatter": lm.get("scatter", float("nan")),
                                     "z_spread": lm.get("calibration", float("nan"))}
    return out


def never_surveyed(truth: dict, max_stars: int | None = 20000, seed: int = 0, url: str | None = None) -> ds.XPArrays:
    """The never-surveyed XP stars of a simulation, read from the database, with the true labels."""
    sel = np.flatnonzero(truth["has_xp"] & ~truth["surveyed"])
    if max_stars and len(sel) > max_stars:
        sel = np.sort(np.random.default_rng(seed).choice(sel, max_stars, replace=False))
    arr = ds.read_db(truth["source_id"][sel], url=url)
    arr.labels = truth_labels(truth, arr.source_id)
    arr.label_err = np.zeros_like(arr.labels)
    return arr


def evaluate(model_dir, data_path, truth_path=None, out_dir=None, emulator_dir=None,
             max_truth: int | None = 20000, plots: bool = True, url: str | None = None) -> dict:
    """Metrics (and plots) of a model on the test split of DATA.h5 and, with truth, on never-surveyed stars.

    Writes ``evaluation.json`` and plots into ``out_dir`` (default: MODEL_DIR/evaluation).
    """
    from xpmet.ml.inference import load_predictor
    pred = load_predictor(model_dir)
    out_dir = Path(out_dir or Path(model_dir) / "evaluation")
    out_dir.mkdir(parents=True, exist_ok=True)
    test = ds.read(data_path, "test", correlations=True)  # when present: exact photometric noise
    p_test = pred.predict_arrays(test)
    result = {"model": str(model_dir), "model_id": pred.model_id, "kind": pred.kind, "data": str(data_path),
              "test": compute_metrics(p_test, test.labels, test.label_err, test.g_mag)}
    sets = {"test": (test, p_test, test.labels)}
    if truth_path:
        truth = read_truth(truth_path)
        tl = truth_labels(truth, test.source_id)
        result["test_vs_truth"] = compute_metrics(p_test, tl, np.zeros_like(tl), test.g_mag)
        ns = never_surveyed(truth, max_truth, url=url)
        p_ns = pred.predict_arrays(ns)
        result["never_surveyed"] = compute_metrics(p_ns, ns.labels, ns.label_err, ns.g_mag)
        result["homogenised_labels_vs_truth"] = homogenised_vs_truth(truth, url=url)
        sets["never_surveyed"] = (ns, p_ns, ns.labels)
    emu = pred if pred.kind == "emulator" else (load_predictor(emulator_dir) if emulator_dir else None)
    if emu is not None:
        result["photometry"] = photometry_check(emu, test)
    if plots:
        from xpmet.ml import plots as pl
        for name, (arr, p, ref) in sets.items():
            pl.one_to_one(p, ref, out_dir / f"{name}_one_to_one.png")
            pl.residuals(p, ref, arr.g_mag, out_dir / f"{name}_residuals.png")
            pl.kiel(p, out_dir / f"{name}_kiel.png")
            pl.calibration(p, ref, arr.label_err, out_dir / f"{name}_calibration.png")
        hist = Path(model_dir) / "history.json"
        if hist.exists():
            pl.learning_curves(json.loads(hist.read_text()), out_dir / "learning_curves.png")
        if "photometry" in result:
            pl.photometry(result["photometry"].pop("_arrays"), out_dir / "photometry.png")
        result["plots"] = sorted(str(p) for p in out_dir.glob("*.png"))
    result.get("photometry", {}).pop("_arrays", None)
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def photometry_check(emulator, arr: ds.XPArrays, max_stars: int = 2000) -> dict:
    """GaiaXPy photometry of observed vs emulator-predicted coefficients at the stars' labels.

    Stars need teff, logg, feh labels; the prediction is rescaled by the star's G flux.
    Returns per band: robust width of (predicted - observed) magnitudes and the median
    photometric noise of the observed magnitude, and their ratio.
    """
    from xpmet.ml.photometry import BANDS, synthetic_photometry
    ok = np.isfinite(arr.labels[:, :3]).all(1) & ~arr.missing.any(1)
    arr = arr.subset(np.flatnonzero(ok)[:max_stars])
    if len(arr) < MIN_BIN:
        return {"n": len(arr)}
    model = emulator.emulate(arr.labels, arr.ag) * arr.flux[:, None]
    bp, bpe, rp, rpe = arr.raw()
    corr = arr.corr
    kw = {} if corr is None else {"bp_corr": corr[:, 0], "rp_corr": corr[:, 1]}
    if arr.std_dev is not None:
        kw |= {"bp_sd": arr.std_dev[:, 0], "rp_sd": arr.std_dev[:, 1]}
    obs = synthetic_photometry(bp, bpe, rp, rpe, **kw)
    emu = synthetic_photometry(model[:, :N_COEF], bpe, model[:, N_COEF:], rpe, **kw)
    out = {"n": len(arr), "_arrays": {"obs": obs, "emu": emu, "feh": arr.labels[:, 2]}}
    for b in BANDS:
        r = emu[b] - obs[b]
        width, noise = robust_scatter(r), float(np.nanmedian(obs[b + "_err"]))
        out[b] = {"residual_width": width, "z_width": robust_scatter(r / obs[b + "_err"]),
                  "median_bias": float(np.nanmedian(r)), "photometric_noise": noise,
                  "ratio": width / noise if noise > 0 else float("nan"),
                  "std_observed": float(np.nanstd(obs[b])), "std_emulated": float(np.nanstd(emu[b]))}
    return out
