"""Scale rehearsal: a simulated sky through the whole pipeline, as the real CLI runs it, with the cost
of every stage and a projection to the full Gaia DR3 release.

Each stage is the real command (`python -m xpmet ...`) in a throw-away XPMET_HOME, with
`--cluster local:N` where the command takes it (the Dask path). Per stage it reports:

  * wall seconds and rows/s;
  * busy CPU-seconds per star, split into client (the command and every process it starts: Dask
    workers, torch) and server (every PostgreSQL process of the cluster, live or exited);
  * the peak resident memory of the largest client process.

From the CPU-seconds per row it projects the full release (219 M XP stars, 1.8 B Gaia sources,
survey rows scaled like the simulation's) onto a stated cluster: client work spread over the
worker cores, server work over the database server's cores; whichever side needs longer bounds
the stage, which says where the database server becomes the bottleneck.

    .venv/bin/python benchmarks/bench_scale.py                       # 1,000,000 XP stars (hours here)
    .venv/bin/python benchmarks/bench_scale.py --n-stars 20000 --cluster local:2 --cones 50

Fixed costs (interpreter and library start-up, a Dask cluster's start) are in every stage's figures:
at small --n-stars they dominate the CPU per row. For the loaders and predict, a re-run that finds
everything done measures them, and the projection takes them out; for the other stages, project
from a large run. The sky is
SIMULATED (xpmet simulate); its numbers measure the machinery, not the science.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cluster import server_cpu  # noqa: E402  (one way of counting the server's CPU)

FULL_XP = 219_000_000
FULL_SOURCES = 1_811_709_771
#: survey rows of the catalogues xpmet ships descriptors for, roughly (LAMOST DR8 LRS ~7 M, GSP-Spec
#: 5.6 M, APOGEE DR17 0.73 M, GALAH DR3 0.59 M, RAVE DR6 0.5 M, SEGUE 0.4 M, Gaia-ESO 0.1 M):
#: survey loads, the crossmatch, export and training scale with it, not with the XP stars
FULL_SURVEY_ROWS = 15_000_000


def server_cpu_seconds(data_dir: Path) -> float:
    """CPU time of the cluster so far (bench_cluster.server_cpu: the postmaster, its reaped and live
    backends)."""
    pid_file = data_dir / "postmaster.pid"
    return server_cpu(int(pid_file.read_text().split()[0])) if pid_file.exists() else 0.0


class Stage:
    def __init__(self, name, rows, wall, client_cpu, server_cpu, peak_mb):
        self.name, self.rows, self.wall = name, rows, wall
        self.client_cpu, self.server_cpu, self.peak_mb = client_cpu, server_cpu, peak_mb
        self.fixed_client = self.fixed_server = 0.0   # a re-run that finds nothing to do: start-up costs

    def as_dict(self):
        n = max(self.rows, 1)
        return {"stage": self.name, "rows": self.rows, "wall_s": round(self.wall, 2),
                "fixed_client_cpu_s": round(self.fixed_client, 2), "fixed_server_cpu_s": round(self.fixed_server, 2),
                "rows_per_s": round(self.rows / self.wall, 1) if self.wall else None,
                "client_cpu_s_per_row": self.client_cpu / n, "server_cpu_s_per_row": self.server_cpu / n,
                "peak_client_rss_mb": round(self.peak_mb, 1)}


class Rehearsal:
    def __init__(self, work: Path, cluster: str | None):
        self.work, self.cluster = work, cluster
        self.env = {**os.environ, "XPMET_HOME": str(work / "home"), "PYTHONUNBUFFERED": "1"}
        self.env.pop("XPMET_DATABASE_URL", None)
        self.stages: list[Stage] = []

    def start_database(self):
        """Start the rehearsal's cluster; its data folder and URL are asked once."""
        def xpmet(*args):
            return subprocess.run([sys.executable, "-m", "xpmet", *args], env=self.env, check=True,
                                  capture_output=True, text=True).stdout
        xpmet("db", "start")
        cluster = next(line.split(None, 1)[1] for line in xpmet("db", "status").splitlines()
                       if line.startswith("cluster"))
        self.data = Path(cluster.strip()) / "data"
        self.url = xpmet("db", "url").strip()

    def count(self, sql) -> int:
        return int(subprocess.run(["psql", "-Atc", sql, self.url], capture_output=True, text=True).stdout.strip() or 0)

    def fixed(self, *args, dask=False):
        """The CPU of the last stage's command run again (everything already done: files skipped,
        stars predicted): what it costs whatever the rows, subtracted before projecting."""
        stage = self.stages[-1]
        self.run(stage.name + " (again)", 0, *args, dask=dask, quiet=True)
        again = self.stages.pop()
        stage.fixed_client, stage.fixed_server = again.client_cpu, again.server_cpu

    def run(self, name, rows, *args, dask=False, quiet=False):
        """One CLI command; its client CPU comes from RUSAGE_CHILDREN (the command and all it waited for).
        ``rows`` may be a callable, evaluated once the command has run (rows it loaded)."""
        cmd = [sys.executable, "-m", "xpmet", *map(str, args)]
        if dask and self.cluster:
            cmd += ["--cluster", self.cluster]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        s0 = server_cpu_seconds(self.data)
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=self.env, cwd=self.work, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"{name}: {' '.join(cmd)} exited {r.returncode}\n{r.stderr[-2000:]}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        client = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        server = server_cpu_seconds(self.data) - s0
        stage = Stage(name, rows() if callable(rows) else rows, wall, client, server, after.ru_maxrss / 1024)
        self.stages.append(stage)
        if quiet:
            return r.stdout
        d = stage.as_dict()
        print(f"{name:14s} {stage.rows:>10,d} rows {wall:8.1f} s  {d['rows_per_s'] or 0:>10,.0f} rows/s  "
              f"client {d['client_cpu_s_per_row'] * 1e3:7.3f} ms/row  server {d['server_cpu_s_per_row'] * 1e3:7.3f} ms/row",
              flush=True)
        return r.stdout


def projection(stages: list[Stage], n_xp: int, n_sources: int, n_survey: int, nodes: int, cores: int,
               db_cores: int, shared: bool = False) -> list[dict]:
    """Hours per stage for the full release: client CPU over nodes x cores, server CPU over db_cores
    (``shared``: one machine of ``cores`` runs both), start-up costs taken out. gaia_source rows scale
    with the release's sources, XP loading and predict with its XP stars, the rest with survey rows."""
    out = []
    for s in stages:
        scale = (FULL_SOURCES / n_sources if s.name == "etl gaia" else FULL_XP / n_xp
                 if s.name in ("etl xp", "predict") else FULL_SURVEY_ROWS / n_survey)
        client = max(s.client_cpu - s.fixed_client, 0.0)
        server = max(s.server_cpu - s.fixed_server, 0.0)
        if shared:
            hours = (client + server) * scale / cores / 3600
            out.append({"stage": s.name, "hours": round(hours, 2), "bound_by": "cores"})
            continue
        client_h = client * scale / (nodes * cores) / 3600
        server_h = server * scale / db_cores / 3600
        out.append({"stage": s.name, "client_hours": round(client_h, 2), "server_hours": round(server_h, 2),
                    "hours": round(max(client_h, server_h), 2),
                    "bound_by": "database server" if server_h > client_h else "workers"})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-stars", type=int, default=1_000_000, help="XP stars (as many fainter sources again)")
    ap.add_argument("--cluster", default="local:2", help="Dask cluster for the stages that take one ('' = none)")
    ap.add_argument("--epochs", type=int, default=20, help="training epochs (the rehearsal measures cost)")
    ap.add_argument("--cones", type=int, default=100, help="random 0.5-degree cone queries to time")
    ap.add_argument("--nodes", type=int, default=8, help="projection: worker nodes")
    ap.add_argument("--cores", type=int, default=32, help="projection: cores per worker node")
    ap.add_argument("--db-cores", type=int, default=64, help="projection: database server cores")
    ap.add_argument("--workdir", type=Path, help="keep the sky and database here (default: a temporary folder)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    a = ap.parse_args(argv)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="xpmet-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    rh = Rehearsal(work, a.cluster or None)
    try:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "xpmet", "simulate", work / "sky", "--n-stars", str(a.n_stars),
                        "--seed", "1", "--overwrite"], env=rh.env, check=True, capture_output=True)
        print(f"simulate       {a.n_stars:>10,d} XP stars in {time.perf_counter() - t0:.0f} s (not a pipeline stage)")
        rh.start_database()
        sky = work / "sky"
        rh.run("etl gaia", lambda: rh.count("SELECT count(*) FROM xpmet.gaia_source"),
               "etl", "gaia-source", sky / "gaia_source", dask=True)
        n_sources = rh.stages[-1].rows
        rh.fixed("etl", "gaia-source", sky / "gaia_source", dask=True)
        rh.run("etl xp", a.n_stars, "etl", "xp", sky / "xp_continuous", dask=True)
        rh.fixed("etl", "xp", sky / "xp_continuous", dask=True)
        from xpmet.simulate import survey_files
        for name, path in survey_files(sky).items():
            rows = f"SELECT count(*) FROM xpmet.survey_star JOIN xpmet.survey USING (survey_id) WHERE name = '{name}'"
            rh.run(f"etl {name}", lambda sql=rows: rh.count(sql), "etl", "survey", name, path, dask=True)
            rh.fixed("etl", "survey", name, path, dask=True)
        survey_rows = rh.count("SELECT count(*) FROM xpmet.survey_star")
        rh.run("xmatch+labels", survey_rows, "xmatch")
        n_train = rh.count("SELECT count(*) FROM xpmet.training_set")
        rh.run("export", n_train, "export", work / "train.h5", dask=True)
        rh.run("train", n_train, "train", work / "train.h5", "--out", work / "model", "--epochs", a.epochs,
               "--threads", 1)
        rh.run("predict", a.n_stars, "predict", "--model", work / "model", dask=True)
        rh.fixed("predict", "--model", work / "model", dask=True)
        # cone latency through the CLI's library path (one process, pooled connection)
        code = ("import json, statistics, time, numpy as np\nfrom xpmet import query\n"
                f"rng = np.random.default_rng(2); lat = []\n"
                f"for _ in range({a.cones}):\n"
                "    ra, dec = rng.uniform(0, 360), np.degrees(np.arcsin(rng.uniform(-1, 1)))\n"
                "    t = time.perf_counter(); query.cone(ra, dec, 0.5); lat.append(time.perf_counter() - t)\n"
                "lat.sort(); print(json.dumps({'median_ms': 1e3 * statistics.median(lat), "
                "'p95_ms': 1e3 * lat[int(0.95 * (len(lat) - 1))]}))")
        cones = json.loads(subprocess.run([sys.executable, "-c", code], env=rh.env, capture_output=True,
                                          text=True, check=True).stdout.strip().splitlines()[-1])
        print(f"cone 0.5 deg   median {cones['median_ms']:.1f} ms, p95 {cones['p95_ms']:.1f} ms over {a.cones} cones")
        proj_cluster = projection(rh.stages, a.n_stars, n_sources, survey_rows, a.nodes, a.cores, a.db_cores)
        proj_one = projection(rh.stages, a.n_stars, n_sources, survey_rows, 1, a.db_cores, a.db_cores, shared=True)
        print(f"\nprojection to the full release ({FULL_XP:,} XP stars, {FULL_SOURCES:,} sources, "
              f"~{FULL_SURVEY_ROWS:,} survey rows; start-up costs taken out where a re-run measures them):")
        print(f"{'stage':14s} {a.nodes}x{a.cores} cores + {a.db_cores}-core db      one {a.db_cores}-core machine")
        for c, o in zip(proj_cluster, proj_one):
            print(f"{c['stage']:14s} {c['hours']:8.1f} h ({c['bound_by']:15s})   {o['hours']:8.1f} h")
        print(f"{'total':14s} {sum(p['hours'] for p in proj_cluster):8.1f} h"
              f"{'':21s}{sum(p['hours'] for p in proj_one):8.1f} h")
        result = {"n_stars": a.n_stars, "n_sources": n_sources, "survey_rows": survey_rows, "cluster": a.cluster,
                  "cpu_count": os.cpu_count(), "stages": [s.as_dict() for s in rh.stages], "cones": cones,
                  "projection": {"cluster": {"nodes": a.nodes, "cores": a.cores, "db_cores": a.db_cores,
                                             "stages": proj_cluster},
                                 "one_machine": {"cores": a.db_cores, "stages": proj_one}},
                  "note": "SIMULATED sky; shared 2-core machine: wall times are noisy, CPU-seconds per row less so"}
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(result, indent=1))
        return result
    finally:
        subprocess.run([sys.executable, "-m", "xpmet", "db", "stop"], env=rh.env, capture_output=True)
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
