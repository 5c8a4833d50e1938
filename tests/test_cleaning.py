"""`xpmet clean`: training stars whose labels their XP synthetic photometry contradicts are dropped,
reproducibly, with the record in the training file, honoured by dataset.read, and written atomically.

The training file is semi-synthetic (tests/ml_semisynth.py: real DR3 spectra's principal directions
and errors, a known labels -> coefficients map), with wrong [Fe/H] injected into a fixed 5 % of the
train/valid rows. The cleaning never touches the database.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from ml_semisynth import write_file
from xpmet.cli import main
from xpmet.ml import dataset as ds
from xpmet.ml.cleaning import CleanOptions, clean, emulator_scatter, read_record

N = 1500
BAD_FRACTION = 0.05


def _cli(*args):
    return CliRunner().invoke(main, ["clean", *map(str, args)], catch_exceptions=False)


def _sha(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def dirty(tmp_path_factory, torch_one_thread):
    """(file with injected label errors, bool mask of the injected rows, emulator trained on the file)."""
    from xpmet.ml.train import TrainConfig, train
    d = tmp_path_factory.mktemp("clean")
    p = d / "train.h5"
    write_file(p, n=N, seed=3)
    rng = np.random.default_rng(0)
    with h5py.File(p, "a") as f:
        split = f["split"][:]
        rows = np.flatnonzero(split < 2)
        bad = np.sort(rng.choice(rows, int(BAD_FRACTION * len(rows)), replace=False))
        feh = f["labels/feh"][:]
        feh[bad] += rng.choice([-1.0, 1.0], len(bad)) * rng.uniform(0.7, 1.2, len(bad))
        f["labels/feh"][:] = feh
    mask = np.zeros(N, bool)
    mask[bad] = True
    emu = d / "emu"
    train(p, emu, TrainConfig(kind="emulator", hidden=(128, 128, 128), epochs=40, seed=0, device="cpu"),
          register=False, progress=False)
    return p, mask, emu


@pytest.fixture
def work(dirty, tmp_path):
    """A fresh copy of the dirty file for one test."""
    p = tmp_path / "train.h5"
    shutil.copyfile(dirty[0], p)
    return p


def test_injected_label_errors_are_dropped_and_good_rows_kept(dirty, work):
    _, bad, emu = dirty
    r = _cli(work, "--emulator", emu)
    assert r.exit_code == 0, r.output
    assert "dropped per iteration" in r.output and (work.parent / "train.cleaning.png").stat().st_size > 10_000
    rec = read_record(work)
    with h5py.File(work, "r") as f:
        split = f["split"][:]
    tv = split < 2
    recall = (~rec["keep"][bad & tv]).mean()
    good_dropped = (~rec["keep"][~bad & tv]).mean()
    assert recall >= 0.6, recall
    assert good_dropped <= 0.01, good_dropped
    assert rec["keep"][split == 2].all()  # the test split is never dropped


def test_record_in_file_and_read_honours_it(dirty, work):
    _, _, emu = dirty
    s = clean(work, CleanOptions(emulator=str(emu), k=4, max_iter=3), progress=False, plot=False)
    rec = read_record(work)
    keep = rec["keep"]
    assert keep.dtype == bool and len(keep) == N and (~keep).sum() == sum(s["n_dropped"]) > 0
    assert rec["k"] == 4 and rec["bands"] == ["CaHK", "g_sdss"] and rec["iterations"] == len(rec["n_dropped"])
    assert rec["residual"].shape == (rec["iterations"], N, 2)
    assert rec["emulator"]["path"] == str(emu.resolve()) and len(rec["emulator"]["weights_sha256"]) == 64
    assert rec["xpmet_version"] and rec["created"] and rec["rows_sha256"] == s["rows_sha256"]
    assert len(rec["emulator_scatter"]) == rec["iterations"] and min(min(v) for v in rec["emulator_scatter"]) >= 0
    np.testing.assert_array_equal(rec["dropped_in"] > 0, ~keep)
    assert ds.attributes(work)["cleaning"]["n_dropped"] == s["n_dropped"]  # models trained on it record it
    with h5py.File(work, "r") as f:
        split, sid = f["split"][:], f["source_id"][:]
    for name, code in ds.SPLITS.items():
        want = (split == code) & (keep | (code == ds.SPLITS["test"]))
        np.testing.assert_array_equal(ds.read(work, name).source_id, sid[want])
        np.testing.assert_array_equal(ds.split_rows(work, name), np.flatnonzero(want))
        np.testing.assert_array_equal(ds.read(work, name, cleaned=False).source_id, sid[split == code])


def test_rerun_starts_from_the_original_rows_and_replaces_the_record(dirty, work, tmp_path):
    _, _, emu = dirty
    opt = CleanOptions(emulator=str(emu))
    clean(work, opt, progress=False, plot=False)
    first = read_record(work)
    with h5py.File(work, "a") as f:  # a record that dropped everything must not shrink the next run
        f["cleaning/keep"][:] = False
    clean(work, opt, progress=False, plot=False)
    second = read_record(work)
    np.testing.assert_array_equal(first["keep"], second["keep"])
    np.testing.assert_array_equal(first["residual"], second["residual"])
    assert second["n_dropped"] == first["n_dropped"]
    with h5py.File(work, "r") as f:
        assert list(f["cleaning"]) == ["dropped_in", "keep", "residual"]


def test_emulator_trained_here_is_deterministic(work, tmp_path, torch_one_thread):
    other = tmp_path / "other.h5"
    shutil.copyfile(work, other)
    opt = CleanOptions(max_iter=1, epochs=8, seed=5)
    a = clean(work, opt, progress=False, plot=False)
    b = clean(other, opt, progress=False, plot=False)
    ra, rb = read_record(work), read_record(other)
    np.testing.assert_array_equal(ra["keep"], rb["keep"])
    np.testing.assert_array_equal(ra["residual"], rb["residual"])
    assert a["emulator"]["weights_sha256"] == b["emulator"]["weights_sha256"]
    assert a["emulator"]["epochs"] == 8 and np.isfinite(ra["residual"][0][ra["keep"]]).mean() > 0.8


@pytest.mark.parametrize("point", ["clean_before_close", "clean_before_replace"])
def test_a_kill_leaves_the_file_as_it_was(dirty, work, point):
    _, _, emu = dirty
    before = _sha(work)
    env = dict(os.environ, XPMET_FAULT=point)
    r = subprocess.run([sys.executable, "-m", "xpmet.cli", "clean", str(work), "--emulator", str(emu), "--no-plot"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 97, r.stderr
    assert _sha(work) == before and read_record(work) is None
    assert any(p.name.startswith(".train.h5.partial-") for p in work.parent.iterdir())  # what a kill leaves
    clean(work, CleanOptions(emulator=str(emu)), progress=False, plot=False)  # the next run tidies up
    assert read_record(work) is not None
    assert not any(p.name.startswith(".train.h5.partial-") for p in work.parent.iterdir())


def test_bad_input_is_one_line(dirty, work, tmp_path):
    _, _, emu = dirty
    nolabels = tmp_path / "nolabels.h5"
    shutil.copyfile(work, nolabels)
    with h5py.File(nolabels, "a") as f:
        del f["labels"]
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(3)
    cases = [((nolabels, "--emulator", emu), "no labels"),
             ((plain,), "not an xpmet training file"),
             ((tmp_path / "absent.h5",), "no such file"),
             ((work, "--emulator", tmp_path / "no_model"), "no such model directory"),
             ((work, "--emulator", emu, "--bands", "CaHK,U"), "--bands"),
             ((work, "--emulator", emu, "--k", "0"), "--k")]
    for args, text in cases:
        r = _cli(*args)
        assert r.exit_code == 1, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and text in lines[0] and "Traceback" not in r.output, r.output
    assert _sha(work) == _sha(dirty[0])  # nothing was written by a refused run


def test_photometric_errors_ignore_the_standard_deviation():
    """GaiaXPy divides the coefficient errors by the standard deviation for the covariance and
    multiplies its propagated errors back: the published errors are the real ones (a NaN standard
    deviation must not lose the band)."""
    from ml_semisynth import real_xp
    from xpmet.ml.photometry import synthetic_photometry
    bp, bpe, rp, rpe, _ = real_xp()
    bp, bpe, rp, rpe = bp[:20], bpe[:20], rp[:20], rpe[:20]
    ref = synthetic_photometry(bp, bpe, rp, rpe, bands=("CaHK",))
    for sd in (1.7, np.nan):
        s = np.full(20, sd)
        out = synthetic_photometry(bp, bpe, rp, rpe, bp_sd=s, rp_sd=s, bands=("CaHK",))
        assert np.isfinite(out["CaHK_err"]).all()
        np.testing.assert_allclose(out["CaHK_err"], ref["CaHK_err"], rtol=1e-10)
    doubled = synthetic_photometry(bp, 2 * bpe, rp, 2 * rpe, bands=("CaHK",))
    np.testing.assert_allclose(doubled["CaHK_err"], 2 * ref["CaHK_err"], rtol=1e-6)


def test_emulator_scatter_is_what_the_photometric_errors_leave_unexplained():
    rng = np.random.default_rng(2)
    err = rng.uniform(0.01, 0.2, 20000)
    assert abs(emulator_scatter(rng.normal(0, np.hypot(err, 0.05)), err) / 0.05 - 1) < 0.1
    assert emulator_scatter(rng.normal(0, err), err) < 0.01  # the errors explain it: (nearly) none
    outliers = np.where(rng.random(20000) < 0.03, 5.0, 0.0)  # a few wrong labels do not inflate it
    assert abs(emulator_scatter(rng.normal(0, np.hypot(err, 0.05)) + outliers, err) / 0.05 - 1) < 0.15
