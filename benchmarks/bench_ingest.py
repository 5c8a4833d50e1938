"""Busy CPU-seconds and wall time of ``xpmet etl xp`` against ``gzip -dc`` of the same files, in the same run.

    .venv/bin/python benchmarks/bench_ingest.py --rows 60000 --files 12 --repeats 3

Steps:
1. ``xpmet simulate`` a small sky (``--sim-stars`` XP sources, with correlations) unless ``--sim-dir``
   points at one. Simulating 200,000 XP sources takes far longer than loading them, so the
   simulated XP rows are replicated under shifted source_ids (each copy keeps the simulated
   row's text, gzip level 6; see :func:`replicate`) into ``--files`` files totalling ``--rows`` rows.
2. A throw-away embedded cluster (``--home``), so other work on the machine's default database is
   neither touched nor billed.
3. Baselines: ``gzip -dc FILES > /dev/null`` right before each load run (its CPU-seconds from getrusage; the
   efficiency is the median of the per-pair ratios, as the machine's load moves both), and a bare binary COPY of
   already-parsed, already-encoded rows into xpmet.xp_continuous (the server's CPU for it: its floor).
4. ``xpmet etl xp`` (the CLI in a subprocess, empty tables each time) with each ``--workers`` count, with
   and without ``--no-correlations``; then once more with every file already loaded (all skipped): the
   command's fixed cost (start-up, imports, hashing).
Busy CPU-seconds are counted for everything the load makes busy: the CLI and its worker processes
(getrusage of waited-for children) plus the PostgreSQL server (postmaster, backends, WAL writer,
checkpointer: benchmarks/bench_cluster.py's ``server_cpu``). Efficiency = gzip's CPU / the load's CPU
for the same rows (the target is >= 0.5). Medians of ``--repeats`` runs; JSON to benchmarks/results/.
The machine may be shared: wall times are noisy, CPU-seconds much less so.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_cluster import server_cpu  # noqa: E402

ALL_XP_ROWS = 219_197_643  # Gaia DR3 sources with XP continuous spectra
XPMET = [sys.executable, "-m", "xpmet"]


def simulate(outdir: Path, n_stars: int, seed: int) -> Path:
    if not (outdir / "xp_continuous").is_dir():
        subprocess.run([sys.executable, "-c", "import sys; from xpmet.simulate import simulate; "
                        "simulate(sys.argv[1], n_stars=int(sys.argv[2]), seed=int(sys.argv[3]), surveys=('gbs',), "
                        "faint_ratio=0)", str(outdir), str(n_stars), str(seed)],
                       check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return outdir / "xp_continuous"


def replicate(xp_dir: Path, outdir: Path, rows: int, files: int, level: int = 6) -> list[Path]:
    """``files`` bulk-style files of ~rows/files rows each, cycling the simulated rows with new source_ids.

    Compressing gigabytes of text again would take longer than the benchmark, so every file is a
    chain of gzip members (valid gzip; ``gzip -dc``, zlib and Arrow read it as one stream): the
    header, then per row a tiny member with the new source_id and the simulated row's remaining
    text, compressed once at ``level``. A row (~42 kB) is longer than gzip's 32 kB window, so
    compressing row by row costs little ratio compared with one stream.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    header, body = [], []
    for f in sorted(xp_dir.glob("*.csv.gz")):
        with gzip.open(f, "rt") as fh:
            lines = fh.read().splitlines()
        h = [ln for ln in lines if ln.startswith("#")]
        header = header or h + [lines[len(h)]]
        body += lines[len(h) + 1:]
    tails = [gzip.compress((ln[ln.index(","):] + "\n").encode(), level, mtime=0) for ln in body]
    head = gzip.compress(("\n".join(header) + "\n").encode(), level, mtime=0)
    per_file = -(-rows // files)
    out = []
    next_id = 1 << 35
    for k in range(files):
        path = outdir / f"XpContinuousMeanSpectrum_{k:06d}-{k:06d}.csv.gz"
        n = min(per_file, rows - k * per_file)
        if n <= 0:
            break
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as fh:
                fh.write(head)
                for i in range(n):
                    fh.write(gzip.compress(str(next_id + i).encode(), 1, mtime=0))
                    fh.write(tails[(k * per_file + i) % len(tails)])
            tmp.rename(path)
        next_id += n + 1000
        out.append(path)
    return out


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def gunzip_baseline(files) -> dict:
    """Wall and busy CPU-seconds of one ``gzip -dc`` over every file (output to /dev/null)."""
    c0, t0 = children_cpu(), time.perf_counter()
    with open(os.devnull, "wb") as null:
        subprocess.run(["gzip", "-dc", *map(str, files)], stdout=null, check=True)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": children_cpu() - c0}


def copy_baseline(files, postmaster, correlations=True) -> dict:
    """Wall and server CPU-seconds of a bare binary COPY of pre-parsed, pre-encoded rows (one transaction
    per file into xpmet.xp_continuous with its primary key): what the server spends at the least."""
    from xpmet.db.engine import raw_connect
    from xpmet.etl.xp_loader import TABLE, copy_columns
    from xpmet.io.pgcopy import copy_sql, encode
    from xpmet.io.xp_reader import read_xp
    import numpy as np
    cols = copy_columns(correlations)
    reset_tables()
    wall = server = 0.0
    with raw_connect() as conn:
        load_id = conn.execute("INSERT INTO xpmet.etl_load (kind, path, size_bytes, sha256, status) "
                               "VALUES ('bench', 'bench', 0, 'bench', 'running') RETURNING load_id").fetchone()[0]
        conn.commit()
        for f in files:
            parts = []
            for chunk in read_xp(f, correlations=correlations):
                data = dict(chunk.data, load_id=np.full(chunk.n, load_id, np.int32))
                parts.append(encode(cols, data))
            s0, t0 = server_cpu(postmaster), time.perf_counter()
            with conn.cursor() as cur:
                for p in parts:
                    with cur.copy(copy_sql(TABLE, cols)) as cp:
                        cp.write(p)
            conn.commit()
            wall += time.perf_counter() - t0
            server += server_cpu(postmaster) - s0
            del parts
        conn.execute(f"TRUNCATE {TABLE}")
        conn.execute("DELETE FROM xpmet.etl_load WHERE kind = 'bench'")
        conn.commit()
    return {"wall_s": wall, "server_cpu_s": server}


def reset_tables():
    from xpmet.db.engine import raw_connect
    with raw_connect() as conn:
        conn.execute("TRUNCATE xpmet.xp_continuous CASCADE")
        conn.execute("DELETE FROM xpmet.etl_load WHERE kind = 'xp'")
        conn.commit()
        conn.autocommit = True
        conn.execute("CHECKPOINT")  # do not bill the next run for the previous run's dirty pages


# Runs the CLI and reports its (and its workers') CPU and peak memory: a small wrapper process, so the
# peak is not the benchmark's own (inherited through fork) and the wrapper's start-up is not counted.
WRAPPER = ("import json, resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
           "r = resource.getrusage(resource.RUSAGE_CHILDREN); "
           "print(json.dumps({'rc': p.returncode, 'out': p.stdout + p.stderr, 'cpu_s': r.ru_utime + r.ru_stime, "
           "'maxrss_mb': r.ru_maxrss / 1024}))")


def etl_run(files, workers: int, correlations: bool, postmaster: int, reset: bool = True) -> dict:
    """One ``xpmet etl xp`` (CLI subprocess): wall, client+workers CPU, server CPU, peak RSS per process."""
    if reset:
        reset_tables()
    cmd = XPMET + ["etl", "xp", *map(str, files), "--no-progress", "--workers", str(workers)]
    cmd += [] if correlations else ["--no-correlations"]
    s0, t0 = server_cpu(postmaster), time.perf_counter()
    out = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    server = server_cpu(postmaster) - s0
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["rc"]:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res['out']}")
    summary = res["out"].strip().splitlines()[0]
    rows = int(summary.split(";")[1].split()[0].replace(",", ""))
    return {"rows": rows, "wall_s": wall, "client_cpu_s": res["cpu_s"], "server_cpu_s": server,
            "maxrss_mb": res["maxrss_mb"]}


def _median(runs, keys):
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=60_000, help="XP rows in the benchmark files")
    ap.add_argument("--files", type=int, default=12, help="number of files the rows are split into")
    ap.add_argument("--sim-stars", type=int, default=1000, help="XP sources to simulate before replication")
    ap.add_argument("--sim-dir", type=Path, help="existing `xpmet simulate` output to use")
    ap.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "results" / "ingest-data")
    ap.add_argument("--home", type=Path, help="XPMET_HOME of the benchmark's embedded cluster "
                    "(default: a throw-away one, removed at the end)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per configuration (medians reported)")
    ap.add_argument("--workers", default="1", help="worker counts to measure, e.g. 1,2")
    ap.add_argument("--no-copy-baseline", action="store_true", help="skip the bare COPY baseline")
    ap.add_argument("--only-correlations", action="store_true", help="skip the --no-correlations runs")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()

    sim = args.sim_dir or args.workdir / "sim"
    xp_dir = sim / "xp_continuous" if args.sim_dir else simulate(sim, args.sim_stars, 7)
    files = replicate(xp_dir, args.workdir / f"xp-{args.rows}-{args.files}", args.rows, args.files)
    mb = sum(f.stat().st_size for f in files) / 1e6
    rows = args.rows
    print(f"{rows:,} XP rows in {len(files)} files, {mb:,.0f} MB compressed (simulated rows, replicated); "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)

    home = args.home or Path(tempfile.mkdtemp(prefix="xpmet-bench-ingest-"))
    os.environ["XPMET_HOME"] = str(home)
    os.environ.pop("XPMET_DATABASE_URL", None)
    from xpmet.db.cluster import Cluster
    from xpmet.db.engine import cluster
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))  # a killed benchmark still stops its cluster
    try:
        subprocess.run(XPMET + ["db", "start"], check=True, capture_output=True, cwd=ROOT)
        postmaster = cluster()._pid()  # the server `xpmet db start` started (this XPMET_HOME's)
        res = {"rows": rows, "files": len(files), "mb": mb, "load_average": os.getloadavg()[0], "runs": {}}
        gz = []
        keys = ("wall_s", "client_cpu_s", "server_cpu_s", "cpu_s", "efficiency")
        for corr in (True,) if args.only_correlations else (True, False):
            tag = "corr" if corr else "nocorr"
            if not args.no_copy_baseline:
                res[f"copy_{tag}"] = copy_baseline(files, postmaster, corr)
            for w in [int(x) for x in args.workers.split(",")]:
                runs = []
                for _ in range(args.repeats):  # gzip right before each run: both see the same machine
                    gz.append(gunzip_baseline(files))
                    r = etl_run(files, w, corr, postmaster)
                    r["cpu_s"] = r["client_cpu_s"] + r["server_cpu_s"]
                    r["efficiency"] = gz[-1]["cpu_s"] / r["cpu_s"]
                    runs.append(r)
                assert all(r["rows"] == rows for r in runs), runs
                res["runs"][f"{tag}-w{w}"] = dict(_median(runs, keys), maxrss_mb=max(r["maxrss_mb"] for r in runs),
                                                  each=runs)
            skipped = etl_run(files, 1, corr, postmaster, reset=False)  # every file already loaded
            res[f"fixed_{tag}"] = {k: skipped[k] for k in ("wall_s", "client_cpu_s", "server_cpu_s")}
        res["gzip"] = dict(_median(gz, ("wall_s", "cpu_s")), each=gz)
        reset_tables()
    finally:
        subprocess.run(XPMET + ["db", "stop"], capture_output=True, cwd=ROOT)
        if not args.home:
            Cluster(home).destroy()
            shutil.rmtree(home, ignore_errors=True)

    g = res["gzip"]
    print(f"\ngzip -dc > /dev/null         : {g['wall_s']:6.1f} s wall {g['cpu_s']:6.1f} busy CPU-s "
          f"({1e3 * g['cpu_s'] / rows:.3f} CPU-ms/row; {min(x['cpu_s'] for x in g['each']):.1f}-"
          f"{max(x['cpu_s'] for x in g['each']):.1f} over {len(g['each'])} runs)")
    for corr in (True,) if args.only_correlations else (True, False):
        tag = "corr" if corr else "nocorr"
        print(f"\n{'with' if corr else 'without'} correlations ({'default' if corr else '--no-correlations'}):")
        if f"copy_{tag}" in res:
            cb = res[f"copy_{tag}"]
            print(f"bare binary COPY (pre-parsed): {cb['wall_s']:6.1f} s wall, server {cb['server_cpu_s']:6.1f} CPU-s")
        for key, r in res["runs"].items():
            if not key.startswith(tag + "-"):
                continue
            w = int(key.split("-w")[1])
            print(f"xpmet etl xp --workers {w}     : {r['wall_s']:6.1f} s wall {rows / r['wall_s']:7,.0f} rows/s; "
                  f"busy CPU-s client+workers {r['client_cpu_s']:5.1f} + server {r['server_cpu_s']:5.1f} = "
                  f"{r['cpu_s']:5.1f} ({1e3 * r['cpu_s'] / rows:.3f} CPU-ms/row) -> {r['efficiency']:.2f}x "
                  f"gzip's efficiency (median of the runs' ratios to the gzip -dc just before each), "
                  f"{g['wall_s'] / r['wall_s']:.2f}x its wall; peak RSS {r['maxrss_mb']:,.0f} "
                  f"MB/process; 219M rows: {ALL_XP_ROWS * r['cpu_s'] / rows / 3600:,.0f} core-hours")
        fx = res[f"fixed_{tag}"]
        print(f"fixed cost (every file skipped): {fx['client_cpu_s']:.1f} client CPU-s, {fx['wall_s']:.1f} s wall")
    out = ROOT / "benchmarks" / "results" / f"ingest-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"\n(medians of {args.repeats}; gzip level 6; PostgreSQL on the same cores) -> {out}")
    if not args.keep:
        shutil.rmtree(args.workdir / f"xp-{args.rows}-{args.files}", ignore_errors=True)


if __name__ == "__main__":
    main()
