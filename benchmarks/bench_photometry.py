"""Benchmark `xpmet etl photometry` against the floor of getting the same file into the same table.

A simulated 2MASS PSC CSV (IRSA columns) of --n-rows sources and its Gaia best-neighbour ECSV.gz are
written once (xpmet.simulate.photometry from random stars); then, --repeats times each, in a throw-away
database:
  - xpmet:  load_photometry("tmass", [csv], best_neighbour=[bn]) (parse, checks, NULLs, COPY, provenance)
  - floor:  the server parsing the CSV itself (COPY ... FROM STDIN (FORMAT csv)) into a copy of each table
            with the same indexes (primary key, q3c), and the same for the best-neighbour rows
            (decompressed here); no checks, no NULL handling, no provenance
  - parse:  astropy's Table.read of the two files alone (xpmet reads FITS and VOTable with it; CSV and
            ECSV with pyarrow)
Reported: medians of wall seconds and busy CPU-seconds (this process + the server), and ratios taken
within the run. Results in benchmarks/results/photometry.json.

    .venv/bin/python benchmarks/bench_photometry.py --n-rows 200000 --repeats 3
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def fake_truth(rng, n):
    """Random FGKM stars over the sky, G 8-17.5 (what write_photometry needs of simulate's truth)."""
    return {"source_id": np.sort(rng.choice(2 ** 50, n, replace=False)).astype(np.int64) * 4096,
            "ra": rng.uniform(0, 360, n), "dec": np.degrees(np.arcsin(rng.uniform(-1, 1, n))),
            "pmra": rng.normal(0, 10, n), "pmdec": rng.normal(0, 10, n),
            "teff": rng.uniform(3500, 7000, n), "logg": rng.uniform(1.5, 4.8, n), "feh": rng.normal(-0.3, 0.4, n),
            "a0": rng.exponential(0.3, n), "ag": np.zeros(n), "phot_g_mean_mag": rng.uniform(8, 17.5, n),
            "source_class": np.full(n, "star")}


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-rows", type=int, default=200_000, help="simulated Gaia sources (2MASS keeps ~90 %%)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--home", type=Path, default=ROOT / "benchmarks" / "results" / "photometry-home",
                    help="XPMET_HOME of the throw-away database")
    ap.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "results" / "photometry-data")
    ap.add_argument("--keep", action="store_true", help="keep the database and the simulated files (~0.8 GB)")
    args = ap.parse_args()
    os.environ["XPMET_HOME"] = str(args.home)
    os.environ.pop("XPMET_DATABASE_URL", None)
    try:
        run(args)
    finally:  # a throw-away database and its files: gone unless --keep
        if not args.keep:
            from xpmet.db.cluster import Cluster
            Cluster(args.home).destroy()
            shutil.rmtree(args.home, ignore_errors=True)
            shutil.rmtree(args.workdir, ignore_errors=True)


def run(args):
    from astropy.table import Table
    from bench_cluster import server_cpu
    from xpmet.db import migrate
    from xpmet.db.cluster import Cluster
    from xpmet.db.engine import libpq_url, raw_connect
    from xpmet.etl.photometry import load_photometry
    from xpmet.simulate.photometry import TMASS_BN_DIR, TMASS_BN_FILE, write_photometry

    rng = np.random.default_rng(args.seed)
    write_photometry(rng, fake_truth(rng, args.n_rows), args.workdir)
    csv, bn = args.workdir / "tmass_psc.csv", args.workdir / TMASS_BN_DIR / TMASS_BN_FILE
    bn_csv = args.workdir / "bn.csv"
    bn_csv.write_text("".join(ln for ln in gzip.open(bn, "rt") if not ln.startswith("#")))
    cluster = Cluster(args.home)
    cluster.start()
    postmaster = int(cluster.status()["pid"])
    migrate.upgrade(libpq_url(), "head")

    def clear():
        with raw_connect() as c:
            c.execute("TRUNCATE xpmet.photometry_tmass, xpmet.tmass_best_neighbour")
            c.execute("DELETE FROM xpmet.etl_load WHERE kind LIKE 'photometry:%'")
            c.commit()

    def xpmet_load():
        res = load_photometry("tmass", [csv], best_neighbour=[bn])
        assert not any(r.error for r in res), [r.error for r in res]
        return sum(r.n_rows for r in res)

    def floor():
        cols_tm = Table.read(csv, format="ascii.csv", data_end=1).colnames
        cols_bn = bn_csv.read_text().split("\n", 1)[0].split(",")
        with raw_connect() as c, c.cursor() as cur:
            n = 0  # into copies of the tables without load_id (NOT NULL there: it needs provenance)
            for path, table, cols in ((csv, "photometry_tmass", cols_tm), (bn_csv, "tmass_best_neighbour", cols_bn)):
                cur.execute(f"DROP TABLE IF EXISTS xpmet.f_{table}")
                cur.execute(f"CREATE TABLE xpmet.f_{table} (LIKE xpmet.{table} INCLUDING INDEXES)")
                cur.execute(f"ALTER TABLE xpmet.f_{table} DROP COLUMN load_id")
                with cur.copy(f"COPY xpmet.f_{table} ({', '.join(cols)}) FROM STDIN (FORMAT csv, HEADER)") as cp:
                    with open(path, "rb") as fh:
                        while block := fh.read(1 << 20):
                            cp.write(block)
                n += cur.rowcount
            c.commit()
        return n

    def parse():
        return len(Table.read(csv, format="ascii.csv")) + len(Table.read(bn, format="ascii.ecsv"))

    runs = {k: [] for k in ("xpmet", "floor", "parse")}
    for _ in range(args.repeats):
        for name, fn in (("xpmet", xpmet_load), ("floor", floor), ("parse", parse)):
            clear()
            c0, s0, t0 = cpu(), server_cpu(postmaster), time.perf_counter()
            n = fn()
            runs[name].append({"wall_s": time.perf_counter() - t0, "client_cpu_s": cpu() - c0,
                               "server_cpu_s": server_cpu(postmaster) - s0, "rows": n})
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall_s", "client_cpu_s", "server_cpu_s", "rows")}
           for k, v in runs.items()}
    for k in med:
        med[k]["busy_cpu_s"] = med[k]["client_cpu_s"] + med[k]["server_cpu_s"]
    out = {"n_sources": args.n_rows, "repeats": args.repeats, "median": med,
           "xpmet_rows_per_s": med["xpmet"]["rows"] / med["xpmet"]["wall_s"],
           "wall_ratio_floor_over_xpmet": med["floor"]["wall_s"] / med["xpmet"]["wall_s"],
           "cpu_ratio_floor_over_xpmet": med["floor"]["busy_cpu_s"] / med["xpmet"]["busy_cpu_s"],
           "parse_share_of_xpmet_wall": med["parse"]["wall_s"] / med["xpmet"]["wall_s"], "runs": runs}
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "photometry.json").write_text(json.dumps(out, indent=2))
    for k, v in med.items():
        print(f"{k:6s} {v['rows']:>9.0f} rows  wall {v['wall_s']:7.2f} s  busy CPU {v['busy_cpu_s']:7.2f} s "
              f"(client {v['client_cpu_s']:.2f}, server {v['server_cpu_s']:.2f})")
    print(f"xpmet {out['xpmet_rows_per_s']:,.0f} rows/s; floor/xpmet wall {out['wall_ratio_floor_over_xpmet']:.2f}, "
          f"busy CPU {out['cpu_ratio_floor_over_xpmet']:.2f}; astropy parse = {out['parse_share_of_xpmet_wall']:.0%} "
          "of xpmet's wall time")
    cluster.stop()


if __name__ == "__main__":
    main()
