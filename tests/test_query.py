"""Sky queries (cone, box, polygon; filters; every output format) and the read-only role, against
the real database, checked against brute-force geometry computed here in numpy."""
from __future__ import annotations

import re

import numpy as np
import psycopg
import pytest
from astropy.table import Table

from predict_helpers import ColourPredictor, insert_sky
from xpmet import query
from xpmet.db.engine import raw_connect
from xpmet.db.readonly import readonly_url
from xpmet.errors import XpmetError
from xpmet.predict import predict


@pytest.fixture(scope="module")
def sky(xpmet_home, engine):
    from conftest import truncate_all
    truncate_all(engine)
    s = insert_sky(6000, seed=11)
    predict(ColourPredictor(), progress=False)
    with raw_connect() as c:
        s["feh"] = np.array([r[0] for r in c.execute(
            "SELECT feh FROM xpmet.predictions ORDER BY source_id")], dtype=float)
        s["recommended"] = np.array([r[0] for r in c.execute(
            "SELECT recommended FROM xpmet.predictions ORDER BY source_id")], dtype=bool)
    yield s
    truncate_all(engine)


def unit(ra, dec):
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], -1)


def ids(table):
    return set(np.asarray(table["source_id"]).tolist())


def test_cone_with_filters(sky):
    ra0, dec0, r = sky["ra"][100], sky["dec"][100], 25.0
    sep = np.degrees(np.arccos(np.clip(unit(sky["ra"], sky["dec"]) @ unit(ra0, dec0), -1, 1)))
    inside = sep < r
    assert 20 < inside.sum() < 6000
    t = query.cone(ra0, dec0, r)
    assert ids(t) == set(sky["source_id"][inside]) and t.meta["model_id"] is not None
    t = query.cone(ra0, dec0, r, feh_max=0.0, g_max=16, recommended=True)
    keep = inside & (sky["feh"] <= 0) & (sky["g"] <= 16) & sky["recommended"]
    assert ids(t) == set(sky["source_id"][keep])
    assert len(query.cone(ra0, dec0, r, limit=3)) == 3
    assert t["ra"].unit == "deg" and t["feh"].description.startswith("predicted [Fe/H]")


def test_box_including_one_across_ra_zero(sky):
    ra, dec = sky["ra"], sky["dec"]
    t = query.box(20, -30, 80, 10)
    assert ids(t) == set(sky["source_id"][(ra >= 20) & (ra <= 80) & (dec >= -30) & (dec <= 10)])
    t = query.box(330, -20, 40, 35)
    want = ((ra >= 330) | (ra <= 40)) & (dec >= -20) & (dec <= 35)
    assert want.sum() > 50 and ids(t) == set(sky["source_id"][want])


def test_polygon_matches_point_in_convex_polygon(sky):
    verts = np.array([[100, -5], [115, -8], [118, 6], [104, 9]], float)
    t = query.polygon(verts.reshape(-1).tolist())
    # Inside a convex spherical polygon (counter-clockwise): on the left of every great-circle edge.
    v = unit(verts[:, 0], verts[:, 1])
    p = unit(sky["ra"], sky["dec"])
    inside = np.ones(len(p), bool)
    for a, b in zip(v, np.roll(v, -1, axis=0)):
        inside &= p @ np.cross(a, b) > 0
    assert inside.sum() > 10
    assert ids(t) == set(sky["source_id"][inside])


@pytest.mark.parametrize("call, message", [
    (lambda: query.cone(10, 95, 1), "outside -90..90"),
    (lambda: query.cone(10, 10, 0), "radius must be in"),
    (lambda: query.cone(10, 10, 181), "radius must be in"),
    (lambda: query.cone(float("nan"), 10, 1), "finite"),
    (lambda: query.polygon([0, 0, 40, 0, 0, 5]), "q3c supports polygons up to"),
    (lambda: query.polygon([0, 0, 1, 1]), "at least 3 vertices"),
    (lambda: query.polygon([0, 0, 1, 1, 2]), "odd count"),
    (lambda: query.box(10, 5, 20, 5), "must be below"),
    (lambda: query.cone(10, 10, 1, model_id=999), "no model 999"),
])
def test_region_limits_are_clear_errors(sky, call, message):
    with pytest.raises(XpmetError, match=message):
        call()


@pytest.mark.parametrize("ext", ["csv", "ecsv", "fits", "xml", "parquet"])
def test_every_output_format_round_trips(sky, tmp_path, ext):
    t = query.cone(sky["ra"][7], sky["dec"][7], 30, feh_max=0.3)
    path = query.write_table(t, tmp_path / f"out.{ext}")
    back = Table.read(path, format="ascii.csv") if ext == "csv" else Table.read(path)
    assert len(back) == len(t) > 0
    assert ids(back) == ids(t)
    np.testing.assert_allclose(np.asarray(back["feh"], float), np.asarray(t["feh"], float), rtol=1e-6)
    with pytest.raises(XpmetError, match="exists"):
        query.write_table(t, path)


def test_cli_query_shapes(sky, run_cli, tmp_path):
    r = run_cli("query", "cone", sky["ra"][3], -40, 20, "--feh-max", "0.5", "-o", tmp_path / "c.fits")
    assert "written to" in r.output
    assert ids(Table.read(tmp_path / "c.fits")) == ids(query.cone(sky["ra"][3], -40, 20, feh_max=0.5))
    r = run_cli("query", "box", 350, -10, 10, 10, "--recommended")
    assert "stars; model" in r.output
    r = run_cli("query", "polygon", 0, 0, 50, 0, 0, 5, ok=False)
    assert r.exit_code == 1 and "q3c supports polygons" in r.output
    r = run_cli("query", "cone", 10, 10, 5, "-o", tmp_path / "x.unknown", ok=False)
    assert r.exit_code == 1 and "cannot tell the format" in r.output


def test_view_uses_the_q3c_index_and_the_chosen_model(sky):
    with raw_connect() as c:
        c.execute("ANALYZE xpmet.gaia_source")
        c.execute("ANALYZE xpmet.predictions")
        plan = "\n".join(r[0] for r in c.execute(
            "EXPLAIN SELECT * FROM xpmet.metallicity WHERE q3c_radial_query(ra, dec, 10, 10, 0.5)"))
        assert "Bitmap Index Scan on ix_gaia_source_q3c" in plan
        assert re.search(r"Index (Only )?Scan using \w+ on predictions p", plan)  # primary key or source_id index
        latest = c.execute("SELECT xpmet.metallicity_model()").fetchone()[0]
        c.execute("SET xpmet.model_id = '12345'")
        assert c.execute("SELECT count(*) FROM xpmet.metallicity").fetchone()[0] == 0
        c.execute("RESET xpmet.model_id")
        assert c.execute("SELECT count(*) FROM xpmet.metallicity").fetchone()[0] == 6000
        assert latest == c.execute("SELECT max(model_id) FROM xpmet.predictions").fetchone()[0]


def test_read_only_role_reads_but_cannot_modify(sky, run_cli):
    url = run_cli("db", "url", "--read-only").output.strip()
    assert url == readonly_url() and "xpmet_reader@" in url
    with psycopg.connect(url, autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM xpmet.metallicity").fetchone()[0] == 6000
        attempts = ["DELETE FROM xpmet.predictions", "UPDATE xpmet.gaia_source SET ra = 0",
                    "INSERT INTO xpmet.models (name, kind, path) VALUES ('x', 'estimator', 'x')",
                    "TRUNCATE xpmet.xp_continuous", "DROP VIEW xpmet.metallicity",
                    "CREATE TABLE xpmet.evil (a int)", "CREATE TABLE public.evil (a int)",
                    "ALTER TABLE xpmet.predictions ADD COLUMN evil int"]
        for sql in attempts:
            with pytest.raises(psycopg.Error):  # read-only transaction by default
                c.execute(sql)
        # Turning the read-only default off does not help: the privileges are not there.
        c.execute("SET default_transaction_read_only = off")
        for sql in attempts:
            with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedObject)):
                c.execute(sql)
    with raw_connect() as c:
        assert c.execute("SELECT count(*) FROM xpmet.predictions").fetchone()[0] == 6000


def test_columns_come_from_the_models_and_match_the_view(sky):
    with raw_connect() as c:
        view = [r[0] for r in c.execute("SELECT column_name FROM information_schema.columns "
                                        "WHERE table_schema = 'xpmet' AND table_name = 'metallicity' "
                                        "ORDER BY ordinal_position")]
    assert [c.name for c in query.METALLICITY_COLUMNS] == view
    t = query.cone(sky["ra"][7], sky["dec"][7], 30)
    assert t["ra"].meta["ucd"] == "pos.eq.ra;meta.main" and str(t["ra"].unit) == "deg"
    assert t["feh"].meta["ucd"] == "phys.abund.Fe" and "dex" in t["feh"].description


def test_fits_output_passes_fitsverify(sky, tmp_path):
    import shutil
    import subprocess
    t = query.cone(sky["ra"][7], sky["dec"][7], 30)
    path = query.write_table(t, tmp_path / "out.fits")
    from astropy.io import fits
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", fits.getheader(path, 1)["DATE"])
    if not shutil.which("fitsverify"):
        pytest.skip("fitsverify is not installed (./run.sh installs the Debian package): DATE format checked only")
    r = subprocess.run(["fitsverify", "-q", str(path)], capture_output=True, text=True)
    assert r.returncode == 0 and "verification OK" in r.stdout, r.stdout + r.stderr


def test_votable_output_carries_ucds_and_passes_votlint(sky, tmp_path):
    import shutil
    import subprocess
    from astropy.io.votable import parse_single_table
    t = query.cone(sky["ra"][7], sky["dec"][7], 30)
    path = query.write_table(t, tmp_path / "out.vot")
    fields = {f.name: f for f in parse_single_table(str(path)).fields}
    assert fields["ra"].ucd == "pos.eq.ra;meta.main" and fields["dec"].ucd == "pos.eq.dec;meta.main"
    assert fields["phot_g_mean_mag"].ucd == "phot.mag;em.opt" and fields["phot_g_mean_mag"].unit == "mag"
    assert all(f.ucd for f in fields.values()), [n for n, f in fields.items() if not f.ucd]
    if not shutil.which("stilts"):
        pytest.skip("stilts is not installed: votlint not run (UCDs checked with astropy)")
    r = subprocess.run(["stilts", "votlint", f"votable={path}"], capture_output=True, text=True)
    assert r.returncode == 0 and "ERROR" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_a_region_works_on_any_table_with_ra_dec(sky):
    """The same Cone on gaia_source (aliased columns) and through the view picks the same stars."""
    from xpmet.regions import Box, Cone
    for region in (Cone(sky["ra"][5], sky["dec"][5], 15), Box(330, -20, 40, 35)):
        sql, params = region.where("g.ra", "g.dec")
        with raw_connect() as c:
            got = {r[0] for r in c.execute(f"SELECT g.source_id FROM xpmet.gaia_source g WHERE {sql}", params)}
        assert got and got == ids(query.search(region))
