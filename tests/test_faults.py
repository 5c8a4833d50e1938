"""Kills of export and train at deterministic points, SIGKILLs of etl xp and predict at random
moments, sky queries while writers run, and one-line errors for bad input: each against the real
CLI in a subprocess and the real database, compared with a clean run's files and rows."""
from __future__ import annotations

import gzip
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import sqlalchemy as sa

from conftest import truncate_all
from test_integrity import PRED_CHECKSUM, XP_CHECKSUM
from xpmet.faults import EXIT_CODE

XPMET = [sys.executable, "-m", "xpmet"]
ROOT = Path(__file__).resolve().parent.parent
#: the CLI with export's fetch block shrunk, so a tiny training set streams in several blocks
SMALL_BLOCKS = [sys.executable, "-c", "import sys, xpmet.ml.export as e; e.FETCH = 25; "
                "from xpmet.cli import main; main(sys.argv[1:], prog_name='xpmet')"]
TINY = ("--kind", "estimator", "--hidden", "16", "--epochs", "4", "--batch-size", "64", "--patience", "100",
        "--threads", "1", "--seed", "1")


def q(engine, sql, **kw):
    with engine.connect() as c:
        return c.execute(sa.text(sql), kw).scalar()


def cli(*args, env=None, prefix=XPMET, timeout=600):
    """The real CLI in a subprocess; the result also has the process id (.pid)."""
    p = subprocess.Popen([*prefix, *map(str, args)], env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT)
    out, err = p.communicate(timeout=timeout)
    r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    r.pid = p.pid
    return r


def ok(r):
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    from xpmet.simulate import simulate
    return simulate(tmp_path_factory.mktemp("sky"), n_stars=1500, seed=5, correlations=False, rows_per_file=300,
                    progress=False)


def load_sky(engine, sky):
    from xpmet.xmatch import run_xmatch
    from xpmet.etl.gaia import load_gaia_source
    from xpmet.etl.survey import load_survey_file
    from xpmet.etl.xp_loader import load_xp
    from xpmet.simulate import survey_files
    truncate_all(engine)
    load_gaia_source([str(sky / "gaia_source")], progress=False)
    load_xp([str(sky / "xp_continuous")], correlations=False, progress=False)
    for name, path in survey_files(sky).items():
        load_survey_file(name, path)
    run_xmatch(labels=True)


@pytest.fixture(scope="module")
def trainset(engine, sky, tmp_path_factory):
    """The sky loaded and crossmatched (the database is left so for the export test) and its export."""
    from xpmet.ml.export import ExportOptions, export
    load_sky(engine, sky)
    h5 = tmp_path_factory.mktemp("trainset") / "train.h5"
    export(h5, ExportOptions(noise_sample=200), progress=False)
    return h5


# -- export ------------------------------------------------------------------------------------------
def assert_same_h5(a, b):
    """Every dataset equal (NaN == NaN) and every attribute but the creation time."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        names = []
        fa.visit(names.append)
        other = []
        fb.visit(other.append)
        assert sorted(names) == sorted(other)
        for n in names:
            x, y = fa[n], fb[n]
            assert dict(x.attrs) == dict(y.attrs), n
            if isinstance(x, h5py.Dataset):
                assert x.dtype == y.dtype and x.shape == y.shape, n
                np.testing.assert_array_equal(x[()], y[()], err_msg=n)
        assert {k: v for k, v in fa.attrs.items() if k != "created"} == \
            {k: v for k, v in fb.attrs.items() if k != "created"}


def leftovers(d: Path, name: str):
    return sorted(p.name for p in d.iterdir() if p.name != name and name in p.name)


@pytest.mark.parametrize("point", ["export_after_block:2", "export_before_register"])
def test_export_killed_leaves_nothing_and_rerun_equals_clean(engine, trainset, tmp_path, point):
    clean = tmp_path / "clean" / "train.h5"
    clean.parent.mkdir()
    args = ("export", "--noise-sample", 200)
    ok(cli(*args, clean, prefix=SMALL_BLOCKS))
    assert q(engine, "SELECT n_rows FROM xpmet.training_export WHERE path = :p", p=str(clean)) > 50  # 3+ blocks
    out = tmp_path / "train.h5"
    r = cli(*args, out, prefix=SMALL_BLOCKS, env={"XPMET_FAULT": point})
    assert r.returncode == EXIT_CODE, r.stdout + r.stderr
    n_export = q(engine, "SELECT count(*) FROM xpmet.training_export WHERE path = :p", p=str(out))
    if point.startswith("export_after_block"):
        # a kill runs no cleanup: the temporary file stays (hidden, this process's) until the next export
        assert not out.exists() and n_export == 0
        assert leftovers(tmp_path, out.name) == [f".{out.name}.partial-{socket.gethostname()}-{r.pid}"]
    else:  # the file was complete and renamed into place, the row not yet written
        assert out.exists() and n_export == 0
    ok(cli(*args, out, prefix=SMALL_BLOCKS))
    # the killed run's temporary file is gone once the re-run has run
    assert leftovers(tmp_path, out.name) == []
    assert q(engine, "SELECT count(*) FROM xpmet.training_export WHERE path = :p", p=str(out)) == 1
    assert_same_h5(out, clean)


# -- train -------------------------------------------------------------------------------------------
def model_rows(engine, d: Path):
    return q(engine, "SELECT count(*) FROM xpmet.models WHERE path = :p", p=str(d.resolve()))


def same_model(a: Path, b: Path):
    """config (but timings and paths) and metrics equal within float tolerance; weights close."""
    import torch
    skip = {"train_seconds", "samples_per_second", "device", "run_id"}
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (a, b))
    assert {k: v for k, v in ca.items() if k not in skip} == {k: v for k, v in cb.items() if k not in skip}
    ha, hb = (json.loads((d / "history.json").read_text()) for d in (a, b))
    assert len(ha) == len(hb)
    for x, y in zip(ha, hb):
        assert x["epochs"] == y["epochs"]
        np.testing.assert_allclose(x["valid"], y["valid"], rtol=1e-5)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    np.testing.assert_allclose(ma["best_valid_loss"], mb["best_valid_loss"], rtol=1e-5)
    fa = ma["valid"]["overall"]["feh"]
    fb = mb["valid"]["overall"]["feh"]
    for k in ("bias", "scatter"):
        assert fa[k] == pytest.approx(fb[k], rel=1e-4, abs=1e-6), k
    wa, wb = (torch.load(d / "weights.pt", weights_only=True) for d in (a, b))
    for sa_, sb_ in zip(wa["members"], wb["members"]):
        for k in sa_:
            torch.testing.assert_close(sa_[k], sb_[k], rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def clean_model(trainset, tmp_path_factory):
    d = tmp_path_factory.mktemp("models") / "clean"
    ok(cli("train", trainset, "--out", d, *TINY))
    return d


@pytest.mark.parametrize("point, files", [
    ("train_after_epoch:2", {"checkpoint.pt"}),                 # mid-training
    ("train_after_weights", {"checkpoint.pt", "weights.pt"}),   # the directory half written
    ("train_after_register", {"checkpoint.pt", "weights.pt", "metrics.json", "config.json"}),
])
def test_train_killed_then_resume_equals_clean(engine, trainset, clean_model, tmp_path, point, files):
    d = tmp_path / "est"
    r = cli("train", trainset, "--out", d, *TINY, env={"XPMET_FAULT": point})
    assert r.returncode == EXIT_CODE, r.stdout + r.stderr
    have = {p.name for p in d.iterdir()}
    assert files <= have and "model.json" not in have, have
    registered = model_rows(engine, d)
    assert registered == (1 if point == "train_after_register" else 0)
    if "weights.pt" in files:  # a plain re-run refuses and names --resume (not "delete it")
        r = cli("train", trainset, "--out", d, *TINY)
        assert r.returncode == 1 and "add --resume" in r.stderr.splitlines()[-1], r.stderr
    ok(cli("train", trainset, "--out", d, *TINY, "--resume"))
    assert not (d / "checkpoint.pt").exists()
    assert model_rows(engine, d) == 1, "one models row per model directory"
    mid = json.loads((d / "model.json").read_text())["model_id"]
    assert q(engine, "SELECT path FROM xpmet.models WHERE model_id = :m", m=mid) == str(d.resolve())
    same_model(d, clean_model)


# -- SIGKILL at random moments -----------------------------------------------------------------------
def start(*args, **kw):
    """The real CLI in its own process group (its workers with it), as a cluster job runs it."""
    return subprocess.Popen([*XPMET, *map(str, args)], env=dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, start_new_session=True, **kw)


def busy(engine, like: tuple[str, ...], since) -> bool:
    """A backend started since `since` has issued one of these statements: the command is at work."""
    return bool(q(engine, "SELECT count(*) FROM pg_stat_activity WHERE backend_start >= :t AND ("
                  + " OR ".join(f"query ILIKE '{s}%'" for s in like) + ")", t=since))


def server_now(engine):
    return q(engine, "SELECT clock_timestamp()")


def timed_run(engine, args, like, done_sql) -> float:
    """A clean run; returns the seconds it worked: from its first statement of `like` until
    `done_sql` says all its work is committed (the exit comes later)."""
    since = server_now(engine)
    p = start(*args)
    while p.poll() is None and not busy(engine, like, since):
        time.sleep(0.02)
    t0 = time.perf_counter()
    while not q(engine, done_sql):
        assert p.poll() in (None, 0), p.communicate()[0]
        time.sleep(0.02)
    work = time.perf_counter() - t0
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out
    return work


def killed_run(engine, args, like, rng: random.Random, work_s: float) -> bool:
    """Start the command, SIGKILL its process group a random time into its work; True when the kill
    came before it finished."""
    since = server_now(engine)
    p = start(*args)
    while p.poll() is None and not busy(engine, like, since):
        time.sleep(0.02)
    delay = rng.uniform(0.05, 0.8) * work_s  # the clean run's work time: most kills land mid-work
    time.sleep(delay)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    out = p.communicate(timeout=120)[0]
    assert p.returncode in (0, -signal.SIGKILL), out
    print(f"\n{args[0]} {args[1]}: SIGKILL {delay:.2f} s into {work_s:.2f} s of work: "
          f"{'killed' if p.returncode else 'had finished'}", end="; ")
    return p.returncode == -signal.SIGKILL


XP_WORK = ("COPY xpmet.xp_continuous", "INSERT INTO xpmet.etl_load")
PREDICT_WORK = ("COPY xpmet.predictions",)


def test_etl_xp_sigkilled_at_random_moments_then_rerun_equals_clean(clean_db, sky):
    files = sorted((sky / "xp_continuous").iterdir())
    args = ("etl", "xp", *files, "--workers", 2, "--no-progress")
    work_s = timed_run(clean_db, args, XP_WORK, f"SELECT count(*) = {len(files)} FROM xpmet.etl_load "
                                                "WHERE status = 'done'")
    want = q(clean_db, XP_CHECKSUM)
    killed, partial = [], []
    for seed in (1, 2, 3):
        truncate_all(clean_db)
        killed.append(killed_run(clean_db, args, XP_WORK, random.Random(seed), work_s))
        partial.append(0 < q(clean_db, "SELECT count(*) FROM xpmet.etl_load") < len(files))
        if killed[-1]:  # whatever committed is whole files: every row of a file or none
            per_file = q(clean_db, "SELECT count(*) FROM xpmet.etl_load l WHERE n_rows <> (SELECT count(*) FROM "
                                   "xpmet.xp_continuous x WHERE x.load_id = l.load_id)")
            assert per_file == 0
        print(q(clean_db, "SELECT count(*) || ' files done, ' || coalesce(sum(n_rows), 0) || ' rows; etl_load '"
                          "|| coalesce(string_agg(DISTINCT status, ','), '-') FROM xpmet.etl_load"), end="")
        ok(subprocess.run([*XPMET, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=600))
        assert q(clean_db, XP_CHECKSUM) == want
        assert q(clean_db, "SELECT count(*) FROM xpmet.etl_load") == len(files)
        assert q(clean_db, "SELECT count(*) FROM xpmet.etl_load WHERE status = 'done'") == len(files)
        assert q(clean_db, "SELECT count(DISTINCT sha256) FROM xpmet.etl_load") == len(files)
    # a kill before the first commit (nothing done yet) is mid-work too; how much had committed
    # depends on the machine's speed, so only "killed before it finished" is required
    assert any(killed), "no kill landed before the run finished"


@pytest.fixture(scope="module")
def model_dir(clean_model, tmp_path_factory):
    """The clean model, unregistered (predict registers it by path in whatever database it meets)."""
    import shutil
    d = tmp_path_factory.mktemp("predict-model") / "est"
    shutil.copytree(clean_model, d)
    (d / "model.json").unlink()
    return d


def model_id_of(engine, d: Path):
    return q(engine, "SELECT model_id FROM xpmet.models WHERE path = :p", p=str(d.resolve()))


def test_predict_sigkilled_at_random_moments_then_rerun_equals_clean(clean_db, sky, model_dir):
    from xpmet.etl.gaia import load_gaia_source
    from xpmet.etl.xp_loader import load_xp
    load_gaia_source([str(sky / "gaia_source")], progress=False)
    load_xp([str(sky / "xp_continuous")], correlations=False, progress=False)
    n_xp = q(clean_db, "SELECT count(*) FROM xpmet.xp_continuous")
    args = ("predict", "--model", model_dir, "--workers", 2, "--chunk", 5, "--batch", 5)
    work_s = timed_run(clean_db, args, PREDICT_WORK, f"SELECT count(*) = {n_xp} FROM xpmet.predictions")
    mid = model_id_of(clean_db, model_dir)
    want = q(clean_db, PRED_CHECKSUM, m=mid)
    assert want.startswith(f"{n_xp}:")
    killed, partial = [], []
    for seed in (1, 2):
        with clean_db.begin() as c:
            c.execute(sa.text("DELETE FROM xpmet.predictions WHERE model_id = :m"), {"m": mid})
        killed.append(killed_run(clean_db, args, PREDICT_WORK, random.Random(seed), work_s))
        partial.append(0 < q(clean_db, "SELECT count(*) FROM xpmet.predictions WHERE model_id = :m", m=mid) < n_xp)
        print(q(clean_db, "SELECT count(*) || ' of ' || :n || ' predictions, ' || count(DISTINCT source_id) "
                          "|| ' distinct' FROM xpmet.predictions WHERE model_id = :m", m=mid, n=n_xp), end="")
        ok(subprocess.run([*XPMET, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=600))
        assert q(clean_db, PRED_CHECKSUM, m=mid) == want
        assert q(clean_db, "SELECT count(*) FROM xpmet.models") == 1
    # a kill before the first commit (nothing done yet) is mid-work too; how much had committed
    # depends on the machine's speed, so only "killed before it finished" is required
    assert any(killed), "no kill landed before the run finished"


# -- sky queries while writers run -------------------------------------------------------------------
def test_sky_query_during_writers_sees_committed_states_only(clean_db, sky, model_dir):
    """A cone search keeps answering, always with the committed catalogue, while etl xp --replace,
    xmatch and predict (re-predicting the replaced spectra in 2 workers) write."""
    from xpmet import query as xquery
    from xpmet.etl.gaia import load_gaia_source
    from xpmet.etl.survey import load_survey_file
    from xpmet.etl.xp_loader import load_xp
    from xpmet.simulate import survey_files
    load_gaia_source([str(sky / "gaia_source")], progress=False)
    load_xp([str(sky / "xp_continuous")], correlations=False, progress=False)
    for name, path in survey_files(sky).items():
        load_survey_file(name, path)
    ok(cli("predict", "--model", model_dir, "--chunk", 100))
    mid = model_id_of(clean_db, model_dir)
    before = q(clean_db, PRED_CHECKSUM, m=mid)
    target = sorted((sky / "xp_continuous").iterdir())[0]
    # a cone around a star of the file to be replaced: its predictions are the ones re-predicted
    ra, dec = (q(clean_db, f"SELECT g.{c} FROM xpmet.xp_continuous x JOIN xpmet.etl_load l USING (load_id) "
                           f"JOIN xpmet.gaia_source g USING (source_id) WHERE l.path = :p ORDER BY source_id "
                           f"LIMIT 1", p=str(target.resolve())) for c in ("ra", "dec"))
    ref = xquery.cone(ra, dec, 40)
    assert len(ref) > 50 and ref.meta["model_id"] == mid
    n_replaced = q(clean_db, "SELECT count(*) FROM xpmet.xp_continuous x JOIN xpmet.etl_load l USING (load_id) "
                             "WHERE l.path = :p", p=str(target.resolve()))

    def queries_while(p):
        n = 0
        while p.poll() is None:
            for t in (xquery.cone(ra, dec, 40), xquery.cone(ra, dec, 40, model_id=mid)):
                assert t.meta["model_id"] == mid and len(t) == len(ref)
                assert np.array_equal(t["source_id"], ref["source_id"])
                np.testing.assert_array_equal(t["feh"], ref["feh"])
            n += 1
        out = p.communicate(timeout=60)[0]
        assert p.returncode == 0, out
        assert n >= 2, "the writer ended before any query ran"
        return n

    queries_while(start("etl", "xp", target, "--replace", "--no-progress"))
    assert q(clean_db, "SELECT n_stale FROM xpmet.prediction_status WHERE model_id = :m", m=mid) == n_replaced
    queries_while(start("xmatch"))
    queries_while(start("predict", "--model", model_dir, "--workers", 2, "--chunk", 20, "--batch", 10))
    assert q(clean_db, "SELECT n_stale FROM xpmet.prediction_status WHERE model_id = :m", m=mid) == 0
    assert q(clean_db, PRED_CHECKSUM, m=mid) == before


# -- bad input: one line, non-zero, no traceback -----------------------------------------------------
UNREACHABLE = {"XPMET_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x"}


def test_every_command_ends_bad_input_with_one_error_line(tmp_path, sky, trainset, xpmet_home):
    """The last line says error: (a loader lists its failed files above it, one line each)."""
    from xpmet.simulate import survey_files
    xp = sorted((sky / "xp_continuous").iterdir())[0].read_bytes()
    gaia = sorted((sky / "gaia_source").iterdir())[0].read_bytes()
    (tmp_path / "XpContinuousMeanSpectrum_cut.csv.gz").write_bytes(xp[:len(xp) // 2])  # inside the rows
    (tmp_path / "GaiaSource_cut.csv.gz").write_bytes(gaia[:40])                        # inside the header
    (tmp_path / "apogee_cut.fits.gz").write_bytes(gzip.compress(survey_files(sky)["apogee"].read_bytes())[:5000])
    with h5py.File(tmp_path / "not_export.h5", "w") as f:
        f["x"] = np.arange(3)
    (tmp_path / "empty_model").mkdir()
    missing = tmp_path / "nowhere"
    cases = [
        (("etl", "gaia-source", missing / "GaiaSource_1.csv.gz"), {}),
        (("etl", "gaia-source", tmp_path / "GaiaSource_cut.csv.gz", "--no-progress"), {}),
        (("etl", "xp", tmp_path / "XpContinuousMeanSpectrum_cut.csv.gz", "--no-progress"), {}),
        (("etl", "survey", "apogee", tmp_path / "apogee_cut.fits.gz"), {}),
        (("etl", "survey", "no-such-survey", tmp_path / "apogee_cut.fits.gz"), {}),
        (("etl", "xp", trainset.parent, "--no-progress"), UNREACHABLE),
        (("xmatch",), UNREACHABLE),
        (("labels", "--no-show"), UNREACHABLE),
        (("export", tmp_path / "out.h5"), UNREACHABLE),
        (("export", missing / "out.h5"), {}),
        (("train", tmp_path / "not_export.h5", "--out", tmp_path / "m1", "--threads", 1), {}),
        (("train", missing / "train.h5", "--out", tmp_path / "m2"), {}),
        (("train", trainset, "--out", tmp_path / "m3", "--hidden", "a,b"), {}),
        (("evaluate", missing / "model", trainset), {}),
        (("evaluate", tmp_path / "empty_model", trainset), {}),
        (("predict", "--model", missing / "model"), {}),
        (("predict", "--model", tmp_path / "empty_model"), {}),
        (("query", "cone", 10, 100, 1), {}),
        (("query", "polygon", 0, 0, 1, 1), {}),
        (("query", "box", 0, 0, 10, 10), UNREACHABLE),
        (("db", "status"), UNREACHABLE),
        (("db", "migrate"), UNREACHABLE),
        (("simulate", tmp_path / "sim", "--n-stars", -5), {}),
    ]
    failures = []
    for k in range(0, len(cases), 4):  # four at a time: the machine is small
        procs = [(args, subprocess.Popen([*XPMET, *map(str, args)], env={**os.environ, **env},
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT))
                 for args, env in cases[k:k + 4]]
        for args, p in procs:
            out, err = p.communicate(timeout=300)
            last = (err.strip().splitlines() or [""])[-1].strip()
            print(f"\n{' '.join(map(str, args[:2]))} -> {p.returncode}: {len(err.strip().splitlines())} line(s), "
                  f"last: {last[:200]}", end="")
            if p.returncode == 0 or "Traceback" in out + err or not last.lower().startswith("error:"):
                failures.append(f"xpmet {' '.join(map(str, args))} -> {p.returncode}\n{out}{err}")
    assert not failures, "\n\n".join(failures)


def test_sky_query_never_shows_a_new_model_half_predicted(clean_db, sky, model_dir, tmp_path):
    import shutil
    from xpmet import query as xquery
    from xpmet.etl.gaia import load_gaia_source
    from xpmet.etl.xp_loader import load_xp
    load_gaia_source([str(sky / "gaia_source")], progress=False)
    load_xp([str(sky / "xp_continuous")], correlations=False, progress=False)
    ok(cli("predict", "--model", model_dir, "--chunk", 100))
    first = model_id_of(clean_db, model_dir)
    n = len(xquery.cone(0, 0, 180))
    assert n == q(clean_db, "SELECT count(*) FROM xpmet.predictions WHERE model_id = :m", m=first)
    # a second model's run stopped (or still running) after its first chunk
    second = tmp_path / "second"
    shutil.copytree(model_dir, second)
    r = cli("predict", "--model", second, "--chunk", 100, env={"XPMET_FAULT": "predict_after_chunk:1"})
    assert r.returncode == EXIT_CODE, r.stderr
    assert 0 < q(clean_db, "SELECT count(*) FROM xpmet.predictions WHERE model_id = :m",
                 m=model_id_of(clean_db, second)) < n
    t = xquery.cone(0, 0, 180)
    assert (t.meta["model_id"], len(t)) == (first, n)
