"""`xpmet etl xp` against the real database: real samples round-trip bit-exactly, faults fail alone."""
from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from astropy.table import Table

from xpmet.etl.runner import LoadFailed
from xpmet.etl.xp_loader import load_xp
from xpmet.io.arrays import ArrayParseError, parse_array_strings
from xpmet.io.formats import detect
from xpmet.xp_coefficients import covariance_matrix

XP = Path(__file__).parent / "data" / "xp"
SAMPLES = sorted(p for p in XP.iterdir() if p.suffix in (".csv", ".ecsv", ".fits", ".xml"))
ARRAYS = {"coefficients": np.float64, "coefficient_errors": np.float32, "coefficient_correlations": np.float32}


def _count(engine, sql="SELECT count(*) FROM xpmet.xp_continuous", **kw):
    with engine.connect() as c:
        return c.execute(sa.text(sql), kw).scalar()


def _astropy_arrays(path):
    """{source_id: {column: array or None}} from astropy's reading (CSV strings parsed with Python float)."""
    t = Table.read(path)
    out = {}
    for i, sid in enumerate(np.asarray(t["source_id"])):
        row = {}
        for b in ("bp", "rp"):
            for c, dt in ARRAYS.items():
                name = f"{b}_{c}"
                if name in t.colnames:
                    v = t[name][i]
                    if isinstance(v, str) or (isinstance(v, np.str_)):
                        v = [float(x) for x in v.strip("()[]").split(",")] if v.strip("()[]") else []
                    elif np.ma.is_masked(v):
                        v = []
                    v = np.asarray(np.ma.getdata(v), dtype=np.float64).astype(dt)
                elif f"{b}_coeff_0" in t.colnames and c != "coefficient_correlations":
                    pat = f"{b}_coeff_{{}}" if c == "coefficients" else f"e_{b}_coeff_{{}}"
                    v = np.array([t[pat.format(k)][i] for k in range(55)]).astype(dt)
                else:
                    continue
                row[name] = v if v.size else None
        out[int(sid)] = row
    return out


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_real_sample_round_trips_bit_exactly(clean_db, path):
    summary = load_xp([path], progress=False)
    ref = _astropy_arrays(path)
    assert summary.rows == len(ref) == _count(clean_db)
    with clean_db.connect() as c:
        rows = {r.source_id: r for r in c.execute(sa.text("SELECT * FROM xpmet.xp_continuous"))}
    for sid, cols in ref.items():
        for name, want in cols.items():
            got = getattr(rows[sid], name)
            if want is None:
                assert got is None, f"{path.name} {sid} {name}: a missing band must be NULL"
            else:
                got = np.asarray(got, dtype=want.dtype)
                assert got.tobytes() == want.tobytes(), f"{path.name} {sid} {name} differs"
        for name in ("bp_coefficient_correlations", "rp_coefficient_correlations"):
            if name not in cols:
                assert getattr(rows[sid], name) is None


def test_missing_band_null_and_covariance(clean_db):
    load_xp([XP / "XP_CONTINUOUS_RAW_with_missing_BP.ecsv"], progress=False)
    with clean_db.connect() as c:
        r = c.execute(sa.text("SELECT * FROM xpmet.xp_continuous WHERE source_id = 5405570973190252288")).one()
        assert r.bp_coefficients is None and r.bp_coefficient_errors is None and r.bp_n_parameters is None
        assert len(r.rp_coefficients) == 55 and r.rp_n_parameters == 55
        cov = covariance_matrix(np.array(r.rp_coefficient_errors), np.array(r.rp_coefficient_correlations))
    assert cov.shape == (55, 55) and np.allclose(cov, cov.T) and (np.linalg.eigvalsh(cov) > 0).all()


# ------------------------------------------------------------------ bulk-like files built from real rows

def _ecsv_parts():
    lines = (XP / "XP_CONTINUOUS_RAW_with_missing_BP.ecsv").read_text().splitlines()
    header = [ln for ln in lines if ln.startswith("#")]
    body = [ln for ln in lines if not ln.startswith("#")]
    return header, body[0], body[1:]


def make_bulk(path, ids, mutate=None, gz=True):
    """A Gaia bulk-style XpContinuousMeanSpectrum ECSV(.gz) with the real rows cycled under new source_ids."""
    header, names, rows = _ecsv_parts()
    out = []
    for k, sid in enumerate(ids):
        line = str(sid) + rows[k % len(rows)][rows[k % len(rows)].index(","):]
        out.append(mutate(k, line) if mutate else line)
    text = "\n".join(header + [names] + out) + "\n"
    if gz:
        Path(path).write_bytes(gzip.compress(text.encode(), 1))
    else:
        Path(path).write_text(text)
    return Path(path)


def test_dir_glob_workers_skip_replace_and_no_correlations(clean_db, tmp_path, run_cli):
    d = tmp_path / "xp"
    d.mkdir()
    for i in range(3):
        make_bulk(d / f"XpContinuousMeanSpectrum_{i:06d}-{i:06d}.csv.gz", range(1000 * i + 1, 1000 * i + 41))
    (d / "_MD5SUM.txt").write_text("not data\n")
    analyzed = ("SELECT coalesce(analyze_count, 0) FROM pg_stat_user_tables "
                "WHERE relid = 'xpmet.xp_continuous'::regclass")
    n_analyze = _count(clean_db, analyzed)
    r = run_cli("etl", "xp", d, "--workers", "2", "--no-progress")
    assert "3 file(s) loaded" in r.output and _count(clean_db) == 120
    assert _count(clean_db, analyzed) == n_analyze + 1      # the load refreshed the planner statistics
    assert _count(clean_db, "SELECT count(*) FROM pg_stats WHERE schemaname = 'xpmet' "
                            "AND tablename = 'xp_continuous' AND attname = 'source_id'") == 1
    r = run_cli("etl", "xp", str(d / "*.csv.gz"), "--no-progress")
    assert "3 skipped" in r.output and _count(clean_db) == 120
    assert _count(clean_db, analyzed) == n_analyze + 1      # nothing loaded: no ANALYZE
    r = run_cli("etl", "xp", d / "XpContinuousMeanSpectrum_000001-000001.csv.gz", "--replace", "--no-correlations",
                "--no-progress")
    assert _count(clean_db) == 120
    assert _count(clean_db, "SELECT count(*) FROM xpmet.xp_continuous WHERE bp_coefficient_correlations IS NULL "
                            "AND rp_coefficient_correlations IS NULL AND rp_coefficients IS NOT NULL") == 40
    assert _count(clean_db, "SELECT count(*) FROM xpmet.etl_load WHERE status = 'replaced'") == 1
    # a third of the cycled rows is the source without BP: NULL, never zeros
    assert _count(clean_db, "SELECT count(*) FROM xpmet.xp_continuous WHERE bp_coefficients IS NULL") == 39


def test_source_in_two_files_names_both(clean_db, tmp_path, run_cli):
    a = make_bulk(tmp_path / "a.csv.gz", range(1, 11))
    b = make_bulk(tmp_path / "b.csv.gz", range(5, 16))
    run_cli("etl", "xp", a, "--no-progress")
    r = run_cli("etl", "xp", b, "--no-progress", ok=False)
    assert r.exit_code == 1
    assert "source_id 5 is already loaded from" in r.output and str(a.resolve()) in r.output and "b.csv.gz" in r.output
    assert _count(clean_db) == 10
    run_cli("etl", "xp", b, "--replace", "--no-progress")
    assert _count(clean_db) == 15
    assert _count(clean_db, "SELECT count(*) FROM xpmet.xp_continuous x JOIN xpmet.etl_load l USING (load_id) "
                            "WHERE l.path LIKE '%b.csv.gz'") == 11
    c = make_bulk(tmp_path / "c.csv.gz", [20, 21, 20])
    r = run_cli("etl", "xp", c, "--no-progress", ok=False)
    assert "source_id 20 appears twice" in r.output


def _first_value(line, new):
    """Replace (or with None drop) the first value of the row's first array (bp_coefficients)."""
    i = line.index('"[') + 2
    j = line.index(",", i)
    return line[:i] + line[j + 1:] if new is None else line[:i] + new + line[j:]


def _bad_files(tmp):
    good = make_bulk(tmp / "good.csv.gz", range(100, 130))
    trunc_src = gzip.compress(make_bulk(tmp / "t.ecsv", range(200, 400), gz=False).read_bytes())
    (tmp / "t.ecsv").unlink()
    (tmp / "truncated.csv.gz").write_bytes(trunc_src[: len(trunc_src) * 2 // 3])
    make_bulk(tmp / "malformed.csv.gz", range(400, 410), mutate=lambda k, ln: _first_value(ln, "1.0x") if k == 3 else ln)
    make_bulk(tmp / "short.csv.gz", range(500, 510), mutate=lambda k, ln: _first_value(ln, None) if k == 6 else ln)
    make_bulk(tmp / "nan.csv.gz", range(600, 610), mutate=lambda k, ln: _first_value(ln, "nan") if k == 5 else ln)
    (tmp / "nocol.csv").write_text("solution_id,bp_coefficients\n1,\"[1.0]\"\n")
    (tmp / "unknown.csv.gz").write_bytes(gzip.compress(b"\x00\x01binary junk\x02" * 50))
    return good


def test_bad_inputs_fail_alone_naming_file_row_column(clean_db, tmp_path, run_cli):
    _bad_files(tmp_path)
    r = run_cli("etl", "xp", tmp_path, "--no-progress", ok=False)
    out = r.output
    assert r.exit_code == 1 and "1 file(s) loaded" in out and "6 failed" in out
    assert _count(clean_db) == 30  # the good file only; nothing of the bad ones
    assert "truncated.csv.gz" in out and "truncated or corrupt gzip" in out
    assert "malformed.csv.gz, row 4, column bp_coefficients" in out
    assert "short.csv.gz, row 7, column bp_coefficients" in out and "expected 55" in out
    assert "nan.csv.gz, row 6, column bp_coefficients" in out
    assert "nocol.csv" in out and "missing required column(s) source_id" in out
    assert "unknown.csv.gz" in out and "unknown format" in out
    assert _count(clean_db, "SELECT count(*) FROM xpmet.etl_load WHERE status = 'failed'") == 6
    with pytest.raises(LoadFailed) as e:
        load_xp([tmp_path / "malformed.csv.gz"], progress=False)
    assert e.value.summary.failed[0].error.startswith(str(tmp_path / "malformed.csv.gz"))


def test_errors_to_quarantines_bad_rows(clean_db, tmp_path, run_cli):
    f = make_bulk(tmp_path / "m.csv.gz", range(1, 21),
                  mutate=lambda k, ln: _first_value(ln, "oops") if k in (2, 9) else ln)
    q = tmp_path / "bad.tsv"
    r = run_cli("etl", "xp", f, "--errors-to", q, "--no-progress")
    assert "2 bad row(s) quarantined" in r.output and _count(clean_db) == 18
    lines = q.read_text().splitlines()
    assert lines[0].startswith("file\trow") and [ln.split("\t")[1] for ln in lines[1:]] == ["3", "10"]


def test_array_parser_rejects_bad_rows():
    good = "[" + ",".join(["1.5"] * 55) + "]"
    a = parse_array_strings([good, None, "()", "(" + ", ".join(["2"] * 55) + ")"], 55)
    assert a[0, 0] == 1.5 and np.isnan(a[1]).all() and np.isnan(a[2]).all() and (a[3] == 2).all()
    for bad, row in ([good, good[:-1]], 1), ([good, "[" + ",".join(["1"] * 54) + "]"], 1), \
                    ([good, good.replace("1.5", "x", 1)], 1), ([good.replace("1.5,", ",", 1)], 0):
        with pytest.raises(ArrayParseError) as e:
            parse_array_strings(bad, 55)
        assert e.value.rows[0] == row


def test_blocks_cut_at_line_ends_read_like_one_block(tmp_path):
    """The text is parsed in line-aligned blocks: any block size gives the same rows and row numbers."""
    from xpmet.io.xp_reader import read_xp
    f = make_bulk(tmp_path / "b.csv.gz", range(1, 31))

    def rows(block_bytes):
        chunks = list(read_xp(f, block_bytes=block_bytes))
        firsts = [c.first_row for c in chunks]
        return firsts, {k: np.concatenate([c.data[k] for c in chunks]) for k in chunks[0].data}
    firsts, whole = rows(1 << 24)
    small_firsts, small = rows(50_000)  # a row is ~35 kB: blocks of one or two rows
    assert firsts == [1] and len(small_firsts) > 10 and small_firsts[0] == 1
    for k, v in whole.items():
        assert np.asarray(v).tobytes() == np.asarray(small[k]).tobytes(), k
    header_only = make_bulk(tmp_path / "h.csv.gz", [])
    assert sum(c.n for c in read_xp(header_only)) == 0


def test_cut_line_in_a_later_block_names_its_data_row(tmp_path):
    from xpmet.errors import BadInput
    from xpmet.io.xp_reader import read_xp
    f = make_bulk(tmp_path / "cut.csv.gz", range(1, 31), mutate=lambda k, ln: ln[:200] if k == 22 else ln)
    with pytest.raises(BadInput, match=r"cut.csv.gz: row 23 has \d+ fields, the header has 26"):
        list(read_xp(f, block_bytes=100_000))


def test_detect_by_content_not_name(tmp_path):
    f = tmp_path / "spectra.dat"
    f.write_bytes((XP / "XP_CONTINUOUS_RAW.fits").read_bytes())
    assert detect(f).kind == "fits"
    g = tmp_path / "spectra.bin"
    g.write_bytes(gzip.compress((XP / "XP_CONTINUOUS_RAW.xml").read_bytes()))
    assert str(detect(g)) == "votable+gzip"


def test_datalink_zip(clean_db, tmp_path):
    import zipfile
    z = tmp_path / "datalink.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(XP / "XP_CONTINUOUS_RAW.xml", "XP_CONTINUOUS_RAW-Gaia DR3 a.xml")
        zf.write(XP / "18Sco-XP-spectra.csv", "XP_CONTINUOUS_RAW-Gaia DR3 b.csv")
    s = load_xp([z], progress=False)
    assert s.rows == 3 and _count(clean_db) == 3


@pytest.mark.parametrize("workers", [1, 2])
def test_killed_mid_file_leaves_nothing_then_rerun_completes(clean_db, tmp_path, workers):
    files = [make_bulk(tmp_path / f"big{k}.csv.gz", range(10000 * k + 1, 10000 * k + 6001)) for k in range(workers)]
    cmd = [sys.executable, "-m", "xpmet", "etl", "xp", *map(str, files), "--workers", str(workers), "--no-progress"]
    p = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    active = ("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY xpmet.xp_continuous%' "
              "AND state = 'active'")
    deadline = time.time() + 60
    copying = False
    while time.time() < deadline and p.poll() is None:
        copying = _count(clean_db, active) >= workers
        if copying:
            time.sleep(0.3)  # let some chunks go in
            break
        time.sleep(0.05)
    assert copying and p.poll() is None, "the load finished before it could be killed; make the file bigger"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    deadline = time.time() + 20  # orphaned pool workers notice the dead parent and exit without committing
    while _count(clean_db, active) and time.time() < deadline:
        time.sleep(0.2)
    assert _count(clean_db, active) == 0
    assert _count(clean_db) == 0
    assert _count(clean_db, "SELECT count(*) FROM xpmet.etl_load WHERE status = 'done'") == 0
    r = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert _count(clean_db) == 6000 * workers
