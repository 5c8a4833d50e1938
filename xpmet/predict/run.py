"""A predict run: the lock per model, the chunks handed to one process, a process pool or a Dask
cluster (the same task, :func:`predict_chunk`, in every path), progress and the result.
"""
from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import time
import uuid
from dataclasses import dataclass, field

from xpmet.db.readonly import reader_connect
from xpmet.distributed import drop_worker_state, error_line, open_session, parse_cluster, worker_state
from xpmet.errors import XpmetError
from xpmet.progress import progress_bar
from xpmet.predict.pipeline import Worker, load, model_id_for
from xpmet.predict.plan import check_where, chunk_ranges, input_columns


#: Key of the advisory lock that allows one predict run per model at a time.
LOCK_CLASS = 0x78706D70  # "xpmp"


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
        parse_cluster(cluster)  # a bad address fails before any work
    given_url, url = url, url or libpq_url()
    predictor = load(model)
    t0 = time.perf_counter()
    stack = contextlib.ExitStack()
    if cluster:  # connected before the bar is drawn: an unreachable scheduler is the one line printed
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
        # The bar's total as the planner estimates it (rows per page at the last analyse times the
        # pages now): counting reads the whole XP table (TBs at Gaia scale) before the first star.
        total = _count(ctl, "SELECT coalesce((SELECT (reltuples / nullif(relpages, 0) * pg_relation_size(oid) / "
                            "current_setting('block_size')::int)::bigint FROM pg_class "
                            "WHERE oid = 'xpmet.xp_continuous'::regclass AND reltuples >= 0), -1)")
        if total < 0:  # never analysed (or empty when it was)
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
                    # one stream: the next range is read while the last one is written and committed
                    for res in _worker_for(ChunkJob(predictor, model_id, url, where, batch, token)).run_chunks(chunks):
                        done(*res)
                finally:
                    drop_worker_state()
            else:
                threads = max(1, (os.cpu_count() or 1) // workers)
                ctx = mp.get_context("spawn")  # torch and open connections do not survive fork
                with ctx.Pool(workers, initializer=_init_worker,
                              initargs=(ChunkJob(model, model_id, url, where, batch, token), threads)) as pool:
                    for read, written in pool.imap_unordered(_run_in_worker, chunks):
                        done(read, written)
            if not where:  # every XP star has its prediction: xpmet.metallicity may show this model now
                ctl.execute("UPDATE xpmet.models SET predictions_complete_at = now() WHERE model_id = %s",
                            (model_id,))
        finally:
            bar.close()
            ctl.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, model_id))
    return result.finish(time.perf_counter() - t0)
