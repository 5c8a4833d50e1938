"""Distribution plots of a simulated sky (PNG): Kiel diagram, [Fe/H] histogram, sky map."""
from __future__ import annotations

from pathlib import Path

import numpy as np

_COLOURS = {"thin": "tab:blue", "thick": "tab:orange", "halo": "tab:red"}


def write_all(truth: dict[str, np.ndarray], outdir: Path) -> list[Path]:
    import matplotlib

    # GaiaXPy switches text.usetex on at import; no LaTeX here, so plot with matplotlib's own text.
    with matplotlib.rc_context({"text.usetex": False}):
        return _write_all(truth, outdir)


def _write_all(truth: dict[str, np.ndarray], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    all_xp = np.asarray(truth["has_xp"], bool)
    xp = all_xp.copy()
    if "source_class" in truth:  # Kiel diagram and [Fe/H]: stars only (quasars, white dwarfs have none)
        xp &= np.asarray(truth["source_class"]).astype(str) == "star"
    pop = np.asarray(truth["population"]).astype(str)
    paths = []

    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(truth["teff"][xp], truth["logg"][xp], c=truth["feh"][xp], s=3, cmap="viridis", vmin=-2.5, vmax=0.5)
    ax.invert_xaxis()
    ax.invert_yaxis()
    ax.set_xlabel("Teff [K]")
    ax.set_ylabel("log g")
    ax.set_title(f"SIMULATED: Kiel diagram ({xp.sum()} XP stars)")
    fig.colorbar(sc, label="[Fe/H]")
    paths.append(_save(fig, outdir / "kiel.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(-4.0, 0.8, 61)
    ax.hist(truth["feh"][xp], bins=bins, histtype="stepfilled", color="0.85", label="all")
    for name, colour in _COLOURS.items():
        sel = xp & (pop == name)
        ax.hist(truth["feh"][sel], bins=bins, histtype="step", color=colour, label=f"{name} ({sel.sum()})")
    ax.set_yscale("log")
    ax.set_xlabel("[Fe/H]")
    ax.set_ylabel("XP stars")
    ax.set_title("SIMULATED: metallicity distribution")
    ax.legend()
    paths.append(_save(fig, outdir / "feh_hist.png"))

    fig = plt.figure(figsize=(8, 4.5))
    ax = fig.add_subplot(111, projection="mollweide")
    ra = np.radians(np.asarray(truth["ra"], float))
    ra = np.where(ra > np.pi, ra - 2 * np.pi, ra)
    dec = np.radians(np.asarray(truth["dec"], float))
    ax.scatter(-ra[~all_xp], dec[~all_xp], s=1, c="0.7", label="no XP")
    ax.scatter(-ra[all_xp], dec[all_xp], s=1, c=truth["phot_g_mean_mag"][all_xp], cmap="magma", label="XP")
    ax.set_xticklabels([])
    ax.grid(True)
    ax.set_title("SIMULATED: sky (ICRS, Mollweide, RA increasing to the left)")
    paths.append(_save(fig, outdir / "sky.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
