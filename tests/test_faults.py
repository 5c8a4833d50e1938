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
    from xpmet.crossmatch import run_xmatch
    from xpmet.etl.gaia import load_gaia_source
    from xpmet.etl.survey import load_survey_file
    from xpmet.etl.xp import load_xp
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
