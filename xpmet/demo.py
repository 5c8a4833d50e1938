"""``xpmet demo``: the whole system end to end on a simulated sky, in a database of its own.

simulate -> load Gaia sources, XP spectra and four surveys -> crossmatch -> homogenise labels ->
export -> train -> evaluate -> predict -> cone query, then a short report and plots. Every number
in the report comes from the step that produced it; a failing step stops the demo with its error.

The demo never touches your own database: it runs an embedded cluster under OUT/home (the data
are simulated) and hands that database's URL to every library call explicitly (the environment
is left alone). Explore it afterwards with  XPMET_HOME=OUT/home xpmet query cone ...
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xpmet.errors import XpmetError

MARKER = ".xpmet-demo"


@dataclass
class Report:
    """What the demo did: step timings, counts, zero points, metrics, files."""
    out: Path
    steps: list = field(default_factory=list)      # (name, seconds, status)
    counts: dict = field(default_factory=dict)
    zero_points: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)

    def text(self) -> str:
        L = [f"xpmet demo report (SIMULATED data) in {self.out}", ""]
        L.append("steps:")
        for name, sec, status in self.steps:
            L.append(f"  {name:62s} {sec:6.1f} s  {status}")
        L.append(f"  {'total':62s} {sum(s for _, s, _ in self.steps):6.1f} s")
        L += ["", "counts:"] + [f"  {k:34s} {v:,}" if isinstance(v, int) else f"  {k:34s} {v}"
                                for k, v in self.counts.items()]
        if self.zero_points:
            L += ["", "survey zero points for [Fe/H] (survey minus reference scale; injected = truth of the simulation):",
                  f"  {'survey':8s} {'status':13s} {'zero point':>10s} {'error':>7s} {'injected':>9s} {'N':>5s}"]
            for z in self.zero_points:
                f = lambda v, p=3: "" if v is None else f"{v:+.{p}f}"  # noqa: E731
                L.append(f"  {z['survey']:8s} {z['status']:13s} {f(z['zero_point']):>10s} "
                         f"{'' if z['zero_point_err'] is None else format(z['zero_point_err'], '.3f'):>7s} "
                         f"{f(z.get('injected')):>9s} {z['n_stars']:5d}")
        if self.metrics:
            L += ["", "metrics of [Fe/H] against the simulation's truth (bias = median residual, "
                  "scatter = robust std):"]
            for k, m in self.metrics.items():
                L.append(f"  {k:44s} n={m['n']:6d}  bias {m['bias']:+.3f}  scatter {m['scatter']:.3f} dex")
        L += ["", "files:"] + [f"  {k:34s} {v}" for k, v in self.files.items()]
        return "\n".join(L)


def _robust(res) -> dict:
    res = np.asarray(res, float)
    res = res[np.isfinite(res)]
    if not len(res):
        return {"n": 0, "bias": float("nan"), "scatter": float("nan")}
    q16, q50, q84 = np.percentile(res, [16, 50, 84])
    return {"n": int(len(res)), "bias": float(q50), "scatter": float((q84 - q16) / 2)}


class Demo:
    def __init__(self, out, n_stars=20000, seed=1, epochs=60, say=print, progress=True):
        self.out = Path(out).resolve()
        self.n_stars, self.seed, self.epochs = n_stars, seed, epochs
        self.say, self.progress = say, progress
        self.report = Report(self.out)
        self.sky = self.out / "sky"
        self.home = self.out / "home"
        self.plots = self.out / "plots"

    # -- plumbing ----------------------------------------------------------------------------
    def step(self, name, fn):
        """Run one step, saying what it does and timing it; a failure stops the demo with its error."""
        self.say(f"==> {name}")
        t0 = time.perf_counter()
        result = fn()
        sec = time.perf_counter() - t0
        self.report.steps.append((name, sec, "ok"))
        self.say(f"    ({sec:.1f} s)")
        return result

    def prepare(self):
        if self.out.exists() and any(self.out.iterdir()):
            if not (self.out / MARKER).exists():
                raise XpmetError(f"{self.out} exists and is not an earlier demo's folder; choose another --out")
            self.say(f"    removing the previous demo in {self.out}")
            from xpmet.db.cluster import Cluster
            if self.home.exists():
                Cluster(self.home).destroy()
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / MARKER).write_text("created by xpmet demo; `xpmet demo` may delete this folder\n")
        self.plots.mkdir()

    # -- steps -------------------------------------------------------------------------------
    def simulate(self):
        from xpmet.simulate import DEFAULT_SURVEYS, simulate
        simulate(self.sky, n_stars=self.n_stars, seed=self.seed, surveys=DEFAULT_SURVEYS,
                 progress=self.progress)
        self.report.files["simulated sky"] = str(self.sky)

    def database(self):
        # the demo's own embedded database, whatever the user has configured
        from xpmet.db.cluster import Cluster
        from xpmet.db.engine import connect, ensure_schema
        cluster = Cluster(self.home)
        cluster.start()
        self.url = cluster.url()
        ensure_schema(self.url)
        self.engine = connect(self.url)
        self.report.files["database (XPMET_HOME)"] = str(self.home)

    def load_gaia(self):
        from xpmet.etl.gaia import load_gaia_source as load
        load(self.sky / "gaia_source", progress=self.progress, url=self.url)
        self.report.counts["Gaia sources"] = self._count("xpmet.gaia_source")

    def load_xp(self):
        from xpmet.etl.xp_loader import load_xp as load
        # Without the correlations (12x less data, a quicker demo): the demo's estimator then degrades its
        # training spectra with diagonal noise (its config.json says so); `xpmet etl xp` loads them by default.
        load(self.sky / "xp_continuous", correlations=False, progress=self.progress, url=self.url)
        self.report.counts["XP spectra"] = self._count("xpmet.xp_continuous")

    def load_surveys(self):
        from xpmet.etl.survey import load_survey as load
        from xpmet.simulate import survey_files
        for name, path in survey_files(self.sky).items():
            for r in load(name, [path], progress=False, url=self.url):
                # from the table, not the load result: a file skipped as already loaded reports no rows
                n, ok = self._survey_rows(name)
                state = "already loaded, skipped" if r.skipped else "loaded"
                self.say(f"    {name}: {n} rows ({state}), {ok} pass the survey's quality flags")
                self.report.counts[f"{name} rows (quality ok)"] = f"{n:,} ({ok:,})"

    def crossmatch(self):
        from xpmet.xmatch import XmatchParams, run_xmatch
        r = run_xmatch(XmatchParams(), url=self.url, progress=self.progress)
        self.say(f"    {r.version}: {r.n_matched} of {r.n_rows} survey rows matched")
        self.report.counts["survey rows matched to Gaia"] = f"{r.n_matched:,} of {r.n_rows:,}"

    def labels(self):
        from xpmet.labels import refresh, zero_points
        s = refresh("gbs", engine=self.engine)
        self.report.counts["stars with homogenised labels"] = int(s["n_labels"])
        self.report.counts["training_set rows"] = self._count("xpmet.training_set")
        injected = json.loads((self.sky / "survey_truth.json").read_text())
        for z in zero_points(self.engine):
            if z["label"] == "feh":
                z = dict(z, injected=injected.get(z["survey"], {}).get("offset", {}).get("feh"))
                self.report.zero_points.append(z)

    def export(self):
        from xpmet.ml.export import ExportOptions, export
        res = export(self.out / "train.h5", ExportOptions(seed=self.seed), progress=self.progress, url=self.url)
        for k, v in res["n_by_split"].items():
            self.report.counts[f"exported {k}"] = int(v)
        self.report.files["training data (HDF5)"] = str(res["path"])

    def train(self):
        from xpmet.ml.train import TrainConfig, train
        cfg = TrainConfig(kind="estimator", hidden=(64, 64), epochs=self.epochs, batch_size=128, lr=3e-3,
                          patience=10, seed=self.seed, device="auto", name="demo-estimator")
        self.model = Path(train(self.out / "train.h5", self.out / "model", cfg, url=self.url))
        self.report.files["model"] = str(self.model)

    def evaluate(self):
        from xpmet.ml.evaluate import evaluate
        res = evaluate(self.model, self.out / "train.h5", self.sky / "truth.fits", self.plots / "evaluation",
                       max_truth=5000, url=self.url)
        for name, key in (("test split vs survey labels", "test"), ("test split vs truth", "test_vs_truth"),
                          ("never-surveyed stars vs truth", "never_surveyed")):
            m = res.get(key, {}).get("overall", {}).get("feh")
            if m and m.get("n"):
                self.report.metrics[f"evaluate: {name}"] = {"n": int(m["n"]), "bias": m["bias"],
                                                            "scatter": m["scatter"]}
        self.report.files["evaluation plots"] = str(self.plots / "evaluation")

    def predict(self):
        from xpmet.predict import predict
        r = predict(self.model, progress=self.progress, url=self.url)
        self.say(f"    model {r.model_id}: {r.written:,} predictions ({r.rows_per_second:,.0f} stars/s)")
        self.report.counts["predictions written"] = r.written
        self.report.counts["predictions recommended"] = self._count(
            "xpmet.predictions", f"recommended AND model_id = {int(r.model_id)}")  # this model's, not every model's
        self._truth_check()
        self._sky_map()

    def cone(self):
        from xpmet import query
        ra, dec = self._busiest_field()
        t = query.cone(ra, dec, 5.0, recommended=True, url=self.url)
        path = query.write_table(t, self.out / "cone.ecsv", overwrite=True)
        self.say(f"    cone of 5 deg around (RA {ra:.2f}, Dec {dec:.2f}): {len(t)} recommended stars -> {path}")
        if len(t):
            self.say("\n".join("    " + line for line in
                               t["source_id", "ra", "dec", "phot_g_mean_mag", "feh", "feh_err"].pformat(max_lines=8)))
        self.report.counts["cone query rows (recommended)"] = len(t)
        self.report.files["cone query result"] = str(path)
        self.cone_args = (ra, dec)

    # -- helpers -----------------------------------------------------------------------------
    def _survey_rows(self, name) -> tuple[int, int]:
        from xpmet.db.engine import raw_connect
        with raw_connect(self.url) as c:
            n, ok = c.execute("SELECT count(*), count(*) FILTER (WHERE ss.quality_ok) FROM xpmet.survey_star ss "
                              "JOIN xpmet.survey s USING (survey_id) WHERE s.name = %s", (name,)).fetchone()
        return int(n), int(ok)

    def _count(self, table, where="true"):
        from xpmet.db.engine import raw_connect
        with raw_connect(self.url) as c:
            return int(c.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0])

    def _metallicity(self):
        from xpmet.db.engine import raw_connect
        with raw_connect(self.url) as c:
            rows = c.execute("SELECT source_id, ra, dec, feh, recommended, l, b FROM xpmet.metallicity").fetchall()
        cols = list(zip(*rows))
        self.galactic = (np.array(cols[5], float), np.array(cols[6], float))
        return (np.array(cols[0], np.int64), np.array(cols[1], float), np.array(cols[2], float),
                np.array(cols[3], float), np.array(cols[4], bool))

    def _truth_check(self):
        """Predictions as stored in the database, against the simulation's true [Fe/H]."""
        from astropy.table import Table
        truth = Table.read(self.sky / "truth.fits")
        sid, _, _, feh, rec = self._metallicity()
        order = np.argsort(truth["source_id"])
        tsid = np.asarray(truth["source_id"])[order]
        idx = np.clip(np.searchsorted(tsid, sid), 0, len(tsid) - 1)
        ok = tsid[idx] == sid
        tfeh = np.asarray(truth["feh"], float)[order][idx]
        self.report.metrics["database predictions vs truth (all)"] = _robust((feh - tfeh)[ok])
        self.report.metrics["database predictions vs truth (recommended)"] = _robust((feh - tfeh)[ok & rec])

    def _busiest_field(self):
        _, ra, dec, _, _ = self._metallicity()
        h, xe, ye = np.histogram2d(ra, dec, bins=[36, 18], range=[[0, 360], [-90, 90]])
        i, j = np.unravel_index(np.argmax(h), h.shape)
        return float((xe[i] + xe[i + 1]) / 2), float((ye[j] + ye[j + 1]) / 2)

    def _sky_map(self):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from scipy.stats import binned_statistic_2d
        _, ra, dec, feh, rec = self._metallicity()
        lon_deg, lat_deg = self.galactic
        frame = "Galactic l, b"
        if not np.isfinite(lon_deg).all():  # sources loaded without l, b: use RA, Dec
            lon_deg, lat_deg, frame = ra, dec, "RA, Dec"
        keep = rec & np.isfinite(feh)
        if not keep.any():
            return
        lon = np.radians(((lon_deg[keep] + 180) % 360) - 180)
        lat = np.radians(lat_deg[keep])
        stat = binned_statistic_2d(lon, lat, feh[keep], "mean", bins=[36, 18],
                                   range=[[-np.pi, np.pi], [-np.pi / 2, np.pi / 2]])
        fig = plt.figure(figsize=(9, 5))
        ax = fig.add_subplot(111, projection="mollweide")
        mesh = ax.pcolormesh(stat.x_edge, stat.y_edge, stat.statistic.T, cmap="viridis", shading="flat")
        fig.colorbar(mesh, ax=ax, orientation="horizontal", pad=0.08, label="mean predicted [Fe/H] (recommended stars)")
        ax.set_title(f"xpmet demo (SIMULATED sky): mean [Fe/H] of {keep.sum():,} stars ({frame}, 0 at centre)")
        ax.grid(True, alpha=0.3)
        path = self.plots / "sky_mean_feh.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.report.files["sky map of mean [Fe/H]"] = str(path)

    # -- the whole run -----------------------------------------------------------------------
    def run(self) -> Report:
        try:
            return self._run()
        finally:
            from xpmet.db.cluster import Cluster
            demo_db = Cluster(self.home)
            if demo_db.initialised():
                demo_db.stop()  # leave no server running; any xpmet command restarts it

    def _run(self) -> Report:
        self.step("prepare the demo folder", self.prepare)
        self.step(f"simulate a sky of {self.n_stars:,} stars with XP (+ surveys, truth)", self.simulate)
        self.step("start the demo's embedded PostgreSQL + q3c, migrate", self.database)
        self.step("load Gaia sources (xpmet etl gaia-source)", self.load_gaia)
        self.step("load XP spectra (xpmet etl xp)", self.load_xp)
        self.step("load APOGEE, GALAH, LAMOST and GBS (xpmet etl survey)", self.load_surveys)
        self.step("crossmatch surveys to Gaia (xpmet xmatch)", self.crossmatch)
        self.step("homogenise labels on the GBS scale (xpmet labels)", self.labels)
        self.step("export the training set to HDF5 (xpmet export)", self.export)
        self.step(f"train an estimator, {self.epochs} epochs max (xpmet train)", self.train)
        self.step("evaluate against survey labels and truth (xpmet evaluate)", self.evaluate)
        self.step("predict every XP star into the database (xpmet predict)", self.predict)
        self.step("cone query on xpmet.metallicity (xpmet query cone)", self.cone)
        (self.out / "report.txt").write_text(self.report.text() + "\n")
        self.report.files["this report"] = str(self.out / "report.txt")
        return self.report


def run_demo(out="xpmet-demo", n_stars: int = 20000, seed: int = 1, epochs: int = 60, say=print,
             progress: bool = True) -> Report:
    """Run the end-to-end demo into folder ``out``; returns the Report (also written to out/report.txt)."""
    return Demo(out, n_stars=n_stars, seed=seed, epochs=epochs, say=say, progress=progress).run()
