"""Benchmark of `xpmet clean` on a simulated sky with wrong survey labels injected (throw-away database).

Per seed: xpmet simulate -> etl -> xmatch/labels -> export (bench_train's pipeline), then wrong
[Fe/H] (shifted by +-U(--shift)) is written into --bad-fraction of the train/valid rows of a copy of
the export, with a fixed seed. That copy is cleaned (emulator trained on the fly, --k, --max-iter),
and three estimators with the same options are trained: on the file with the injected errors, on the
same file cleaned, and on the original export (no injected errors, no cleaning). Reported:

- recall: share of the injected rows the cleaning dropped; false drops: share of the other judged
  rows dropped, and how many of those have survey [Fe/H] more than 0.3 dex off the truth (the
  simulated surveys' own outliers, which a cleaning should drop too) next to that share among all;
- on NEVER-SURVEYED stars against the simulator's truth, per G bin: [Fe/H] median bias and robust
  scatter of each estimator (injected / cleaned / original);
- the seconds the cleaning took (busy CPU seconds of this process alongside).

Each figure is the median over --seeds with the range. Keep it small on a shared machine:

    .venv/bin/python benchmarks/bench_cleaning.py --n-stars 8000 --seeds 7,8,9
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
G_EDGES = (9.0, 14.0, 16.0, 17.65)
VARIANTS = ("injected", "cleaned", "original")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-stars", type=int, default=8000, help="simulated Gaia sources with XP")
    ap.add_argument("--seeds", default="7", help="comma-separated: one sky, database and export each")
    ap.add_argument("--workdir", default="/tmp/xpmet_bench_cleaning", help="per seed WORKDIR/s<seed> (wiped)")
    ap.add_argument("--bad-fraction", type=float, default=0.03, help="train/valid rows given a wrong [Fe/H]")
    ap.add_argument("--shift", default="0.5,1.0", help="the wrong [Fe/H] is off by +-U(lo, hi) dex")
    ap.add_argument("--k", type=float, default=4.0)
    ap.add_argument("--max-iter", type=int, default=3)
    ap.add_argument("--emulator-epochs", type=int, default=150, help="each cleaning emulator (early stopping)")
    ap.add_argument("--epochs", type=int, default=100, help="each estimator (early stopping)")
    ap.add_argument("--max-truth", type=int, default=8000, help="never-surveyed stars scored")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy small machine)")
    ap.add_argument("--nonstellar-fraction", type=float, default=0.017)
    ap.add_argument("--skip-pipeline", action="store_true", help="reuse WORKDIR/s<seed>'s database and train.h5")
    return ap.parse_args(argv)


def step(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def inject(src: Path, dst: Path, fraction: float, shift, seed: int) -> np.ndarray:
    """Copy SRC to DST with [Fe/H] of a random `fraction` of train/valid rows moved by +-U(shift); the mask."""
    import h5py
    shutil.copyfile(src, dst)
    rng = np.random.default_rng(seed)
    with h5py.File(dst, "a") as f:
        feh = f["labels/feh"][:]
        rows = np.flatnonzero((f["split"][:] < 2) & np.isfinite(feh))
        bad = np.sort(rng.choice(rows, max(1, round(fraction * len(rows))), replace=False))
        feh[bad] += rng.choice([-1.0, 1.0], len(bad)) * rng.uniform(*shift, len(bad))
        f["labels/feh"][:] = feh
    mask = np.zeros(len(feh), bool)
    mask[bad] = True
    return mask


def feh_by_g(model_dir, ns) -> list[dict]:
    from xpmet.ml.evaluate import robust_scatter
    from xpmet.ml.inference import load_predictor
    p = load_predictor(model_dir).predict_arrays(ns)
    res = p["feh"] - ns.labels[:, 2]
    out = []
    for lo, hi in zip(G_EDGES[:-1], G_EDGES[1:]):
        s = (ns.g_mag >= lo) & (ns.g_mag < hi) & np.isfinite(res)
        out.append({"g": f"{lo:g}-{hi:g}", "n": int(s.sum()), "bias": float(np.median(res[s])) if s.any() else np.nan,
                    "scatter": robust_scatter(res[s])})
    return out


def run_seed(a, seed: int) -> dict:
    import bench_train
    from xpmet.ml import dataset as ds
    from xpmet.ml.cleaning import CleanOptions, clean, read_record
    from xpmet.ml.evaluate import never_surveyed, read_truth, truth_labels
    from xpmet.ml.train import TrainConfig, train
    work = Path(a.workdir) / f"s{seed}"
    os.environ["XPMET_HOME"] = str(work / "home")
    os.environ.pop("XPMET_DATABASE_URL", None)
    from xpmet.db.cluster import Cluster
    if not a.skip_pipeline:
        if work.exists():
            if (work / "home").exists():
                Cluster(work / "home").destroy()
            shutil.rmtree(work)
        work.mkdir(parents=True)
        sky = argparse.Namespace(n_stars=a.n_stars, seed=seed, nonstellar_fraction=a.nonstellar_fraction)
        bench_train.pipeline(sky, work)
    try:
        Cluster(work / "home").start()
        truth = read_truth(work / "sim" / "truth.fits")
        files = {"original": work / "train.h5", "injected": work / "injected.h5", "cleaned": work / "cleaned.h5"}
        bad = inject(files["original"], files["injected"], a.bad_fraction,
                     tuple(float(v) for v in a.shift.split(",")), seed)
        shutil.copyfile(files["injected"], files["cleaned"])
        step(f"seed {seed}: clean ({int(bad.sum())} injected rows)")
        t0, c0 = time.time(), time.process_time()
        summary = clean(files["cleaned"], CleanOptions(k=a.k, max_iter=a.max_iter, seed=seed,
                                                       epochs=a.emulator_epochs, threads=a.threads), progress=False)
        seconds, cpu = time.time() - t0, time.process_time() - c0
        rec = read_record(files["cleaned"])
        judged = np.isfinite(rec["residual"][0]).all(1)
        dropped = ~rec["keep"]
        arr = ds.read(files["original"], cleaned=False)
        off = np.abs(arr.labels[:, 2] - truth_labels(truth, arr.source_id)[:, 2]) > 0.3
        good = judged & ~bad
        out = {"seed": seed, "n_judged": int(judged.sum()), "n_injected": int(bad.sum()),
               "n_dropped": summary["n_dropped"], "recall": float(dropped[bad & judged].mean()),
               "false_drop": float(dropped[good].mean()),
               "off_among_false_drops": float(off[good & dropped].mean()) if (good & dropped).any() else np.nan,
               "off_among_good": float(off[good].mean()), "clean_seconds": seconds, "clean_cpu_seconds": cpu,
               "plot": summary["plot"]}
        ns = never_surveyed(truth, a.max_truth, seed=seed)
        for name in VARIANTS:
            step(f"seed {seed}: estimator on the {name} file")
            d = work / f"est_{name}"
            shutil.rmtree(d, ignore_errors=True)
            train(files[name], d, TrainConfig(kind="estimator", epochs=a.epochs, seed=seed), register=False,
                  progress=False, threads=a.threads)
            out[name] = feh_by_g(d, ns)
        return out
    finally:
        Cluster(work / "home").stop()


def _median(values):
    v = [x for x in values if x == x]
    return (statistics.median(v), min(v), max(v)) if v else (np.nan, np.nan, np.nan)


def report(runs: list[dict]):
    f = lambda t: f"{t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}]" if len(runs) > 1 else f"{t[0]:.3f}"  # noqa: E731
    print(f"seeds {[r['seed'] for r in runs]}: judged rows {[r['n_judged'] for r in runs]}, "
          f"injected {[r['n_injected'] for r in runs]}, dropped per iteration {[r['n_dropped'] for r in runs]}")
    for k, name in (("recall", "injected rows dropped (recall)"), ("false_drop", "other judged rows dropped"),
                    ("off_among_false_drops", "  of those, survey [Fe/H] > 0.3 dex off the truth"),
                    ("off_among_good", "  same share among all other judged rows"),
                    ("clean_seconds", "clean: wall seconds"),
                    ("clean_cpu_seconds", "clean: CPU seconds (this process)")):
        print(f"{name:52s} {f(_median([r[k] for r in runs]))}")
    print("\nnever-surveyed stars, [Fe/H] against the truth (median over seeds [range]):")
    print(f"{'G':10s} {'n':>6s}  " + "  ".join(f"{v + ' bias':>24s} {v + ' scatter':>24s}" for v in VARIANTS))
    for i, row in enumerate(runs[0]["original"]):
        cells = []
        for v in VARIANTS:
            cells.append(f"{f(_median([r[v][i]['bias'] for r in runs])):>24s} "
                         f"{f(_median([r[v][i]['scatter'] for r in runs])):>24s}")
        print(f"{row['g']:10s} {int(_median([r['original'][i]['n'] for r in runs])[0]):6d}  " + "  ".join(cells))


def main(argv=None):
    a = parse(argv)
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    runs = [run_seed(a, int(s)) for s in a.seeds.split(",")]
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    (Path(a.workdir) / "report.json").write_text(json.dumps(runs, indent=1, default=float))
    report(runs)


if __name__ == "__main__":
    main()
