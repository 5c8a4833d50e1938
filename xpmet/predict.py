"""Predict labels for every star with XP and write them into ``xpmet.predictions``, resumably.

The XP table is walked in source_id ranges; a range of Gaia source_ids is a range of HEALPix
level-12 pixels, so each chunk is a compact patch of sky. Per chunk: a binary ``COPY TO`` streams
the rows not yet predicted for the model (an anti-join on the predictions primary key), the model
predicts them batch by batch, and a binary ``COPY FROM`` writes the results in one transaction
that commits at the end of the chunk. A killed run therefore loses at most its open chunks, a
rerun continues where it stopped, and no star is ever written twice for a model. Memory stays at
about one batch per worker whatever the table size.

    >>> from xpmet.predict import predict
    >>> predict("models/estimator-1", where="g.phot_g_mean_mag < 17", batch=4096, workers=2)
"""
from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg

from xpmet.db.readonly import reader_connect
from xpmet.db.models.columns import copy_columns, type_code
from xpmet.db.models.core import predictions as predictions_table, xp_continuous
from xpmet.distributed import drop_worker_state
from xpmet.errors import XpmetError
from xpmet.faults import fault
from xpmet.progress import progress_bar
from xpmet.io.copyout import RowReader
from xpmet.io.pgcopy import TRAILER, Col, copy_sql, encode
from xpmet.xp_coefficients import N_COEF, N_CORR

#: source_id // 2**35 is the HEALPix level-12 (nested) pixel of a Gaia source.
LEVEL12_SHIFT = 35
#: Key of the advisory lock that allows one predict run per model at a time.
LOCK_CLASS = 0x78706D70  # "xpmp"
#: --where runs as xpmet_reader under these statement timeouts: the check on a sample of stars,
#: and each chunk's read.
WHERE_CHECK_TIMEOUT_MS = 5_000
WHERE_CHECK_SAMPLE = 100
WHERE_CHUNK_TIMEOUT_MS = 300_000

#: Batch keys of the inference contract (used when a predictor does not declare ``needs``).
DEFAULT_NEEDS = ["source_id", "bp_coefficients", "bp_coefficient_errors", "rp_coefficients",
                 "rp_coefficient_errors", "phot_g_mean_mag", "phot_g_mean_flux", "bp_rp", "parallax"]

# Where each input column comes from and how it travels: (table alias, Col, SQL type for NaN fill).
_SQL_TYPE = {"f8[]": "float8", "f4[]": "real"}
_XP_ARRAYS = {f"{b}_{what}": (type_code(xp_continuous.c[f"{b}_{what}"]), n,
                              _SQL_TYPE[type_code(xp_continuous.c[f"{b}_{what}"])])
              for b in ("bp", "rp") for what, n in (("coefficients", N_COEF), ("coefficient_errors", N_COEF),
                                                    ("coefficient_correlations", N_CORR))}

#: the predictions table's columns as the COPY writes them (from the table model)
OUTPUTS = copy_columns(predictions_table)
#: what a predictor returns; the rest (model, source, XP load) the pipeline fills in
PREDICTED = [c.name for c in OUTPUTS if c.name not in ("model_id", "source_id", "load_id")]


@dataclass
class PredictResult:
    """What a predict run did."""
    model_id: int
    written: int = 0
    already: int = 0
    chunks: int = 0
    seconds: float = 0.0
    rows_per_second: float = field(init=False, default=0.0)

    def finish(self, seconds):
        self.seconds = seconds
        self.rows_per_second = self.written / seconds if seconds > 0 else 0.0
        return self


# -- the input side ----------------------------------------------------------------------------
def input_columns(needs) -> list[tuple[str, Col]]:
    """(SQL expression, Col) per input column; NULLs become NaN so that every row has one width."""
    from xpmet.db.models import gaia_source, xp_continuous
    names = ["source_id", "load_id"] + [n for n in (needs or DEFAULT_NEEDS) if n not in ("source_id", "load_id")]
    out = []
    for name in dict.fromkeys(names):
        if name == "source_id":
            out.append(("x.source_id", Col("source_id", "i8")))
        elif name == "load_id":  # the XP load predicted from: written with the prediction
            out.append(("x.load_id", Col("load_id", "i4")))
        elif name in _XP_ARRAYS:
            typ, n, sqltype = _XP_ARRAYS[name]
            out.append((f"coalesce(x.{name}, array_fill('NaN'::{sqltype}, ARRAY[{n}]))", Col(name, typ, n)))
        else:
            table = "x" if name in xp_continuous.c else "g" if name in gaia_source.c else None
            if table is None:
                raise XpmetError(f"the model needs column {name!r}, which is neither in xp_continuous nor "
                                 "in gaia_source")
            col = (xp_continuous if table == "x" else gaia_source).c[name]
            if col.type.python_type is bool:
                raise XpmetError(f"boolean input column {name!r} is not supported")
            sqltype = "float8" if "DOUBLE" in str(col.type).upper() else "real"
            out.append((f"coalesce({table}.{name}::{sqltype}, 'NaN')",
                        Col(name, "f8" if sqltype == "float8" else "f4")))
    return out


def _select(inputs, model_id: int, lo: int, hi: int, where: str | None) -> str:
    # COPY takes no bind parameters: the only values pasted here are integers we made ourselves
    # and the user's own --where expression (checked by check_where; both run as xpmet_reader).
    cond = f"x.source_id >= {int(lo)} AND x.source_id < {int(hi)}"
    if where:
        cond += f" AND ({where})"
    return (f"SELECT {', '.join(e for e, _ in inputs)} FROM xpmet.xp_continuous x "
            f"LEFT JOIN xpmet.gaia_source g ON g.source_id = x.source_id "
            f"WHERE {cond} AND NOT EXISTS (SELECT 1 FROM xpmet.predictions p "
            f"WHERE p.model_id = {int(model_id)} AND p.source_id = x.source_id AND p.load_id = x.load_id) "
            f"ORDER BY x.source_id")


def _drop_stale(conn, model_id: int, lo: int, hi: int) -> int:
    """Delete the model's predictions in [lo, hi) whose XP row was replaced (another load) or is gone,
    in the chunk's write transaction: the chunk then predicts those stars again (the reader's
    anti-join matches on load_id too)."""
    return conn.execute(
        "DELETE FROM xpmet.predictions p WHERE p.model_id = %s AND p.source_id >= %s AND p.source_id < %s "
        "AND NOT EXISTS (SELECT 1 FROM xpmet.xp_continuous x WHERE x.source_id = p.source_id "
        "AND x.load_id = p.load_id)", (model_id, lo, hi)).rowcount


def check_where(conn, where: str | None) -> None:
    """Fail early, with the server's message, when --where is not a valid condition on x and g.

    ``conn`` logs in as xpmet_reader (xpmet.db.readonly.reader_connect): the condition is evaluated
    on the first stars under a short statement timeout, so a function the reader may not call, an
    error at run time or a condition that sleeps fails here, before any work; the transaction is
    rolled back, so nothing it did (set_config, pg_notify) survives.
    """
    if not where:
        return
    if ";" in where:
        raise XpmetError("--where must be one SQL condition (no ';')")
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(f"SET LOCAL statement_timeout = {int(WHERE_CHECK_TIMEOUT_MS)}")
            conn.execute(f"SELECT ({where})::boolean FROM (SELECT * FROM xpmet.xp_continuous "
                         f"ORDER BY source_id LIMIT {int(WHERE_CHECK_SAMPLE)}) x "
                         f"LEFT JOIN xpmet.gaia_source g ON g.source_id = x.source_id").fetchall()
    except psycopg.Error as e:
        raise where_error(where, e, WHERE_CHECK_TIMEOUT_MS, f"on {WHERE_CHECK_SAMPLE} stars") from None


def where_error(where: str, e: psycopg.Error, timeout_ms: int, what: str) -> XpmetError:
    """The one-line refusal of a --where the server would not run."""
    msg = (e.diag.message_primary or str(e)).strip().splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, psycopg.errors.QueryCanceled):
        return XpmetError(f"--where {where!r} took longer than {timeout_ms / 1000:g} s {what} and was stopped")
    if isinstance(e, psycopg.errors.InsufficientPrivilege):
        return XpmetError(f"--where {where!r} was refused: it runs as the read-only role, which may read the "
                          f"published tables and call side-effect-free functions only ({msg})")
    return XpmetError(f"--where {where!r} is not a valid condition on x (xp_continuous) and "
                      f"g (gaia_source): {msg}")


def chunk_ranges(conn, rows_per_chunk: int):
    """Yield [lo, hi) source_id ranges of about rows_per_chunk XP rows, cut at level-12 pixel edges.

    Boundaries come lazily from the primary key (an index-only scan of one chunk each), so the
    first chunk starts at once even on 219 million rows.
    """
    lo = conn.execute("SELECT min(source_id) FROM xpmet.xp_continuous").fetchone()[0]
    if lo is None:
        return
    while True:
        nxt = conn.execute("SELECT source_id FROM xpmet.xp_continuous WHERE source_id >= %s "
                           "ORDER BY source_id OFFSET %s LIMIT 1", (lo, rows_per_chunk)).fetchone()
        if nxt is None:
            yield lo, 2 ** 63 - 1
            return
        hi = (nxt[0] >> LEVEL12_SHIFT) << LEVEL12_SHIFT  # start of the pixel that holds the next row
        if hi <= lo:  # one dense pixel holds the whole chunk: cut inside it
            hi = nxt[0]
        yield lo, hi
        lo = hi


# -- the model ---------------------------------------------------------------------------------
def load(model):
    """A Predictor from a model directory (xpmet.ml.inference.load_predictor; on CUDA when present),
    or the object itself."""
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.exists():
            raise XpmetError(f"model directory {path} does not exist (train one with `xpmet train`)")
        import torch

        from xpmet.ml.inference import load_predictor
        return load_predictor(path, device="cuda" if torch.cuda.is_available() else "cpu")
    if not hasattr(model, "predict"):
        raise XpmetError(f"{model!r} is neither a model directory nor an object with predict()")
    return model


def model_id_for(conn, predictor, model) -> int:
    """The model_id the predictions are written under: the predictor's own, or a models row for it."""
    mid = getattr(predictor, "model_id", None)
    if mid is not None:
        if not conn.execute("SELECT 1 FROM xpmet.models WHERE model_id = %s", (int(mid),)).fetchone():
            raise XpmetError(f"the model says it is model_id {mid}, but xpmet.models has no such row; "
                             "was it trained against another database?")
        return int(mid)
    path = str(Path(model).resolve()) if isinstance(model, (str, Path)) else f"python:{type(predictor).__name__}"
    row = conn.execute("SELECT model_id FROM xpmet.models WHERE path = %s ORDER BY model_id DESC LIMIT 1",
                       (path,)).fetchone()
    if row:
        return row[0]
    with conn.transaction():
        return conn.execute(
            "INSERT INTO xpmet.models (name, kind, path) VALUES (%s, %s, %s) RETURNING model_id",
            (Path(path).name, getattr(predictor, "kind", None) or "estimator", path)).fetchone()[0]


def _outputs(pred: dict, n: int, model_id: int, source_id, load_id) -> dict:
    """Check the predictor's answer and shape it into the predictions columns."""
    missing = [k for k in PREDICTED if k not in pred]
    if missing:
        raise XpmetError(f"the model's predict() returned no {', '.join(missing)}")
    out = {"model_id": np.full(n, model_id, dtype=np.int32), "source_id": source_id, "load_id": load_id}
    for c in OUTPUTS:
        if c.name not in PREDICTED:
            continue
        v = np.asarray(pred[c.name])
        if v.shape != (n,):
            raise XpmetError(f"the model's predict() returned {c.name} of shape {v.shape}, expected ({n},)")
        out[c.name] = v.astype({"f4": np.float32, "i4": np.int32, "bool": bool}[c.type])
    return out


# -- one worker --------------------------------------------------------------------------------
class Worker:
    """A predictor plus a read connection (COPY TO) and a write connection (COPY FROM)."""

    def __init__(self, predictor, model_id: int, url: str, where, batch: int):
        from xpmet.db.engine import raw_connect
        self.predictor, self.model_id, self.where, self.batch = predictor, model_id, where, batch
        self.inputs = input_columns(getattr(predictor, "needs", None))
        # The user's --where runs in this connection's COPY: log in as the read-only role for it.
        self.reader = reader_connect(url) if where else raw_connect(url)
        self.reader.read_only = True  # the --where expression can read, never write
        self.writer = raw_connect(url)

    def close(self):
        self.reader.close()
        self.writer.close()

    def run_chunk(self, lo: int, hi: int) -> tuple[int, int]:
        """Predict the missing stars of [lo, hi); returns (rows read, rows written). Retries once
        when another process wrote part of the chunk meanwhile (the anti-join then skips them)."""
        for attempt in (1, 2):
            try:
                return self._chunk(lo, hi)
            except psycopg.errors.UniqueViolation:
                self.writer.rollback()
                self.reader.rollback()
                if attempt == 2:
                    raise XpmetError(f"source_id range [{lo}, {hi}) keeps colliding with predictions written "
                                     "by another process: is a second `xpmet predict` running for this model?")
        raise AssertionError("unreachable")

    def _chunk(self, lo, hi):
        # Three stages overlap: a reader thread streams and decodes the chunk (the server spends
        # its time in array output), this thread predicts, a writer thread encodes and COPYs.
        _drop_stale(self.writer, self.model_id, lo, hi)  # before the reader's snapshot: see _drop_stale
        batches: queue.Queue = queue.Queue(maxsize=3)
        results: queue.Queue = queue.Queue(maxsize=3)
        stop = threading.Event()
        threads = [threading.Thread(target=self._read, args=(lo, hi, batches, stop), daemon=True),
                   threading.Thread(target=self._write, args=(results, stop), daemon=True)]
        for t in threads:
            t.start()
        read = 0
        try:
            while True:
                item = batches.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                n = len(item["source_id"])
                load_id = item.pop("load_id")
                results.put(_outputs(self.predictor.predict(item), n, self.model_id, item["source_id"], load_id))
                read += n
            results.put(None)
            threads[1].join()
            if self._write_error is not None:
                raise self._write_error
            self.writer.commit()  # the chunk becomes visible (and final) all at once
            fault("predict_after_chunk")
        except BaseException:
            stop.set()
            while any(t.is_alive() for t in threads):  # unblock stages waiting on their queues
                try:
                    batches.get_nowait()
                except queue.Empty:
                    pass
                try:
                    results.put_nowait(None)
                except queue.Full:
                    results.get_nowait()
                for t in threads:
                    t.join(timeout=0.05)
            self.writer.rollback()
            raise
        finally:
            for t in threads:
                t.join()
        return read, self._written

    def _write(self, results, stop):
        """Writer thread: one binary COPY FROM for the whole chunk, opened at the first batch."""
        self._write_error, self._written = None, 0
        try:
            with contextlib.ExitStack() as stack:
                sink = None
                while True:
                    data = results.get()
                    if data is None or stop.is_set():
                        break
                    first = sink is None
                    if first:
                        cur = stack.enter_context(self.writer.cursor())
                        sink = stack.enter_context(cur.copy(copy_sql("xpmet.predictions", OUTPUTS)))
                    sink.write(encode(OUTPUTS, data, header=first, trailer=False))
                    self._written += len(data["source_id"])  # one COPY: all of them commit, or none
                if sink is not None:
                    if stop.is_set():
                        raise XpmetError("chunk abandoned")  # makes psycopg abort the COPY
                    sink.write(TRAILER)
        except BaseException as e:
            self._write_error = e

    def _read(self, lo, hi, batches, stop):
        """Reader thread: COPY TO -> batches of at most ``batch`` rows on the queue, then None."""
        sql = _select(self.inputs, self.model_id, lo, hi, self.where)
        decoder = RowReader([c for _, c in self.inputs], max_rows=self.batch)
        try:
            if self.where:  # a SET LOCAL per chunk: the condition cannot lift it for the next one
                self.reader.execute(f"SET LOCAL statement_timeout = {int(WHERE_CHUNK_TIMEOUT_MS)}")
            with self.reader.cursor() as rcur, rcur.copy(f"COPY ({sql}) TO STDOUT (FORMAT binary)") as src:
                for block in src:
                    for rows in decoder.feed(block):
                        batches.put(rows)
                    if stop.is_set():
                        self.reader.cancel()
                        return
            for rows in decoder.finish():
                batches.put(rows)
            batches.put(None)
        except BaseException as e:  # handed to the main thread, which raises it
            if self.where and isinstance(e, (psycopg.errors.QueryCanceled, psycopg.errors.InsufficientPrivilege,
                                             psycopg.errors.DataError)) and not stop.is_set():
                e = where_error(self.where, e, WHERE_CHUNK_TIMEOUT_MS, f"on source_ids [{lo}, {hi})")
            batches.put(e)
        finally:
            try:
                self.reader.rollback()  # ends the read-only snapshot so VACUUM is not held back
            except psycopg.Error:
                pass


# -- processes ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChunkJob:
    """What a process needs to predict the chunks of one run (pickled to pool and Dask workers)."""
    model: object          # a model directory or a Predictor
    model_id: int
    url: str
    where: str | None
    batch: int
    token: str             # the run: a process keeps its model and connections across the run's chunks


def predict_chunk(job: ChunkJob, bounds: tuple[int, int], topic=None) -> tuple[int, int]:
    """Predict the missing stars of one [lo, hi) range and commit them; returns (read, written).

    The one task of every path: serial, ``--workers`` processes and ``--cluster`` Dask workers.
    Idempotent: a rerun of a range (Dask's retry after a lost worker) predicts only what the
    killed attempt had not committed.
    """
    return _worker_for(job).run_chunk(*bounds)


def _worker_for(job: ChunkJob) -> Worker:
    from xpmet.distributed import worker_state
    return worker_state(("predict", job.token),
                        lambda: Worker(load(job.model), job.model_id, job.url, job.where, job.batch))


_JOB: ChunkJob | None = None


def _init_worker(job, threads):
    global _JOB
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        pass
    _JOB = job
    _worker_for(job)  # load the model and connect now: a failure shows before any chunk


def _run_in_worker(bounds):
    return predict_chunk(_JOB, bounds)


def _count(conn, sql, params=()):
    return conn.execute(sql, params).fetchone()[0]


def predict(model, *, where: str | None = None, batch: int = 4096, workers: int = 1,
            chunk_rows: int = 20000, url: str | None = None, progress: bool = True,
            cluster: str | None = None) -> PredictResult:
    """Predict every XP star (matching ``where``) not yet predicted by ``model``; resumable.

    model: a model directory (loaded with xpmet.ml.inference.load_predictor) or a Predictor.
    where: SQL condition on x (xpmet.xp_continuous) and g (xpmet.gaia_source), e.g.
           "g.phot_g_mean_mag < 17 AND x.rp_coefficients IS NOT NULL".
    batch: stars per predict() call; workers: processes (each with its own model copy and two
    connections); chunk_rows: stars per committed chunk.
    cluster: a Dask scheduler address or ``local:N`` (xpmet.distributed): one task per chunk,
    instead of ``workers`` local processes.
    """

    from xpmet.db.engine import libpq_url, raw_connect
    if batch < 1 or workers < 1 or chunk_rows < 1:
        raise XpmetError("--batch, --workers and the chunk size must be at least 1")
    if cluster and workers > 1:
        raise XpmetError("give --workers or --cluster, not both")
    if cluster:
        from xpmet.distributed import parse_cluster
        parse_cluster(cluster)  # a bad address fails before any work
    given_url, url = url, url or libpq_url()
    predictor = load(model)
    t0 = time.perf_counter()
    stack = contextlib.ExitStack()
    if cluster:  # connected before the bar is drawn: an unreachable scheduler is the one line printed
        from xpmet.distributed import error_line, open_session
        session = stack.enter_context(open_session(cluster))
        job = ChunkJob(model, 0, session.db_url(given_url), where, batch, uuid.uuid4().hex)
    with stack, raw_connect(url, autocommit=True) as ctl:
        model_id = model_id_for(ctl, predictor, model)
        if not _count(ctl, "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, model_id)):
            raise XpmetError(f"another `xpmet predict` is running for model {model_id}; wait for it to finish "
                             "(or stop it: a stopped run resumes where it stopped)")
        if where:
            with reader_connect(url) as wc:
                check_where(wc, where)
        input_columns(getattr(predictor, "needs", None))  # fail on unknown columns before any work
        total = _count(ctl, "SELECT count(*) FROM xpmet.xp_continuous")
        already = _count(ctl, "SELECT count(*) FROM xpmet.predictions WHERE model_id = %s", (model_id,))
        result = PredictResult(model_id=model_id, already=already)
        bar = progress_bar(total=total, initial=min(already, total), unit="star", enabled=progress,
                   desc=f"predict model {model_id}" + (" (--where: total is an upper bound)" if where else ""))
        try:
            chunks = chunk_ranges(ctl, chunk_rows)
            token = uuid.uuid4().hex

            def done(read, written):
                result.chunks += 1
                result.written += written
                bar.update(read)

            if cluster:
                job = dataclasses.replace(job, model_id=model_id, token=token)
                # a window of chunks in flight: boundaries are found lazily on 219 M rows too
                for (lo, hi), res, err in session.map(predict_chunk, chunks, name=f"predict-{model_id}",
                                                      args=(job,), window=2 * max(1, session.n_workers) + 2):
                    if err is not None:
                        raise err if isinstance(err, XpmetError) else XpmetError(
                            f"predict, source_ids [{lo}, {hi}): {error_line(err)}")
                    done(*res)
            elif workers == 1:
                try:
                    job = ChunkJob(predictor, model_id, url, where, batch, token)
                    for bounds in chunks:
                        done(*predict_chunk(job, bounds))
                finally:
                    drop_worker_state()
            else:
                threads = max(1, (os.cpu_count() or 1) // workers)
                ctx = mp.get_context("spawn")  # torch and open connections do not survive fork
                with ctx.Pool(workers, initializer=_init_worker,
                              initargs=(ChunkJob(model, model_id, url, where, batch, token), threads)) as pool:
                    for read, written in pool.imap_unordered(_run_in_worker, chunks):
                        done(read, written)
        finally:
            bar.close()
            ctl.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, model_id))
    return result.finish(time.perf_counter() - t0)
