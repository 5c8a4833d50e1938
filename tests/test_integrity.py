"""Replacement and kills on the real database: derived rows record what they were built from, a
replaced input shows as stale where users look, the next run recomputes it to what a clean run
gives, and a process killed at a deterministic point (XPMET_FAULT) leaves a state that a re-run
completes to the clean run's content."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import sqlalchemy as sa

from predict_helpers import ColourPredictor
from test_etl_xp import _first_value, make_bulk
from xm_helpers import insert_gaia, write_table
from xpmet import labels as xlabels
from xpmet.xmatch import run_xmatch
from xpmet.etl.gaia import load_gaia_source
from xpmet.etl.survey import load_survey_file
from xpmet.etl.xp_loader import load_xp
from xpmet.faults import EXIT_CODE
from xpmet.predict import predict
from xpmet.simulate import survey_files

XPMET = [sys.executable, "-m", "xpmet"]
LABEL_COLS = "source_id, teff, logg, feh, alpha_fe, teff_err, logg_err, feh_err, alpha_fe_err, label_flags, surveys"
#: Content of xp_continuous without load_id (which differs between a clean run and a re-run).
XP_CHECKSUM = ("SELECT count(*) || ':' || coalesce(md5(string_agg(source_id || '|' || coalesce(bp_coefficients::text, '-') "
               "|| '|' || coalesce(rp_coefficients::text, '-') || '|' || coalesce(rp_coefficient_errors::text, '-'), "
               "',' ORDER BY source_id)), '') FROM xpmet.xp_continuous")
PRED_CHECKSUM = ("SELECT count(*) || ':' || coalesce(md5(string_agg(concat_ws('|', source_id, teff, feh, quality_flags, "
                 "recommended), ',' ORDER BY source_id)), '') FROM xpmet.predictions WHERE model_id = :m")


def q(engine, sql, **kw):
    with engine.connect() as c:
        return c.execute(sa.text(sql), kw).scalar()


def rows(engine, sql, **kw):
    with engine.connect() as c:
        return c.execute(sa.text(sql), kw).mappings().all()


def cli(*args, env=None):
    """The real CLI in a subprocess (as a user or a cluster job runs it), on the test session's database."""
    return subprocess.run([*XPMET, *map(str, args)], env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=600)


def labels_of(engine):
    return [dict(r) for r in rows(engine, f"SELECT {LABEL_COLS} FROM xpmet.labels ORDER BY source_id")]


def assert_same_labels(a, b):
    """Same sources, surveys and flags; label values equal up to the order of floating-point sums."""
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        for k in x:
            if isinstance(x[k], float) or isinstance(y[k], float):
                assert x[k] == pytest.approx(y[k], rel=1e-9, abs=1e-12, nan_ok=True), (k, x, y)
            else:
                assert x[k] == y[k], (k, x, y)


def current_status(engine):
    return rows(engine, "SELECT * FROM xpmet.xmatch_run_status WHERE is_current")[0]


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    from xpmet.simulate import simulate
    return simulate(tmp_path_factory.mktemp("sky"), n_stars=800, seed=3, correlations=False, rows_per_file=200,
                    progress=False)


def load_sky(sky, xp=False):
    load_gaia_source([str(sky / "gaia_source")], progress=False)
    if xp:
        load_xp([str(sky / "xp_continuous")], correlations=False, progress=False)
    for name, path in survey_files(sky).items():
        load_survey_file(name, path)


def test_replaced_survey_and_gaia_files_show_stale_then_xmatch_recomputes_clean_labels(clean_db, sky, run_cli):
    load_sky(sky)
    run = run_xmatch(labels=True)
    assert run.labels["n_labels"] > 50
    clean = labels_of(clean_db)
    st = current_status(clean_db)
    assert not st["stale"] and st["stale_reason"] is None and st["n_loads"] == len(run.loads) > 4
    ls = xlabels.status()
    assert ls["labels_xmatch_version"] == run.version and not ls["stale"]

    # survey replaced: new star_ids; the crossmatch now points at rows that are gone ...
    load_survey_file("apogee", survey_files(sky)["apogee"], replace=True)
    assert q(clean_db, "SELECT count(*) FROM xpmet.xmatch_current x WHERE NOT EXISTS "
                       "(SELECT 1 FROM xpmet.survey_star s WHERE s.star_id = x.star_id)") > 0
    # ... and says so: xmatch_run_status, label_status, xpmet db status
    st = current_status(clean_db)
    assert st["stale"] and "survey:apogee 1 file(s) replaced" in st["stale_reason"]
    assert "run xpmet xmatch" in st["stale_reason"]
    ls = xlabels.status()
    assert ls["stale"] and ls["xmatch_stale"] and not ls["newer_xmatch"]
    out = cli("db", "status").stdout
    assert f"crossmatch   {run.version}, STALE: survey:apogee 1 file(s) replaced" in out, out
    assert "labels       built from crossmatch" in out and "STALE with it" in out

    # the next xmatch recomputes: fresh, every row present, labels equal to the clean run's
    out = run_cli("xmatch").output
    assert "labels:" in out
    st = current_status(clean_db)
    assert not st["stale"]
    assert q(clean_db, "SELECT count(*) FROM xpmet.xmatch_current") == q(clean_db, "SELECT count(*) FROM xpmet.survey_star")
    assert q(clean_db, "SELECT count(*) FROM xpmet.xmatch_current x JOIN xpmet.survey_star USING (star_id)") == \
        q(clean_db, "SELECT count(*) FROM xpmet.survey_star")
    assert_same_labels(labels_of(clean_db), clean)
    assert not xlabels.status()["stale"]

    # a gaia_source file replaced: stale too; recomputed to the same labels
    first = sorted((sky / "gaia_source").iterdir())[0]
    load_gaia_source([first], replace=True, progress=False)
    st = current_status(clean_db)
    assert st["stale"] and st["stale_reason"].startswith("gaia_source 1 file(s) replaced")
    run_xmatch(labels=True)
    assert not current_status(clean_db)["stale"]
    assert_same_labels(labels_of(clean_db), clean)

    # labels not refreshed with the crossmatch: label_status says a newer crossmatch exists
    r = run_cli("xmatch", "--no-labels").output
    assert "labels not refreshed" in r
    ls = xlabels.status()
    assert ls["newer_xmatch"] and ls["stale"] and ls["labels_xmatch_version"] != ls["current_xmatch_version"]
    assert "STALE: crossmatch" in cli("db", "status").stdout
    run_cli("labels", "--no-show")
    assert not xlabels.status()["stale"]


def test_keep_never_drops_a_run_an_export_or_model_cites(clean_db, sky, run_cli, tmp_path):
    load_sky(sky, xp=True)
    run_cli("labels", "--reference", "apogee", "--no-show")
    first = run_xmatch(labels=True)
    h5 = tmp_path / "train.h5"
    run_cli("export", h5, "--noise-sample", 0)
    exp = rows(clean_db, "SELECT * FROM xpmet.training_export")
    assert len(exp) == 1 and exp[0]["xmatch_version"] == first.version and exp[0]["path"] == str(h5.resolve())
    second = run_xmatch(labels=True)
    with clean_db.begin() as c:  # a model trained on an export of the second run (as xpmet train records it)
        mid = c.execute(sa.text("INSERT INTO xpmet.models (name, kind, path, config) VALUES ('m', 'estimator', "
                                "'/nowhere', :cfg) RETURNING model_id"),
                        {"cfg": json.dumps({"data_attributes": {"xmatch_version": second.version}})}).scalar()
    third = run_xmatch(labels=True)
    out = run_cli("xmatch", "--keep", "1", "--no-labels").output
    assert f"kept crossmatch {first.version} beyond --keep: cited by export {h5.resolve()}" in out
    assert f"kept crossmatch {second.version} beyond --keep: cited by model {mid}" in out
    left = [r["version"] for r in rows(clean_db, "SELECT version FROM xpmet.xmatch_run ORDER BY run_id")]
    assert first.version in left and second.version in left and third.version not in left and len(left) == 3
    assert q(clean_db, "SELECT count(DISTINCT run_id) FROM xpmet.xmatch") == 3
    # an export of labels whose crossmatch went stale says so (stderr, file attributes, training_export)
    import h5py
    run_cli("labels", "--no-show")  # labels on the newest run (--keep above ran with --no-labels)
    load_survey_file("apogee", survey_files(sky)["apogee"], replace=True)
    out = run_cli("export", tmp_path / "t2.h5", "--noise-sample", 0).output
    assert "warning: stale labels exported: crossmatch" in out and "survey:apogee 1 file(s) replaced" in out
    with h5py.File(tmp_path / "t2.h5") as f, h5py.File(h5) as f0:
        assert "survey:apogee" in f.attrs["labels_stale"] and f0.attrs["labels_stale"] == ""
    assert q(clean_db, "SELECT count(*) FROM xpmet.training_export WHERE options ->> 'labels_stale' LIKE "
                       "'crossmatch%replaced%'") == 1


MINE = ('name = "mine"\n[position]\nra = "ra"\ndec = "dec"\nepoch = 2016.0\n[columns]\nobject_id = "oid"\n'
        'feh = "feh"\n[error_floor]\nfeh = {floor}\n')


def test_descriptor_is_kept_per_load(clean_db, tmp_path):
    insert_gaia(tmp_path, {"source_id": np.array([1, 2]), "ra": np.array([10.0, 20.0]), "dec": np.array([5.0, 5.0])})
    loads = []
    for k, floor in ((1, 0.07), (2, 0.3)):
        d = tmp_path / f"mine{k}.toml"
        d.write_text(MINE.format(floor=floor))
        f = write_table(tmp_path / f"mine{k}.fits", {"oid": [str(k)], "ra": [10.0 * k], "dec": [5.0], "feh": [-0.5]})
        load_survey_file(d, f)
    run_xmatch(labels=True)
    got = {r["object_id"]: (r["floor"], r["load_floor"]) for r in rows(
        clean_db, "SELECT s.object_id, m.error_floor AS floor, (l.descriptor -> 'error_floor' ->> 'feh')::float8 "
                  "AS load_floor FROM xpmet.survey_measurement m JOIN xpmet.survey_star s USING (star_id) "
                  "JOIN xpmet.etl_load l ON l.load_id = s.load_id WHERE m.label = 'feh'")}
    # the second load's descriptor did not overwrite the first load's floor
    assert got == {"1": (pytest.approx(0.07), pytest.approx(0.07)), "2": (pytest.approx(0.3), pytest.approx(0.3))}
    assert q(clean_db, "SELECT (descriptor -> 'error_floor' ->> 'feh')::float8 FROM xpmet.survey") == \
        pytest.approx(0.3)


def test_replaced_xp_spectra_are_repredicted_exactly(clean_db, tmp_path):
    a = [make_bulk(tmp_path / f"a{k}.csv.gz", range(1000 * k + 1, 1000 * k + 121)) for k in range(3)]
    load_xp(a, progress=False)
    model = ColourPredictor()
    r = predict(model, progress=False, chunk_rows=50)
    assert r.written == 360
    assert q(clean_db, "SELECT count(*) FROM xpmet.predictions p JOIN xpmet.xp_continuous x USING (source_id) "
                       "WHERE p.load_id = x.load_id") == 360
    # file 1's sources from another file with other spectra (each source gets another real row)
    b = make_bulk(tmp_path / "b.csv.gz", list(range(1002, 1121)) + [1001])
    load_xp([b], replace=True, progress=False)
    from xpmet.etl.provenance import derived_status
    assert q(clean_db, "SELECT n_stale FROM xpmet.prediction_status") == 120
    assert ("predictions", f"STALE: model {r.model_id}: 120 from replaced XP spectra (run: xpmet predict "
                           "--model ...)") in derived_status()
    r = predict(model, progress=False, chunk_rows=50)
    assert r.written == 120  # exactly the replaced spectra
    assert not any(w == "predictions" for w, _ in derived_status())
    mid = r.model_id

    class Clean(ColourPredictor):
        pass
    clean = predict(Clean(), progress=False, chunk_rows=50)
    assert q(clean_db, PRED_CHECKSUM, m=mid) == q(clean_db, PRED_CHECKSUM, m=clean.model_id)


# -- deterministic kills (XPMET_FAULT) -------------------------------------------------------------
def _xp_files(tmp_path, n=4, bad_rows=()):
    return [make_bulk(tmp_path / f"XpContinuousMeanSpectrum_{k}.csv.gz", range(1000 * k + 1, 1000 * k + 61),
                      mutate=lambda i, ln, k=k: _first_value(ln, "oops") if (k, i) in bad_rows else ln)
            for k in range(n)]


def _clean_checksum(engine, files):
    from conftest import truncate_all
    truncate_all(engine)
    load_xp(files, correlations=False, progress=False)
    out = q(engine, XP_CHECKSUM)
    truncate_all(engine)
    return out


@pytest.mark.parametrize("fault, workers, committed", [("after_file:2", 1, 2), ("before_commit:3", 1, 2),
                                                      ("after_commit:1", 1, 1), ("before_commit:1", 2, 0)])
def test_etl_xp_killed_at_a_point_then_rerun_equals_clean(clean_db, tmp_path, fault, workers, committed):
    files = _xp_files(tmp_path)
    want = _clean_checksum(clean_db, files)
    cmd = ("etl", "xp", *files, "--no-correlations", "--no-progress", "--workers", workers)
    r = cli(*cmd, env={"XPMET_FAULT": fault})
    if workers == 1:
        assert r.returncode == EXIT_CODE, r.stderr
    else:  # the workers died: the run reports the files failed, in one line each, no traceback
        assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr + r.stdout
    assert q(clean_db, "SELECT count(*) FROM xpmet.etl_load WHERE status = 'done'") == committed
    assert q(clean_db, "SELECT count(*) FROM xpmet.xp_continuous") == 60 * committed
    r = cli(*cmd)
    assert r.returncode == 0, r.stderr
    assert q(clean_db, XP_CHECKSUM) == want
    assert q(clean_db, "SELECT count(*) FROM xpmet.etl_load WHERE status = 'done'") == 4
    assert q(clean_db, "SELECT count(DISTINCT sha256) FROM xpmet.etl_load WHERE status = 'done'") == 4


def test_quarantine_written_once_and_only_after_commit(clean_db, tmp_path):
    files = _xp_files(tmp_path, n=2, bad_rows={(0, 2), (1, 5)})
    bad = tmp_path / "bad.tsv"
    cmd = ("etl", "xp", *files, "--no-correlations", "--no-progress", "--errors-to", bad)
    r = cli(*cmd, env={"XPMET_FAULT": "before_commit:1"})
    assert r.returncode == EXIT_CODE
    assert not bad.exists() or bad.read_text() == ""   # the killed file's rows were never committed
    for _ in range(2):  # the run, then a re-run that skips both files
        assert cli(*cmd).returncode == 0
    r = cli("etl", "xp", files[0], "--no-correlations", "--no-progress", "--errors-to", bad, "--replace")
    assert r.returncode == 0, r.stderr
    lines = bad.read_text().splitlines()
    assert lines[0] == "file\trow\tcolumn\treason" and len(lines) == 3
    assert sorted(ln.split("\t")[1] for ln in lines[1:]) == ["3", "6"]
    assert q(clean_db, "SELECT count(*) FROM xpmet.xp_continuous") == 118


def test_survey_xmatch_and_predict_killed_then_rerun_equals_clean(clean_db, sky, tmp_path):
    load_gaia_source([str(sky / "gaia_source")], progress=False)
    surveys = survey_files(sky)
    # etl survey killed before its commit: nothing of it is visible; the re-run loads it
    r = cli("etl", "survey", "apogee", surveys["apogee"], env={"XPMET_FAULT": "before_commit:1"})
    assert r.returncode == EXIT_CODE
    assert q(clean_db, "SELECT count(*) FROM xpmet.survey_star") == 0
    assert q(clean_db, "SELECT count(*) FROM xpmet.etl_load WHERE kind = 'survey:apogee'") == 0
    for name, path in surveys.items():
        assert cli("etl", "survey", name, path).returncode == 0
    assert q(clean_db, "SELECT count(*) FROM xpmet.etl_load WHERE starts_with(kind, 'survey:') "
                       "AND status = 'done'") == len(surveys)
    # xmatch killed before its commit: no run, no labels; the re-run gives the clean run's labels
    r = cli("xmatch", env={"XPMET_FAULT": "xmatch_before_commit"})
    assert r.returncode == EXIT_CODE
    assert q(clean_db, "SELECT count(*) FROM xpmet.xmatch_run") == 0
    assert q(clean_db, "SELECT count(*) FROM xpmet.xmatch") == 0
    assert cli("xmatch").returncode == 0
    killed_then_rerun = labels_of(clean_db)
    run_xmatch(labels=True)  # a second, undisturbed run
    assert_same_labels(labels_of(clean_db), killed_then_rerun)

    # predict: a run that stops after its second chunk, then a re-run, equals one clean run
    files = _xp_files(tmp_path, n=3)
    load_xp(files, correlations=False, progress=False)
    script = ("import sys; sys.path.insert(0, 'tests'); from predict_helpers import ColourPredictor; "
              "from xpmet.predict import predict; predict(ColourPredictor(), chunk_rows=40, progress=False)")
    r = subprocess.run([sys.executable, "-c", script], env={**os.environ, "XPMET_FAULT": "predict_after_chunk:2"},
                       capture_output=True, text=True, timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == EXIT_CODE, r.stderr
    mid = q(clean_db, "SELECT model_id FROM xpmet.models WHERE path = 'python:ColourPredictor'")
    assert 0 < q(clean_db, "SELECT count(*) FROM xpmet.predictions WHERE model_id = :m", m=mid) < 180
    r = predict(ColourPredictor(), chunk_rows=40, progress=False)
    assert r.model_id == mid

    class Clean(ColourPredictor):
        pass
    clean = predict(Clean(), chunk_rows=40, progress=False)
    assert q(clean_db, PRED_CHECKSUM, m=mid) == q(clean_db, PRED_CHECKSUM, m=clean.model_id)
    assert q(clean_db, "SELECT count(*) FROM xpmet.predictions WHERE model_id = :m", m=mid) == 180


GAIA_CHECKSUM = ("SELECT count(*) || ':' || md5(string_agg(concat_ws('|', source_id, ra, dec, pmra, pmdec, "
                 "phot_g_mean_mag, bp_rp, ruwe), ',' ORDER BY source_id)) FROM xpmet.gaia_source")


def test_gaia_source_and_label_refresh_killed_then_rerun_equals_clean(clean_db, sky):
    files = sorted((sky / "gaia_source").glob("*.csv.gz"))
    load_gaia_source([str(f) for f in files], progress=False)
    want = q(clean_db, GAIA_CHECKSUM)
    from conftest import truncate_all
    truncate_all(clean_db)
    # etl gaia-source killed before its first commit: nothing visible, no provenance; the re-run loads all
    r = cli("etl", "gaia-source", *files, "--no-progress", env={"XPMET_FAULT": "before_commit:1"})
    assert r.returncode == EXIT_CODE
    assert q(clean_db, "SELECT count(*) FROM xpmet.gaia_source") == 0
    assert q(clean_db, "SELECT count(*) FROM xpmet.etl_load") == 0
    assert cli("etl", "gaia-source", *files, "--no-progress").returncode == 0
    assert q(clean_db, GAIA_CHECKSUM) == want
    assert q(clean_db, "SELECT count(*) FROM xpmet.etl_load WHERE status = 'done'") == len(files)
    # xpmet labels killed before its commit: the label views and settings stay as they were
    for name, path in survey_files(sky).items():
        assert cli("etl", "survey", name, path).returncode == 0
    run_xmatch(labels=False)
    xlabels.refresh(reference="apogee")
    before = labels_of(clean_db)
    r = cli("labels", "--reference", "gbs", env={"XPMET_FAULT": "labels_before_commit"})
    assert r.returncode == EXIT_CODE
    assert q(clean_db, "SELECT reference FROM xpmet.label_setting") == "apogee"
    assert_same_labels(labels_of(clean_db), before)
    assert cli("labels", "--reference", "gbs").returncode == 0
    killed_then_rerun = labels_of(clean_db)
    xlabels.refresh(reference="gbs")   # an undisturbed refresh
    assert_same_labels(labels_of(clean_db), killed_then_rerun)
