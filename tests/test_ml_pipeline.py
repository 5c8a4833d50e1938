"""End to end against the real database: simulate -> etl -> xmatch/labels -> training_set view ->
xpmet export -> xpmet train (both kinds) -> xpmet evaluate --truth, through the CLI."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import sqlalchemy as sa

from xpmet.simulate import survey_files

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    from xpmet.simulate import simulate
    out = tmp_path_factory.mktemp("sky")
    simulate(out / "sim", n_stars=1500, seed=11, progress=False)
    return out


@pytest.fixture(scope="module")
def loaded(sky, engine, run_cli):
    """The simulated sky loaded and crossmatched (module-scoped: the tests below only read it)."""
    from conftest import truncate_all
    truncate_all(engine)
    sim = sky / "sim"
    run_cli("etl", "gaia-source", sim / "gaia_source")
    run_cli("etl", "xp", sim / "xp_continuous")
    for name, path in survey_files(sim).items():
        run_cli("etl", "survey", name, path)
    run_cli("xmatch")
    yield sky
    truncate_all(engine)


def test_export_train_evaluate(loaded, run_cli, engine):
    d = loaded
    h5 = d / "train.h5"
    # the database holds correlations, so the default export carries them (the estimator's degradation)
    r = run_cli("export", h5, "--seed", 2, "--split", "train=0.7,valid=0.15,test=0.15")
    assert "wrote" in r.output
    with engine.connect() as c:
        n_view = c.execute(sa.text("SELECT count(*) FROM xpmet.training_set")).scalar()
    with h5py.File(h5, "r") as f:
        n = f["source_id"].shape[0]
        assert n == n_view > 100
        assert len(np.unique(f["source_id"][:])) == n          # one row, hence one split, per star
        assert f["xp/bp_coefficient_correlations"].shape == (n, 1485)
        assert f["xp/bp_coefficients"].chunks[1] == 55 and f["xp/bp_coefficients"].compression == "gzip"
        assert set(np.unique(f["split"][:])) == {0, 1, 2}
        for k in ("cuts", "reference", "xmatch_version", "xpmet_version", "created", "seed"):
            assert k in f.attrs, k
        assert f.attrs["reference"] == "gbs" and f.attrs["xmatch_version"].startswith("xm-")
        assert f["noise/phot_g_mean_mag"].shape[0] > n        # unlabelled stars for the noise model
        split_a = dict(zip(f["source_id"][:], f["split"][:]))
    # what the estimator's degradation reads: the correlations' packed Cholesky factors, block by block,
    # without the correlations themselves
    from xpmet.ml import dataset as ds
    from xpmet.ml.models import packed_cholesky
    factors, full = ds.read(h5, "train", noise_factors=True), ds.read(h5, "train", correlations=True)
    assert factors.corr is None and factors.chol.dtype == np.float16 and factors.chol.shape == (len(full), 2, 1540)
    packed, ok = packed_cholesky(full.corr)
    np.testing.assert_array_equal(factors.chol, packed)
    assert ok.mean() > 0.9
    # same seed, a G cut: the stars that remain keep their split (no leakage between exports)
    run_cli("export", d / "bright.h5", "--seed", 2, "--g-max", 15, "--split", "train=0.7,valid=0.15,test=0.15",
            "--no-correlations")
    with h5py.File(d / "bright.h5", "r") as f:
        assert (f["phot/phot_g_mean_mag"][:] <= 15).all()
        assert "xp/bp_coefficient_correlations" not in f and not json.loads(f.attrs["cuts"])["correlations"]
        assert all(split_a[s] == v for s, v in zip(f["source_id"][:], f["split"][:]))
    bad = run_cli("export", d / "none.h5", "--g-max", 3, ok=False)
    assert bad.exit_code == 1 and "no star passed the cuts" in bad.output and not (d / "none.h5").exists()

    run_cli("train", h5, "--out", d / "est", "--hidden", "32,32", "--epochs", 25, "--batch-size", 64,
            "--lr", 4e-3, "--patience", 6)
    assert json.loads((d / "est" / "config.json").read_text())["augment_noise_used"] == "covariance"
    run_cli("train", h5, "--out", d / "emu", "--kind", "emulator", "--hidden", "32,32", "--epochs", 25,
            "--batch-size", 64, "--lr", 4e-3, "--patience", 6, "--correlations")
    with engine.connect() as c:
        rows = c.execute(sa.text("SELECT model_id, kind, path, data_fingerprint FROM xpmet.models ORDER BY model_id")).all()
    assert [r.kind for r in rows] == ["estimator", "emulator"]
    assert rows[0].data_fingerprint == (d / "est" / "fingerprint.txt").read_text().strip()
    assert json.loads((d / "est" / "model.json").read_text())["model_id"] == rows[0].model_id

    r = run_cli("evaluate", d / "est", h5, "--truth", d / "sim" / "truth.fits", "--max-truth", 1500)
    assert "never_surveyed" in r.output
    ev = json.loads((d / "est" / "evaluation" / "evaluation.json").read_text())
    ns = ev["never_surveyed"]["overall"]["feh"]
    assert ns["n"] > 300
    assert ns["scatter"] < 0.35 and abs(ns["bias"]) < 0.15      # sane for a tiny model and ~200 stars
    assert 0.6 < ns["calibration"] < 1.6
    assert ev["test"]["by_g"] and ev["never_surveyed"]["by_feh"]
    # the label views against the truth, per true-[Fe/H] bin: every labelled star counted once
    hom = ev["homogenised_labels_vs_truth"]
    with engine.connect() as c:
        n_labels = c.execute(sa.text("SELECT count(feh) FROM xpmet.labels")).scalar()
    assert sum(b["n"] for b in hom.values()) == n_labels > 300
    assert abs(hom["-0.5..0.0"]["offset"]) < 0.05 and 0.5 < hom["-0.5..0.0"]["z_spread"] < 2
    for name in ("never_surveyed_one_to_one", "never_surveyed_kiel", "test_calibration", "learning_curves"):
        assert (d / "est" / "evaluation" / f"{name}.png").exists(), name

    r = run_cli("evaluate", d / "emu", h5, "--truth", d / "sim" / "truth.fits", "--max-truth", 300)
    ev = json.loads((d / "emu" / "evaluation" / "evaluation.json").read_text())
    assert ev["never_surveyed"]["median_fit_stat"] < 3
    assert ev["never_surveyed"]["overall"]["feh"]["scatter"] < 0.5
    # the contract with `xpmet predict` (CONTRACTS.md section 3): both kinds write predictions
    run_cli("predict", "--model", d / "est", "--where", "g.phot_g_mean_mag < 14")
    run_cli("predict", "--model", d / "emu", "--where", "g.phot_g_mean_mag < 13")
    with engine.connect() as c:
        got = dict(c.execute(sa.text("SELECT model_id, count(*) FROM xpmet.predictions GROUP BY 1")).all())
        n_bright = c.execute(sa.text("SELECT count(*) FROM xpmet.gaia_source g JOIN xpmet.xp_continuous "
                                     "USING (source_id) WHERE g.phot_g_mean_mag < 14")).scalar()
        n_rec = c.execute(sa.text("SELECT count(*) FILTER (WHERE recommended), count(feh_err) "
                                  "FROM xpmet.predictions WHERE model_id = :m"), {"m": rows[0].model_id}).one()
    assert got[rows[0].model_id] == n_bright > 0 and got[rows[1].model_id] > 0
    assert n_rec[0] > 0.5 * n_bright and n_rec[1] > 0.9 * n_bright
    ph = ev["photometry"]["CaHK"]
    assert ph["std_emulated"] > 0.5 * ph["std_observed"]       # the original research's failure: 0.4 vs 2.2 mag
    assert (d / "emu" / "evaluation" / "photometry.png").exists()


def test_export_and_train_bad_arguments_fail_cleanly(run_cli, tmp_path):
    r = run_cli("export", tmp_path / "x.h5", "--split", "train=0.5,valid=0.5", ok=False)
    assert r.exit_code == 1 and "train, valid and test" in r.output and not (tmp_path / "x.h5").exists()
    r = run_cli("train", tmp_path / "missing.h5", "--out", tmp_path / "m", ok=False)
    assert r.exit_code != 0 and "Traceback" not in r.output


@pytest.fixture
def unmigrated_database(engine, monkeypatch):
    """XPMET_DATABASE_URL pointing at a database nobody ran `xpmet db migrate` on (same server)."""
    from xpmet.db.engine import libpq_url
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(sa.text("DROP DATABASE IF EXISTS xpmet_unmigrated"))
        c.execute(sa.text("CREATE DATABASE xpmet_unmigrated"))
    url = libpq_url()
    monkeypatch.setenv("XPMET_DATABASE_URL", url.replace("/xpmet?", "/xpmet_unmigrated?", 1))
    yield
    monkeypatch.delenv("XPMET_DATABASE_URL")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(sa.text("DROP DATABASE xpmet_unmigrated WITH (FORCE)"))


def test_export_without_training_set_view_fails_cleanly(unmigrated_database, run_cli, tmp_path):
    r = run_cli("export", tmp_path / "x.h5", ok=False)
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "the database has no xpmet.training_set view" in r.output and "xpmet db migrate" in r.output
    assert not (tmp_path / "x.h5").exists() and not list(tmp_path.glob(".x.h5*"))
