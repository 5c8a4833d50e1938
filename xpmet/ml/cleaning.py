"""``xpmet clean``: drop training stars whose labels the XP photometry contradicts.

The original research's cleaning: an emulator (labels -> XP coefficients) predicts each training
star's spectrum from its survey labels; GaiaXPy turns observed and emulated coefficients into
synthetic magnitudes (Pristine CaHK, SDSS g, ...); a star whose residual, in units of its
propagated photometric error and the emulator's scatter in that band added in quadrature
(:func:`emulator_scatter`), lies beyond median +/- k * 1.4826 MAD of the kept stars' normalised
residuals is dropped. Without ``--emulator`` a fresh emulator is trained on the kept rows every
iteration (so wrong labels stop pulling it), until no row drops or ``max_iter``.

Only train and valid rows are judged (what training reads); the test split stays untouched, the
held-out set ``xpmet evaluate`` scores. Rows without Teff, log g, [Fe/H] or with a missing band
cannot be judged and are kept.

The result is written INTO the training file (read by :func:`xpmet.ml.dataset.read`)::

    /cleaning/keep        bool (n,)            False: dropped (train/valid rows only)
    /cleaning/dropped_in  int16 (n,)           iteration that dropped the row (0: kept)
    /cleaning/residual    f4 (n_iter, n, n_bands)  normalised residual per iteration (NaN: not judged)
    attrs: k, max_iter, iterations, bands, seed, n_dropped (JSON list per iteration), thresholds
           (JSON [[lo, hi] per band] per iteration), emulator_scatter (mag, per iteration per band),
           emulator (JSON: model id, fingerprint, or the on-the-fly training config and each
           iteration's weights sha256), rows_sha256 (the rows judged), created, xpmet_version
    root attr "cleaning": a JSON summary, so models trained on the file record it.

The file is rewritten atomically: a temporary copy is cleaned and renamed over the original, so a
kill leaves either the old file or the new one. Re-cleaning starts from all rows and replaces the
record.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from xpmet import __version__
from xpmet.errors import XpmetError
from xpmet.faults import fault
from xpmet.ml import dataset as ds
from xpmet.ml.normalise import LABELS
from xpmet.ml.photometry import BANDS
from xpmet.progress import note
from xpmet.xp_coefficients import N_COEF

GROUP = "cleaning"
MAD_TO_SIGMA = 1.4826
MIN_JUDGED = 20
BLOCK = 20000  # rows per GaiaXPy call


@dataclass
class CleanOptions:
    k: float = 4.0
    max_iter: int = 3
    seed: int = 0
    bands: tuple = ("CaHK", "g_sdss")
    emulator: str | None = None   # a model directory; None: train one per iteration on the kept rows
    epochs: int = 200             # on-the-fly emulator training (early stopping as `xpmet train`)
    threads: int = 0              # torch CPU threads (0: leave)

    def __post_init__(self):
        self.bands = tuple(self.bands)
        bad = [b for b in self.bands if b not in BANDS]
        if bad or not self.bands:
            raise XpmetError(f"--bands {','.join(self.bands)}: choose from {', '.join(BANDS)}")
        if not self.k > 0:
            raise XpmetError(f"--k {self.k}: must be > 0")
        if self.max_iter < 1:
            raise XpmetError(f"--max-iter {self.max_iter}: must be >= 1")


def robust_cut(z: np.ndarray, k: float) -> tuple[float, float]:
    """median -/+ k * 1.4826 MAD of the finite values."""
    z = z[np.isfinite(z)]
    med = float(np.median(z))
    return med - k * MAD_TO_SIGMA * float(np.median(np.abs(z - med))), \
        med + k * MAD_TO_SIGMA * float(np.median(np.abs(z - med)))


def clean(path, options: CleanOptions | None = None, progress: bool = True, plot: bool = True) -> dict:
    """Clean the training file PATH in place (atomically); returns the summary that was recorded."""
    opt = options or CleanOptions()
    path = Path(path)
    _check_file(path)
    emulator = _load_emulator(opt.emulator) if opt.emulator else None
    from xpmet.ml.export import _partial_prefix, _remove_dead_partials
    _remove_dead_partials(path)
    stamp = os.stat(path)
    tmp = path.with_name(f"{_partial_prefix(path)}{os.getpid()}")
    try:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:  # the copy holds the original rows: training reads all of them
            if GROUP in f:
                del f[GROUP]
            f.attrs.pop(GROUP, None)
        summary, record = _iterate(tmp, opt, emulator, progress)
        with h5py.File(tmp, "a") as f:
            _write(f, record, summary)
            fault("clean_before_close")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        now = os.stat(path)
        if (now.st_size, now.st_mtime_ns) != (stamp.st_size, stamp.st_mtime_ns):
            raise XpmetError(f"{path} changed while it was being cleaned (re-exported?); run `xpmet clean` again.")
        fault("clean_before_replace")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if plot:
        from xpmet.ml.plots import cleaning_histogram
        summary["plot"] = str(path.with_name(path.stem + ".cleaning.png"))
        cleaning_histogram(record["residual"], record["dropped_in"], summary["thresholds"], opt.bands,
                           summary["plot"])
    return summary


def _check_file(path: Path):
    with ds.open_training(path, need=("split",)) as f:
        missing = [k for k in LABELS[:3] if f"labels/{k}" not in f]
        if missing:
            raise XpmetError(f"{path}: no labels ({', '.join('/labels/' + k for k in missing)} missing); "
                             "cleaning compares the labels with the spectra.")


def _load_emulator(model_dir):
    from xpmet.ml.inference import load_predictor
    if not Path(model_dir).is_dir():
        raise XpmetError(f"--emulator {model_dir}: no such model directory; train one with "
                         "`xpmet train DATA --kind emulator --out DIR`.")
    pred = load_predictor(model_dir)
    if pred.kind != "emulator":
        raise XpmetError(f"--emulator {model_dir}: is an {pred.kind}, not an emulator.")
    return pred


def _iterate(data: Path, opt: CleanOptions, emulator, progress: bool):
    """The cleaning loop on DATA (a copy without any earlier record): (summary, arrays to record)."""
    with h5py.File(data, "r") as f:
        split = f["split"][:]
    arr = ds.read(data)  # all rows, file order
    n = len(arr)
    judged = (np.isin(split, [ds.SPLITS["train"], ds.SPLITS["valid"]])
              & np.isfinite(arr.labels[:, :3]).all(1) & ~arr.missing.any(1))
    idx = np.flatnonzero(judged)
    if len(idx) < MIN_JUDGED:
        raise XpmetError(f"{data.name}: only {len(idx)} train/valid rows with Teff, log g, [Fe/H] and both "
                         f"bands; cleaning needs at least {MIN_JUDGED}.")
    sub = arr.subset(idx)
    if progress:
        note(f"clean: GaiaXPy {', '.join(opt.bands)} of {len(idx):,} observed train/valid spectra")
    obs = _observed(data, idx, opt.bands)
    keep = np.ones(n, bool)
    dropped_in = np.zeros(n, np.int16)
    residuals, n_dropped, thresholds, scatters, emu_ids = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="xpmet-clean-") as work:
        for it in range(1, opt.max_iter + 1):
            if opt.emulator:
                emu = emulator
            else:
                emu = _train_emulator(data, Path(work) / f"emulator{it}", keep, arr.source_id, opt, progress)
                emu_ids.append(ds.fingerprint(emu.dir / "weights.pt"))
            emu_mag = _emulated(emu, sub, opt.bands)
            r = np.column_stack([emu_mag[b] - obs[b] for b in opt.bands])
            err = np.column_stack([obs[b + "_err"] for b in opt.bands])
            s_emu = [emulator_scatter(r[keep[idx], j], err[keep[idx], j]) for j in range(len(opt.bands))]
            with np.errstate(invalid="ignore"):
                z = r / np.sqrt(err ** 2 + np.square(s_emu))
            cuts = [robust_cut(z[keep[idx], j], opt.k) for j in range(len(opt.bands))]
            out = np.zeros(len(idx), bool)
            for j, (lo, hi) in enumerate(cuts):
                out |= np.isfinite(z[:, j]) & ((z[:, j] < lo) | (z[:, j] > hi))
            new = idx[out & keep[idx]]
            keep[new] = False
            dropped_in[new] = it
            full = np.full((n, len(opt.bands)), np.nan, np.float32)
            full[idx] = z
            residuals.append(full)
            n_dropped.append(int(len(new)))
            thresholds.append([[float(lo), float(hi)] for lo, hi in cuts])
            scatters.append([float(v) for v in s_emu])
            if progress:
                cut = ", ".join(f"{b} {lo:+.2f}..{hi:+.2f}" for b, (lo, hi) in zip(opt.bands, cuts))
                note(f"clean: iteration {it}: dropped {len(new):,} of {int(keep[idx].sum()) + len(new):,} "
                     f"judged rows (cut {cut})")
            if not len(new):
                break
    if opt.emulator:
        d = Path(opt.emulator)
        fp = d / "fingerprint.txt"
        emu_info = {"path": str(d.resolve()), "model_id": emulator.model_id,
                    "data_fingerprint": fp.read_text().strip() if fp.exists() else None,
                    "weights_sha256": ds.fingerprint(d / "weights.pt")}
    else:
        emu_info = {"trained": "on the kept train/valid rows, each iteration", "epochs": opt.epochs,
                    "seed": opt.seed, "weights_sha256": emu_ids}
    summary = {"k": opt.k, "max_iter": opt.max_iter, "iterations": len(n_dropped), "bands": list(opt.bands),
               "seed": opt.seed, "n_dropped": n_dropped, "n_judged": int(len(idx)),
               "n_kept": int(keep[idx].sum()), "thresholds": thresholds, "emulator_scatter": scatters,
               "emulator": emu_info,
               "rows_sha256": _rows_sha256(arr, split),
               "created": dt.datetime.now(dt.timezone.utc).isoformat(), "xpmet_version": __version__}
    return summary, {"keep": keep, "dropped_in": dropped_in, "residual": np.stack(residuals)}


def _observed(data: Path, rows: np.ndarray, bands) -> dict:
    """GaiaXPy magnitudes and errors of the observed coefficients of file rows ROWS (with the full
    covariance when the file has correlations, read block by block: they are 27x the coefficients)."""
    from xpmet.ml.photometry import synthetic_photometry
    parts = []
    for i in range(0, len(rows), BLOCK):
        sub = ds.read(data, correlations=True, rows=rows[i:i + BLOCK])
        bp, bpe, rp, rpe = sub.raw()
        kw = {} if sub.corr is None else {"bp_corr": sub.corr[:, 0], "rp_corr": sub.corr[:, 1]}
        if sub.std_dev is not None:
            kw |= {"bp_sd": sub.std_dev[:, 0], "rp_sd": sub.std_dev[:, 1]}
        parts.append(synthetic_photometry(bp, bpe, rp, rpe, bands=bands, **kw))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _emulated(emu, sub: ds.XPArrays, bands) -> dict:
    """GaiaXPy magnitudes {band: (n,)} of the emulator's mean spectrum at the stars' labels."""
    from xpmet.ml.photometry import synthetic_photometry
    out = []
    for i in range(0, len(sub), BLOCK):
        part = sub.subset(slice(i, i + BLOCK))
        model = emu.emulate(part.labels, part.ag) * part.flux[:, None]
        _, bpe, _, rpe = part.raw()  # GaiaXPy wants errors; the magnitudes do not depend on them
        out.append(synthetic_photometry(model[:, :N_COEF], bpe, model[:, N_COEF:], rpe, bands=bands))
    return {b: np.concatenate([p[b] for p in out]) for b in bands}


def emulator_scatter(r: np.ndarray, err: np.ndarray) -> float:
    """The emulator's scatter in one band: the s with robust spread of r / sqrt(err^2 + s^2) = 1
    (0 when the photometric errors explain the residuals). Measured on the kept stars, since the
    emulator's per-coefficient scatter, propagated as if independent, overstates a narrow band's
    error several times (its coefficients' model errors are correlated)."""
    from xpmet.ml.evaluate import robust_scatter
    ok = np.isfinite(r) & np.isfinite(err)
    r, err = r[ok], err[ok]
    spread = lambda s: robust_scatter(r / np.sqrt(err ** 2 + s ** 2))  # noqa: E731
    if not len(r) or spread(0.0) <= 1:
        return 0.0
    lo, hi = 0.0, 10 * robust_scatter(r) + 1e-9
    for _ in range(50):  # bisection: the spread falls as s grows
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if spread(mid) > 1 else (lo, mid)
    return 0.5 * (lo + hi)


def _train_emulator(data: Path, out: Path, keep, source_id, opt: CleanOptions, progress: bool):
    """An emulator trained (as `xpmet train --kind emulator`, unregistered) on the kept rows only."""
    from xpmet.ml.inference import load_predictor
    from xpmet.ml.train import TrainConfig, train
    dropped = np.sort(source_id[~keep])

    def without_dropped(a: ds.XPArrays) -> ds.XPArrays:
        gone = np.isin(a.source_id, dropped)
        if gone.any():  # an emulator learns only from rows with labels
            a.labels = np.where(gone[:, None], np.nan, a.labels)
        return a

    cfg = TrainConfig(kind="emulator", epochs=opt.epochs, seed=opt.seed, device="cpu")
    train(data, out, cfg, register=False, label_override=without_dropped, progress=progress, threads=opt.threads)
    return load_predictor(out)


def _write(f: h5py.File, record: dict, summary: dict):
    g = f.create_group(GROUP)
    g.create_dataset("keep", data=record["keep"])
    g.create_dataset("dropped_in", data=record["dropped_in"])
    g.create_dataset("residual", data=record["residual"], compression="gzip", shuffle=True)
    for k, v in summary.items():
        g.attrs[k] = json.dumps(v) if isinstance(v, (list, dict)) else v
    f.attrs[GROUP] = json.dumps({k: summary[k] for k in ("k", "iterations", "bands", "n_dropped", "n_judged",
                                                         "emulator", "created")})


def read_record(path) -> dict | None:
    """The /cleaning record of a training file (None without one): attrs as Python, plus the arrays."""
    with h5py.File(path, "r") as f:
        if GROUP not in f:
            return None
        g = f[GROUP]
        out = {k: (json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v) for k, v in g.attrs.items()}
        out = {k: (v.item() if hasattr(v, "item") else v) for k, v in out.items()}
        return out | {k: g[k][:] for k in ("keep", "dropped_in", "residual")}


def _rows_sha256(arr: ds.XPArrays, split) -> str:
    """Identifies the rows judged: source_id, split and labels (not the file's bytes, which cleaning changes)."""
    h = hashlib.sha256()
    for a in (arr.source_id, np.asarray(split), arr.labels):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


