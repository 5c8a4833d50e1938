"""One worker's pipeline: a model and two connections predicting a stream of chunks.

Three stages overlap: a reader thread streams the rows not yet predicted (binary COPY TO, an
anti-join on the predictions key), this thread runs the model batch by batch, a writer thread
encodes and writes the results with one binary COPY FROM per chunk; each chunk commits all at once,
while the reader already streams the next.
"""
from __future__ import annotations

import collections
import contextlib
import itertools
import queue
import threading
from pathlib import Path

import numpy as np
import psycopg

from xpmet.db.readonly import reader_connect
from xpmet.errors import XpmetError
from xpmet.faults import fault
from xpmet.io.copyout import select_arrays
from xpmet.io.pgcopy import HEADER, TRAILER, copy_sql, encode
from xpmet.predict import plan
from xpmet.predict.plan import OUTPUTS, PREDICTED, chunk_select, input_columns, where_error


def _drop_stale(conn, model_id: int, lo: int, hi: int) -> int:
    """Delete the model's predictions in [lo, hi) whose XP row was replaced (another load) or is gone,
    in the chunk's write transaction: the chunk then predicts those stars again (the reader's
    anti-join matches on load_id too)."""
    return conn.execute(
        "DELETE FROM xpmet.predictions p WHERE p.model_id = %s AND p.source_id >= %s AND p.source_id < %s "
        "AND NOT EXISTS (SELECT 1 FROM xpmet.xp_continuous x WHERE x.source_id = p.source_id "
        "AND x.load_id = p.load_id)", (model_id, lo, hi)).rowcount


def _fk_check_per_chunk(conn) -> bool:
    """Whether the chunk's write may check the predictions' one foreign key (model_id -> models) once,
    instead of once per row (the per-row check is ~60 % of the write's server CPU): only as
    superuser (session_replication_role), and only while every trigger on the table belongs to
    that key, so that turning triggers off for the COPY skips nothing else."""
    return conn.execute(
        "SELECT current_setting('is_superuser') = 'on' AND NOT EXISTS (SELECT 1 FROM pg_trigger t "
        "WHERE t.tgrelid = 'xpmet.predictions'::regclass AND t.tgconstraint NOT IN ("
        "  SELECT c.oid FROM pg_constraint c WHERE c.conrelid = 'xpmet.predictions'::regclass AND c.contype = 'f' "
        "  AND c.confrelid = 'xpmet.models'::regclass AND c.conkey = ARRAY[(SELECT attnum FROM pg_attribute "
        "  WHERE attrelid = 'xpmet.predictions'::regclass AND attname = 'model_id')]))").fetchone()[0]


def _hold_model(conn, model_id: int) -> None:
    """The foreign key's check, once for the chunk: the models row exists and stays (the lock the
    per-row check takes) until the chunk commits; the COPY then runs with triggers off."""
    if conn.execute("SELECT 1 FROM xpmet.models WHERE model_id = %s FOR KEY SHARE", (model_id,)).fetchone() is None:
        raise XpmetError(f"model {model_id} was deleted from xpmet.models while predicting")
    conn.execute("SET LOCAL session_replication_role = replica")


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


class Worker:
    """A predictor plus a read connection (COPY TO) and a write connection (COPY FROM)."""

    def __init__(self, predictor, model_id: int, url: str, where, batch: int):
        from xpmet.db.engine import raw_connect
        self.predictor, self.model_id, self.where, self.batch = predictor, model_id, where, batch
        self.inputs = input_columns(getattr(predictor, "needs", None))
        self.cols = [c for _, c in self.inputs]
        # The user's --where runs in this connection's COPY: log in as the read-only role for it.
        self.reader = reader_connect(url) if where else raw_connect(url)
        self.reader.read_only = True  # the --where expression can read, never write
        self.writer = raw_connect(url)
        self.fk_per_chunk = _fk_check_per_chunk(self.writer)
        self.writer.rollback()

    def close(self):
        self.reader.close()
        self.writer.close()

    def run_chunk(self, lo: int, hi: int) -> tuple[int, int]:
        """Predict the missing stars of [lo, hi) and commit them; returns (rows read, rows written)."""
        (result,) = self.run_chunks([(lo, hi)])
        return result

    def run_chunks(self, bounds):
        """Predict the missing stars of each [lo, hi) in ``bounds``, each range committed on its own;
        yields (rows read, rows written) per committed range, in order. A range that collides with
        predictions another process wrote meanwhile is done again once (the anti-join skips them)."""
        todo, pending, retried = iter(bounds), collections.deque(), set()
        while True:
            try:
                yield from self._stream(itertools.chain(list(pending), todo), pending)
                return
            except psycopg.errors.UniqueViolation:
                self.writer.rollback()
                if pending[0] in retried:
                    lo, hi = pending[0]
                    raise XpmetError(f"source_id range [{lo}, {hi}) keeps colliding with predictions written "
                                     "by another process: is a second `xpmet predict` running for this model?")
                retried.add(pending[0])
                # the stream starts again at the first range not committed

    def _stream(self, bounds, pending):
        # Three stages overlap: a reader thread streams and decodes (the server spends its time in
        # array output), this thread predicts, a writer thread encodes, COPYs and commits each range.
        # The reader goes on to the next range while the writer finishes the last one, so neither
        # server backend waits at a range's end.
        batches: queue.Queue = queue.Queue(maxsize=3)
        results: queue.Queue = queue.Queue(maxsize=3)
        done: queue.Queue = queue.Queue()
        stop = threading.Event()
        threads = [threading.Thread(target=self._read, args=(bounds, batches, stop, pending), daemon=True),
                   threading.Thread(target=self._write, args=(results, stop, done), daemon=True)]
        for t in threads:
            t.start()
        read = 0
        try:
            while (item := batches.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                if item[0] == "rows":
                    rows = item[1]
                    n, load_id = len(rows["source_id"]), rows.pop("load_id")
                    results.put(("rows", _outputs(self.predictor.predict(rows), n, self.model_id,
                                                  rows["source_id"], load_id)))
                    read += n
                else:  # ("begin", lo, hi) or ("end", lo, hi)
                    results.put(item if item[0] == "begin" else ("end", read))
                    read = 0
                yield from _committed(done, pending)
            results.put(None)
            threads[1].join()
            yield from _committed(done, pending)
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
                    pass
                for t in threads:
                    t.join(timeout=0.05)
            self.writer.rollback()  # the range being written is dropped; committed ones stay
            raise
        finally:
            for t in threads:
                t.join()

    def _write(self, results, stop, done):
        """Writer thread: per range, one transaction (stale rows dropped, one binary COPY FROM opened
        at the first batch) committed at the range's end; (read, written) or the error on ``done``."""
        try:
            while (item := results.get()) is not None and not stop.is_set():
                _, lo, hi = item  # ("begin", lo, hi)
                # No WAL flush wait per range: one lost to a server crash is predicted again by the
                # next run, and the run's completion mark (a normal commit, after every range) flushes all.
                self.writer.execute("SET LOCAL synchronous_commit = off")
                _drop_stale(self.writer, self.model_id, lo, hi)
                if self.fk_per_chunk:
                    _hold_model(self.writer, self.model_id)
                written = 0
                with contextlib.ExitStack() as stack:
                    sink = None
                    while (item := results.get()) is None or item[0] != "end":
                        if item is None or stop.is_set():
                            raise XpmetError("range abandoned")  # makes psycopg abort the COPY
                        if sink is None:
                            sink = stack.enter_context(stack.enter_context(self.writer.cursor()).copy(
                                copy_sql("xpmet.predictions", OUTPUTS)))
                            sink.write(HEADER)
                        sink.write(encode(OUTPUTS, item[1], header=False, trailer=False))
                        written += len(item[1]["source_id"])  # one COPY: all of them commit, or none
                    if sink is not None:
                        sink.write(TRAILER)
                self.writer.commit()  # the range becomes visible (and final) all at once
                fault("predict_after_chunk")
                done.put((item[1], written))
        except BaseException as e:
            done.put(e)
            while results.get() is not None:  # keep the main thread from blocking on a full queue
                pass

    def _read(self, bounds, batches, stop, pending):
        """Reader thread: per range, ("begin", lo, hi), ("rows", batch of at most ``batch`` rows)...,
        ("end", lo, hi), each range in its own read-only snapshot; None after the last one."""
        lo = hi = None
        try:
            for lo, hi in bounds:
                if stop.is_set():
                    return
                pending.append((lo, hi))
                batches.put(("begin", lo, hi))
                # Read in key order through the primary keys; a planner that sorts a big chunk of a
                # small table instead spends ~30 % more server CPU on it (and spills to disk).
                self.reader.execute("SET LOCAL enable_sort = off")
                if self.where:  # a SET LOCAL per range: the condition cannot lift it for the next one
                    self.reader.execute(f"SET LOCAL statement_timeout = {int(plan.WHERE_CHUNK_TIMEOUT_MS)}")
                sql = chunk_select(self.inputs, self.model_id, lo, hi, self.where)
                with contextlib.closing(select_arrays(self.reader, sql, None, self.cols, max_rows=self.batch)) as rows:
                    for batch in rows:
                        batches.put(("rows", batch))
                        if stop.is_set():
                            return  # closing the generator cancels the COPY
                self.reader.rollback()  # ends the read-only snapshot so VACUUM is not held back
                batches.put(("end", lo, hi))
            batches.put(None)
        except BaseException as e:  # handed to the main thread, which raises it
            if self.where and isinstance(e, (psycopg.errors.QueryCanceled, psycopg.errors.InsufficientPrivilege,
                                             psycopg.errors.DataError)) and not stop.is_set():
                e = where_error(self.where, e, plan.WHERE_CHUNK_TIMEOUT_MS, f"on source_ids [{lo}, {hi})")
            batches.put(e)
        finally:
            try:
                self.reader.rollback()
            except psycopg.Error:
                pass


def _committed(done, pending):
    """The writer's results so far: (read, written) per committed range, oldest first."""
    while True:
        try:
            result = done.get_nowait()
        except queue.Empty:
            return
        if isinstance(result, BaseException):
            raise result
        pending.popleft()
        yield result
