"""The crossmatch on the real database: declared ids, epoch propagation, best neighbour, flags, STILTS."""
from __future__ import annotations

import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import sqlalchemy as sa

from xm_helpers import APOGEE, GALAH, GBS, gaia_from_real_samples, insert_gaia, read, write_table
from xpmet.xmatch import XmatchParams, run_xmatch
from xpmet.flags import XMATCH_BITS
from xpmet.errors import XpmetError
from xpmet.etl.survey import load_survey_file

MINE = 'name = "mine"\n[position]\nra = "ra"\ndec = "dec"\nepoch = {epoch}\n' \
       '[gaia]\ncolumn = "gid"\nrelease = "{release}"\n[columns]\nobject_id = "oid"\nfeh = "feh"\n'


def rows(engine, sql, **kw):
    with engine.connect() as c:
        return c.execute(sa.text(sql), kw).mappings().all()


def my_survey(tmp_path, cols: dict, epoch=2016.0, release="DR3", name="mine.fits"):
    d = tmp_path / "mine.toml"
    d.write_text(MINE.format(epoch=epoch, release=release))
    n = len(cols["ra"])
    cols = {"oid": [str(i) for i in range(n)], "feh": np.zeros(n), "gid": np.zeros(n, np.int64), **cols}
    return load_survey_file(d, write_table(tmp_path / name, cols))


def by_object(engine):
    return {r["object_id"]: r for r in rows(engine, "SELECT s.object_id, x.* FROM xpmet.xmatch_current x "
                                                    "JOIN xpmet.survey_star s USING (star_id)")}


def test_real_samples_match_their_declared_dr3_ids(clean_db, tmp_path):
    insert_gaia(tmp_path, gaia_from_real_samples())
    for name, path in (("apogee", APOGEE), ("galah", GALAH), ("gbs", GBS)):
        load_survey_file(name, path)
    run = run_xmatch()
    assert run.n_rows == run.n_matched == 1612 + 1061 + 30
    bad = rows(clean_db, "SELECT s.star_id FROM xpmet.xmatch_current x JOIN xpmet.survey_star s USING (star_id) "
                         "WHERE x.source_id IS DISTINCT FROM s.gaia_source_id OR x.method NOT IN ('id', 'both')")
    assert bad == []
    # GBS: real Gaia DR3 rows with large proper motions, J2000 survey positions: propagation brings
    # them together; at the Gaia epoch many are far apart.
    gbs = rows(clean_db, "SELECT x.separation, x.id_separation FROM xpmet.xmatch_current x "
                         "JOIN xpmet.survey s USING (survey_id) WHERE s.name = 'gbs'")
    assert max(r["separation"] for r in gbs) < 1.0


def test_high_proper_motion_needs_epoch_propagation(clean_db, tmp_path):
    # Gaia positions at 2016.0; the survey observed in 2000.0. pm 400 mas/yr and 100 mas/yr (both beyond
    # pm_cap, found from the Gaia side) put them 6.4" and 1.6" away at the Gaia epoch; pm 0 for the third.
    insert_gaia(tmp_path, {"source_id": np.array([1, 2, 3]), "ra": np.array([50.0, 60.0, 70.0]),
                           "dec": np.array([20.0, 20.0, 20.0]), "pmra": np.array([400.0, 0.0, 0.0]),
                           "pmdec": np.array([0.0, 100.0, 0.0])})
    cosd = np.cos(np.radians(20.0))
    my_survey(tmp_path, {"ra": [50.0 - 0.4 * 16 / 3600 / cosd, 60.0, 70.0 + 0.3 / 3600],
                         "dec": [20.0, 20.0 - 0.1 * 16 / 3600, 20.0]}, epoch=2000.0)
    run_xmatch(XmatchParams(radius=1.0))
    m = by_object(clean_db)
    assert [m[k]["source_id"] for k in "012"] == [1, 2, 3]
    assert all(m[k]["separation"] < 0.31 for k in "012")
    assert all(m[k]["method"] == "position" for k in "012")
    run_xmatch(XmatchParams(radius=1.0, pm_cap=1000.0))     # all found by the widened first pass instead
    m = by_object(clean_db)
    assert [m[k]["source_id"] for k in "012"] == [1, 2, 3]
    run_xmatch(XmatchParams(radius=1.0, epoch="gaia"))      # what the original pipeline did
    m = by_object(clean_db)
    assert [m[k]["source_id"] for k in "012"] == [None, None, 3]


def test_best_neighbour_ambiguity_duplicates_and_ids(clean_db, tmp_path):
    arc = 1 / 3600
    insert_gaia(tmp_path, {
        "source_id": np.array([10, 11, 20, 30, 40, 41]),
        "ra": np.array([100.0, 100 + 0.6 * arc, 110.0, 120.0, 130.0, 130 + 0.4 * arc]),
        "dec": np.zeros(6),
        "pmra": np.array([0.0, 0.0, 0.0, np.nan, 0.0, 0.0]), "pmdec": np.array([0.0, 0.0, 0.0, np.nan, 0.0, 0.0])})
    my_survey(tmp_path, {
        # 0: two candidates (0.2" and 0.4"): ambiguous, best 10;  1 and 2: both claim 20
        # 3: Gaia source without pm at 1.5": matched with the widened radius
        # 4: declares 41 which is 0.4" away while 40 is at 0.1": id wins, flagged id_not_nearest
        # 5: declares 20 but sits at 130 deg: id rejected, position finds 40;  6: declares an unknown id
        "ra": [100 + 0.2 * arc, 110.0, 110 + 0.1 * arc, 120 + 1.5 * arc, 130 + 0.1 * arc, 130.0, 140.0],
        "dec": np.zeros(7), "gid": np.array([0, 0, 0, 0, 41, 20, 999], np.int64)})
    run = run_xmatch()
    m = by_object(clean_db)
    assert (m["0"]["source_id"], m["0"]["n_candidates"], m["0"]["ambiguous"]) == (10, 2, True)
    assert m["0"]["separation"] == pytest.approx(0.2, abs=1e-3)
    assert m["0"]["second_separation"] == pytest.approx(0.4, abs=1e-3)
    assert m["1"]["source_id"] == m["2"]["source_id"] == 20 and m["1"]["duplicate_claim"] and m["2"]["duplicate_claim"]
    assert m["3"]["source_id"] == 30 and m["3"]["flags"] & (1 << XMATCH_BITS["no_pm"])
    assert (m["4"]["source_id"], m["4"]["method"]) == (41, "id")
    assert m["4"]["flags"] & (1 << XMATCH_BITS["id_not_nearest"]) and not m["4"]["ambiguous"]
    assert (m["5"]["source_id"], m["5"]["method"]) == (40, "position")
    assert m["5"]["flags"] & (1 << XMATCH_BITS["id_rejected"]) and m["5"]["id_separation"] > 3600
    assert (m["6"]["source_id"], m["6"]["method"]) == (None, "none")
    assert m["6"]["flags"] & (1 << XMATCH_BITS["id_not_found"])
    assert run.by_method == {"position": 5, "id": 1, "none": 1}


def test_dr2_ids_only_confirm_positions(clean_db, tmp_path):
    arc = 1 / 3600
    insert_gaia(tmp_path, {"source_id": np.array([5, 6, 7]), "ra": np.array([10.0, 10 + 0.3 * arc, 20.0]),
                           "dec": np.zeros(3), "pmra": np.zeros(3), "pmdec": np.zeros(3)})
    # row 0 declares DR2 id 6 (the farther of two candidates): it breaks the tie;
    # row 1 declares DR2 id 7 far away: a DR2 id is never trusted without position -> no match
    my_survey(tmp_path, {"ra": [10.0, 30.0], "dec": [0.0, 0.0], "gid": np.array([6, 7], np.int64)}, release="DR2")
    run_xmatch()
    m = by_object(clean_db)
    assert (m["0"]["source_id"], m["0"]["method"]) == (6, "both")
    assert m["0"]["flags"] & (1 << XMATCH_BITS["dr2_id"])
    assert m["1"]["source_id"] is None


def test_versions_overrides_and_errors(clean_db, tmp_path):
    arc = 1 / 3600
    insert_gaia(tmp_path, {"source_id": np.array([1]), "ra": np.array([10.0]), "dec": np.array([0.0]),
                           "pmra": np.zeros(1), "pmdec": np.zeros(1)})
    my_survey(tmp_path, {"ra": [10 + 1.5 * arc], "dec": [0.0]})
    a = run_xmatch()
    b = run_xmatch(XmatchParams(overrides={"mine": {"radius": 2.0}}, version="wide"))
    runs = rows(clean_db, "SELECT version, is_current, n_matched FROM xpmet.xmatch_run ORDER BY run_id")
    assert [(r["version"], r["is_current"], r["n_matched"]) for r in runs] == [(a.version, False, 0), ("wide", True, 1)]
    assert rows(clean_db, "SELECT xmatch_version FROM xpmet.xmatch_current")[0]["xmatch_version"] == "wide"
    with pytest.raises(XpmetError, match="exists already"):
        run_xmatch(XmatchParams(version="wide"))
    with pytest.raises(XpmetError, match="not loaded"):
        run_xmatch(XmatchParams(overrides={"lamost": {"radius": 3.0}}))
    run_xmatch(keep=1)
    assert len(rows(clean_db, "SELECT 1 FROM xpmet.xmatch_run")) == 1


def stilts_pairs(tmp_path, gaia: dict, survey: dict, radius: float) -> set:
    g = write_table(tmp_path / "g.fits", {"source_id": gaia["source_id"], "ra": gaia["ra"], "dec": gaia["dec"]})
    s = write_table(tmp_path / "s.fits", {"oid": survey["oid"], "ra": survey["ra"], "dec": survey["dec"]})
    out = tmp_path / "pairs.fits"
    subprocess.run(["stilts", "tmatch2", f"in1={s}", f"in2={g}", "matcher=sky", f"params={radius}",
                    "values1=ra dec", "values2=ra dec", "find=best1", "join=1and2", f"out={out}", "ofmt=fits"],
                   check=True, capture_output=True, timeout=300)
    t = read(out)
    return {(str(o), int(i)) for o, i in zip(t["oid"], t["source_id"])}


NO_STILTS = ("STILTS IS NOT INSTALLED: the crossmatch was NOT compared with STILTS pair for pair. "
             "run.sh installs the Debian package stilts; its install failed or was skipped (apt-get install stilts)")
if shutil.which("stilts") is None:  # a skip alone is one line among many: also in the warnings summary
    warnings.warn(NO_STILTS, pytest.PytestWarning, stacklevel=1)


@pytest.mark.skipif(shutil.which("stilts") is None, reason=NO_STILTS)
def test_agrees_with_stilts_pair_for_pair_without_proper_motions(clean_db, tmp_path):
    rng = np.random.default_rng(5)
    n_g, n_s = 3000, 800
    # a crowded 0.3 x 0.3 degree field so that some rows have several candidates within 2"
    gra, gdec = 150 + rng.uniform(0, 0.3, n_g), 2 + rng.uniform(0, 0.3, n_g)
    pick = rng.choice(n_g, n_s, replace=False)
    sra = gra[pick] + rng.normal(0, 0.7, n_s) / 3600 / np.cos(np.radians(gdec[pick]))
    sdec = gdec[pick] + rng.normal(0, 0.7, n_s) / 3600
    gaia = {"source_id": np.arange(1, n_g + 1, dtype=np.int64), "ra": gra, "dec": gdec,
            "pmra": np.zeros(n_g), "pmdec": np.zeros(n_g)}
    insert_gaia(tmp_path, gaia)
    oid = np.array([f"s{i}" for i in range(n_s)])
    my_survey(tmp_path, {"oid": oid, "ra": sra, "dec": sdec})
    run_xmatch(XmatchParams(radius=2.0))
    ours = {(r["object_id"], r["source_id"]) for r in rows(
        clean_db, "SELECT s.object_id, x.source_id FROM xpmet.xmatch_current x JOIN xpmet.survey_star s "
                  "USING (star_id) WHERE x.source_id IS NOT NULL")}
    theirs = stilts_pairs(tmp_path, gaia, {"oid": oid, "ra": sra, "dec": sdec}, 2.0)
    assert len(theirs) > 0.9 * n_s
    assert ours == theirs
    amb = rows(clean_db, "SELECT count(*) AS n FROM xpmet.xmatch_current WHERE ambiguous")[0]["n"]
    assert amb > 0   # the field is crowded enough to test the best-neighbour choice


def test_two_connections_give_the_same_rows_as_one(clean_db, tmp_path):
    # a crowded field with fast movers, sources without proper motion, declared ids (right, wrong,
    # unknown) and a row without position: every arm of the candidate search on both connections
    rng = np.random.default_rng(11)
    n_g, n_s = 2000, 600
    gra, gdec = 30 + rng.uniform(0, 0.2, n_g), -5 + rng.uniform(0, 0.2, n_g)
    pmra, pmdec = rng.normal(0, 20, n_g), rng.normal(0, 20, n_g)
    fast = rng.random(n_g) < 0.1
    pmra[fast] *= 30
    nopm = rng.random(n_g) < 0.05
    pmra[nopm] = pmdec[nopm] = np.nan
    gaia = {"source_id": np.arange(1, n_g + 1, dtype=np.int64), "ra": gra, "dec": gdec, "pmra": pmra, "pmdec": pmdec}
    insert_gaia(tmp_path, gaia)
    pick = rng.choice(n_g, n_s)          # with repeats: duplicate claims
    dt = 2000.0 - 2016.0
    sra = gra[pick] + (np.nan_to_num(pmra[pick]) * dt / 1000 + rng.normal(0, 0.5, n_s)) / 3600 / np.cos(np.radians(gdec[pick]))
    sdec = gdec[pick] + (np.nan_to_num(pmdec[pick]) * dt / 1000 + rng.normal(0, 0.5, n_s)) / 3600
    sra[0] = sdec[0] = np.nan
    gid = np.where(rng.random(n_s) < 0.3, pick + 1, 0)
    gid[1:20] = rng.integers(1, n_g + 1, 19)    # mostly wrong ids: rejected by position
    gid[20] = 10 ** 9                           # not in gaia_source
    my_survey(tmp_path, {"ra": sra, "dec": sdec, "gid": gid.astype(np.int64)}, epoch=2000.0)
    cols = ("star_id, source_id, method, separation, n_candidates, second_separation, id_separation, "
            "ambiguous, duplicate_claim, flags")
    one = run_xmatch(XmatchParams(radius=1.5), workers=1)
    two = run_xmatch(XmatchParams(radius=1.5), workers=2)
    a, b = (rows(clean_db, f"SELECT {cols} FROM xpmet.xmatch WHERE run_id = :r ORDER BY star_id", r=r.run_id)
            for r in (one, two))
    assert len(a) == n_s and [dict(r) for r in a] == [dict(r) for r in b]
    assert len(one.by_method) >= 3 and sum(r["ambiguous"] for r in a) and sum(r["duplicate_claim"] for r in a)


def test_explicit_radius_beats_the_descriptor_even_at_the_default_value(clean_db):
    """--radius 1.0 is an explicit choice: it must win over lamost's descriptor radius (2.0)."""
    import json
    from xpmet.xmatch import DEFAULT_RADII, survey_parameters
    from xpmet.db.engine import raw_connect
    from xpmet.etl.descriptor import load_descriptor
    lamost_xm = load_descriptor("lamost").raw["xmatch"]
    assert lamost_xm["radius"] != DEFAULT_RADII["radius"]
    with raw_connect() as c:
        c.execute("INSERT INTO xpmet.survey (name, descriptor) VALUES ('lamost', %s), ('apogee', '{}')",
                  (json.dumps({"xmatch": lamost_xm}),))
        by = lambda p: {r[1]: r[2:] for r in survey_parameters(c, p)}  # noqa: E731
        assert by(XmatchParams())["lamost"][0] == lamost_xm["radius"]          # not given: the descriptor's
        assert by(XmatchParams())["apogee"] == (1.0, 2.0, 3.0)                 # nor there: the defaults
        assert by(XmatchParams(radius=1.0))["lamost"][:2] == (1.0, 2.0)        # given: wins, nopm follows
        assert by(XmatchParams(radius=1.0, overrides={"lamost": {"radius": 3.0}}))["lamost"][0] == 3.0
        c.rollback()


def _q3c_plan_problems(plan: dict) -> list[str]:
    """Nodes of an EXPLAIN (FORMAT JSON) plan that evaluate q3c's distance test outside an index probe."""
    bad, stack = [], [plan]
    while stack:
        n = stack.pop()
        stack.extend(n.get("Plans", []))
        # a join with p (one row of parameters per survey) filters each pair once: allowed
        with_p = re.fullmatch(r"\(\w+\.survey_id = p(_\d+)?\.survey_id\)", n.get("Hash Cond", ""))
        if "q3c_sindist" in n.get("Join Filter", "") and not with_p:
            bad.append(f"{n['Node Type']} with Join Filter {n['Join Filter'][:80]}")
        # a Subquery Scan filters the pairs a probe found (an arm leaving out another arm's pairs): a
        # probe that found too many would itself be flagged below it
        if "q3c_sindist" in n.get("Filter", "") and n["Node Type"] not in ("Bitmap Heap Scan", "Index Scan",
                                                                           "Subquery Scan"):
            bad.append(f"{n['Node Type']} on {n.get('Relation Name')} filtering on q3c_sindist")
    return bad


def _fast_mover_sky(tmp_path) -> dict:
    """3,000 Gaia sources (5% fast movers) and 800 J2000 survey rows, half with declared ids; the
    candidate search's parameters."""
    rng = np.random.default_rng(3)
    n_g, n_s = 3000, 800
    gra, gdec = 30 + rng.uniform(0, 0.5, n_g), -5 + rng.uniform(0, 0.5, n_g)
    pmra, pmdec = rng.normal(0, 20, n_g), rng.normal(0, 20, n_g)
    pmra[rng.random(n_g) < 0.05] *= 40
    insert_gaia(tmp_path, {"source_id": np.arange(1, n_g + 1, dtype=np.int64), "ra": gra, "dec": gdec,
                           "pmra": pmra, "pmdec": pmdec})
    pick = rng.choice(n_g, n_s, replace=False)
    my_survey(tmp_path, {"ra": gra[pick], "dec": gdec[pick], "gid": np.where(rng.random(n_s) < 0.5, pick + 1, 0)},
              epoch=2000.0)
    args = {"pm_cap": 50.0, "max_r": 2.0, "max_dt": 16.0, "sid": [], "radius": [], "nopm_radius": [],
            "id_radius": []}
    from xpmet.db.engine import raw_connect
    with raw_connect() as c:
        for (sid,) in c.execute("SELECT survey_id FROM xpmet.survey").fetchall():
            for k, v in (("sid", sid), ("radius", 1.0), ("nopm_radius", 2.0), ("id_radius", 3.0)):
                args[k].append(v)
    return args


@pytest.mark.parametrize("stats", ["none", "small", "huge"])
def test_candidate_probes_are_index_probes_whatever_the_statistics(clean_db, tmp_path, stats):
    """Every q3c search (both arms, every part) probes the q3c index once per outer row, with the tables
    never analysed (just loaded), or with statistics claiming 10^2 or 10^8 rows: no nested loop that
    evaluates the distance for every (fast mover, survey row) pair, as a fresh database once got."""
    from xpmet.xmatch.algorithms import PARTS, algorithm
    from xpmet.xmatch.run import SEARCH_SETTINGS
    from xpmet.db.engine import raw_connect
    args = _fast_mover_sky(tmp_path)
    tables = "'xpmet.gaia_source'::regclass, 'xpmet.survey_star'::regclass"
    with raw_connect(autocommit=True) as c:
        c.execute(f"DELETE FROM pg_statistic WHERE starelid IN ({tables})")
        if stats != "none":
            c.execute("ANALYZE xpmet.gaia_source; ANALYZE xpmet.survey_star")
            n = {"small": 100, "huge": 10 ** 8}[stats]
            c.execute(f"UPDATE pg_class SET reltuples = {n}, relpages = {max(n // 50, 1)} WHERE oid IN ({tables})")
        try:
            m = algorithm("propagate")
            for part in PARTS:
                for sql in (m.candidates_sql(part), m.rows_sql(part)):
                    with c.transaction():
                        for s in SEARCH_SETTINGS:   # as run_xmatch and its worker search
                            c.execute("SET LOCAL " + s)
                        plan = c.execute("EXPLAIN (FORMAT JSON) " + sql, {**args, "run_id": 1}).fetchone()[0]
                    assert _q3c_plan_problems(plan[0]["Plan"]) == [], (part, stats)
        finally:
            c.execute("ANALYZE xpmet.gaia_source; ANALYZE xpmet.survey_star")  # real statistics back


def test_each_candidate_pair_comes_once_and_every_pair_comes(clean_db, tmp_path):
    """The arms leave out what the others find: the pairs of "all", and of "main" + "worker", are
    exactly the brute-force set (within the probe radius of the survey row, within the Gaia-side
    radius of a fast mover or one without proper motion, or the declared id), each once."""
    from xpmet.xmatch.algorithms import algorithm
    from xpmet.db.engine import raw_connect
    args = _fast_mover_sky(tmp_path)
    m = algorithm("propagate")
    found = " OR ".join([m.found_by_probe_sql(), *m.found_by_extra_sql()])
    brute = f"""
        WITH p AS (SELECT * FROM unnest(%(sid)s::smallint[], %(radius)s::float8[], %(nopm_radius)s::float8[],
                                        %(id_radius)s::float8[]) AS p(survey_id, radius, nopm_radius, id_radius))
        SELECT s.star_id, g.source_id FROM xpmet.survey_star s JOIN p USING (survey_id), xpmet.gaia_source g
        WHERE {found} OR g.source_id = s.gaia_source_id"""
    with raw_connect() as c:
        expected = sorted(c.execute(brute, args).fetchall())
        pairs = {part: [(r[0], r[2]) for r in c.execute(m.candidates_sql(part), args).fetchall()]
                 for part in ("all", "main", "worker")}
    assert len(expected) > 800 and len(set(expected)) == len(expected)
    assert sorted(pairs["all"]) == expected
    assert sorted(pairs["main"] + pairs["worker"]) == expected
