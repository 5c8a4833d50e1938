"""Ingest benchmark of ``xpmet etl xp`` over ``xpmet simulate`` output, with baselines measured in the same run.

    .venv/bin/python benchmarks/bench_ingest.py --rows 200000 --files 8

Steps:
1. ``xpmet simulate`` a small sky (``--sim-stars`` XP sources, with correlations) unless ``--sim-dir``
   points at one. Simulating 200,000 XP sources takes far longer than loading them, so the
   simulated XP rows are replicated under shifted source_ids (each copy keeps the simulated
   row's text, gzip level 6; see :func:`replicate`) into ``--files`` files totalling ``--rows`` rows.
2. Baselines: ``gzip -dc FILE > /dev/null`` of every file, and a bare binary COPY of the
   already-parsed and already-encoded rows (one transaction per file, into xpmet.xp_continuous
   with its primary key, and into a copy of the table without any index).
3. ``xpmet etl xp`` (subprocess, fresh tables each time) with 1 and 2 workers, with and without
   ``--no-correlations``; median of ``--repeats`` runs; peak RSS of the loading processes.
Prints rows/s, MB/s of compressed input, ratios against the baselines and the projected time
for all 219 million Gaia DR3 XP rows; writes JSON to benchmarks/results/.
The machine is shared: figures are noisy, rerun before trusting a small difference.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ALL_XP_ROWS = 219_197_643  # Gaia DR3 sources with XP continuous spectra


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


def gunzip_baseline(files) -> float:
    t0 = time.perf_counter()
    for f in files:
        subprocess.run(f"gzip -dc '{f}' > /dev/null", shell=True, check=True)
    return time.perf_counter() - t0


def copy_baseline(files, correlations=True) -> dict:
    """Seconds of binary COPY of pre-parsed, pre-encoded rows: into xp_continuous (PK) and an index-free copy."""
    from xpmet.db.engine import raw_connect
    from xpmet.etl.xp_loader import TABLE, copy_columns
    from xpmet.io.pgcopy import copy_sql, encode
    from xpmet.io.xp_reader import read_xp
    import numpy as np
    cols = copy_columns(correlations)
    reset_tables()
    t_pk = t_nopk = 0.0
    with raw_connect() as conn:
        load_id = conn.execute("INSERT INTO xpmet.etl_load (kind, path, size_bytes, sha256, status) "
                               "VALUES ('bench', 'bench', 0, 'bench', 'running') RETURNING load_id").fetchone()[0]
        conn.execute("CREATE TEMP TABLE xp_noindex (LIKE xpmet.xp_continuous)")
        conn.commit()
        for f in files:
            parts = []
            for chunk in read_xp(f, correlations=correlations):
                data = dict(chunk.data, load_id=np.full(chunk.n, load_id, np.int32))
                parts.append(encode([c for c in cols if c.name in data], data))
            for table in (TABLE, "xp_noindex"):
                t0 = time.perf_counter()
                with conn.cursor() as cur:
                    for p in parts:
                        with cur.copy(copy_sql(table, [c for c in cols])) as cp:
                            cp.write(p)
                conn.commit()
                dt = time.perf_counter() - t0
                if table == TABLE:
                    t_pk += dt
                else:
                    t_nopk += dt
            del parts
            conn.execute(f"TRUNCATE {TABLE}, xp_noindex")
            conn.commit()
        conn.execute("DELETE FROM xpmet.etl_load WHERE kind = 'bench'")
        conn.commit()
    return {"copy_pk_s": t_pk, "copy_noindex_s": t_nopk}


def reset_tables():
    from xpmet.db.engine import raw_connect
    with raw_connect() as conn:
        conn.execute("TRUNCATE xpmet.xp_continuous")
        conn.execute("DELETE FROM xpmet.etl_load WHERE kind = 'xp'")
        conn.commit()
        conn.autocommit = True
        conn.execute("CHECKPOINT")  # do not bill the next run for the previous run's dirty pages


def etl_run(files, workers: int, correlations: bool) -> dict:
    """One ``xpmet etl xp`` run in a child process: wall seconds and peak RSS (VmHWM, max over its processes;
    getrusage would report the benchmark's own peak, inherited through fork)."""
    reset_tables()
    cmd = [sys.executable, "-c",
           "import resource, sys, json; from xpmet.etl.xp_loader import load_xp; "
           f"s = load_xp(sys.argv[1:], workers={workers}, correlations={correlations}, progress=False); "
           "from xpmet.etl.bulk import peak_rss_mb; "
           "r = max(s.peak_rss_mb or 0, peak_rss_mb() or 0); "
           "print(json.dumps({'rows': s.rows, 'seconds': s.seconds, 'maxrss_kb': r * 1024}))"] + [str(f) for f in files]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - t0
    res = json.loads(out.strip().splitlines()[-1])
    res["wall"] = wall
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="XP rows in the benchmark files")
    ap.add_argument("--files", type=int, default=8, help="number of files the rows are split into")
    ap.add_argument("--sim-stars", type=int, default=1000, help="XP sources to simulate before replication")
    ap.add_argument("--sim-dir", type=Path, help="existing `xpmet simulate` output to use")
    ap.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "results" / "ingest-data")
    ap.add_argument("--repeats", type=int, default=1, help="runs per configuration (median reported)")
    ap.add_argument("--workers", default="1,2", help="worker counts to measure")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()

    sim = args.sim_dir or args.workdir / "sim"
    xp_dir = sim / "xp_continuous" if args.sim_dir else simulate(sim, args.sim_stars, 7)
    files = replicate(xp_dir, args.workdir / f"xp-{args.rows}-{args.files}", args.rows, args.files)
    mb = sum(f.stat().st_size for f in files) / 1e6
    rows = args.rows
    print(f"{rows:,} XP rows in {len(files)} files, {mb:,.0f} MB compressed (simulated rows, replicated)")

    res = {"rows": rows, "files": len(files), "mb": mb, "runs": {}}
    res["gunzip_s"] = statistics.median(gunzip_baseline(files) for _ in range(args.repeats))
    for corr in (True, False):
        tag = "corr" if corr else "nocorr"
        cb = copy_baseline(files, corr)
        res[f"copy_{tag}"] = cb
        for w in [int(x) for x in args.workers.split(",")]:
            runs = [etl_run(files, w, corr) for _ in range(args.repeats)]
            assert all(r["rows"] == rows for r in runs), runs
            res["runs"][f"{tag}-w{w}"] = {"seconds": statistics.median(r["seconds"] for r in runs),
                                          "maxrss_mb": max(r["maxrss_kb"] for r in runs) / 1024}
    reset_tables()

    g = rows / res["gunzip_s"]
    print(f"\nbaseline gzip -dc > /dev/null : {g:10,.0f} rows/s  {mb / res['gunzip_s']:7.1f} MB/s")
    for corr in (True, False):
        tag = "corr" if corr else "nocorr"
        cb = res[f"copy_{tag}"]
        c_pk, c_no = rows / cb["copy_pk_s"], rows / cb["copy_noindex_s"]
        print(f"\n{'with' if corr else 'without'} correlations ({'--no-correlations' if not corr else 'default'}):")
        print(f"baseline bare binary COPY     : {c_pk:10,.0f} rows/s  (into the table with its PK; "
              f"{c_no:,.0f} rows/s without any index)")
        lower = min(g, c_pk)
        one = None
        for key, r in res["runs"].items():
            if not key.startswith(tag + "-"):
                continue
            w = int(key.split("-w")[1])
            rate = rows / r["seconds"]
            one = rate if w == 1 else one
            extra = f"  {rate / one:4.2f}x one worker" if w > 1 and one else ""
            print(f"xpmet etl xp --workers {w}      : {rate:10,.0f} rows/s  {mb / r['seconds']:7.1f} MB/s  "
                  f"{rate / lower:4.2f}x lower baseline{extra}  peak RSS {r['maxrss_mb']:,.0f} MB/process  "
                  f"219M rows: {ALL_XP_ROWS / rate / 86400:5.1f} days")
    out = ROOT / "benchmarks" / "results" / f"ingest-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"\n(noisy: shared 2-core machine; gzip level 6; PostgreSQL on the same cores) -> {out}")
    if not args.keep:
        shutil.rmtree(args.workdir / f"xp-{args.rows}-{args.files}", ignore_errors=True)


if __name__ == "__main__":
    main()
