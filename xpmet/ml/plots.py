"""Validation plots (matplotlib, written as PNG files); one function per figure."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.special import erf  # noqa: E402

from xpmet.ml.normalise import LABELS  # noqa: E402

TITLES = {"teff": "Teff [K]", "logg": "log g", "feh": "[Fe/H]", "alpha_fe": "[α/Fe]"}


def _subplots(*args, **kw):
    # GaiaXPy switches text.usetex on globally at import; LaTeX is usually absent
    matplotlib.rcParams["text.usetex"] = False
    return plt.subplots(*args, **kw)


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def one_to_one(pred, ref, path):
    fig, axes = _subplots(1, 4, figsize=(16, 4))
    for j, (k, ax) in enumerate(zip(LABELS, axes)):
        ok = np.isfinite(ref[:, j]) & np.isfinite(pred[k])
        ax.scatter(ref[ok, j], pred[k][ok], s=3, alpha=0.5)
        if ok.any():
            lo, hi = np.percentile(np.r_[ref[ok, j], pred[k][ok]], [0.5, 99.5])
            ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel(f"reference {TITLES[k]}")
        ax.set_ylabel(f"predicted {TITLES[k]}")
    _save(fig, path)


def residuals(pred, ref, g_mag, path):
    fig, axes = _subplots(2, 2, figsize=(11, 7))
    r = pred["feh"] - ref[:, 2]
    for ax, key, name in ((axes[0, 0], g_mag, "G [mag]"), (axes[0, 1], ref[:, 2], "reference [Fe/H]")):
        ax.scatter(key, r, s=3, alpha=0.4)
        ax.axhline(0, color="k", lw=1)
        ax.set_xlabel(name)
        ax.set_ylabel("Δ[Fe/H] (pred − ref)")
    r2 = pred["teff"] - ref[:, 0]
    axes[1, 0].scatter(g_mag, r2, s=3, alpha=0.4)
    axes[1, 0].set_xlabel("G [mag]")
    axes[1, 0].set_ylabel("ΔTeff [K]")
    axes[1, 1].scatter(g_mag, pred["feh_err"], s=3, alpha=0.4)
    axes[1, 1].set_xlabel("G [mag]")
    axes[1, 1].set_ylabel("σ[Fe/H] predicted")
    _save(fig, path)


def kiel(pred, path):
    fig, ax = _subplots(figsize=(6, 5))
    sc = ax.scatter(pred["teff"], pred["logg"], c=pred["feh"], s=4, cmap="viridis", vmin=-2.5, vmax=0.5)
    ax.invert_xaxis()
    ax.invert_yaxis()
    ax.set_xlabel("Teff [K]")
    ax.set_ylabel("log g")
    fig.colorbar(sc, label="[Fe/H]")
    _save(fig, path)


def calibration(pred, ref, ref_err, path):
    """Fraction of |z| below k against the Gaussian expectation, per label."""
    fig, ax = _subplots(figsize=(5.5, 5))
    k = np.linspace(0, 3, 61)
    ax.plot(k, erf(k / np.sqrt(2)), "k--", label="ideal")
    for j, lab in enumerate(LABELS):
        tot = np.sqrt(pred[lab + "_err"] ** 2 + np.nan_to_num(ref_err[:, j]) ** 2)
        z = np.abs(pred[lab] - ref[:, j]) / tot
        z = z[np.isfinite(z)]
        if z.size:
            ax.plot(k, [(z < kk).mean() for kk in k], label=TITLES[lab])
    ax.set_xlabel("k")
    ax.set_ylabel("fraction with |pred − ref| < k σ")
    ax.legend()
    _save(fig, path)


def learning_curves(history, path):
    fig, ax = _subplots(figsize=(6, 4))
    for m, h in enumerate(history):
        ax.plot(h["train"], color=f"C{m}", label=f"train #{m}")
        ax.plot(h["valid"], "--", color=f"C{m}", label=f"valid #{m}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    _save(fig, path)


def photometry(arrays, path):
    obs, emu, feh = arrays["obs"], arrays["emu"], arrays["feh"]
    bands = ("CaHK", "g_sdss", "G", "BP", "RP")
    fig, axes = _subplots(2, len(bands), figsize=(4 * len(bands), 7))
    for ax, ax2, b in zip(axes[0], axes[1], bands):
        ax.scatter(obs[b], emu[b], s=3, c=feh, cmap="viridis")
        lo, hi = np.nanpercentile(obs[b], [1, 99])
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel(f"{b} observed coefficients")
        ax.set_ylabel(f"{b} emulated")
        r = emu[b] - obs[b]
        ax2.scatter(obs[b], r, s=3, alpha=0.5, label="emulated − observed")
        # the noise as a running median in magnitude bins (per-star values scatter too much to read)
        ok = np.isfinite(obs[b]) & np.isfinite(obs[b + "_err"])
        if ok.sum() >= 10:
            edges = np.nanpercentile(obs[b][ok], np.linspace(0, 100, 11))
            mid = 0.5 * (edges[1:] + edges[:-1])
            med = [np.median(obs[b + "_err"][ok & (obs[b] >= lo) & (obs[b] <= hi)]) for lo, hi in zip(edges[:-1], edges[1:])]
            ax2.plot(mid, med, "r-", lw=1.5, label="±1σ photometric noise (median)")
            ax2.plot(mid, -np.asarray(med), "r-", lw=1.5)
        ax2.set_ylim(-max(0.05, 4 * np.nanmedian(obs[b + "_err"])), max(0.05, 4 * np.nanmedian(obs[b + "_err"])))
        ax2.set_xlabel(f"{b} [mag]")
        ax2.set_ylabel("Δ mag")
        ax2.legend(fontsize=7)
    _save(fig, path)


def cleaning_histogram(residual, dropped_in, thresholds, bands, path):
    """Per band: each star's normalised residual where it was judged last (dropped stars: in the iteration
    that dropped them; kept stars: the last) and each iteration's cut."""
    fig, axes = _subplots(1, len(bands), figsize=(5 * len(bands), 4), squeeze=False)
    last = np.where(dropped_in > 0, dropped_in - 1, len(residual) - 1)
    for j, (ax, b) in enumerate(zip(axes[0], bands)):
        z = residual[last, np.arange(len(last)), j]
        ok = np.isfinite(z)
        lo, hi = np.nanpercentile(z[ok], [0.5, 99.5]) if ok.any() else (-1, 1)
        span = max(hi - lo, 1e-6)
        bins = np.linspace(lo - 0.3 * span, hi + 0.3 * span, 60)
        zc = np.clip(z, bins[0], bins[-1])  # outliers piled up at the edges, not lost
        ax.hist(zc[ok & (dropped_in == 0)], bins=bins, histtype="stepfilled", alpha=0.6, label="kept")
        ax.hist(zc[ok & (dropped_in > 0)], bins=bins, histtype="stepfilled", alpha=0.8, color="C3", label="dropped")
        for it, cut in enumerate(thresholds):
            for v in cut[j]:
                ax.axvline(v, color="k", ls="--" if it else "-", lw=1, alpha=1.0 / (1 + it))
        ax.set_yscale("log")
        ax.set_xlabel(f"{b}: (emulated − observed) / σ")
        ax.set_ylabel("stars")
        ax.set_title(f"cuts of iterations 1 (solid) to {len(thresholds)}")
        ax.legend(fontsize=7)
    _save(fig, path)
