"""Provenance and atomicity of file loads: one transaction per file, recorded in ``xpmet.etl_load``.

A load inserts its ``etl_load`` row and its data rows in one transaction and marks the row
'done' just before COMMIT, so a killed process leaves nothing visible and the next run loads
the file again. A file whose checksum was already loaded (same kind) is skipped, or with
``replace=True`` its earlier rows are deleted and the earlier load marked 'replaced'.
Failures are recorded as 'failed' rows on a separate connection, after the rollback.

Each load holds a transaction-level advisory lock on (kind, sha256): a second process given the
same file waits for the first, then skips the file (``Skipped.note`` says so) or, when the first
failed, loads it. Derived rows record the loads they were built from (xmatch_run.loads,
predictions.load_id), so a replacement shows as stale there instead of leaving them dangling.
"""
from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from xpmet import __version__
from xpmet.db.engine import raw_connect
from xpmet.faults import fault


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class Load:
    """An open file load: write rows with ``conn`` (inside its transaction), then set ``n_rows``."""
    load_id: int
    path: Path
    kind: str
    conn: psycopg.Connection
    n_rows: int = 0
    replaced: list = field(default_factory=list)  # load_ids this load superseded
    after_commit: list = field(default_factory=list)  # callables run once the load has committed
    descriptor: dict | None = None  # stored in etl_load.descriptor (survey loads)


@dataclass
class Skipped:
    path: Path
    load_id: int
    n_rows: int
    note: str | None = None  # set when another process loaded the file while this one waited


def already_loaded(conn, kind: str, sha: str):
    return conn.execute("SELECT load_id, n_rows FROM xpmet.etl_load WHERE kind = %s AND sha256 = %s "
                        "AND status = 'done'", (kind, sha)).fetchone()


def _lock_key(kind: str, sha: str) -> str:
    return f"xpmet-load:{kind}:{sha}"


@contextmanager
def file_load(path, kind: str, tables: tuple[str, ...], options: dict | None = None,
              replace: bool = False, url: str | None = None):
    """Yield a :class:`Load` (or a :class:`Skipped` when the file is already loaded).

    ``tables`` are the tables this kind writes (qualified names with a ``load_id`` column);
    ``replace`` deletes their rows of an earlier load of the same file.
    """
    path = Path(path)
    size = path.stat().st_size
    sha = sha256_of(path)
    t0 = time.perf_counter()
    conn = raw_connect(url)
    load = None
    try:
        waited, before = 0.0, None
        if not conn.execute("SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))",
                            (_lock_key(kind, sha),)).fetchone()[0]:
            before = already_loaded(conn, kind, sha)  # another process is loading this very file: wait
            w0 = time.perf_counter()
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_lock_key(kind, sha),))
            waited = time.perf_counter() - w0
        # READ COMMITTED: this statement sees what the process we waited for committed
        prior = already_loaded(conn, kind, sha)
        # skip a file another process loaded while we waited, even with replace: it is as new as ours
        if prior and (not replace or (waited and prior != before)):
            conn.rollback()
            note = (f"{path}: loaded by another process while this one waited ({waited:.1f} s); skipped"
                    if waited and prior != before else None)
            yield Skipped(path, prior[0], prior[1], note)
            return
        load_id = conn.execute(
            "INSERT INTO xpmet.etl_load (kind, path, size_bytes, sha256, status, options, xpmet_version) "
            "VALUES (%s, %s, %s, %s, 'running', %s, %s) RETURNING load_id",
            (kind, str(path.resolve()), size, sha, json.dumps(options or {}), __version__)).fetchone()[0]
        load = Load(load_id, path, kind, conn)
        if prior:
            for t in tables:
                conn.execute(f"DELETE FROM {t} WHERE load_id = %s", (prior[0],))
            conn.execute("UPDATE xpmet.etl_load SET status = 'replaced' WHERE load_id = %s", (prior[0],))
            load.replaced.append(prior[0])
        yield load
        conn.execute("UPDATE xpmet.etl_load SET status = 'done', n_rows = %s, finished_at = now(), "
                     "seconds = %s, descriptor = %s WHERE load_id = %s",
                     (load.n_rows, time.perf_counter() - t0,
                      None if load.descriptor is None else json.dumps(load.descriptor, default=str), load_id))
        fault("before_commit")
        conn.commit()
    except BaseException as e:
        conn.rollback()
        _record_failure(url, kind, path, size, sha, options, e, time.perf_counter() - t0)
        raise
    finally:
        conn.close()
    fault("after_commit")
    for hook in load.after_commit:
        hook()


def _record_failure(url, kind, path, size, sha, options, exc, seconds):
    if isinstance(exc, (KeyboardInterrupt, GeneratorExit)):
        return
    try:
        with raw_connect(url) as c:
            c.execute("INSERT INTO xpmet.etl_load (kind, path, size_bytes, sha256, status, options, "
                      "xpmet_version, finished_at, seconds, error) "
                      "VALUES (%s, %s, %s, %s, 'failed', %s, %s, now(), %s, %s)",
                      (kind, str(Path(path).resolve()), size, sha, json.dumps(options or {}), __version__,
                       seconds, str(exc)[:4000]))
    except Exception:  # the database itself may be the failure; the original error is what matters
        pass


def derived_status(url: str | None = None) -> list[tuple[str, str]]:
    """(what, state) lines for `xpmet db status`: is the current crossmatch stale, which crossmatch
    the labels were built from, and which models have predictions from XP files replaced since."""
    out = []
    with raw_connect(url) as c:
        run = c.execute("SELECT version, stale_reason FROM xpmet.xmatch_run_status WHERE is_current").fetchone()
        if run is None:
            out.append(("crossmatch", "none (run: xpmet xmatch)"))
        else:
            out.append(("crossmatch", f"{run[0]}, STALE: {run[1]}" if run[1] else f"{run[0]}, up to date"))
        ls = c.execute("SELECT labels_xmatch_version, current_xmatch_version, newer_xmatch, xmatch_stale "
                       "FROM xpmet.label_status").fetchone()
        if ls and ls[0] is None:
            out.append(("labels", "not built (run: xpmet labels)"))
        elif ls and ls[2]:
            out.append(("labels", f"built from crossmatch {ls[0]}, STALE: crossmatch {ls[1]} is newer "
                                  "(run: xpmet labels)"))
        elif ls:
            out.append(("labels", f"built from crossmatch {ls[0]}" + (", STALE with it" if ls[3] else "")))
        c.commit()
        try:  # a full pass over predictions: bounded, so that status stays quick on a huge table
            c.execute("SET LOCAL statement_timeout = '20s'")
            stale = c.execute("SELECT model_id, n_stale FROM xpmet.prediction_status WHERE n_stale > 0 "
                              "ORDER BY model_id").fetchall()
        except psycopg.errors.QueryCanceled:
            c.rollback()
            out.append(("predictions", "not checked within 20 s: SELECT * FROM xpmet.prediction_status"))
            return out
        if stale:
            out.append(("predictions", "STALE: " + ", ".join(f"model {m}: {n} from replaced XP spectra"
                                                             for m, n in stale)
                        + " (run: xpmet predict --model ...)"))
    return out
