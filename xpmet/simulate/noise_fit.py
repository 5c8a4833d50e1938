"""Builds the XP noise model the simulator ships (``data/xp_noise_model.npz``) from real Gaia DR3 spectra.

Run once by a developer who has the shared real data (``python -m xpmet.simulate.noise_fit SHARED_DIR``);
the simulator only reads the small npz, so it works on a fresh clone.

What is fitted and why:
- coefficient errors: for each band and coefficient, ``log10(error) = poly2(G - 15)`` over the 2,000
  real spectra of xp_continuous_combined_chunk0.fits (G is GaiaXPy's synthetic G of their coefficients,
  the file has no photometry). The residual scatter is split into a per-star factor shared by all
  coefficients of a band (number of transits, crowding) and an independent per-coefficient part.
- correlations: the full 55x55 matrices of the real sources that ship them (GaiaXPy test files:
  6 BP and 7 RP matrices). Their structure is set by the basis and scan geometry, not the star, so the
  simulator builds its templates as convex combinations of these (a convex combination of correlation
  matrices is again a valid correlation matrix).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from xpmet.simulate.xp_noise import MODEL_PATH  # the file xp_noise reads
from xpmet.xp_coefficients import N_COEF, correlation_matrix

G_PIVOT = 15.0


def _array_column(values) -> list[np.ndarray | None]:
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)) or len(v) == 0:
            out.append(None)
            continue
        if isinstance(v, str):
            v = np.array(v.strip('"()[] ').split(","), dtype=float)
        out.append(np.asarray(v, dtype=float))
    return out


def _real_correlations(shared: Path) -> dict[str, list[np.ndarray]]:
    import pandas as pd
    from astropy.table import Table

    found: dict[str, dict[int, np.ndarray]] = {"bp": {}, "rp": {}}
    sources = [Table.read(shared / "gaia-xp/XP_CONTINUOUS_RAW_with_missing_BP.fits").to_pandas(),
               pd.read_csv(shared / "gaia-xp/XP_CONTINUOUS_RAW_colour_eq_dr3int6.csv"),
               pd.read_csv(shared / "gaia-xp/18Sco-XP-spectra.csv")]
    for df in sources:
        for band in ("bp", "rp"):
            for sid, corr in zip(df["source_id"], _array_column(df[f"{band}_coefficient_correlations"])):
                if corr is not None and corr.size == N_COEF * (N_COEF - 1) // 2:
                    found[band][int(sid)] = corr
    return {band: [found[band][k] for k in sorted(found[band])] for band in found}


def fit(shared: Path) -> dict[str, np.ndarray]:
    from astropy.table import Table

    from xpmet.simulate.xp_model import synthetic_mags

    t = Table.read(shared / "gaia-xp/xp_continuous_combined_chunk0.fits")
    coef = {b: np.stack([np.asarray(t[f"{b}_coeff_{i}"], float) for i in range(N_COEF)], 1) for b in ("bp", "rp")}
    err = {b: np.stack([np.asarray(t[f"e_{b}_coeff_{i}"], float) for i in range(N_COEF)], 1) for b in ("bp", "rp")}
    g = synthetic_mags(coef["bp"], coef["rp"])[:, 0]
    out: dict[str, np.ndarray] = {"g_pivot": np.array(G_PIVOT)}
    for b in ("bp", "rp"):
        ok = np.isfinite(g) & np.all(np.isfinite(err[b]) & (err[b] > 0), axis=1) & (g > 8) & (g < 18.5)
        x = g[ok] - G_PIVOT
        y = np.log10(err[b][ok])
        design = np.stack([np.ones_like(x), x, x * x], 1)
        poly, *_ = np.linalg.lstsq(design, y, rcond=None)  # (3, 55)
        resid = y - design @ poly
        star = resid.mean(axis=1)
        out[f"{b}_log_err_poly"] = poly.T  # (55, 3): const, slope, curvature per coefficient
        out[f"{b}_star_scatter"] = np.array(star.std())
        out[f"{b}_coef_scatter"] = (resid - star[:, None]).std(axis=0)
        out[f"{b}_n_relevant_bases"] = np.stack([g[ok], t[f"{b}_n_relevant_bases"][ok].astype(float)], 1)
    corr = _real_correlations(shared)
    for b in ("bp", "rp"):
        mats = np.stack([correlation_matrix(c) for c in corr[b]])
        out[f"{b}_correlation_basis"] = mats.astype(np.float32)
    out["g_range"] = np.array([np.nanmin(g), np.nanmax(g)])
    return out


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python -m xpmet.simulate.noise_fit DIR  (DIR: the real XP samples, e.g. ../shared/data/real)")
    shared = Path(argv[0])
    model = fit(shared)
    MODEL_PATH.parent.mkdir(exist_ok=True)
    np.savez_compressed(MODEL_PATH, **model)
    for k, v in model.items():
        print(k, np.shape(v))


if __name__ == "__main__":
    main(sys.argv[1:])
