"""The HATS export (xpmet.hats, `xpmet export-hats`) opened with LSDB: cone searches return the
stars `xpmet query cone` returns, and every row and value of the view arrives."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from predict_helpers import ColourPredictor, insert_sky
from xpmet import query
from xpmet.db.engine import raw_connect
from xpmet.predict import predict
from xpmet.query import METALLICITY_COLUMNS

lsdb = pytest.importorskip("lsdb")
pytest.importorskip("hats_import")

N_STARS = 3000

# nested-pandas (under lsdb) on pandas 3: not ours to fix
pytestmark = [pytest.mark.filterwarnings("ignore:The inplace keyword"),
              pytest.mark.filterwarnings("ignore:Computing partitions from catalog parquet files")]


class BrightOnly(ColourPredictor):
    """A second model (its own models row), predicting other values for the bright stars only."""

    def predict(self, b):
        out = super().predict(b)
        out["feh"] = out["feh"] + 1.0
        return out


@pytest.fixture(scope="module")
def sky(xpmet_home, engine):
    from conftest import truncate_all
    truncate_all(engine)
    s = insert_sky(N_STARS, seed=23)
    s["first"] = predict(ColourPredictor(), progress=False).model_id
    s["second"] = predict(BrightOnly(), where="g.phot_g_mean_mag < 14", progress=False).model_id
    yield s
    truncate_all(engine)


@pytest.fixture(scope="module")
def exported(sky, tmp_path_factory):
    from xpmet.hats import export_hats
    out = tmp_path_factory.mktemp("hats") / "metallicity"
    # a small threshold: dozens of partitions, so cones cross partition edges
    # a wide margin: hats-import plans a margin at a coarser order, faster than the default 10"
    r = export_hats(out, sky["first"], workers=1, pixel_threshold=100, margin_arcsec=60, progress=False)
    print(f"\nexport of {r.n_rows} stars into {r.n_partitions} partitions: {r.seconds:.1f} s")
    return r


def _view(model_id) -> dict:
    names = [c.name for c in METALLICITY_COLUMNS]
    # float4 exactly (not through its text form); booleans as 0/1
    exprs = [n if i < 2 else f"{n}::int::float8" if n == "recommended" else f"{n}::float8"
             for i, n in enumerate(names)]
    with raw_connect() as c:
        rows = c.execute(f"SELECT {', '.join(exprs)} FROM xpmet.metallicity_all WHERE model_id = %s "
                         "ORDER BY source_id", (model_id,)).fetchall()
    return {n: np.array([r[i] for r in rows], dtype=float if i > 1 else np.int64) for i, n in enumerate(names)}


def test_every_row_and_value_of_the_view_arrives(sky, exported):
    cat = lsdb.open_catalog(exported.path)
    assert cat.hc_structure.catalog_info.catalog_name == f"xpmet_metallicity_model{sky['first']}"
    assert exported.n_partitions > 12 and len(cat.get_healpix_pixels()) == exported.n_partitions
    assert cat.margin is not None and len(cat.margin.compute()) > 0  # for crossmatches across partition edges
    df = cat.compute().sort_values("source_id")
    view = _view(sky["first"])
    assert exported.n_rows == len(df) == len(view["source_id"]) == N_STARS
    with raw_connect() as c:  # the server's own checksums of the view
        sql = ", ".join(f"count({c_.name}), sum({c_.name}::float8)" for c_ in METALLICITY_COLUMNS
                        if c_.name != "recommended")
        sums = c.execute(f"SELECT {sql}, count(*) FILTER (WHERE recommended) FROM xpmet.metallicity_all "
                         "WHERE model_id = %s", (sky["first"],)).fetchone()
    i = 0
    for col in METALLICITY_COLUMNS:
        name = col.name
        got = df[name].to_numpy(dtype=float, na_value=np.nan)
        if name == "recommended":
            assert df[name].sum() == sums[-1]
        else:
            assert np.count_nonzero(~np.isnan(got)) == sums[i], name  # SQL NULL is a Parquet null
            assert np.nansum(got) == pytest.approx(sums[i + 1] or 0.0, rel=1e-12), name
            i += 2
        np.testing.assert_array_equal(got, view[name], err_msg=name)  # NaN == NaN here
    assert df["logg_err"].isna().all() and df["parallax"].notna().all()


@pytest.mark.parametrize("ra, dec, radius", [
    (None, None, 12.0),     # on a star of the sky
    (0.5, 3.0, 20.0),       # across RA = 0
    (200.0, 86.0, 9.0),     # around the pole
    (123.4, -45.6, 0.5),    # a small cone, perhaps empty
])
def test_lsdb_cone_search_returns_what_xpmet_query_cone_returns(sky, exported, ra, dec, radius):
    if ra is None:
        ra, dec = float(sky["ra"][500]), float(sky["dec"][500])
    cat = lsdb.open_catalog(exported.path)
    got = cat.cone_search(ra, dec, radius * 3600.0).compute()  # lsdb: arcseconds; xpmet: degrees
    want = query.cone(ra, dec, radius, model_id=sky["first"])
    assert set(got["source_id"].tolist()) == set(np.asarray(want["source_id"]).tolist())
    assert (got["model_id"] == sky["first"]).all()
    if radius > 1:
        assert len(want) > 10


def _partition_of(pixels, ra, dec):
    from hats.pixel_math.healpix_shim import radec2pix
    out = np.full(len(ra), -1)
    for i, px in enumerate(pixels):
        out[radec2pix(px.order, ra, dec) == px.pixel] = i
    assert (out >= 0).all()
    return out


def test_lsdb_crossmatch_finds_neighbours_across_partition_edges(sky, exported):
    """A target 50" from each star, on the other side of a partition edge where one is that close:
    only the margin catalogue lets LSDB find those pairs."""
    import pandas as pd
    cat = lsdb.open_catalog(exported.path)
    pixels = cat.get_healpix_pixels()
    home = _partition_of(pixels, sky["ra"], sky["dec"])
    ra, dec = sky["ra"].copy(), sky["dec"].copy()
    step = 50 / 3600
    for angle in np.radians(np.arange(0, 360, 30)):  # the first direction that leaves the partition
        d = np.clip(sky["dec"] + step * np.cos(angle), -90, 90)
        r = (sky["ra"] + step * np.sin(angle) / np.cos(np.radians(d))) % 360
        move = (_partition_of(pixels, r, d) != home) & (_partition_of(pixels, ra, dec) == home)
        ra[move], dec[move] = r[move], d[move]
    crossing = _partition_of(pixels, ra, dec) != home
    still = ~crossing  # the rest: 50" to the north
    dec[still] = np.clip(sky["dec"][still] + step, -90, 90)
    assert crossing.sum() >= 5, crossing.sum()
    targets = lsdb.from_dataframe(pd.DataFrame({"target": sky["source_id"], "ra": ra, "dec": dec}),
                                  catalog_name="targets", lowest_order=2, highest_order=2)
    pairs = targets.crossmatch(cat, radius_arcsec=55, n_neighbors=1, suffix_method="all_columns",
                               suffixes=("", "_m")).compute()
    assert len(pairs) == N_STARS and (pairs["target"] == pairs["source_id_m"]).all()


def test_units_and_descriptions_travel_as_field_metadata(exported):
    import hats
    cat = hats.read_hats(exported.path / exported.catalog_name)
    schema = cat.schema
    assert schema.field("ra").metadata[b"unit"] == b"deg"
    assert schema.field("ra").metadata[b"ucd"].startswith(b"pos.eq.ra")
    assert schema.field("feh").metadata[b"description"].startswith(b"predicted [Fe/H]")
    assert schema.field("feh").type == "float" and schema.field("source_id").type == "int64"
    assert cat.catalog_info.ra_column == "ra" and cat.catalog_info.dec_column == "dec"
    assert str(cat.catalog_info.extra_dict().get("xpmet_model_id")) == str(exported.model_id)


def test_cli_refuses_to_overwrite_then_replaces_with_another_model(sky, exported, run_cli, tmp_path):
    out = exported.path
    r = run_cli("export-hats", out, ok=False)
    assert r.exit_code == 1 and "--overwrite" in r.output and len(r.output.strip().splitlines()) == 1
    # without --model: the catalogue's model, i.e. the newest whose predictions are complete (the
    # second model predicted the bright stars only), as xpmet.metallicity shows
    r = run_cli("export-hats", tmp_path / "default", "--workers", 1, "--margin-arcsec", 0)
    assert f"model {sky['first']}" in r.output
    r = run_cli("export-hats", out, "--overwrite", "--model", sky["second"], "--workers", 1, "--margin-arcsec", 0)
    assert f"model {sky['second']}" in r.output
    cat = lsdb.open_catalog(out)
    df = cat.compute()
    assert cat.hc_structure.catalog_info.catalog_name == f"xpmet_metallicity_model{sky['second']}"
    assert len(df) == len(_view(sky["second"])["source_id"]) and 0 < len(df) < N_STARS
    assert (df["model_id"] == sky["second"]).all()
    # nothing of the build is left next to the catalogue
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    # a folder that is not a HATS catalogue is never deleted, --overwrite or not
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    r = run_cli("export-hats", other, "--overwrite", ok=False)
    assert r.exit_code == 1 and "not a HATS catalogue" in r.output and (other / "keep.txt").exists()


def test_errors_are_one_line(sky, run_cli, tmp_path, monkeypatch):
    r = run_cli("export-hats", tmp_path / "x", "--model", 99999, ok=False)
    assert r.exit_code == 1 and "there is no model 99999" in r.output
    assert not (tmp_path / "x").exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setitem(sys.modules, "hats_import", None)  # as if not installed
    r = run_cli("export-hats", tmp_path / "y", ok=False)
    assert r.exit_code == 1 and "pip install 'xpmet[hats]'" in r.output
    assert len(r.output.strip().splitlines()) == 1
