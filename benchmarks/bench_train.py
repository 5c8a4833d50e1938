"""Benchmark of the estimator and emulator on a simulated sky with known truth (one command, throw-away database).

Runs: xpmet simulate -> etl -> xmatch/labels -> export -> train, then reports

1. per G bin on NEVER-SURVEYED stars: [Fe/H] robust scatter of the estimator (survey labels)
   against the truth, the same for a reference estimator trained on the TRUE labels of the same
   surveyed stars (ratio target <= 1.2), the Cramér–Rao bound of the simulator's noise model
   (Fisher information of a reference emulator trained on true labels, at the true labels, with
   each star's published coefficient covariance), the calibration spread of
   (pred - truth)/sigma (target 0.8-1.25) and the median bias (target < 0.03 dex);
2. the emulator: median reduced chi2 of the per-star fits on held-out stars (target < 1.5; the
   likelihood includes the emulator's learned model scatter) and the width of the synthetic CaHK
   residuals (emulated - observed, GaiaXPy) against the photometric noise (target <= 1.5x);
3. training throughput of xpmet's loop against a bare torch loop over in-memory tensors with the
   same model and batch size (target >= 0.8x), median of --repeats runs, samples/s and the
   projected time per epoch for 10 million stars;
4. the quality flags of the estimator on never-surveyed XP sources (the simulator's quasars and
   white dwarfs are among them, since no survey observes them): the share of non-stellar sources
   flagged (target >= 95 %), the share of genuine [Fe/H] < -2 stars that are ``recommended`` next to
   that of all stars (target: within 5 points), how often ``out_of_training_range`` fires on
   [Fe/H] < -2 stars inside the training labels' range, what each bit flags, and whether
   ``poor_fit`` picks out worse answers. ``--only flags`` trains the estimator alone and reports
   just this (a few minutes at --n-stars 8000).
5. ``--only estimator --seeds 7,8,9``: the pipeline once per seed (own sky, database, export), the
   default estimator and the true-label reference trained on each, and per G bin (9-12, 12-14,
   14-16, 16-17.65) on never-surveyed stars: [Fe/H] bias, robust scatter and its ratio to the
   reference, z-spread, recall and purity at [Fe/H] < -2 and < -2.5, the share of injected
   non-stellar sources flagged and of genuine [Fe/H] < -2 stars recommended next to all stars;
   each figure the median over the seeds with its range. Targets: |bias| <= 0.02, ratio <= 1.2 at
   G < 16, z-spread 0.8-1.25. Also per true-[Fe/H] bin the homogenised labels (view xpmet.labels)
   minus the truth: offset (target |offset| <= 0.03 dex), scatter, z-spread.

    .venv/bin/python benchmarks/bench_train.py --n-stars 20000 --workdir /tmp/bench_train
    .venv/bin/python benchmarks/bench_train.py --only estimator --seeds 7,8,9 --n-stars 60000
    .venv/bin/python benchmarks/bench_train.py --only flags --seeds 7,8,9 --n-stars 60000
    .venv/bin/python benchmarks/bench_train.py --only estimator --seed 7 --n-stars 60000 --train-seeds 1,2

Timings on a shared 2-core machine are noisy: compare the ratios, not the absolute numbers.
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
from xpmet.ml.config import AUGMENT_NOISE, HIDDEN, INPUTS


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-stars", type=int, default=20000, help="simulated Gaia sources with XP")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workdir", default="/tmp/xpmet_bench_train", help="simulation, database, models (wiped)")
    ap.add_argument("--seeds", help="comma-separated seeds: the pipeline per seed in WORKDIR/s<seed>, figures "
                    "aggregated (median and range); --only estimator or flags")
    ap.add_argument("--epochs", type=int, help="[xpmet train's default]")
    ap.add_argument("--hidden", default=",".join(map(str, HIDDEN["estimator"])), help="estimator widths")
    ap.add_argument("--emulator-hidden", default=",".join(map(str, HIDDEN["emulator"])))
    ap.add_argument("--ensemble", type=int, help="[xpmet train's default]")
    ap.add_argument("--patience", type=int, help="[xpmet train's default]")
    ap.add_argument("--augment", type=float, help="[xpmet train's default]")
    ap.add_argument("--inputs", choices=INPUTS, help="[xpmet train's default]")
    ap.add_argument("--valid-copies", type=int, help="[xpmet train's default]")
    ap.add_argument("--prior-weight", type=int, choices=(0, 1), help="[xpmet train's default]")
    ap.add_argument("--augment-noise", choices=AUGMENT_NOISE, help="[xpmet train's default]")
    ap.add_argument("--tag", default="", help="suffix of the model directories (experiments on one pipeline)")
    ap.add_argument("--train-seeds", default="",
                    help="--only estimator: also train the estimator with these comma-separated seeds on the same "
                         "sky and export (stability: runs that differ only in the training draw)")
    ap.add_argument("--max-truth", type=int, default=20000, help="never-surveyed stars scored (estimator)")
    ap.add_argument("--max-fit", type=int, default=3000, help="never-surveyed stars fitted (emulator)")
    ap.add_argument("--repeats", type=int, default=5, help="throughput runs (median reported)")
    ap.add_argument("--throughput-rows", type=int, default=100000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for everything (0: torch's default; on a shared 2-core machine "
                         "1 thread was 16x faster than 2)")
    ap.add_argument("--emulator-correlations", action="store_true",
                    help="train the emulators with the full XP covariance (exact, ~20x slower to train)")
    ap.add_argument("--skip-pipeline", action="store_true", help="reuse WORKDIR's database and train.h5")
    ap.add_argument("--only", choices=("all", "flags", "estimator"), default="all",
                    help="flags: train the estimator only and report the quality flags (section 4); estimator: "
                         "the estimator and its true-label reference, the per-G-bin table (section 5)")
    ap.add_argument("--nonstellar-fraction", type=float, default=0.017,
                    help="share of simulated XP sources that are quasars and white dwarfs")
    return ap.parse_args()


def step(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pipeline(a, work: Path):
    from click.testing import CliRunner
    from xpmet.cli import main
    from xpmet.db import migrate
    from xpmet.db.engine import libpq_url
    from xpmet.db.cluster import Cluster
    from xpmet.simulate import simulate, survey_files

    def run(*args):
        r = CliRunner().invoke(main, [str(x) for x in args], catch_exceptions=False)
        if r.exit_code:
            raise SystemExit(f"xpmet {' '.join(map(str, args))} failed:\n{r.output}")

    sim = work / "sim"
    step(f"simulate {a.n_stars} stars")
    simulate(sim, n_stars=a.n_stars, seed=a.seed, progress=False, nonstellar_fraction=a.nonstellar_fraction)
    Cluster(Path(os.environ["XPMET_HOME"])).start()
    migrate.upgrade(libpq_url(), "head")
    step("etl + xmatch")
    run("etl", "gaia-source", sim / "gaia_source")
    run("etl", "xp", sim / "xp_continuous")
    for name, path in survey_files(sim).items():
        run("etl", "survey", name, path)
    run("xmatch")
    step("export")
    from xpmet.ml.export import ExportOptions, export
    print(json.dumps(export(work / "train.h5", ExportOptions(seed=a.seed), progress=False)),
          file=sys.stderr)


def truth_override(truth):
    """Replace survey labels by the simulator's truth (errors 0) and ag by the true A0."""
    from astropy.table import Table
    from xpmet.ml.evaluate import truth_labels
    t = Table.read(truth)
    sid = np.asarray(t["source_id"], np.int64)
    order = np.argsort(sid)
    a0 = np.asarray(t["a0"], np.float64)[order]

    def f(arr):
        arr.labels = truth_labels({"source_id": sid, "labels": np.column_stack(
            [np.asarray(t[k], np.float64) for k in ("teff", "logg", "feh", "alpha_fe")])}, arr.source_id)
        arr.label_err = np.zeros_like(arr.labels)
        pos = np.clip(np.searchsorted(sid[order], arr.source_id), 0, len(sid) - 1)
        arr.ag = a0[pos]
        return arr
    return f


def cramer_rao(emu_dir, ns, truth_fn):
    """Per-star CR bound on [Fe/H] from the reference emulator at the true labels (and true A0)."""
    import torch
    from xpmet.ml.inference import load_predictor
    from xpmet.ml.models import fisher_sigma
    from xpmet.ml.normalise import emulator_params
    p = load_predictor(emu_dir)
    arr = truth_fn(ns)
    star = np.isfinite(arr.labels[:, :3]).all(1)  # the simulated quasars and white dwarfs have no labels
    full = np.full(len(arr), np.nan)
    arr = arr.subset(np.flatnonzero(star))
    d = lambda v: torch.as_tensor(np.asarray(v), dtype=torch.float64)  # noqa: E731
    params = d(p.norm.params.transform(emulator_params(p.norm, arr.labels, arr.ag)))
    out = []
    for i in range(0, len(arr), 2000):
        sl = slice(i, i + 2000)
        sig = fisher_sigma(p.members64[0], params[sl], d(arr.e[sl]), d(p.norm.x.mean), d(p.norm.x.std),
                           d(arr.corr[sl]))
        out.append(sig[:, 2].numpy() * p.norm.params.std[2])
    full[star] = np.concatenate(out) if out else []
    return full


def by_g(values, g, edges):
    return [float(np.nanmedian(values[(g >= lo) & (g < hi)])) if ((g >= lo) & (g < hi)).sum() >= 5 else None
            for lo, hi in zip(edges[:-1], edges[1:])]


def throughput(a, h5):
    """Samples/s of xpmet's training epoch vs a bare loop over in-memory tensors (same model, batch)."""
    import torch
    from xpmet.ml.models import estimator_inputs, heteroscedastic_nll
    from xpmet.ml.normalise import network_columns
    from xpmet.ml.train import Tensors, TrainConfig, Trainer, build_model, load_splits, train_epoch
    cfg = TrainConfig(kind="estimator", hidden=tuple(int(h) for h in a.hidden.split(",")), batch_size=a.batch_size)
    train, _, norm = load_splits(h5, cfg)
    reps = int(np.ceil(a.throughput_rows / len(train)))
    big = train.subset(np.tile(np.arange(len(train)), reps)[:a.throughput_rows])
    dev = torch.device("cpu")
    t = Tensors(big, norm, "estimator", dev)
    trainer = Trainer(cfg, norm, dev)
    # the bare loop's inputs: precomputed network inputs and targets, nothing else
    xs, es, _, _ = network_columns(norm, big)
    X = estimator_inputs(torch.as_tensor(xs, dtype=torch.float32), torch.as_tensor(es, dtype=torch.float32),
                         torch.as_tensor(big.missing, dtype=torch.float32)).contiguous()
    Y = torch.as_tensor(norm.labels.transform(big.labels), dtype=torch.float32)
    YE = torch.as_tensor(big.label_err / norm.labels.std, dtype=torch.float32)
    res = {"ours": [], "bare": [], "bare_minimal": []}
    for r in range(a.repeats):
        for which in ("bare_minimal", "bare", "ours"):
            torch.manual_seed(r)
            model = build_model(cfg, norm)
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
            gen = torch.Generator().manual_seed(r)
            t0 = time.perf_counter()
            if which == "ours":
                train_epoch(model, opt, torch.amp.GradScaler("cuda", enabled=False), trainer, t, cfg.batch_size,
                            gen, False, cfg.clip)
            else:
                perm = torch.randperm(len(X), generator=gen)
                for i in range(0, len(X), cfg.batch_size):
                    idx = perm[i:i + cfg.batch_size]
                    mu, ls = model(X[idx])
                    loss = heteroscedastic_nll(mu, ls, Y[idx], YE[idx])
                    opt.zero_grad()
                    loss.backward()
                    if which == "bare" and cfg.clip:  # the same optimiser step as xpmet's (clipping)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip, foreach=True)
                    opt.step()
            res[which].append(len(X) / (time.perf_counter() - t0))
    ours, bare = statistics.median(res["ours"]), statistics.median(res["bare"])
    minimal = statistics.median(res["bare_minimal"])
    return {"rows": len(X), "batch_size": cfg.batch_size, "hidden": list(cfg.hidden), "threads": torch.get_num_threads(),
            "ours_samples_per_s": ours, "bare_samples_per_s": bare, "ratio": ours / bare,
            "bare_minimal_samples_per_s": minimal, "ratio_vs_minimal": ours / minimal,
            "runs_ours": res["ours"], "runs_bare": res["bare"], "runs_bare_minimal": res["bare_minimal"],
            "projected_epoch_minutes_10M": 1e7 / ours / 60}


def train_options(a) -> dict:
    """The TrainConfig fields given on the command line (the rest: xpmet train's defaults)."""
    keys = ("epochs", "ensemble", "patience", "augment", "inputs", "valid_copies", "prior_weight", "augment_noise")
    out = {k: getattr(a, k) for k in keys if getattr(a, k) is not None}
    if "prior_weight" in out:
        out["prior_weight"] = bool(out["prior_weight"])
    return out


def main():
    a = parse()
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    if a.seeds:
        if a.only == "all":
            raise SystemExit("--seeds goes with --only estimator or --only flags")
        root, reports = Path(a.workdir), []
        for seed in (int(v) for v in a.seeds.split(",")):
            a.seed, a.workdir = seed, str(root / f"s{seed}")
            reports.append(run_one(a))
        agg = aggregate(reports) if a.only == "estimator" else aggregate_flags(reports)
        labels = aggregate_labels(reports) if a.only == "estimator" else None
        (root / f"report{a.tag}.json").write_text(json.dumps({"seeds": reports, "aggregate": agg,
                                                              "labels_aggregate": labels}, indent=1, default=float))
        if a.only == "estimator":
            print_table(agg, [r["seed"] for r in reports], train_options(a))
            print_labels(labels, [r["seed"] for r in reports])
        else:
            print(f"quality flags, median [min,max] of seeds {a.seeds}:")
            for k, (m, lo, hi) in agg.items():
                print(f"  {k:40s} {m:8.3f} [{lo:.3f}, {hi:.3f}]")
        return
    run_one(a)


def run_one(a):
    work = Path(a.workdir)
    if not a.skip_pipeline:
        if work.exists():
            from xpmet.db.cluster import Cluster
            if (work / "home").exists():
                try:
                    Cluster(work / "home").destroy()
                except Exception:  # a half-made cluster: the directory goes anyway
                    pass
            shutil.rmtree(work)
        work.mkdir(parents=True)
    os.environ["XPMET_HOME"] = str(work / "home")
    os.environ.pop("XPMET_DATABASE_URL", None)
    from xpmet.db.cluster import Cluster
    try:
        return run_benchmark(a, work)
    finally:
        Cluster(work / "home").stop()  # leave no server running


def run_benchmark(a, work: Path):
    t_start = time.time()
    if not a.skip_pipeline:
        pipeline(a, work)
    else:
        from xpmet.db.cluster import Cluster
        Cluster(work / "home").start()
    from xpmet.ml.evaluate import (G_BINS, compute_metrics, homogenised_vs_truth, never_surveyed, photometry_check,
                                   read_truth)
    from xpmet.ml.inference import load_predictor
    from xpmet.ml.train import TrainConfig, train
    from xpmet.ml import dataset as ds
    h5, truth_path = work / "train.h5", work / "sim" / "truth.fits"
    hidden = tuple(int(h) for h in a.hidden.split(","))
    ehidden = tuple(int(h) for h in a.emulator_hidden.split(","))
    tf = truth_override(truth_path)
    opts = train_options(a)
    eopts = {"epochs": 150} | {k: v for k, v in opts.items() if k == "epochs"}
    models = {
        "estimator": TrainConfig(kind="estimator", hidden=hidden, seed=a.seed, **opts),
        "reference_estimator": TrainConfig(kind="estimator", hidden=hidden, seed=a.seed, **opts),
        "emulator": TrainConfig(kind="emulator", hidden=ehidden, seed=a.seed, correlations=a.emulator_correlations,
                                **eopts),
        "reference_emulator": TrainConfig(kind="emulator", hidden=ehidden, seed=a.seed,
                                          correlations=a.emulator_correlations, **eopts),
    }
    if a.only == "flags":
        models = {"estimator": models["estimator"]}
    elif a.only == "estimator":
        models = {k: models[k] for k in ("estimator", "reference_estimator")}
    dirs = {name: work / (name + a.tag) for name in models}
    for name, cfg in models.items():
        if (dirs[name] / "weights.pt").exists():
            continue
        step(f"train {name}{a.tag}")
        shutil.rmtree(dirs[name], ignore_errors=True)
        train(h5, dirs[name], cfg, register=False, progress=False,
              label_override=tf if name.startswith("reference") else None)
    if a.only == "estimator":
        step("never-surveyed stars by G")
        report = {"seed": a.seed, "n_stars": a.n_stars, "attributes": ds.attributes(h5),
                  "bins": estimator_table(dirs["estimator"], dirs["reference_estimator"], truth_path, a.max_truth,
                                          a.seed),
                  "labels_vs_truth": homogenised_vs_truth(read_truth(truth_path)),
                  "epochs": {n: [h["epochs"] for h in json.loads((d / "history.json").read_text())]
                             for n, d in dirs.items()},
                  "train_seeds": {}}
        for s in (int(v) for v in a.train_seeds.split(",") if v.strip()):
            d = work / f"estimator_seed{s}{a.tag}"
            if not (d / "weights.pt").exists():
                step(f"train estimator, training seed {s}")
                shutil.rmtree(d, ignore_errors=True)
                train(h5, d, TrainConfig(kind="estimator", hidden=hidden, seed=s, **opts), register=False,
                      progress=False)
            report["train_seeds"][s] = estimator_table(d, dirs["reference_estimator"], truth_path, a.max_truth,
                                                       a.seed)
        report["seconds"] = time.time() - t_start
        (work / f"report{a.tag}.json").write_text(json.dumps(report, indent=1, default=float))
        print_table(aggregate([report]), [a.seed], opts)
        print_labels(aggregate_labels([report]), [a.seed])
        if report["train_seeds"]:
            for s, rows in {a.seed: report["bins"], **report["train_seeds"]}.items():
                print(f"training seed {s}: " + " | ".join(f"G {r['g']}: bias {r['bias']:+.3f}, z-spread "
                                                          f"{r['z_spread']:.2f}, ratio {r['ratio']:.2f}" for r in rows))
        return report
    step("quality flags")
    flags_report = flag_figures(dirs["estimator"], truth_path, a.max_truth, a.seed)
    if a.only == "flags":
        report = {"n_stars": a.n_stars, "seed": a.seed, "attributes": ds.attributes(h5), "flags": flags_report,
                  "seconds": time.time() - t_start}
        (work / "report.json").write_text(json.dumps(report, indent=1, default=float))
        print_flags(flags_report)
        print(f"report: {work / 'report.json'}  ({report['seconds']:.0f} s)")
        return report
    step("never-surveyed stars")
    truth = read_truth(truth_path)
    ns = never_surveyed(truth, a.max_truth, seed=a.seed)
    ns_corr = ds.read_db(ns.source_id, correlations=True)
    ns_corr.labels, ns_corr.label_err = ns.labels, ns.label_err
    report = {"n_stars": a.n_stars, "seed": a.seed, "attributes": ds.attributes(h5),
              "n_never_surveyed": len(ns)}
    preds = {}
    for name in ("estimator", "reference_estimator"):
        preds[name] = load_predictor(work / name).predict_arrays(ns)
        report[name] = compute_metrics(preds[name], ns.labels, ns.label_err, ns.g_mag)
    step("Cramér–Rao bound")
    cr = cramer_rao(work / "reference_emulator", ns_corr, tf)
    rows = []
    edges = np.asarray(G_BINS)
    crb = by_g(cr, ns_corr.g_mag, edges)
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        sel = [b for b in report["estimator"]["by_g"] if b["lo"] == lo]
        ref = [b for b in report["reference_estimator"]["by_g"] if b["lo"] == lo]
        if not sel or not ref:
            continue
        e, r = sel[0]["feh"], ref[0]["feh"]
        rows.append({"g": f"{lo:g}-{hi:g}", "n": e["n"], "scatter": e["scatter"], "reference_scatter": r["scatter"],
                     "ratio": e["scatter"] / r["scatter"], "cramer_rao": crb[i], "calibration": e["calibration"],
                     "bias": e["bias"], "median_err": e["median_err"]})
    report["feh_by_g"] = rows
    step("emulator fits")
    emu = load_predictor(work / "emulator")
    sub = ns_corr.subset(np.flatnonzero(np.isfinite(ns_corr.labels[:, 2]))[:a.max_fit])  # stars only
    pe = emu.predict_arrays(sub)
    report["emulator_never_surveyed"] = compute_metrics(pe, sub.labels, sub.label_err, sub.g_mag)
    test = ds.read(h5, "test", correlations=True)
    pt = emu.predict_arrays(test)
    report["emulator_test_median_rchi2"] = float(np.nanmedian(pt["fit_stat"]))
    report["emulator_never_surveyed_median_rchi2"] = float(np.nanmedian(pe["fit_stat"]))
    ph = photometry_check(emu, test)
    ph.pop("_arrays", None)
    report["photometry_survey_labels"] = ph
    ref_emu = load_predictor(work / "reference_emulator")
    ph2 = photometry_check(ref_emu, tf(ds.read(h5, "test", correlations=True)))
    ph2.pop("_arrays", None)
    report["photometry_true_labels"] = ph2
    step("throughput")
    report["throughput"] = throughput(a, h5)
    step("plots (xpmet evaluate)")
    from xpmet.ml.evaluate import evaluate
    evaluate(work / "estimator", h5, truth_path, emulator_dir=work / "emulator", max_truth=a.max_truth)
    evaluate(work / "emulator", h5, truth_path, max_truth=min(a.max_fit, 1000))
    report["plots"] = sorted(str(p) for p in work.glob("*/evaluation/*.png"))
    report["flags"] = flags_report
    report["seconds"] = time.time() - t_start
    (work / "report.json").write_text(json.dumps(report, indent=1, default=float))
    print_report(report, work)
    print_flags(flags_report)


#: the G bins of the estimator table (issue 12)
TABLE_G = (9.0, 12.0, 14.0, 16.0, 17.65)


def _never_surveyed_sources(truth_path, max_stars, seed):
    """Never-surveyed XP sources (stars and the injected non-stellar ones) from the database, with
    their true class and true (Teff, log g, [Fe/H]) as an (n, 3) array."""
    from astropy.table import Table
    from xpmet.ml import dataset as ds
    t = Table.read(truth_path)
    sid = np.asarray(t["source_id"], np.int64)
    surveyed = np.char.strip(np.asarray(t["surveys"]).astype(str)) != ""
    sel = np.flatnonzero(np.asarray(t["has_xp"], bool) & ~surveyed)
    if max_stars and sel.size > max_stars:
        sel = np.sort(np.random.default_rng(seed).choice(sel, max_stars, replace=False))
    arr = ds.read_db(sid[sel])
    order = np.argsort(sid)
    pos = order[np.searchsorted(sid[order], arr.source_id)]
    cls = np.asarray(t["source_class"]).astype(str)[pos] if "source_class" in t.colnames else np.full(len(arr), "star")
    return arr, cls, np.column_stack([np.asarray(t[k], np.float64)[pos] for k in ("teff", "logg", "feh")])


def estimator_table(est_dir, ref_dir, truth_path, max_stars, seed) -> list[dict]:
    """Per G bin (TABLE_G) figures of the estimator on never-surveyed sources against the truth."""
    from xpmet.ml.evaluate import robust_scatter
    from xpmet.ml.inference import load_predictor
    arr, cls, true3 = _never_surveyed_sources(truth_path, max_stars, seed)
    feh = true3[:, 2]
    p, r = load_predictor(est_dir).predict_arrays(arr), load_predictor(ref_dir).predict_arrays(arr)
    g, star = arr.g_mag, cls == "star"
    rows = []
    for lo, hi in zip(TABLE_G[:-1], TABLE_G[1:]):
        inb = (g >= lo) & (g < hi)
        s = inb & star & np.isfinite(p["feh"]) & np.isfinite(feh)
        res, ref_res = p["feh"][s] - feh[s], r["feh"][s] - feh[s]
        row = {"g": f"{lo:g}-{hi:g}", "n": int(s.sum()), "bias": float(np.median(res)) if s.any() else np.nan,
               "scatter": robust_scatter(res), "ref_scatter": robust_scatter(ref_res),
               "z_spread": robust_scatter(res / p["feh_err"][s]), "ref_bias": float(np.median(ref_res)) if s.any() else np.nan}
        row["ratio"] = row["scatter"] / row["ref_scatter"]
        for thr in (-2.0, -2.5):
            t_, q = feh[s] < thr, p["feh"][s] < thr
            row[f"recall{thr:g}"] = float((t_ & q).sum() / t_.sum()) if t_.any() else np.nan
            row[f"purity{thr:g}"] = float((t_ & q).sum() / q.sum()) if q.any() else np.nan
            row[f"n_true{thr:g}"] = int(t_.sum())
        ns = inb & ((cls == "quasar") | (cls == "white_dwarf"))
        row["nonstellar_n"] = int(ns.sum())
        row["nonstellar_flagged"] = float((~p["recommended"][ns]).mean()) if ns.any() else np.nan
        st, vmp = inb & star, inb & star & (feh < -2)
        row["recommended_all"] = float(p["recommended"][st].mean()) if st.any() else np.nan
        row["recommended_vmp"] = float(p["recommended"][vmp].mean()) if vmp.any() else np.nan
        rows.append(row)
    return rows


def _median_range(values) -> tuple:
    """(median, min, max) of the finite values; NaNs when there are none."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return (float(np.median(v)), float(v.min()), float(v.max())) if v.size else (np.nan,) * 3


def aggregate(reports) -> list[dict]:
    """Per bin and figure: median over seeds and (min, max)."""
    return [{"g": row["g"]} | {k: _median_range([rep["bins"][i][k] for rep in reports]) for k in row if k != "g"}
            for i, row in enumerate(reports[0]["bins"])]


def aggregate_flags(reports) -> dict:
    """--only flags: each scalar figure's median over seeds and (min, max)."""
    return {k: _median_range([rep["flags"][k] for rep in reports])
            for k, v0 in reports[0]["flags"].items() if isinstance(v0, (int, float))}


def aggregate_labels(reports) -> dict:
    """--only estimator: per true-[Fe/H] bin, the homogenised labels' figures, median and (min, max) over seeds."""
    first = reports[0]["labels_vs_truth"]
    return {b: {k: _median_range([rep["labels_vs_truth"][b][k] for rep in reports]) for k in first[b]}
            for b in first}


def _cell(t, fmt, ranges: bool) -> str:
    """A (median, min, max) figure as a table cell; the range only over several seeds."""
    m, lo, hi = t
    if not np.isfinite(m):
        return "n/a"
    return f"{m:{fmt}}" + (f" [{lo:{fmt}},{hi:{fmt}}]" if ranges else "")


def print_labels(agg, seeds):
    f = lambda t, fmt: _cell(t, fmt, len(seeds) > 1)  # noqa: E731
    print(f"homogenised labels (view xpmet.labels) minus truth by true [Fe/H], median [min,max] of seeds "
          f"{','.join(map(str, seeds))} (target: |offset| <= 0.03 dex in every bin)")
    print("| [Fe/H] | n | offset | scatter | z-spread |")
    print("|---|---|---|---|---|")
    for b, row in agg.items():
        print(f"| {b} | {f(row['n'], '.0f')} | {f(row['offset'], '+.3f')} | {f(row['scatter'], '.3f')} | "
              f"{f(row['z_spread'], '.2f')} |")


def print_table(agg, seeds, opts):
    f = lambda t, fmt: _cell(t, fmt, len(seeds) > 1)  # noqa: E731
    print(f"never-surveyed [Fe/H] by G, median [min,max] of seeds {','.join(map(str, seeds))} "
          f"(train options: {opts or 'defaults'})")
    cols = [("n", "n", ".0f"), ("bias", "bias", "+.3f"), ("scatter", "scatter", ".3f"),
            ("ref_scatter", "ref scatter", ".3f"), ("ratio", "ratio", ".2f"), ("z_spread", "z-spread", ".2f"),
            ("recall-2", "rec<-2", ".2f"), ("purity-2", "pur<-2", ".2f"), ("recall-2.5", "rec<-2.5", ".2f"),
            ("purity-2.5", "pur<-2.5", ".2f"), ("nonstellar_flagged", "nonstellar flagged", ".2f"),
            ("recommended_vmp", "rec. VMP", ".2f"), ("recommended_all", "rec. all", ".2f"),
            ("ref_bias", "ref bias", "+.3f")]
    print("| G | " + " | ".join(c[1] for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for row in agg:
        print(f"| {row['g']} | " + " | ".join(f(row[k], fmt) for k, _, fmt in cols) + " |")


def flag_figures(model_dir, truth_path, max_stars, seed) -> dict:
    """Quality flags of a model on never-surveyed XP sources, scored against the simulation's truth."""
    from xpmet.flags import PREDICTION_BITS
    from xpmet.ml.evaluate import OUTLIER, robust_scatter
    from xpmet.ml.inference import load_predictor
    arr, cls, true3 = _never_surveyed_sources(truth_path, max_stars, seed)
    feh = true3[:, 2]
    p = load_predictor(model_dir)
    out = p.predict_arrays(arr)
    qf, rec, g = out["quality_flags"], out["recommended"], arr.g_mag
    star = cls == "star"
    vmp = star & (feh < -2)
    has_bit = {name: (qf >> b & 1).astype(bool) for name, b in PREDICTION_BITS.items()}
    r = {"n": len(arr), "n_star": int(star.sum()), "n_vmp": int(vmp.sum()),
         "bits_share_of_stars": {k: float(v[star].mean()) for k, v in has_bit.items()},
         "bits_share_of_vmp": {k: float(v[vmp].mean()) if vmp.any() else float("nan") for k, v in has_bit.items()},
         "recommended_all_stars": float(rec[star].mean()), "recommended_vmp": float(rec[vmp].mean())}
    r["recommended_gap_points"] = 100 * (r["recommended_all_stars"] - r["recommended_vmp"])
    bright = g < 16
    r["recommended_all_stars_g16"] = float(rec[star & bright].mean())
    r["recommended_vmp_g16"] = float(rec[vmp & bright].mean()) if (vmp & bright).any() else float("nan")
    for c in ("quasar", "white_dwarf"):
        s = cls == c
        r[c] = {"n": int(s.sum()), "flagged": float((~rec[s]).mean()) if s.any() else float("nan"),
                "unlike_training": float(has_bit["unlike_training"][s].mean()) if s.any() else float("nan")}
    ns = (cls == "quasar") | (cls == "white_dwarf")
    r["nonstellar_flagged"] = float((~rec[ns]).mean()) if ns.any() else float("nan")
    r["nonstellar_unlike_training"] = float(has_bit["unlike_training"][ns].mean()) if ns.any() else float("nan")
    # the label check must not reject rare stars the training labels cover (in Teff, log g and [Fe/H]:
    # the simulated sky's blue horizontal-branch stars are hotter than any training star)
    inside = vmp & ((true3 >= p.norm.label_lo[:3]) & (true3 <= p.norm.label_hi[:3])).all(1)
    r["vmp_inside_training_range"] = int(inside.sum())
    r["out_of_training_range_on_vmp_inside"] = float(has_bit["out_of_training_range"][inside].mean()) \
        if inside.any() else float("nan")
    r["training_feh_range"] = [float(p.norm.label_lo[2]), float(p.norm.label_hi[2])]
    r["vmp_outside_training_range"] = int((vmp & ~inside).sum())
    r["out_of_training_range_on_vmp_outside"] = float(has_bit["out_of_training_range"][vmp & ~inside].mean()) \
        if (vmp & ~inside).any() else float("nan")
    # the stars the training labels cover: rare is not reason enough to withhold `recommended`
    r["recommended_vmp_inside"] = float(rec[inside].mean()) if inside.any() else float("nan")
    r["recommended_gap_points_inside"] = 100 * (r["recommended_all_stars"] - r["recommended_vmp_inside"])
    res = out["feh"] - feh
    # what withholding costs: the [Fe/H] error of the [Fe/H] < -2 stars outside the training labels'
    # range (hot blue horizontal-branch stars, stars below the lowest training [Fe/H]), flagged or not
    for name, m in (("flagged", vmp & ~inside & has_bit["out_of_training_range"]),
                    ("kept", vmp & ~inside & ~has_bit["out_of_training_range"])):
        r[f"vmp_outside_{name}_feh_bias"] = float(np.nanmedian(res[m])) if m.any() else float("nan")
    # poor_fit: are the flagged answers worse? (stars, both bands)
    z = res / out["feh_err"]
    ok = star & np.isfinite(res) & ~arr.missing.any(1)
    for name, m in (("poor_fit", ok & has_bit["poor_fit"]), ("not_poor_fit", ok & ~has_bit["poor_fit"])):
        r[name] = {"n": int(m.sum()), "feh_scatter": robust_scatter(res[m]), "z_spread": robust_scatter(z[m]),
                   "outlier_frac": float(np.mean(np.abs(res[m]) > OUTLIER["feh"])) if m.any() else float("nan")}
    return r


def print_flags(f):
    pct = lambda v: "  n/a" if v is None or not np.isfinite(v) else f"{100 * v:5.1f}%"  # noqa: E731
    print(f"quality flags on {f['n']} never-surveyed XP sources ({f['n_star']} stars, {f['n_vmp']} with [Fe/H] < -2):")
    print(f"  non-stellar flagged (not recommended): {pct(f['nonstellar_flagged'])} (target >= 95 %); "
          f"unlike_training alone {pct(f['nonstellar_unlike_training'])}; quasars {pct(f['quasar']['flagged'])} "
          f"of {f['quasar']['n']}, white dwarfs {pct(f['white_dwarf']['flagged'])} of {f['white_dwarf']['n']}")
    print(f"  recommended: all stars {pct(f['recommended_all_stars'])}, [Fe/H] < -2 {pct(f['recommended_vmp'])} "
          f"(gap {f['recommended_gap_points']:+.1f} points, target within 5); at G < 16: "
          f"{pct(f['recommended_all_stars_g16'])} vs {pct(f['recommended_vmp_g16'])}; [Fe/H] < -2 inside the "
          f"training labels' range {pct(f['recommended_vmp_inside'])} (gap {f['recommended_gap_points_inside']:+.1f})")
    print(f"  out_of_training_range on the {f['vmp_inside_training_range']} [Fe/H] < -2 stars inside the training "
          f"labels' range (Teff, log g, [Fe/H]; [Fe/H] {f['training_feh_range'][0]:.2f}..{f['training_feh_range'][1]:.2f}): "
          f"{pct(f['out_of_training_range_on_vmp_inside'])}; on the {f.get('vmp_outside_training_range')} outside it: "
          f"{pct(f.get('out_of_training_range_on_vmp_outside'))} (their median [Fe/H] error: flagged "
          f"{f.get('vmp_outside_flagged_feh_bias', np.nan):+.2f}, not flagged {f.get('vmp_outside_kept_feh_bias', np.nan):+.2f} dex)")
    print("  share of stars each bit flags: " + ", ".join(f"{k} {pct(v)}" for k, v in f["bits_share_of_stars"].items()))
    if "bits_share_of_vmp" in f:
        print("  ... of [Fe/H] < -2 stars: " + ", ".join(f"{k} {pct(v)}" for k, v in f["bits_share_of_vmp"].items()))
    a, b = f["poor_fit"], f["not_poor_fit"]
    print(f"  poor_fit: {a['n']} stars, [Fe/H] scatter {a['feh_scatter']:.3f}, outliers {pct(a['outlier_frac'])}, "
          f"z-spread {a['z_spread']:.2f}; others: scatter {b['feh_scatter']:.3f}, outliers {pct(b['outlier_frac'])}, "
          f"z-spread {b['z_spread']:.2f}")


def print_report(r, work):
    f = lambda v, fmt=".3f": "  n/a" if v is None else format(v, fmt)  # noqa: E731
    print(f"bench_train: {r['n_stars']} simulated XP stars (seed {r['seed']}), "
          f"{r['attributes'].get('n_by_split')} labelled, {r['n_never_surveyed']} never-surveyed scored")
    print("never-surveyed [Fe/H] by G:   n   scatter  ref(true labels)  ratio  Cramér-Rao  calib   bias   med.err")
    for row in r["feh_by_g"]:
        print(f"  G {row['g']:>10s} {row['n']:6d}   {f(row['scatter'])}    {f(row['reference_scatter'])}"
              f"          {f(row['ratio'], '.2f')}   {f(row['cramer_rao'])}      {f(row['calibration'], '.2f')}"
              f"  {row['bias']:+.3f}  {f(row['median_err'])}")
    o = r["estimator"]["overall"]["feh"]
    print(f"  overall: scatter {o['scatter']:.3f}, bias {o['bias']:+.3f}, calibration {o['calibration']:.2f}; "
          f"VMP recall {r['estimator']['vmp']['recall']:.2f} purity {r['estimator']['vmp']['purity']:.2f}")
    e = r["emulator_never_surveyed"]["overall"]["feh"]
    print(f"emulator: median reduced chi2 test {r['emulator_test_median_rchi2']:.2f}, never-surveyed "
          f"{r['emulator_never_surveyed_median_rchi2']:.2f}; fitted [Fe/H] scatter {e['scatter']:.3f} "
          f"calibration {e['calibration']:.2f}")
    for name in ("photometry_survey_labels", "photometry_true_labels"):
        p = r[name].get("CaHK")
        if p:
            print(f"  CaHK ({name.split('_', 1)[1]}): residual width {p['residual_width']:.3f} mag, "
                  f"noise {p['photometric_noise']:.3f} -> {p['ratio']:.2f}x (z width {p['z_width']:.2f}); "
                  f"std emulated {p['std_emulated']:.2f} vs observed {p['std_observed']:.2f}")
    t = r["throughput"]
    print(f"throughput ({t['rows']} rows, batch {t['batch_size']}, {t['threads']} threads): xpmet "
          f"{t['ours_samples_per_s']:,.0f}/s vs bare {t['bare_samples_per_s']:,.0f}/s = {t['ratio']:.2f}x "
          f"(bare without gradient clipping {t['bare_minimal_samples_per_s']:,.0f}/s = {t['ratio_vs_minimal']:.2f}x); "
          f"10M-star epoch {t['projected_epoch_minutes_10M']:.1f} min")
    print(f"report: {work / 'report.json'}  ({r['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
