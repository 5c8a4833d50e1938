"""Benchmark of ``xpmet simulate``: XP stars written per second and peak memory.

Each simulation runs in its own subprocess so its peak RSS (resource.getrusage ru_maxrss) is its own.
Two sizes show whether memory is bounded (it should not grow with --n-stars: files are streamed).
Baseline measured in the same run: formatting the same XP rows (with correlations) value by value
in Python (``repr`` + ``str.join``) versus the vectorised pyarrow path the simulator uses.

  .venv/bin/python benchmarks/bench_simulate.py --n-stars 1000000
  .venv/bin/python benchmarks/bench_simulate.py --n-stars 100000 --small 20000 --repeat 3

Numbers are noisy on a shared 2-core machine: report the median and say so.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _worker(outdir: str, n_stars: int, correlations: bool) -> None:
    from xpmet.simulate import simulate

    t0 = time.perf_counter()
    simulate(outdir, n_stars=n_stars, seed=1, correlations=correlations, progress=False)
    dt = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in Path(outdir).rglob("*") if p.is_file())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"seconds": dt, "bytes": size, "peak_rss_mb": peak_mb}))


def _run(n_stars: int, correlations: bool, tmp: Path | None, keep: bool = False) -> dict:
    outdir = tempfile.mkdtemp(prefix="bench_simulate_", dir=tmp)
    try:
        cmd = [sys.executable, __file__, "--worker", outdir, str(n_stars), "1" if correlations else "0"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
    finally:
        if not keep:
            shutil.rmtree(outdir, ignore_errors=True)
    r.update(n_stars=n_stars, correlations=correlations, xp_stars_per_s=n_stars / r["seconds"])
    return r


def _format_baseline(n: int = 500) -> dict:
    """Rows/s of per-value Python formatting vs the vectorised writer, same XP content."""
    import numpy as np

    from xpmet.simulate import xp_file, xp_noise
    from xpmet.simulate.writers import format_rows

    rng = np.random.default_rng(0)
    tmpl = xp_noise.make_templates(rng, 16)
    text = xp_file.CorrelationText(tmpl.flat)
    g = rng.uniform(10, 17.5, n)
    obs = {b: xp_noise.observe(rng, rng.normal(100, 50, (n, 55)), g, b, tmpl) for b in ("bp", "rp")}
    miss = {b: np.zeros(n, bool) for b in ("bp", "rp")}
    sid = np.arange(n, dtype=np.int64) + 1
    t0 = time.perf_counter()
    fast = format_rows(xp_file.COLUMNS, xp_file.values(sid, obs, miss, text))
    t_fast = time.perf_counter() - t0

    def arr(v):
        return '"[' + ",".join(repr(float(x)) for x in v) + ']"'

    t0 = time.perf_counter()
    lines = []
    for i in range(n):
        parts = [str(sid[i]), str(xp_file.SOLUTION_ID)]
        for b in ("bp", "rp"):
            o = obs[b]
            parts += ["56", str(o["degrees_of_freedom"][i]), "55", str(o["n_measurements"][i]),
                      str(o["n_rejected_measurements"][i]), repr(float(o["standard_deviation"][i])),
                      repr(float(o["chi_squared"][i])), arr(o["coefficients"][i]), arr(o["coefficient_errors"][i]),
                      arr(tmpl.flat[b][o["template"][i]]), str(o["n_relevant_bases"][i]),
                      repr(float(o["relative_shrinking"][i]))]
        lines.append(",".join(parts))
    slow = ("\n".join(lines) + "\n").encode()
    t_slow = time.perf_counter() - t0
    return {"rows": n, "vectorised_rows_per_s": n / t_fast, "python_rows_per_s": n / t_slow,
            "speedup": t_slow / t_fast, "bytes_vectorised": len(fast), "bytes_python": len(slow)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-stars", type=int, default=1_000_000, help="XP stars of the main run (default 1,000,000)")
    ap.add_argument("--small", type=int, default=20_000, help="XP stars of the memory-boundedness comparison run")
    ap.add_argument("--repeat", type=int, default=1, help="repetitions of the main run (median reported)")
    ap.add_argument("--no-correlations-run", action="store_true", help="also time --no-correlations")
    ap.add_argument("--tmp", type=Path, default=None, help="directory for the temporary outputs (needs ~17 GB per 1M)")
    args = ap.parse_args()

    report = {"baseline_formatting": _format_baseline()}
    report["small"] = _run(args.small, True, args.tmp)
    runs = [_run(args.n_stars, True, args.tmp) for _ in range(args.repeat)]
    report["main_runs"] = runs
    report["main_median_xp_stars_per_s"] = statistics.median(r["xp_stars_per_s"] for r in runs)
    report["peak_rss_mb_small_vs_main"] = [report["small"]["peak_rss_mb"], max(r["peak_rss_mb"] for r in runs)]
    if args.no_correlations_run:
        report["no_correlations"] = _run(args.n_stars, False, args.tmp)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
