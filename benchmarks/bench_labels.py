"""Homogenised labels against the truth: the joint calibration and the reference-only one (issue 12).

For each seed: simulate a sky (xpmet.simulate: APOGEE-, GALAH-, LAMOST-like surveys with offsets,
trends, LAMOST's compressed metal-poor scale, GALAH's too-small errors, GBS benchmark stars), load
it into a throw-away embedded database, crossmatch (which refreshes the labels with the default
settings) and read xpmet.labels. The baseline is the previous calibration itself: the schema is
migrated down to the revision before 0009 (the reference-only SQL zero points of migration 0002),
the labels refreshed there and read, then migrated back up.

Per true-[Fe/H] bin: median offset of the homogenised [Fe/H] from the truth, robust scatter, and
z-spread (robust scatter of (label - truth) / feh_err); the median over seeds and the spread
(max - min). Targets: |offset| <= 0.03 dex in every bin, z-spread 0.8-1.25.

    .venv/bin/python benchmarks/bench_labels.py                         # 40,000 stars, seeds 7 8 9
    .venv/bin/python benchmarks/bench_labels.py --n-stars 8000 --seeds 1
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from xpmet.ml.evaluate import homogenised_vs_truth, read_truth, robust_scatter

ROOT = Path(__file__).resolve().parents[1]


def survey_z(true_feh: dict, with_sys: bool) -> dict:
    """Per survey: robust z-spread of its calibrated [Fe/H] against the truth (its error model)."""
    from xpmet.db.engine import raw_connect
    err = "sqrt(err ^ 2 + err_sys ^ 2)" if with_sys else "err"
    with raw_connect() as c:
        rows = c.execute(f"SELECT survey, source_id, value, {err} FROM xpmet.calibrated_measurement "
                         "WHERE label = 'feh'").fetchall()
    out = {}
    for s in sorted({r[0] for r in rows}):
        z = [(r[2] - true_feh[r[1]]) / r[3] for r in rows if r[0] == s and r[1] in true_feh and r[3]]
        out[s] = robust_scatter(z)
    return out


def one_seed(seed: int, n_stars: int, workdir: Path) -> dict:
    from xpmet import labels as xlabels
    from xpmet.db import migrate
    from xpmet.db.engine import libpq_url, raw_connect
    from xpmet.etl.gaia import load_gaia_source
    from xpmet.etl.survey import load_survey_file
    from xpmet.simulate import simulate, survey_files
    from xpmet.xmatch import run_xmatch

    sky = workdir / f"sky-{seed}"
    t0 = time.perf_counter()
    if not (sky / "survey_truth.json").exists():
        simulate(sky, n_stars=n_stars, seed=seed, correlations=False, progress=False, overwrite=True)
    t_sim = time.perf_counter() - t0
    with raw_connect() as c:
        c.execute("TRUNCATE xpmet.xmatch, xpmet.xmatch_run, xpmet.survey_star, xpmet.survey, xpmet.gaia_source, "
                  "xpmet.etl_load CASCADE")
        c.commit()
    load_gaia_source([str(sky / "gaia_source")], progress=False)
    for name, path in survey_files(sky).items():
        load_survey_file(name, path)
    t0 = time.perf_counter()
    run_xmatch(labels=True)             # refreshes the labels (as xpmet xmatch does): joint calibration, defaults
    t_joint = time.perf_counter() - t0
    t0 = time.perf_counter()
    xlabels.refresh()                   # the label refresh alone (fit + views), to set against the old one
    t_refresh = time.perf_counter() - t0
    truth = read_truth(sky / "truth.fits")
    true_feh = dict(zip(truth["source_id"].tolist(), truth["labels"][:, 2].tolist()))
    joint = homogenised_vs_truth(truth)
    joint_z = survey_z(true_feh, with_sys=True)
    zp = [{k: z[k] for k in ("survey", "label", "status", "zero_point", "zero_point_err", "err_scale",
                             "error_floor_fitted", "offsets", "offset_errs", "n_stars")}
          for z in xlabels.zero_points() if z["label"] == "feh"]
    # the baseline: the schema before migration 0009, refreshed by its own SQL
    from alembic.script import ScriptDirectory
    before = ScriptDirectory.from_config(migrate.alembic_config()).get_revision("0009").down_revision
    migrate.downgrade(libpq_url(), before)
    with raw_connect() as c:
        t0 = time.perf_counter()
        c.execute("SELECT xpmet.refresh_labels()")
        c.commit()
        t_old = time.perf_counter() - t0
    old = homogenised_vs_truth(truth)
    old_z = survey_z(true_feh, with_sys=False)
    migrate.upgrade(libpq_url(), "head")
    return {"seed": seed, "joint": joint, "reference_only": old, "feh_calibration": zp,
            "survey_z_spread": {"joint": joint_z, "reference_only": old_z},
            "seconds": {"simulate": t_sim, "xmatch_and_joint_labels": t_joint, "joint_refresh": t_refresh,
                        "old_refresh": t_old}}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for method in ("joint", "reference_only"):
        out[method] = {}
        for b in runs[0][method]:
            v = {k: [r[method][b][k] for r in runs] for k in ("n", "offset", "scatter", "z_spread")}
            out[method][b] = {k: {"median": float(np.median(x)), "spread": float(np.max(x) - np.min(x))}
                              for k, x in v.items()}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-stars", type=int, default=40_000, help="simulated XP stars per sky")
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    ap.add_argument("--home", type=Path, default=ROOT / "benchmarks" / "results" / "labels-home",
                    help="XPMET_HOME of the throw-away database (emptied)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "results" / "labels-data",
                    help="simulated skies (reused when there)")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--keep", action="store_true", help="keep the database and skies afterwards")
    args = ap.parse_args()

    os.environ["XPMET_HOME"] = str(args.home)
    os.environ.pop("XPMET_DATABASE_URL", None)
    args.workdir.mkdir(parents=True, exist_ok=True)
    from xpmet.db import migrate
    from xpmet.db.cluster import Cluster
    from xpmet.db.engine import libpq_url

    cluster = Cluster(args.home)
    cluster.start()
    runs = []
    try:
        migrate.upgrade(libpq_url(), "head")
        for seed in args.seeds:
            runs.append(one_seed(seed, args.n_stars, args.workdir / f"n{args.n_stars}"))
            r = runs[-1]
            print(f"seed {seed}: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["seconds"].items()), flush=True)
            for z in r["feh_calibration"]:
                print(f"  {z['survey']:8s} {z['status']:13s} zp {z['zero_point']:+.3f} +- {z['zero_point_err'] or 0:.3f}"
                      f"  err_scale {z['err_scale'] or 1:.2f} floor {z['error_floor_fitted'] or 0:.3f}"
                      f"  offsets {np.round(z['offsets'] or [], 3).tolist()}", flush=True)
    finally:
        if not args.keep:
            cluster.destroy()
            shutil.rmtree(args.workdir, ignore_errors=True)
    s = summarise(runs)
    print(f"\n[Fe/H] of xpmet.labels minus the truth, {args.n_stars} XP stars, seeds {args.seeds}: "
          "median over seeds (spread = max - min)")
    print(f"{'[Fe/H] true':12s} {'N':>6s} | {'joint: offset':>22s} {'scatter':>8s} {'z-spread':>15s} | "
          f"{'reference-only: offset':>22s} {'scatter':>8s} {'z-spread':>15s}")
    for b in s["joint"]:
        j, o = s["joint"][b], s["reference_only"][b]
        f = lambda d, k, p: f"{d[k]['median']:+.{p}f} ({d[k]['spread']:.{p}f})"  # noqa: E731
        print(f"{b:12s} {j['n']['median']:6.0f} | {f(j, 'offset', 3):>22s} {j['scatter']['median']:8.3f} "
              f"{f(j, 'z_spread', 2):>15s} | {f(o, 'offset', 3):>22s} {o['scatter']['median']:8.3f} "
              f"{f(o, 'z_spread', 2):>15s}")
    print("\nper survey, robust z-spread of its calibrated [Fe/H] against the truth (median over seeds):")
    for s_ in runs[0]["survey_z_spread"]["joint"]:
        j = np.median([r["survey_z_spread"]["joint"].get(s_, np.nan) for r in runs])
        o = np.median([r["survey_z_spread"]["reference_only"].get(s_, np.nan) for r in runs])
        print(f"  {s_:8s} joint {j:.2f}   reference-only {o:.2f}")
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / "bench_labels.json"
    out.write_text(json.dumps({"n_stars": args.n_stars, "seeds": args.seeds, "summary": s, "runs": runs},
                              indent=1, default=float))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
