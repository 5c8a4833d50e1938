"""--cluster on a real Dask LocalCluster of 2 worker processes against the real database: loads,
predictions and exports equal the serial path's (row counts and content digests), a worker killed
in the middle of a task is replaced and its task run again without doubling or losing a row, and
an unreachable scheduler is a one-line error. One cluster for the module (start-up costs seconds)."""
from __future__ import annotations

import logging
import os

import h5py
import numpy as np
import pytest
import sqlalchemy as sa
from distributed import LocalCluster

from conftest import truncate_all
from predict_helpers import ColourPredictor
from xpmet.distributed import open_session, parse_cluster
from xpmet.errors import XpmetError
from xpmet.etl.gaia import KIND as GAIA_KIND, load_gaia_source, load_gaia_source_file
from xpmet.etl.runner import run
from xpmet.etl.survey import load_survey
from xpmet.etl.xp_loader import load_xp
from xpmet.ml.export import ExportOptions, export
from xpmet.ml.normalise import g_flux
from xpmet.predict import predict
from xpmet.simulate import survey_files

#: content of each loaded table, order fixed, ids that depend on load order (load_id, star_id) left out
DIGESTS = {
    "gaia_source": "SELECT count(*), md5(string_agg((to_jsonb(t) - 'load_id')::text, ',' ORDER BY source_id)) "
                   "FROM xpmet.gaia_source t",
    "xp_continuous": "SELECT count(*), md5(string_agg((to_jsonb(t) - 'load_id')::text, ',' ORDER BY source_id)) "
                     "FROM xpmet.xp_continuous t",
    "survey_star": "SELECT count(*), md5(string_agg((to_jsonb(t) - 'load_id' - 'star_id')::text, ',' "
                   "ORDER BY survey_id, file_row)) FROM xpmet.survey_star t",
}


def digests(engine, names=DIGESTS):
    with engine.connect() as c:
        return {n: tuple(c.execute(sa.text(DIGESTS[n])).one()) for n in names}


def prediction_digest(engine, model_id):
    with engine.connect() as c:
        return tuple(c.execute(sa.text(
            "SELECT count(*), count(DISTINCT source_id), md5(string_agg((to_jsonb(p) - 'model_id' - 'load_id')::text, "
            "',' ORDER BY source_id)) FROM xpmet.predictions p WHERE model_id = :m"), {"m": model_id}).one())


def first_attempt(marker) -> bool:
    """True for exactly one caller across processes and retries (the marker file is created once)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


@pytest.fixture(scope="module")
def address(xpmet_home):
    """A LocalCluster of 2 single-threaded worker processes, reached by its scheduler address."""
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    yield cluster.scheduler_address
    cluster.close()


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    from xpmet.simulate import simulate
    out = tmp_path_factory.mktemp("dsky") / "sim"
    simulate(out, n_stars=1200, seed=23, rows_per_file=300, progress=False)  # several files per kind
    return out


def load_all(sky, cluster=None):
    load_gaia_source(sky / "gaia_source", progress=False, cluster=cluster)
    load_xp(sky / "xp_continuous", progress=False, cluster=cluster)
    for name, path in survey_files(sky).items():
        load_survey(name, [path], progress=False, cluster=cluster)


@pytest.fixture(scope="module")
def loaded(sky, engine, address, run_cli):
    """The sky loaded serially (digests kept), then again on the cluster through the CLI; crossmatched."""
    truncate_all(engine)
    load_all(sky)
    serial = digests(engine)
    truncate_all(engine)
    run_cli("etl", "gaia-source", sky / "gaia_source", "--cluster", address)
    run_cli("etl", "xp", sky / "xp_continuous", "--cluster", address)
    for name, path in survey_files(sky).items():
        run_cli("etl", "survey", name, path, "--cluster", address)
    clustered = digests(engine)
    run_cli("xmatch")
    yield serial, clustered
    truncate_all(engine)


def test_cluster_load_equals_serial_load(loaded, sky, engine, address):
    serial, clustered = loaded
    assert serial["gaia_source"][0] > 2000 and serial["xp_continuous"][0] >= 1200 and serial["survey_star"][0] > 100
    assert clustered == serial
    n_files = len(list((sky / "gaia_source").iterdir())) + len(list((sky / "xp_continuous").iterdir()))
    assert n_files >= 6  # one task per file, more files than workers
    with engine.connect() as c:
        done = c.execute(sa.text("SELECT count(*), count(DISTINCT sha256) FROM xpmet.etl_load "
                                 "WHERE status = 'done' AND kind IN ('gaia_source', 'xp')")).one()
    assert tuple(done) == (n_files, n_files)
    again = load_xp(sky / "xp_continuous", progress=False, cluster=address)  # loaded files are skipped
    assert len(again.skipped) == len(again.files) > 1 and again.rows == 0 and again.workers == 2
    assert digests(engine) == serial


def test_cluster_predict_equals_serial(loaded, engine, address):
    serial = predict(ColourPredictor(), chunk_rows=150, batch=64, progress=False)
    want = prediction_digest(engine, serial.model_id)
    assert want[0] == want[1] == serial.written >= 1200 and serial.chunks >= 6
    with engine.begin() as c:
        c.execute(sa.text("DELETE FROM xpmet.predictions"))
    r = predict(ColourPredictor(), chunk_rows=150, batch=64, progress=False, cluster=address)
    assert r.model_id == serial.model_id and (r.written, r.chunks) == (serial.written, serial.chunks)
    assert prediction_digest(engine, r.model_id) == want
    assert predict(ColourPredictor(), chunk_rows=150, progress=False, cluster=address).written == 0


class DyingPredictor(ColourPredictor):
    """The test double, except that one process exits in the middle of a chunk, once in the whole run:
    after its first batch went into the chunk's uncommitted COPY."""

    def __init__(self, marker):
        super().__init__()
        self.marker = str(marker)

    def predict(self, b):
        out = super().predict(b)
        if self.calls == 2 and first_attempt(self.marker):
            os._exit(1)
        return out


def test_worker_killed_mid_chunk_is_retried_nothing_doubled_or_lost(loaded, engine, address, tmp_path):
    ref = predict(ColourPredictor(), chunk_rows=150, batch=64, progress=False)  # serial, or already there
    want = prediction_digest(engine, ref.model_id)
    marker = tmp_path / "died"
    r = predict(DyingPredictor(marker), chunk_rows=150, batch=64, progress=False, cluster=address)
    assert marker.exists()  # a worker process did exit mid-chunk
    assert r.model_id != ref.model_id and r.written == want[0]
    assert prediction_digest(engine, r.model_id) == want
    with open_session(address) as s:
        s.client.wait_for_workers(2, timeout=60)  # the nanny replaces the dead worker


def h5_content(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        attrs = {k: v for k, v in f.attrs.items() if k != "created"}
    return out, attrs


def assert_same_h5(a, b):
    (da, aa), (db, ab) = h5_content(a), h5_content(b)
    assert da.keys() == db.keys() and aa == ab
    for k in da:
        assert da[k].shape == db[k].shape, k
        if da[k].dtype.kind in "fc":
            np.testing.assert_array_equal(da[k], db[k], err_msg=k)  # NaN == NaN here
        else:
            assert (da[k] == db[k]).all(), k


def test_cluster_export_equals_serial(loaded, address, tmp_path):
    def both(name, **opts):
        serial = export(tmp_path / f"{name}-serial.h5", ExportOptions(seed=3, **opts), progress=False)
        clustered = export(tmp_path / f"{name}-cluster.h5", ExportOptions(seed=3, **opts), progress=False,
                           cluster=address, shard_rows=100)  # ~12 shards of the sky, a few rows each
        assert clustered["n_by_split"] == serial["n_by_split"]
        assert clustered["rows_cut_by_coef_error"] == serial["rows_cut_by_coef_error"]
        assert_same_h5(tmp_path / f"{name}-serial.h5", tmp_path / f"{name}-cluster.h5")
        return sum(serial["n_by_split"].values()), serial["rows_cut_by_coef_error"]

    n, cut = both("all")
    assert n > 50 and cut == 0
    # --limit counts rows before the coefficient-error cut, across shard edges: a cut that drops
    # about half of the first 31 rows shows both done in the serial order
    with h5py.File(tmp_path / "all-serial.h5", "r") as f:
        errs = np.concatenate([f["xp/bp_coefficient_errors"][:31], f["xp/rp_coefficient_errors"][:31]], axis=1)
        rel = np.nanmedian(errs, axis=1) / g_flux(f["phot/phot_g_mean_flux"][:31], f["phot/phot_g_mean_mag"][:31])
    n, cut = both("limit", limit=31, max_coef_error=float(np.median(rel)), correlations=True)
    assert n + cut == 31 and n > 5 and cut > 5


def dying_load(path, report, *, marker, **options):
    """The gaia_source loader, except that one process exits in the middle of one file's transaction,
    after its first rows were copied and before the commit, once in the whole run."""
    def dying_report(rows, nbytes=0):
        report(rows, nbytes)
        if rows and first_attempt(marker):
            os._exit(1)
    return load_gaia_source_file(path, dying_report, **options)


def test_worker_killed_mid_load_is_retried_nothing_doubled_or_lost(loaded, sky, engine, address, tmp_path):
    serial, _ = loaded
    truncate_all(engine)
    marker = tmp_path / "died"
    s = run(GAIA_KIND, sky / "gaia_source", dying_load,
            dict(marker=str(marker), replace=False, errors_to=None, url=None), progress=False, cluster=address)
    assert marker.exists()
    assert s.ok and len(s.loaded) == len(s.files) > 2
    assert digests(engine, ["gaia_source"])["gaia_source"] == serial["gaia_source"]
    with engine.connect() as c:
        rows = c.execute(sa.text("SELECT status, count(*) FROM xpmet.etl_load GROUP BY status")).all()
    assert dict(rows) == {"done": len(s.files)}  # the killed attempt left no trace


def test_unreachable_scheduler_is_one_line(run_cli, tmp_path):
    import socket
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(XpmetError, match=f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}"):
        with open_session(f"tcp://127.0.0.1:{port}", connect_timeout=1):
            pass
    import dask
    f = tmp_path / "x.csv"
    f.write_text("source_id\n1\n")
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        r = run_cli("etl", "xp", f, "--cluster", f"tcp://127.0.0.1:{port}", ok=False)
    assert r.exit_code == 1 and "Traceback" not in r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the Dask scheduler"), r.output
    r = run_cli("predict", "--model", tmp_path, "--cluster", "local:two", ok=False)
    assert r.exit_code == 1 and "local:N" in r.output


def reporting_task(n, topic=None):
    from xpmet.distributed import event_reporter
    report = event_reporter(topic)
    for _ in range(n):
        report(10, 1)
    return n * 10


def test_progress_events_reach_the_client_with_lazily_submitted_tasks(address):
    got = []
    with open_session(address) as s:
        out = list(s.map(reporting_task, iter(range(1, 6)), name="progress", on_event=got.append, window=2))
    assert sorted((i, r, e) for i, r, e in out) == [(i, 10 * i, None) for i in range(1, 6)]
    assert sum(rows for rows, _ in got) == 150 and len(got) == 15


def test_remote_workers_get_a_url_they_can_use(xpmet_home, monkeypatch):
    from xpmet.db.engine import libpq_url
    from xpmet.distributed import worker_db_url
    socket_url = libpq_url()
    assert worker_db_url(parse_cluster("local:2")) == socket_url
    assert worker_db_url(parse_cluster("tcp://127.0.0.1:8786")) == socket_url
    with pytest.raises(XpmetError, match="db start --listen"):  # the test cluster listens on its socket only
        worker_db_url(parse_cluster("tcp://node17:8786"))
    monkeypatch.setenv("XPMET_DATABASE_URL", "postgresql://u:p@dbhost:5432/xpmet")
    assert worker_db_url(parse_cluster("tcp://node17:8786")) == "postgresql://u:p@dbhost:5432/xpmet"


def test_cluster_addresses():
    assert parse_cluster("local:3").n == 3 and not parse_cluster("local:3").remote
    assert not parse_cluster("tcp://127.0.0.1:8786").remote and not parse_cluster("localhost:8786").remote
    assert parse_cluster("tcp://node17:8786").remote and parse_cluster("10.0.0.5:8786").remote
    for bad in ("local:0", "local", "node17", "tcp://node17", "missing.json"):
        with pytest.raises(XpmetError):
            parse_cluster(bad)
    with pytest.raises(XpmetError, match="not both"):
        load_xp("nowhere", workers=2, cluster="local:2", progress=False)
