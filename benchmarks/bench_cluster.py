"""Busy CPU-seconds per row of ``xpmet etl xp`` with ``--workers 1`` and with ``--cluster local:N``.

    .venv/bin/python benchmarks/bench_cluster.py --stars 6000 --rows-per-file 1000 --repeats 2

A simulated sky (with correlations) is loaded into a throw-away embedded cluster; each run is the
CLI in a subprocess on empty xp tables. CPU is counted for everything the load makes busy:
the client and every process below it (Dask scheduler, nannies, workers: getrusage of waited-for
children) plus the PostgreSQL server (the postmaster's own and reaped children's times from
/proc, plus its live children). ``--cluster`` runs also get a run on already loaded files (every
file skipped): what the cluster itself costs (start-up, imports, hashing the files), and for
``local:N`` the CPU an idle cluster burns per second (heartbeats, monitors), which a slow run on a
busy machine pays for longer. Both are independent of the rows: per row they vanish at scale. On a
machine shared with other work the wall times are noisy; CPU-seconds much less so.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
XPMET = [sys.executable, "-m", "xpmet"]


def server_cpu(pid: int) -> float:
    """CPU-seconds of the postmaster, its exited (reaped) backends and its live ones."""
    p = psutil.Process(pid)
    t = p.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for c in p.children():
        try:
            ct = c.cpu_times()
            total += ct.user + ct.system
        except psutil.NoSuchProcess:
            pass
    return total


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measured(cmd, env, postmaster) -> dict:
    c0, s0, t0 = children_cpu(), server_cpu(postmaster), time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return {"wall_s": wall, "client_cpu_s": children_cpu() - c0, "server_cpu_s": server_cpu(postmaster) - s0,
            "summary": out.stdout.strip().splitlines()[0]}


IDLE = ("import logging, sys, time; from distributed import Client, LocalCluster; "
        "c = LocalCluster(n_workers=int(sys.argv[1]), threads_per_worker=1, processes=True, "
        "dashboard_address=None, silence_logs=logging.ERROR); cl = Client(c); time.sleep(float(sys.argv[2])); "
        "cl.close(); c.close()")


def idle_rate(n: int, seconds: float = 20.0) -> float:
    """CPU-seconds per wall-second of an idle LocalCluster of n workers (heartbeats, monitors)."""
    cpu = []
    for idle in (0.0, seconds):
        c0 = children_cpu()
        subprocess.run([sys.executable, "-c", IDLE, str(n), str(idle)], check=True, capture_output=True)
        cpu.append(children_cpu() - c0)
    return (cpu[1] - cpu[0]) / seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stars", type=int, default=6000, help="simulated XP stars")
    ap.add_argument("--rows-per-file", type=int, default=1000)
    ap.add_argument("--cluster", default="local:2")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xpmet-bench-cluster-"))
    env = dict(os.environ, XPMET_HOME=str(work / "home"))
    env.pop("XPMET_DATABASE_URL", None)
    sky = work / "sky"
    subprocess.run([sys.executable, "-c", "import sys; from xpmet.simulate import simulate; simulate(sys.argv[1], "
                    "n_stars=int(sys.argv[2]), seed=int(sys.argv[3]), rows_per_file=int(sys.argv[4]), "
                    "surveys=('gbs',), faint_ratio=0, progress=False)", str(sky), str(args.stars), str(args.seed),
                    str(args.rows_per_file)], check=True, cwd=ROOT)
    subprocess.run(XPMET + ["db", "start"], env=env, cwd=ROOT, check=True, capture_output=True)
    subprocess.run(XPMET + ["etl", "gaia-source", str(sky / "gaia_source"), "--no-progress"], env=env, cwd=ROOT,
                   check=True, capture_output=True)
    url = subprocess.run(XPMET + ["db", "url"], env=env, cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.strip()
    data_dir = subprocess.run(["psql", url, "-Atc", "SHOW data_directory"], check=True, capture_output=True,
                              text=True).stdout.strip()
    postmaster = int((Path(data_dir) / "postmaster.pid").read_text().split()[0])
    n_files = len(list((sky / "xp_continuous").iterdir()))

    def empty():
        subprocess.run(["psql", url, "-qc", "TRUNCATE xpmet.xp_continuous CASCADE; "
                        "DELETE FROM xpmet.etl_load WHERE kind = 'xp'"], check=True, capture_output=True)

    load = XPMET + ["etl", "xp", str(sky / "xp_continuous"), "--no-progress"]
    runs = {"workers 1": load + ["--workers", "1"], f"cluster {args.cluster}": load + ["--cluster", args.cluster]}
    results = {}
    for name, cmd in runs.items():
        per = []
        for _ in range(args.repeats):
            empty()
            per.append(measured(cmd, env, postmaster))
        rows = int(per[0]["summary"].split(";")[1].split()[0].replace(",", ""))
        results[name] = r = {k: statistics.median(p[k] for p in per) for k in ("wall_s", "client_cpu_s", "server_cpu_s")}
        r.update(rows=rows, summary=per[-1]["summary"])
        r["cpu_ms_per_row"] = 1000 * (r["client_cpu_s"] + r["server_cpu_s"]) / rows
        if name.startswith("cluster"):  # every file already loaded: the cluster's own cost
            skip = measured(cmd, env, postmaster)
            r["all_skipped_client_cpu_s"], r["all_skipped_wall_s"] = skip["client_cpu_s"], skip["wall_s"]
            r["cpu_ms_per_row_less_fixed"] = 1000 * (r["client_cpu_s"] - skip["client_cpu_s"]
                                                     + r["server_cpu_s"] - skip["server_cpu_s"]) / rows
            if args.cluster.startswith("local:"):  # and less what an idle cluster burns over the extra wall time
                r["idle_cpu_s_per_s"] = rate = idle_rate(int(args.cluster.split(":")[1]))
                r["cpu_ms_per_row_less_fixed_and_idle"] = (
                    r["cpu_ms_per_row_less_fixed"] - 1000 * rate * (r["wall_s"] - skip["wall_s"]) / rows)
    subprocess.run(XPMET + ["db", "stop"], env=env, cwd=ROOT, capture_output=True)
    print(f"{args.stars} XP stars with correlations in {n_files} files, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    for name, r in results.items():
        print(f"{name:16s} wall {r['wall_s']:6.1f} s  client+workers {r['client_cpu_s']:6.1f} CPU-s  server "
              f"{r['server_cpu_s']:5.1f} CPU-s  = {r['cpu_ms_per_row']:.2f} CPU-ms/row"
              + (f"  (fixed cost: {r['all_skipped_client_cpu_s']:.1f} CPU-s, {r['all_skipped_wall_s']:.1f} s wall "
                 f"with every file skipped; {r['cpu_ms_per_row_less_fixed']:.2f} CPU-ms/row without it)"
                 if "all_skipped_client_cpu_s" in r else "")
              + (f"; an idle cluster burns {r['idle_cpu_s_per_s']:.2f} CPU-s per second: "
                 f"{r['cpu_ms_per_row_less_fixed_and_idle']:.2f} CPU-ms/row without that either"
                 if "idle_cpu_s_per_s" in r else ""))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
