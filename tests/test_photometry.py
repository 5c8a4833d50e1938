"""`xpmet etl photometry`: 2MASS / AllWISE files and Gaia best-neighbour files into the real database,
the view xpmet.external_photometry, and the export's /phot/ columns."""
from __future__ import annotations

import gzip

import h5py
import numpy as np
import pytest
import sqlalchemy as sa
from astropy.table import Table

from xpmet.db.models.photometry import EXTERNAL_PHOT
from xpmet.simulate import survey_files
from xpmet.simulate.photometry import ALLWISE_BN_DIR, ALLWISE_BN_FILE, TMASS_BN_DIR, TMASS_BN_FILE


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    from xpmet.simulate import simulate
    out = tmp_path_factory.mktemp("phot-sky") / "sim"
    simulate(out, n_stars=700, seed=21, faint_ratio=0.5, progress=False)
    return out


@pytest.fixture(scope="module")
def loaded(sky, engine, run_cli):
    """Gaia sources, XP spectra, surveys and the crossmatch of the simulated sky; photometry not yet."""
    from conftest import truncate_all
    truncate_all(engine)
    run_cli("etl", "gaia-source", sky / "gaia_source")
    run_cli("etl", "xp", sky / "xp_continuous")
    for name, path in survey_files(sky).items():
        run_cli("etl", "survey", name, path)
    run_cli("xmatch")
    yield sky
    truncate_all(engine)


def _rows(engine, sql):
    with engine.connect() as c:
        return c.execute(sa.text(sql)).fetchall()


def _expected(tmass_csv, allwise_csv, ph) -> dict:
    """source_id -> (J, J err, ..., W2 err) joined here in Python from the files themselves."""
    out = {}
    for cat, bn, bands in ((tmass_csv, TMASS_BN_DIR + "/" + TMASS_BN_FILE, ("j", "h", "ks")),
                           (allwise_csv, ALLWISE_BN_DIR + "/" + ALLWISE_BN_FILE, ("w1", "w2"))):
        t = Table.read(cat, format="ascii.csv")
        by = {str(d).lstrip("J"): i for i, d in enumerate(t["designation"])}
        b = Table.read(ph / bn, format="ascii.ecsv")
        tmass = cat == tmass_csv
        for sid, ext in zip(b["source_id"], b["original_ext_source_id"]):
            i = by.get(str(ext).lstrip("J"))
            if i is None:  # the catalogue row was not loaded
                continue
            vals = []
            for band in bands:
                m, e = (f"{band}_m", f"{band}_msigcom") if tmass else (f"{band}mpro", f"{band}sigmpro")
                err = np.nan if np.ma.is_masked(t[e][i]) else float(t[e][i])
                vals += [np.nan if np.isnan(err) else float(t[m][i]), err]
            row = out.setdefault(int(sid), [np.nan] * 10)
            row[slice(0, 6) if tmass else slice(6, 10)] = vals
    return out


def test_shipped_descriptors_parse_and_a_bad_one_is_named(tmp_path):
    from xpmet.errors import XpmetError
    from xpmet.etl.photometry import load_catalogue, shipped
    assert {"tmass", "allwise", "tmass_best_neighbour", "allwise_best_neighbour"} <= set(shipped())
    assert load_catalogue("tmass").best_neighbour == "tmass_best_neighbour"
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ntable = "photometry_tmass"\nkey = "designation"\n[columns]\nj_mag = ["j"]\n')
    with pytest.raises(XpmetError, match=r"bad.toml.*j_mag.*not columns of xpmet.photometry_tmass"):
        load_catalogue(bad)


def test_load_join_reload_and_export(loaded, engine, run_cli, tmp_path):
    ph = loaded / "photometry"
    # before any photometry: the export has the columns, all NaN
    run_cli("export", tmp_path / "before.h5", "--noise-sample", 0)
    with h5py.File(tmp_path / "before.h5", "r") as f:
        for c in EXTERNAL_PHOT:
            assert f[f"phot/{c}"].shape == f["source_id"].shape and np.isnan(f[f"phot/{c}"][:]).all(), c

    # a 2MASS file without every fifth row: those stars keep their best neighbour but find no photometry
    psc = Table.read(ph / "tmass_psc.csv", format="ascii.csv")
    psc.remove_rows(slice(0, None, 5))
    psc.write(tmp_path / "psc.csv", format="ascii.csv")
    r = run_cli("etl", "photometry", "tmass", tmp_path / "psc.csv", "-b", ph / TMASS_BN_DIR / TMASS_BN_FILE)
    assert "rows of tmass" in r.output and "rows of tmass_best_neighbour" in r.output
    run_cli("etl", "photometry", "allwise", ph / "allwise.csv", "--best-neighbour", ph / ALLWISE_BN_DIR / ALLWISE_BN_FILE)
    counts = dict(_rows(engine, "SELECT 'tm', count(*) FROM xpmet.photometry_tmass UNION ALL "
                                "SELECT 'aw', count(*) FROM xpmet.photometry_allwise UNION ALL "
                                "SELECT 'tb', count(*) FROM xpmet.tmass_best_neighbour UNION ALL "
                                "SELECT 'ab', count(*) FROM xpmet.allwise_best_neighbour"))
    assert counts["tm"] == len(psc) > 100
    assert counts["ab"] == len(Table.read(ph / ALLWISE_BN_DIR / ALLWISE_BN_FILE, format="ascii.ecsv")) > 100

    # idempotent: the same files again are skipped, nothing doubles
    r = run_cli("etl", "photometry", "tmass", tmp_path / "psc.csv", "-b", ph / TMASS_BN_DIR / TMASS_BN_FILE)
    assert r.output.count("already loaded") == 2
    assert _rows(engine, "SELECT count(*) FROM xpmet.photometry_tmass")[0][0] == counts["tm"]

    # the view agrees with a join done here from the files
    want = _expected(tmp_path / "psc.csv", ph / "allwise.csv", ph)
    got = {r[0]: np.array(r[1:], float) for r in
           _rows(engine, f"SELECT source_id, {', '.join(EXTERNAL_PHOT)} FROM xpmet.external_photometry")}
    assert set(got) == set(want)
    for sid, row in want.items():
        np.testing.assert_allclose(np.nan_to_num(got[sid], nan=-1), np.nan_to_num(np.array(row), nan=-1),
                                   atol=1e-3, err_msg=str(sid))
    # blends are flagged: number_of_mates > 0 <=> the tmass_shared bit
    from xpmet.flags import EXTERNAL_PHOT_BITS as B
    rows = _rows(engine, "SELECT tmass_number_of_mates, phot_flags FROM xpmet.external_photometry "
                         "WHERE tmass_designation IS NOT NULL")
    assert any(m > 0 for m, _ in rows)
    assert all(bool(f >> B["tmass_shared"] & 1) == (m > 0) for m, f in rows)
    # upper limits (no error) give no magnitude but a 'poor' bit
    assert _rows(engine, "SELECT count(*) FROM xpmet.external_photometry WHERE tmass_ks IS NULL AND "
                         f"tmass_designation IS NOT NULL AND (phot_flags >> {B['tmass_ks_poor']}) & 1 = 0")[0][0] == 0
    # the reader may query the view and the tables
    assert _rows(engine, "SELECT bool_and(has_table_privilege('xpmet_reader', c, 'SELECT')) FROM unnest(ARRAY["
                         "'xpmet.external_photometry', 'xpmet.photometry_tmass', 'xpmet.allwise_best_neighbour']) c"
                 )[0][0] is True

    # the export carries the columns, NaN where a star has no neighbour
    run_cli("export", tmp_path / "after.h5", "--noise-sample", 0)
    with h5py.File(tmp_path / "after.h5", "r") as f:
        sids = f["source_id"][:]
        phot = np.column_stack([f[f"phot/{c}"][:] for c in EXTERNAL_PHOT])
    assert all(s in want for s in sids)  # the labelled stars are bright: all have AllWISE photometry
    expect = np.array([want[s] for s in sids])
    assert np.isnan(expect[:, 0]).any() and (~np.isnan(expect[:, 0])).any()  # some lack 2MASS (rows left out)
    np.testing.assert_allclose(np.nan_to_num(phot, nan=-1), np.nan_to_num(expect, nan=-1), atol=1e-3)


def test_a_model_with_infrared_inputs_reads_them_when_predicting(loaded, engine, run_cli, tmp_path):
    """Trained on 2MASS/WISE colours, a model gets them at predict time from xpmet.external_photometry
    (not marked missing): what predict stored equals the model run here on the same rows."""
    import torch
    from xpmet.db.engine import raw_connect
    from xpmet.db.models.columns import fixed_width_columns
    from xpmet.io.copyout import select_arrays
    from xpmet.ml.inference import load_predictor
    from xpmet.predict.plan import chunk_select, input_columns
    ph = loaded / "photometry"
    # (the test before may have loaded part of 2MASS: --replace makes the whole file win)
    run_cli("etl", "photometry", "tmass", ph / "tmass_psc.csv", "-b", ph / TMASS_BN_DIR / TMASS_BN_FILE, "--replace")
    run_cli("etl", "photometry", "allwise", ph / "allwise.csv", "-b", ph / ALLWISE_BN_DIR / ALLWISE_BN_FILE, "--replace")
    run_cli("export", tmp_path / "ir.h5", "--noise-sample", 0)
    run_cli("train", tmp_path / "ir.h5", "--out", tmp_path / "m", "--hidden", "16", "--epochs", 3,
            "--batch-size", 64)
    torch.set_num_threads(1)
    pred = load_predictor(tmp_path / "m")
    assert {"g_j", "ks_w1"} <= set(pred.norm.extra.names) and set(EXTERNAL_PHOT) <= set(pred.needs)
    assert "LEFT JOIN xpmet.external_photometry e" in chunk_select(input_columns(pred.needs), 1, 0, 2 ** 62, None)
    run_cli("predict", "--model", tmp_path / "m")
    with engine.connect() as c:
        stored = dict(c.execute(sa.text("SELECT source_id, feh FROM xpmet.predictions")).fetchall())
    sql = (f"SELECT {', '.join(e for e, _ in fixed_width_columns(pred.needs))} FROM xpmet.xp_continuous x "
           "JOIN xpmet.gaia_source g USING (source_id) "
           "JOIN xpmet.external_photometry e USING (source_id) WHERE e.tmass_j IS NOT NULL ORDER BY source_id")
    with raw_connect() as conn:
        batch = next(select_arrays(conn, sql, None, [col for _, col in fixed_width_columns(pred.needs)]))
    here = pred.predict(batch)
    np.testing.assert_allclose([stored[s] for s in batch["source_id"]], here["feh"], rtol=1e-4, atol=1e-4)
    # and with the infrared marked missing the answers differ (so the comparison can fail)
    blind = pred.predict({k: (np.full_like(v, np.nan) if k in EXTERNAL_PHOT else v) for k, v in batch.items()})
    assert np.abs(blind["feh"] - here["feh"]).max() > 1e-3


def _csv(path, header, rows):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


HEADER = "designation,ra,dec,j_m,j_msigcom,h_m,h_msigcom,ks_m,ks_msigcom,ph_qual,cc_flg"


def test_bad_input_is_one_line_naming_file_and_row(clean_db, run_cli, tmp_path):
    good = "00000001+0000001,0.1,0.1,12.0,0.02,11.5,0.02,11.4,0.02,AAA,000"
    cases = {
        "not_a_number.csv": ([good, "00000002+0000002,0.2,0.2,abc,0.02,11.5,0.02,11.4,0.02,AAA,000"],
                             r"not_a_number.csv, row 1, column j_m: value (np\.str_\()?'abc'\)? is not a number"),
        "duplicate.csv": ([good, good], r"duplicate.csv, row 1, column designation: designation 00000001\+0000001 appears twice"),
        "bad_dec.csv": (["00000003+0000003,0.3,95.0,12,0.02,11,0.02,11,0.02,AAA,000"],
                        r"bad_dec.csv, row 0, column dec: dec = 95.0 is outside"),
        "no_designation.csv": ([",0.4,0.4,12,0.02,11,0.02,11,0.02,AAA,000"], r"no_designation.csv, row 0"),
    }
    for name, (rows, pattern) in cases.items():
        r = run_cli("etl", "photometry", "tmass", _csv(tmp_path / name, HEADER, rows), ok=False)
        assert r.exit_code != 0 and "Traceback" not in r.output
        failed = [ln for ln in r.output.splitlines() if ln.startswith("FAILED")]
        assert len(failed) == 1, r.output
        import re
        assert re.search(pattern, failed[0]), failed[0]
    # a truncated gzip best-neighbour file
    bn = tmp_path / "tmasspscxscBestNeighbour0001.csv.gz"
    body = gzip.compress(b"source_id,original_ext_source_id,angular_distance\n" + b"1,00000001+0000001,0.1\n" * 500)
    bn.write_bytes(body[: len(body) // 2])
    r = run_cli("etl", "photometry", "tmass", "-b", bn, ok=False)
    assert r.exit_code != 0 and "Traceback" not in r.output and f"FAILED {bn}" in r.output
    with clean_db.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM xpmet.photometry_tmass")).scalar() == 0


def test_sentinels_prefixes_and_rows_from_two_files(clean_db, run_cli, tmp_path):
    a = _csv(tmp_path / "a.csv", HEADER, ["2MASS J00000001+0000001,0.1,0.1,-9999,0.02,NaN,0.02,11.4,,AAU,000",
                                          "00000002+0000002,0.2,0.2,12.0,0.02,11.5,0.02,11.4,0.03,AAA,c00"])
    r = run_cli("etl", "photometry", "tmass", a)
    assert "stored as NULL: j_m 1" in r.output
    with clean_db.connect() as c:
        row = c.execute(sa.text("SELECT j_m, h_m, ks_m, ks_msigcom FROM xpmet.photometry_tmass "
                                "WHERE designation = '00000001+0000001'")).fetchone()
    assert row[0] is None and row[1] is None and row[2] == pytest.approx(11.4) and row[3] is None
    # the same designation from another file: an error naming the first file; --replace: the new row wins
    b = _csv(tmp_path / "b.csv", HEADER, ["00000002+0000002,0.2,0.2,13.0,0.02,11.5,0.02,11.4,0.03,AAA,000"])
    r = run_cli("etl", "photometry", "tmass", b, ok=False)
    assert r.exit_code != 0 and "00000002+0000002 is already loaded from" in r.output and str(a) in r.output
    run_cli("etl", "photometry", "tmass", b, "--replace")
    with clean_db.connect() as c:
        assert c.execute(sa.text("SELECT j_m FROM xpmet.photometry_tmass WHERE designation = '00000002+0000002'")
                         ).scalar() == pytest.approx(13.0)
        assert c.execute(sa.text("SELECT count(*) FROM xpmet.photometry_tmass")).scalar() == 2


def test_migration_round_trip(engine):
    """This migration alone: down to its parent and up again; the tables match the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from xpmet.db import migrate
    from xpmet.db.engine import libpq_url
    from xpmet.db.models import metadata
    mine = next(s for s in ScriptDirectory.from_config(migrate.alembic_config()).walk_revisions()
                if s.path.endswith("_external_photometry.py"))
    names = {"photometry_tmass", "photometry_allwise", "tmass_best_neighbour", "allwise_best_neighbour",
             "external_photometry"}
    migrate.downgrade(libpq_url(), mine.down_revision)
    try:
        left = {r[0] for r in _rows(engine, "SELECT relname FROM pg_class WHERE relnamespace = 'xpmet'::regnamespace")}
        assert not names & left
    finally:
        migrate.upgrade(libpq_url(), "head")
    with engine.connect() as c:
        ctx = MigrationContext.configure(c, opts={"include_schemas": True, "include_object": migrate.include_object,
                                                  "compare_type": True, "version_table_schema": "xpmet"})
        diff = [d for d in compare_metadata(ctx, metadata) if any(n in str(d) for n in names)]
        assert diff == [], diff
        q3c = set(c.execute(sa.text("SELECT indexname FROM pg_indexes WHERE schemaname = 'xpmet' "
                                    "AND indexdef LIKE '%q3c_ang2ipix%'")).scalars())
    assert {"ix_photometry_tmass_q3c", "ix_photometry_allwise_q3c"} <= q3c


def _neighbour_values(sky, truth_ids, cat, bn, column):
    t = Table.read(sky / "photometry" / cat, format="ascii.csv")
    b = Table.read(sky / "photometry" / bn, format="ascii.ecsv")
    value = dict(zip(np.asarray(t["designation"]).astype(str), np.ma.filled(t[column].astype(float), np.nan)))
    ext = dict(zip(np.asarray(b["source_id"]), np.asarray(b["original_ext_source_id"]).astype(str)))
    return np.array([value.get(ext.get(s, ""), np.nan) for s in truth_ids])


def test_simulated_photometry_is_like_real_stars_and_deterministic(sky, tmp_path):
    """Colours against real APOGEE x 2MASS x AllWISE dwarfs (tests/data/photometry) per M_G bin; depth;
    errors growing with magnitude; the same seed writes the same files."""
    import pandas as pd
    from conftest import DATA
    truth = Table.read(sky / "truth.fits")
    ids = np.asarray(truth["source_id"])
    tm = (("tmass_psc.csv", TMASS_BN_DIR + "/" + TMASS_BN_FILE))
    aw = (("allwise.csv", ALLWISE_BN_DIR + "/" + ALLWISE_BN_FILE))
    j, j_err = (_neighbour_values(sky, ids, *tm, c) for c in ("j_m", "j_msigcom"))
    ks, ks_err = (_neighbour_values(sky, ids, *tm, c) for c in ("ks_m", "ks_msigcom"))
    w1, w2, w2_err = (_neighbour_values(sky, ids, *aw, c) for c in ("w1mpro", "w2mpro", "w2sigmpro"))
    g = np.asarray(truth["phot_g_mean_mag"])
    mg = g - 5 * np.log10(np.asarray(truth["distance_pc"]) / 10) - np.asarray(truth["ag"])
    ok = ((np.asarray(truth["source_class"]).astype(str) == "star") & np.isfinite(j_err) & np.isfinite(w2_err)
          & (np.asarray(truth["a0"]) < 0.3))
    real = pd.read_csv(DATA / "photometry" / "ingot_colours.csv")
    for lo, hi in ((3.5, 5.5), (5.5, 7.5)):
        r = real[(real.M_G > lo) & (real.M_G < hi)]
        s = ok & (mg > lo) & (mg < hi)
        assert s.sum() > 30
        for name, real_c, sim_c, tol in (("G-J", r.phot_g_mean_mag - r.Jmag, g - j, 0.12),
                                         ("J-W1", r.Jmag - r.w1, j - w1, 0.12), ("W1-W2", r.w1 - r.w2, w1 - w2, 0.03)):
            assert abs(np.median(real_c) - np.median(sim_c[s])) < tol, (name, lo, hi)
    # depth: every XP star with Ks < 13.5 is in the PSC; detected Ks (S/N >= 3) end by ~15.6
    det = np.isfinite(ks_err)
    assert np.isfinite(ks[np.asarray(truth["has_xp"]) & (ks < 13.5)]).all()
    assert np.percentile(ks[det], 95) < 15.6 and np.median(ks_err[det & (ks < 11)]) < np.median(ks_err[det & (ks > 13.5)])
    # deterministic for the seed
    from xpmet.simulate import simulate
    a, b = (simulate(tmp_path / n, n_stars=40, seed=5, progress=False) / "photometry" for n in ("a", "b"))
    for rel in ("tmass_psc.csv", "allwise.csv", f"{TMASS_BN_DIR}/{TMASS_BN_FILE}", f"{ALLWISE_BN_DIR}/{ALLWISE_BN_FILE}"):
        read = gzip.open if rel.endswith(".gz") else open
        with read(a / rel, "rb") as fa, read(b / rel, "rb") as fb:
            assert fa.read() == fb.read(), rel


def test_votable_fits_and_exact_ids(clean_db, run_cli, tmp_path):
    """VOTable and FITS files (masked values as NULL); 19-digit source_ids in CSV and FITS stay exact."""
    cat = Table({"designation": ["J000000.01+000000.1", "J000000.02+000000.2"], "ra": [0.1, 0.2], "dec": [0.1, 0.2],
                 "w1mpro": np.ma.masked_array([12.5, 13.0], mask=[False, True]), "w1sigmpro": [0.02, 0.03],
                 "w2mpro": [12.4, 12.9], "w2sigmpro": [0.03, 0.04], "ph_qual": ["AAUU", "AAUU"],
                 "cc_flags": ["0000", "h000"]})
    cat.write(tmp_path / "allwise.xml", format="votable")
    big = [4295806720123456789, 6917528997577384320]
    bn = Table({"source_id": np.array(big, np.int64), "original_ext_source_id": ["J000000.01+000000.1", "000000.02+000000.2"],
                "angular_distance": [0.1, 0.2], "number_of_mates": np.array([0, 1], np.int16)})
    bn.write(tmp_path / "bn.fits")
    run_cli("etl", "photometry", "allwise", tmp_path / "allwise.xml", "-b", tmp_path / "bn.fits")
    (tmp_path / "bn.csv").write_text(f"source_id,original_ext_source_id,angular_distance\n{big[0] + 1}.0,J000000.01+000000.1,0.3\n")
    run_cli("etl", "photometry", "allwise", "-b", tmp_path / "bn.csv")
    with clean_db.connect() as c:
        rows = c.execute(sa.text("SELECT designation, w1mpro FROM xpmet.photometry_allwise ORDER BY 1")).fetchall()
        ids = c.execute(sa.text("SELECT source_id, original_ext_source_id FROM xpmet.allwise_best_neighbour "
                                "ORDER BY 1")).fetchall()
    assert [r[0] for r in rows] == ["000000.01+000000.1", "000000.02+000000.2"] and rows[1][1] is None
    assert ids == [(big[0], "000000.01+000000.1"), (big[0] + 1, "000000.01+000000.1"), (big[1], "000000.02+000000.2")]
    # IRSA's IPAC table (its default download), with a null upper-limit error
    ipac = Table({"designation": ["00000003+0000003"], "ra": [0.3], "dec": [0.3], "j_m": [12.0], "j_msigcom": [0.02],
                  "h_m": [11.5], "h_msigcom": [0.02], "ks_m": [16.0],
                  "ks_msigcom": np.ma.masked_array([0.0], mask=[True]), "ph_qual": ["AAU"], "cc_flg": ["000"]})
    ipac.write(tmp_path / "fp_psc.tbl", format="ascii.ipac")
    run_cli("etl", "photometry", "tmass", tmp_path / "fp_psc.tbl")
    (tmp_path / "broken.tbl").write_text("|designation|ra|\n|char|double\n garbage\n")
    r = run_cli("etl", "photometry", "tmass", tmp_path / "broken.tbl", ok=False)
    assert r.exit_code != 0 and f"FAILED {tmp_path / 'broken.tbl'}, row 0" in r.output and "Traceback" not in r.output
    with clean_db.connect() as c:
        assert c.execute(sa.text("SELECT ks_m, ks_msigcom FROM xpmet.photometry_tmass")).fetchall() == [(16.0, None)]


def test_a_file_of_the_other_catalogue_is_refused(clean_db, run_cli, tmp_path, sky):
    """2MASS rows given as AllWISE, or AllWISE best neighbours given for 2MASS: one line, nothing loaded."""
    ph = sky / "photometry"
    r = run_cli("etl", "photometry", "allwise", ph / "tmass_psc.csv", ok=False)
    assert r.exit_code != 0 and "does not look like a allwise designation" in r.output
    r = run_cli("etl", "photometry", "tmass", "-b", ph / ALLWISE_BN_DIR / ALLWISE_BN_FILE, ok=False)
    assert r.exit_code != 0 and "another catalogue's" in r.output
    with clean_db.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM xpmet.photometry_allwise")).scalar() == 0
        assert c.execute(sa.text("SELECT count(*) FROM xpmet.tmass_best_neighbour")).scalar() == 0
